"""The two trainers behind :meth:`AutoencoderMap.fit`: Rust on the CPU, or torch (CUDA when
available). Both draw batches from the store's Rust sampler (seeded, each row once per epoch),
use the same plateau / early-stop rule, and return the same map and history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from actbridge._arrays import row_indices
from actbridge.evaluate import evaluate_map
from actbridge.store import ActivationStore

#: Relative improvement that counts as progress (``ReduceLROnPlateau``'s default threshold).
IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class TrainSettings:
    """Everything a trainer needs besides the store and the sites (see ``AutoencoderMap.fit``)."""

    hidden: int
    init: Any
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    val_rows: Any
    seed: int
    progress: bool
    plateau_patience: int
    early_stop: int | None
    grad_clip: float | None
    #: (mean_x, std_x, mean_y, std_y) float32 arrays to standardise with, or None.
    standardize: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def standardization(
    store: ActivationStore, source: str, target: str, rows: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension means and standard deviations of both sites over ``rows`` (σ = 1 where a
    dimension is constant, so it is only centred)."""

    def moments(site: str) -> tuple[np.ndarray, np.ndarray]:
        st = store.stats(site, rows=rows)
        std = st["std"].astype(np.float32)
        std[~(std > 1e-6 * max(float(std.max()), 1e-30))] = 1.0
        return st["mean"].astype(np.float32), std

    (mx, sx), (my, sy) = moments(source), moments(target)
    return mx, sx, my, sy


