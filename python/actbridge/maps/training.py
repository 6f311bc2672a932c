"""Autoencoder training: :class:`AutoencoderConfig` (the settings, also the CLI's options and
what a saved map records) and the two trainers behind :meth:`AutoencoderMap.fit`, Rust on the
CPU or torch (CUDA when available).

Both trainers share one definition of everything but the step itself, in the Rust core: the
epoch plan (the store's seeded sampler, each row once per epoch), the learning-rate schedule
and early stop (``_native.PlateauSchedule``), folding standardisation into the weights
(``_native.fold_standardization``) and the validation scores after each epoch
(``_native.evaluate_autoencoder``). The torch loop only runs forward, backward and AdamW.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from actbridge import _native
from actbridge._arrays import row_indices
from actbridge._progress import ProgressBar
from actbridge._typing import Rows, Tensor
from actbridge.distributed import Group, all_reduce_sum, collective
from actbridge.errors import MapArgumentError
from actbridge.store import ActivationStore, native_store

if TYPE_CHECKING:
    import argparse

    import torch

__all__ = ["AutoencoderConfig", "Backend"]

#: Where an autoencoder trains: "rust" (the CPU trainer, GIL released), "torch" (on a device,
#: CUDA when available) or "auto" (torch on a GPU, Rust otherwise).
Backend = Literal["auto", "rust", "torch"]

#: Per-dimension (mean_x, std_x, mean_y, std_y), float32.
Standardization = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]
]


def default_hidden(d_source: int, d_target: int) -> int:
    """The paper's hidden width, ``round(sqrt(d_source * d_target))``."""
    return int(round(math.sqrt(d_source * d_target)))


