"""Autoencoder maps: ``Linear(d_s -> h) -> ReLU -> Linear(h -> d_t)``, both with bias.

As in arXiv 2503.04429: ``h = round(sqrt(d_s * d_t))``, PyTorch-default initialisation, MSE
loss, AdamW, validation each epoch and the learning rate halved when validation stops
improving. Training runs in Rust on the CPU, or with torch (on CUDA when available). Tensor
names follow the paper's module (``encoder.0.*``, ``decoder.*``), so its released mappers load
with :func:`load_map`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from actbridge._arrays import is_torch_tensor, row_selection
from actbridge._typing import Rows, Tensor
from actbridge.distributed import DistributedMode, active_group, check_same, digest, selection_digest
from actbridge.errors import MapArgumentError, MapError
from actbridge.maps.format import save_map
from actbridge.maps.training import (
    AutoencoderConfig,
    Run,
    Sites,
    default_hidden,
    standardization,
    torch_module,
    train_rust,
    train_torch,
)
from actbridge.store import ActivationStore, PathLike

if TYPE_CHECKING:
    import torch

__all__ = ["AutoencoderMap", "default_hidden"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class AutoencoderMap:
    """``y = W2 relu(W1 x + b1) + b2``; float32 weights in the PyTorch Linear layout."""

    kind = "autoencoder"

    def __init__(
        self,
        w1: Any,
        b1: Any,
        w2: Any,
        b2: Any,
        *,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        self.w1, self.b1, self.w2, self.b2 = (
            np.ascontiguousarray(a, dtype=np.float32) for a in (w1, b1, w2, b2)
        )
        h, d_s = self.w1.shape if self.w1.ndim == 2 else (-1, -1)
        ok = (
            self.w1.ndim == 2
            and self.w2.ndim == 2
            and self.b1.shape == (h,)
            and self.w2.shape[1] == h
            and self.b2.shape == (self.w2.shape[0],)
        )
        if not ok:
            raise MapError(
                f"inconsistent autoencoder shapes: W1 {self.w1.shape}, b1 {self.b1.shape}, "
                f"W2 {self.w2.shape}, b2 {self.b2.shape}; expected (h, d_s), (h,), (d_t, h), (d_t,)"
            )
        self.config: dict[str, Any] = dict(config or {})
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.history: list[dict[str, float]] = list(history or [])

    @property
    def d_source(self) -> int:
        return int(self.w1.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.w1.shape[0])

    @property
    def d_target(self) -> int:
        return int(self.w2.shape[0])

    @overload
    def transform(self, x: Tensor) -> Tensor: ...  # first: a Tensor is array-like too
    @overload
    def transform(self, x: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]: ...
    def transform(self, x: Tensor | npt.ArrayLike) -> Tensor | npt.NDArray[np.floating[Any]]:
        """Map rows ``(..., d_source) -> (..., d_target)``: numpy in, numpy out; torch in, torch
        out on the same device and dtype."""
        if is_torch_tensor(x):
            import torch

            p = [
                torch.from_numpy(a).to(device=x.device, dtype=x.dtype)
                for a in (self.w1, self.b1, self.w2, self.b2)
            ]
            return torch.nn.functional.linear(
                torch.relu(torch.nn.functional.linear(x, p[0], p[1])), p[2], p[3]
            )
        arr = np.asarray(x)
        if arr.shape[-1] != self.d_source:
            raise MapError(f"input has width {arr.shape[-1]}, this map takes {self.d_source}")
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
        hid = arr.astype(dtype, copy=False) @ self.w1.T.astype(dtype, copy=False) + self.b1
        np.maximum(hid, 0, out=hid)
        out: npt.NDArray[np.floating[Any]] = hid @ self.w2.T.astype(dtype, copy=False) + self.b2
        return out

    __call__ = transform

    def to_torch(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` (``encoder = Sequential(Linear, ReLU)``, ``decoder = Linear``)
        with these weights: identical outputs to :meth:`transform` on torch input."""
        import torch

        mod = torch_module(self.d_source, self.hidden, self.d_target)
        mod.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.tensors().items()})
        return mod

    def tensors(self) -> dict[str, npt.NDArray[np.float32]]:
        return {
            "encoder.0.weight": self.w1,
            "encoder.0.bias": self.b1,
            "decoder.weight": self.w2,
            "decoder.bias": self.b2,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], **kwargs: Any) -> AutoencoderMap:
        """From a torch/numpy state dict with the paper's names (``encoder.0.*``, ``decoder.*``;
        ``decoder.0.*`` and ``module.``/``mapper.`` prefixes are accepted too)."""
        flat: dict[str, npt.NDArray[np.float32]] = {}
        for key, value in state.items():
            name = key.removeprefix("module.").removeprefix("mapper.")
            flat[name] = value.detach().cpu().float().numpy() if is_torch_tensor(value) else np.asarray(value)
        for dec in ("decoder", "decoder.0"):
            keys = ("encoder.0.weight", "encoder.0.bias", f"{dec}.weight", f"{dec}.bias")
            if all(k in flat for k in keys):
                return cls(*(flat[k] for k in keys), **kwargs)
        raise MapError(
            f"not an autoencoder state dict: expected encoder.0.* and decoder.* tensors, got {sorted(flat)}"
        )

    def save(self, path: PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``."""
        save_map(self, path, extra={"hidden_dim": self.hidden, "history": self.history})

    def __repr__(self) -> str:
        fvu = self.metrics.get("val_fvu")
        extra = f", val FVU {fvu:.4f}" if isinstance(fvu, float) else ""
        return f"AutoencoderMap({self.d_source} -> {self.hidden} -> {self.d_target}{extra})"

    @classmethod
    def fit(
        cls,
        store: ActivationStore,
        source: str = "source",
        target: str = "target",
        rows: Rows = None,
        *,
        config: AutoencoderConfig | None = None,
        val_rows: Rows = None,
        init: AutoencoderMap | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        distributed: DistributedMode | None = None,
        **settings: Any,
    ) -> AutoencoderMap:
        """Train on ``rows`` of two sites of ``store`` (MSE, AdamW), one seeded shuffle per epoch.

        The settings are an :class:`AutoencoderConfig` (``config``, default
        ``AutoencoderConfig()``) with any of its fields overridden by keyword (``epochs=10``,
        ``lr=1e-4``, ``standardize=True``, ...; see its docstring). After each epoch the map is
        scored on ``val_rows`` (if given); the learning rate is multiplied by ``lr_factor``
        when validation MSE has not improved for ``plateau_patience + 1`` epochs, and training
        stops after ``early_stop`` epochs without improvement (off by default). ``backend``
        "rust" trains on the CPU in Rust (GIL released), "torch" on ``device`` (CUDA when
        available), "auto" torch on a GPU and Rust otherwise; both use the same batches,
        schedule and validation scores and produce the same saved format. ``init`` starts from
        a map's weights (default: PyTorch-default init from ``seed``). ``history`` holds
        per-epoch train/val MSE, FVU, cosine and lr; ``config["training"]`` of the result
        records the settings.

        Inside an initialised torch.distributed group of two or more ranks (or with
        ``distributed="split"``) training is data-parallel (:mod:`actbridge.distributed`): the
        torch backend under DistributedDataParallel, each rank on its slice of every global
        batch, so the result matches a single process with the same settings up to float
        reduction order; every rank returns the same map. The Rust trainer runs in one process:
        inside a group it is refused unless ``distributed="off"`` (each rank trains on its own).
        The ranks' settings, rows and validation rows are checked to agree first.
        """
        base = config if config is not None else AutoencoderConfig()
        if not isinstance(base, AutoencoderConfig):
            raise MapArgumentError(f"config must be an AutoencoderConfig, got {type(base).__name__}")
        unknown = sorted(set(settings) - set(base.to_dict()))
        if unknown:
            raise MapArgumentError(
                f"unknown autoencoder settings {unknown}; the settings are {sorted(base.to_dict())}"
            )
        cfg = base.replace(**settings)
        for site in (source, target):
            if site not in store.sites:
                raise MapError(f"unknown site {site!r}; the store's sites are {list(store.sites)}")
        width = cfg.hidden or default_hidden(store.sites[source], store.sites[target])
        if init is not None and (init.d_source, init.hidden, init.d_target) != (
            store.sites[source],
            width,
            store.sites[target],
        ):
            raise MapError(
                f"init is {init!r}; it must map {store.sites[source]} -> {width} -> {store.sites[target]}"
            )
        if distributed == "own":
            raise MapArgumentError(
                'distributed="own" is for affine statistics; an autoencoder is trained on one seeded '
                'plan over one store, shared among ranks: use distributed="split" (or None)'
            )
        group = active_group(distributed, what="AutoencoderMap.fit")
        backend = cfg.backend
        if backend == "auto":
            backend = "torch" if _cuda_available() or group is not None else "rust"
        if group is not None:
            if backend == "rust":
                raise MapArgumentError(
                    f"the Rust trainer runs in one process, and this is rank {group.rank} of "
                    f"{group.world}: pass backend='torch' (DistributedDataParallel across the ranks), "
                    "or distributed='off' to train independently on every rank"
                )
            n = len(store)
            check_same(
                group,
                "AutoencoderMap.fit",
                {
                    "config": cfg.to_dict(),
                    "sites": [source, target, store.sites[source], store.sites[target], width],
                    "store_rows": n,
                    "rows": selection_digest(row_selection(rows, n)),
                    "val_rows": None if val_rows is None else selection_digest(row_selection(val_rows, n)),
                    "init": None if init is None else [digest(t) for t in init.tensors().values()],
                },
            )
            progress = progress and group.rank == 0
        data = Sites(store, source, target, rows)
        run = Run(
            hidden=width,
            val_rows=val_rows,
            init=None if init is None else init.tensors(),
            standardize=standardization(store, source, target, rows) if cfg.standardize else None,
            progress=progress,
        )
        trained = (
            train_rust(data, cfg, run) if backend == "rust" else train_torch(data, cfg, run, device, group)
        )
        return cls.from_state_dict(
            trained.tensors, metrics=trained.metrics, history=trained.history, **trained.metadata
        )