def fold(tensors: dict[str, np.ndarray], z: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Standardised-space autoencoder tensors -> a plain autoencoder on raw units."""
    mx, sx, my, sy = z
    w1 = tensors["encoder.0.weight"] / sx
    return {
        "encoder.0.weight": w1,
        "encoder.0.bias": tensors["encoder.0.bias"] - w1 @ mx,
        "decoder.weight": tensors["decoder.weight"] * sy[:, None],
        "decoder.bias": tensors["decoder.bias"] * sy + my,
    }


def unfold(tensors: dict[str, np.ndarray], z: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The inverse of :func:`fold`."""
    mx, sx, my, sy = z
    w1 = tensors["encoder.0.weight"]
    return {
        "encoder.0.weight": w1 * sx,
        "encoder.0.bias": tensors["encoder.0.bias"] + w1 @ mx,
        "decoder.weight": tensors["decoder.weight"] / sy[:, None],
        "decoder.bias": (tensors["decoder.bias"] - my) / sy,
    }


@dataclass(frozen=True)
class Sites:
    """The data a map is trained on: two sites of a store and the training rows."""

    store: ActivationStore
    source: str
    target: str
    rows: Any

    @property
    def d_source(self) -> int:
        return self.store.sites[self.source]

    @property
    def d_target(self) -> int:
        return self.store.sites[self.target]

    def target_variance(self, cfg: TrainSettings) -> float:
        """Σ per-dimension variance of the training targets in the units the loss is computed in
        (FVU's denominator): ``d_target`` when the targets are standardised."""
        if cfg.standardize is not None:
            return float(self.d_target)
        return float(self.store.stats(self.target, rows=self.rows)["var"].sum())

    def metadata(self, backend: str, cfg: TrainSettings, epochs_run: int, **extra: Any) -> dict[str, Any]:
        return {
            "config": {
                "method": "autoencoder",
                "backend": backend,
                "epochs": epochs_run,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "seed": cfg.seed,
                "standardized": cfg.standardize is not None,
                **extra,
            },
            "provenance": {
                "store": self.store.path,
                "source_site": self.source,
                "target_site": self.target,
                "store_metadata": self.store.metadata,
            },
        }


def _summary(history: list[dict[str, float]]) -> dict[str, float]:
    return {k: v for k, v in history[-1].items() if k != "epoch"}


def train_rust(cls: Any, data: Sites, cfg: TrainSettings) -> Any:
    """Train with the Rust CPU trainer (GIL released; no Python in the inner loop)."""
    from actbridge import _native
    from actbridge._blas import dense_sgemm
    from actbridge.maps import ProgressBar

    _native.register_dense_sgemm(dense_sgemm())
    train_ids = row_indices(data.rows, len(data.store))
    val_ids = None if cfg.val_rows is None else row_indices(cfg.val_rows, len(data.store))
    tensors = None
    if cfg.init is not None:
        tensors = [np.ascontiguousarray(a, dtype=np.float32).ravel() for a in cfg.init.tensors().values()]
    bar = ProgressBar(
        cfg.epochs * -(-len(train_ids) // cfg.batch_size), "autoencoder (rust)", cfg.progress, unit="batch"
    )
    try:
        (w1, b1, w2, b2), history = _native.train_autoencoder(
            data.store._store,
            data.source,
            data.target,
            train_ids,
            val_ids,
            cfg.hidden,
            tensors,
            cfg.epochs,
            cfg.batch_size,
            cfg.lr,
            cfg.weight_decay,
            cfg.seed,
            cfg.plateau_patience,
            cfg.early_stop,
            cfg.grad_clip,
            bar.advance_to if cfg.progress else None,
            None if cfg.standardize is None else tuple(a.tolist() for a in cfg.standardize),
        )
    finally:
        bar.close()
    target_var = data.target_variance(cfg)
    for record in history:
        record["train_fvu"] = record["train_mse"] * data.d_target / max(target_var, 1e-30)
    return cls(
        w1.reshape(cfg.hidden, data.d_source),
        b1,
        w2.reshape(data.d_target, cfg.hidden),
        b2,
        metrics=_summary(history),
        history=history,
        **data.metadata("rust", cfg, len(history)),
    )


class _TorchModuleMap:
    """Adapter: evaluate a torch module with :func:`evaluate_map` (numpy in, numpy out)."""

    def __init__(self, module: Any, device: Any, z: Any = None) -> None:
        self.module, self.device, self.z = module, device, z

    def transform(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            xt = torch.from_numpy(x).to(self.device)
            if self.z is not None:  # the module works in standardised units
                out = self.module((xt - self.z[0]) / self.z[1]) * self.z[3] + self.z[2]
            else:
                out = self.module(xt)
        return out.float().cpu().numpy()  # type: ignore[no-any-return]


def train_torch(cls: Any, data: Sites, cfg: TrainSettings, device: Any) -> Any:
    """Train with torch (on ``device``; CUDA when available), batches from the store's sampler."""
    import torch

    from actbridge.autoencoder import torch_module
    from actbridge.maps import ProgressBar

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    d_t = data.d_target
    torch.manual_seed(cfg.seed)
    module = torch_module(data.d_source, cfg.hidden, d_t)
    z = cfg.standardize
    if cfg.init is not None:
        start = {k: np.array(v) for k, v in cfg.init.tensors().items()}
        if z is not None:
            start = unfold(start, z)  # train in standardised space
        module.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()})
    module = module.to(dev)
    zt = None if z is None else [torch.from_numpy(a).to(dev) for a in z]
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=cfg.plateau_patience, threshold=IMPROVEMENT
    )
    target_var = data.target_variance(cfg)
    history: list[dict[str, float]] = []
    best, since_best = float("inf"), 0
    for epoch in range(cfg.epochs):
        module.train()
        batches = data.store.batches(
            [data.source, data.target],
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            rows=data.rows,
        )
        bar = ProgressBar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress, unit="batch")
        sse = torch.zeros((), dtype=torch.float64, device=dev)  # on the device: no per-step sync
        n = 0
        for batch in batches:
            x = torch.from_numpy(batch[data.source]).to(dev, non_blocking=True)
            y = torch.from_numpy(batch[data.target]).to(dev, non_blocking=True)
            if zt is not None:
                x, y = (x - zt[0]) / zt[1], (y - zt[2]) / zt[3]
            loss = torch.nn.functional.mse_loss(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            sse += loss.detach().double() * (len(x) * d_t)
            n += len(x)
            bar.update(1)
        bar.close()
        train_mse = float(sse) / max(n * d_t, 1)
        record = {
            "epoch": epoch + 1,
            "train_mse": train_mse,
            "train_fvu": train_mse * d_t / max(target_var, 1e-30),
            "lr": opt.param_groups[0]["lr"],
        }
        module.eval()
        score = train_mse
        if cfg.val_rows is not None:
            val = evaluate_map(
                _TorchModuleMap(module, dev, zt), data.store, data.source, data.target, rows=cfg.val_rows
            )
            record.update(val_mse=val["mse"], val_fvu=val["fvu"], val_cosine=val["cosine"])
            score = val["mse"]
        history.append(record)
        sched.step(score)
        if score < best * (1 - IMPROVEMENT):
            best, since_best = score, 0
        else:
            since_best += 1
            if cfg.early_stop is not None and since_best >= cfg.early_stop:
                break
    state = {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}
    if z is not None:
        state = fold(state, z)
    return cls.from_state_dict(
        state,
        metrics=_summary(history),
        history=history,
        **data.metadata("torch", cfg, len(history), device=str(dev)),
    )