def _doc(text: str, **kw: Any) -> Any:
    """A dataclass field with its documentation (the CLI's help and the class docstring)."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Settings of :meth:`AutoencoderMap.fit` (MSE, AdamW, one seeded shuffle per epoch).

    The same object is the CLI's schema (``actbridge fit autoencoder --lr ...``, see
    :meth:`add_arguments`) and what a saved map records under ``config["training"]``.
    Invalid values raise :class:`MapArgumentError` (a ``ValueError``) when it is made.
    """

    hidden: int | None = _doc(
        "hidden width; None: the paper's round(sqrt(d_source * d_target))", default=None
    )
    epochs: int = _doc("passes over the training rows (at most: early_stop may end sooner)", default=3)
    batch_size: int = _doc("rows per optimizer step", default=1024)
    lr: float = _doc("AdamW learning rate at the start", default=1e-3)
    weight_decay: float = _doc("AdamW decoupled weight decay", default=0.0)
    seed: int = _doc("initialisation and the per-epoch shuffles", default=0)
    plateau_patience: int = _doc(
        "epochs without improvement of the validation MSE (training MSE without validation rows) "
        "tolerated before the learning rate is multiplied by lr_factor",
        default=0,
    )
    lr_factor: float = _doc("factor applied to the learning rate on a plateau, in (0, 1)", default=0.5)
    early_stop: int | None = _doc("stop after this many epochs without improvement; None: off", default=None)
    grad_clip: float | None = _doc("clip the global gradient norm to this; None: off", default=None)
    standardize: bool = _doc(
        "train on per-dimension standardised inputs and targets and fold the statistics back into "
        "the weights (the result works on raw units; the training loss in history is then in "
        "standardised units, validation scores in raw units)",
        default=False,
    )
    backend: Backend = _doc('"rust" (CPU), "torch" (CUDA when available) or "auto"', default="auto")

    def __post_init__(self) -> None:
        def whole(name: str, low: int, none_ok: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low or v >= 2**63:
                off = " or None" if none_ok else ""
                raise MapArgumentError(f"{name} must be an integer >= {low}{off}, got {v!r}")

        def number(name: str, ok: Callable[[float], bool], what: str, none_ok: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise MapArgumentError(f"{name} must be a number {what}, got {v!r}")
            if not (np.isfinite(v) and ok(float(v))):
                raise MapArgumentError(f"{name} must be {what}, got {v!r}")

        whole("hidden", 1, none_ok=True)
        whole("epochs", 1)
        whole("batch_size", 1)
        whole("seed", 0)
        whole("plateau_patience", 0)
        whole("early_stop", 1, none_ok=True)
        number("lr", lambda v: v > 0, "> 0")
        number("weight_decay", lambda v: v >= 0, ">= 0")
        number("lr_factor", lambda v: 0 < v < 1, "in (0, 1)")
        number("grad_clip", lambda v: v > 0, "> 0 (or None)", none_ok=True)
        if not isinstance(self.standardize, bool):
            raise MapArgumentError(f"standardize must be True or False, got {self.standardize!r}")
        if self.backend not in get_args(Backend):
            raise MapArgumentError(f"backend must be one of {get_args(Backend)}, got {self.backend!r}")

    def replace(self, **changes: Any) -> AutoencoderConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (what a saved map records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderConfig:
        """The inverse of :meth:`to_dict`; an unknown key is an error that names the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MapArgumentError(
                f"unknown autoencoder settings {unknown}; the settings are {sorted(known)}"
            )
        return cls(**dict(d))

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        *,
        exclude: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one ``--option`` per field (``--batch-size`` for ``batch_size``), typed and
        documented from the field; ``defaults`` overrides a field's default for this parser."""
        import argparse

        defaults = dict(defaults or {})
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            flag = "--" + f.name.replace("_", "-")
            default = defaults.get(f.name, f.default)
            doc = f"{f.metadata['doc']} (default: {default})"
            if f.type in ("bool", bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=doc)
            elif f.name == "backend":
                parser.add_argument(flag, choices=get_args(Backend), default=default, help=doc)
            else:
                kind = float if "float" in str(f.type) else int
                parser.add_argument(flag, type=kind, default=default, help=doc)

    @classmethod
    def from_arguments(cls, ns: argparse.Namespace, **fixed: Any) -> AutoencoderConfig:
        """The config an ``argparse`` namespace holds (from :meth:`add_arguments`), with
        ``fixed`` for the fields the parser left out."""
        values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
        return cls(**(values | fixed))


AutoencoderConfig.__doc__ = (
    (AutoencoderConfig.__doc__ or "")
    + "\n    Fields:\n\n"
    + "\n".join(f"    - ``{f.name}``: {f.metadata['doc']}." for f in dataclasses.fields(AutoencoderConfig))
)


def standardization(store: ActivationStore, source: str, target: str, rows: Rows) -> Standardization:
    """Per-dimension means and standard deviations of both sites over ``rows`` (σ = 1 where a
    dimension is constant, so it is only centred)."""

    def moments(site: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        st = store.stats(site, rows=rows)
        std = st["std"].astype(np.float32)
        std[~(std > 1e-6 * max(float(std.max()), 1e-30))] = 1.0
        return st["mean"].astype(np.float32), std

    (mx, sx), (my, sy) = moments(source), moments(target)
    return mx, sx, my, sy


KEYS = ("encoder.0.weight", "encoder.0.bias", "decoder.weight", "decoder.bias")


def torch_module(d_source: int, hidden: int, d_target: int) -> torch.nn.Module:
    """A fresh ``torch.nn.Module`` with the paper's layout and PyTorch-default init."""
    import torch

    class Autoencoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(d_source, hidden), torch.nn.ReLU())
            self.decoder = torch.nn.Linear(hidden, d_target)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.decoder(self.encoder(x))
            return out

    return Autoencoder()


def fold(
    tensors: Mapping[str, npt.NDArray[np.float32]], z: Standardization, *, inverse: bool = False
) -> dict[str, npt.NDArray[np.float32]]:
    """Standardised-space autoencoder tensors -> a plain autoencoder on raw units (with
    ``inverse``, the other way), by the core's definition."""
    w1 = tensors["encoder.0.weight"]
    dims = (w1.shape[1], w1.shape[0], tensors["decoder.weight"].shape[0])
    flat = [np.ascontiguousarray(tensors[k], dtype=np.float32).ravel() for k in KEYS]
    out = _native.fold_standardization(
        dims=dims, tensors=flat, standardize=tuple(a.tolist() for a in z), inverse=inverse
    )
    shapes = [(dims[1], dims[0]), (dims[1],), (dims[2], dims[1]), (dims[2],)]
    return {k: a.reshape(s) for k, a, s in zip(KEYS, out, shapes, strict=True)}


@dataclass(frozen=True)
class Sites:
    """The data a map is trained on: two sites of a store and the training rows."""

    store: ActivationStore
    source: str
    target: str
    rows: Rows

    @property
    def d_source(self) -> int:
        return self.store.sites[self.source]

    @property
    def d_target(self) -> int:
        return self.store.sites[self.target]

    def target_variance(self, standardized: bool) -> float:
        """Σ per-dimension variance of the training targets in the units the loss is computed in
        (FVU's denominator): ``d_target`` when the targets are standardised."""
        if standardized:
            return float(self.d_target)
        return float(self.store.stats(self.target, rows=self.rows)["var"].sum())

    def metadata(self, backend: str, cfg: AutoencoderConfig, epochs_run: int, **extra: Any) -> dict[str, Any]:
        return {
            "config": {
                "method": "autoencoder",
                "backend": backend,
                "epochs": epochs_run,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "seed": cfg.seed,
                "standardized": cfg.standardize,
                "training": cfg.to_dict() | {"backend": backend},
                **extra,
            },
            "provenance": {
                "store": self.store.path,
                "source_site": self.source,
                "target_site": self.target,
                "store_metadata": self.store.metadata,
            },
        }


@dataclass(frozen=True)
class Run:
    """What a fit needs besides the config: the resolved hidden width, validation rows, the
    starting tensors (raw units, ``KEYS``; None: default init from the seed), the
    standardisation statistics and whether to show progress."""

    hidden: int
    val_rows: Rows
    init: Mapping[str, npt.NDArray[np.float32]] | None
    standardize: Standardization | None
    progress: bool


@dataclass(frozen=True)
class Trained:
    """A trainer's result: tensors in raw units (``KEYS``), per-epoch history, and the
    ``config``/``provenance`` metadata the map records."""

    tensors: dict[str, npt.NDArray[np.float32]]
    history: list[dict[str, float]]
    metadata: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch's scores."""
        return {k: v for k, v in self.history[-1].items() if k != "epoch"}


def train_rust(data: Sites, cfg: AutoencoderConfig, run: Run) -> Trained:
    """Train with the Rust CPU trainer (GIL released; no Python in the inner loop)."""
    from actbridge._blas import dense_sgemm

    _native.register_dense_sgemm(dense_sgemm())
    train_ids = row_indices(data.rows, len(data.store))
    val_ids = None if run.val_rows is None else row_indices(run.val_rows, len(data.store))
    tensors = None
    if run.init is not None:
        tensors = [np.ascontiguousarray(run.init[k], dtype=np.float32).ravel() for k in KEYS]
    bar = ProgressBar(
        cfg.epochs * -(-len(train_ids) // cfg.batch_size), "autoencoder (rust)", run.progress, unit="batch"
    )
    try:
        (w1, b1, w2, b2), history = _native.train_autoencoder(
            store=native_store(data.store),
            source=data.source,
            target=data.target,
            rows=train_ids,
            val_rows=val_ids,
            hidden=run.hidden,
            config=cfg,
            init=tensors,
            progress=bar.advance_to if run.progress else None,
            standardize=None if run.standardize is None else tuple(a.tolist() for a in run.standardize),
        )
    finally:
        bar.close()
    target_var = data.target_variance(run.standardize is not None)
    for record in history:
        record["train_fvu"] = record["train_mse"] * data.d_target / max(target_var, 1e-30)
    shapes = [(run.hidden, data.d_source), (run.hidden,), (data.d_target, run.hidden), (data.d_target,)]
    tensors_out = {k: a.reshape(sh) for k, a, sh in zip(KEYS, (w1, b1, w2, b2), shapes, strict=True)}
    return Trained(tensors_out, history, data.metadata("rust", cfg, len(history)))


def _raw_tensors(module: torch.nn.Module, z: Standardization | None) -> dict[str, npt.NDArray[np.float32]]:
    """A torch module's weights as float32 numpy arrays in raw units."""
    state = {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}
    return state if z is None else fold(state, z)


def shared_batch_loss(out: Tensor, y: Tensor, global_rows: int, world: int) -> tuple[Tensor, Tensor]:
    """One rank's loss for its slice ``(m, d)`` of a global batch of ``global_rows`` rows, and its
    summed squared error: ``SSE_rank · world / (global_rows · d)``. DistributedDataParallel
    averages gradients over the ``world`` ranks, so the result is the gradient of the
    single-process mean loss over the whole batch, however unevenly the rows are shared."""
    import torch

    local_sse = torch.nn.functional.mse_loss(out, y, reduction="sum")
    return local_sse * (world / (global_rows * y.shape[-1])), local_sse


def train_torch(
    data: Sites,
    cfg: AutoencoderConfig,
    run: Run,
    device: torch.device | str | None,
    group: Group | None = None,
) -> Trained:
    """Train with torch (on ``device``; CUDA when available), batches from the store's sampler;
    the schedule, standardisation folding and validation scores are the core's.

    With ``group`` (torch.distributed, two or more ranks) the module is wrapped in
    DistributedDataParallel and every rank takes its slice of each global batch of the same
    epoch plan (``batches(share=...)``). Each rank's loss is its summed squared error over the
    global batch's element count, times the world size, so DDP's gradient average is the
    gradient of the single-process mean loss. Training and validation sums are all-reduced, so
    the schedule sees the same scores and decides the same on every rank."""
    import torch

    if group is not None and device is None:
        device = group.device()
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    d_t = data.d_target
    torch.manual_seed(cfg.seed)
    module = torch_module(data.d_source, run.hidden, d_t)
    z = run.standardize
    if run.init is not None:
        start = {k: np.array(run.init[k]) for k in KEYS}
        if z is not None:
            start = fold(start, z, inverse=True)  # train in standardised space
        module.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()})
    module = module.to(dev)
    net: torch.nn.Module = module
    if group is not None:
        from torch.nn.parallel import DistributedDataParallel

        ids = None if dev.type == "cpu" else [dev]
        net = collective(
            "AutoencoderMap.fit (DistributedDataParallel setup)",
            lambda: DistributedDataParallel(module, device_ids=ids),
        )
    zt = None if z is None else [torch.from_numpy(a).to(dev) for a in z]
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _native.PlateauSchedule(
        lr=cfg.lr, lr_factor=cfg.lr_factor, plateau_patience=cfg.plateau_patience, early_stop=cfg.early_stop
    )
    val_ids = None if run.val_rows is None else row_indices(run.val_rows, len(data.store))
    target_var = data.target_variance(z is not None)
    share = None if group is None else (group.rank, group.world)
    val_share, val_sst = val_ids, 0.0
    if group is not None and val_ids is not None and len(val_ids):
        a, b = group.share(len(val_ids))
        val_share = val_ids[a:b]
        # FVU's denominator over all validation rows (population variance, as the core's scores)
        val_sst = float(data.store.stats(data.target, rows=val_ids)["var"].sum()) * len(val_ids)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        for params in opt.param_groups:
            params["lr"] = schedule.lr
        module.train()
        batches = data.store.batches(
            [data.source, data.target],
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            rows=data.rows,
            share=share,
        )
        bar = ProgressBar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", run.progress, unit="batch")
        sse = torch.zeros((), dtype=torch.float64, device=dev)  # on the device: no per-step sync
        n = 0
        for i, batch in enumerate(batches):
            x = torch.from_numpy(batch[data.source]).to(dev, non_blocking=True)
            y = torch.from_numpy(batch[data.target]).to(dev, non_blocking=True)
            if zt is not None:
                x, y = (x - zt[0]) / zt[1], (y - zt[2]) / zt[3]
            opt.zero_grad(set_to_none=True)
            if group is None:
                loss = torch.nn.functional.mse_loss(net(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                sse += loss.detach().double() * (len(x) * d_t)
            else:
                global_rows = batches.global_batch_rows(i)  # the plan's own count (Rust)
                loss, local_sse = shared_batch_loss(net(x), y, global_rows, group.world)
                collective("AutoencoderMap.fit (gradient all-reduce)", loss.backward)
                sse += local_sse.detach().double()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            n += len(x)
            bar.update(1)
        bar.close()
        if group is not None:
            sse_all, n_all = all_reduce_sum(
                group, "AutoencoderMap.fit (training error)", np.array([float(sse), float(n)])
            )
            train_mse = float(sse_all) / max(n_all * d_t, 1.0)
        else:
            train_mse = float(sse) / max(n * d_t, 1)
        record = {
            "epoch": epoch + 1,
            "train_mse": train_mse,
            "train_fvu": train_mse * d_t / max(target_var, 1e-30),
            "lr": float(schedule.lr),
        }
        score = train_mse
        if val_ids is not None and len(val_ids):
            raw = _raw_tensors(module, z)
            val = {"mse": 0.0, "fvu": 0.0, "cosine": 0.0}
            if val_share is not None and len(val_share):
                val = _native.evaluate_autoencoder(
                    store=native_store(data.store),
                    source=data.source,
                    target=data.target,
                    rows=val_share,
                    dims=(data.d_source, run.hidden, d_t),
                    tensors=[np.ascontiguousarray(raw[k]).ravel() for k in KEYS],
                )
            if group is not None:
                m = 0 if val_share is None else len(val_share)
                sums = np.array([val["mse"] * m * d_t, val["cosine"] * m, float(m)])
                v_sse, v_cos, v_n = all_reduce_sum(group, "AutoencoderMap.fit (validation)", sums)
                val = {
                    "mse": float(v_sse / (v_n * d_t)),
                    "fvu": float(v_sse / val_sst) if val_sst > 0 else float("nan"),
                    "cosine": float(v_cos / v_n),
                }
            record.update(val_mse=val["mse"], val_fvu=val["fvu"], val_cosine=val["cosine"])
            score = val["mse"]
        history.append(record)
        if schedule.step(score):
            break
    extra: dict[str, Any] = {"device": str(dev)}
    if group is not None:
        extra["distributed"] = {"world": group.world, "backend": group.backend}
    return Trained(_raw_tensors(module, z), history, data.metadata("torch", cfg, len(history), **extra))
