"""Maps between two models' activation spaces: fit, apply, save, load.

An :class:`AffineMap` is ``y = W x + b`` with ``W`` of shape ``(d_target, d_source)`` (the
PyTorch ``Linear`` layout). It is fitted in closed form from :class:`AffineStats`, additive
sufficient statistics gathered in one streaming pass over a store (or over in-memory arrays),
in Rust: least squares with an optional ridge, or orthogonal Procrustes.

On disk a map is a directory: ``config.json`` (kind, widths, method, provenance, metrics) and
``model.safetensors`` (its tensors). :func:`load_map` reads it back.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from actbridge import _native
from actbridge._arrays import is_torch_tensor, row_selection, selection_size
from actbridge._blas import faer_forced, find_blas
from actbridge._progress import ProgressBar
from actbridge._typing import FitMethod, Rows, Tensor
from actbridge.distributed import (
    DistributedMode,
    Group,
    active_group,
    all_reduce_sum,
    check_same,
    selection_digest,
    share_of_selection,
)
from actbridge.errors import MapArgumentError, MapCorruptError, MapError, MapWarning
from actbridge.maps.format import save_map
from actbridge.store import ActivationStore, PathLike, native_store

if TYPE_CHECKING:
    import torch

__all__ = [
    "AffineMap",
    "AffineStats",
    "MapCorruptError",
    "MapError",
    "MapWarning",
    "blas_source",
    "use_fast_blas",
]


def use_fast_blas(enable: bool = True) -> str:
    """Run the affine fit's chunk products on an optimised BLAS already loaded in the process
    (numpy's bundled OpenBLAS, else scipy's; about twice faer's speed on AVX-512 CPUs), or on
    faer; returns the backend now in use ("blas" or "faer"). :func:`blas_source` says which.

    Called with the default on the first fit (not at import: ``import actbridge`` loads no BLAS
    symbols); ``ACTBRIDGE_GEMM=faer`` in the environment opts out.
    """
    global _blas_source, _blas_chosen
    _blas_chosen = True
    found = find_blas() if enable else None
    if found is None:
        _native.unregister_blas()
        _blas_source = None
    else:
        _native.register_blas(found.ssyrk, found.sgemm, found.sgemv, found.ilp64)
        _blas_source = found.source
    return _native.gemm_backend()


def blas_source() -> str | None:
    """Which BLAS the affine fit's products run on (None: faer)."""
    _choose_blas()
    return _blas_source


def _choose_blas() -> None:
    """Choose the products' backend once, the first time statistics are made (the default of
    :func:`use_fast_blas`, unless it was called already)."""
    if not _blas_chosen:
        use_fast_blas(not faer_forced())


_blas_source: str | None = None
_blas_chosen = False


def _float32_rows(name: str, x: Any) -> npt.NDArray[np.float32]:
    if is_torch_tensor(x):
        x = x.detach().to("cpu").float().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise MapError(f"{name} must be 2-D (rows, dim), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise MapError(f"{name} has dtype {arr.dtype}; pass numbers")
    return np.ascontiguousarray(arr, dtype=np.float32)


class AffineStats:
    """Additive sufficient statistics for an affine map ``d_source -> d_target``.

    Accumulated in float64 around a pilot mean: ``n``, ``Σx``, ``Σy``, ``Σy²``, ``XᵀX`` (one
    triangle) and ``XᵀY``. Statistics from different parts of the data (other processes or
    machines) combine exactly with :meth:`merge`; :meth:`save`/:meth:`load` move them around.
    """

    def __init__(self, d_source: int, d_target: int) -> None:
        _choose_blas()
        self._stats = _native.AffineStats(int(d_source), int(d_target))

    @classmethod
    def _wrap(cls, native: _native.AffineStats) -> AffineStats:
        _choose_blas()
        obj = cls.__new__(cls)
        obj._stats = native
        return obj

    @property
    def n(self) -> int:
        """Rows accumulated."""
        return self._stats.n

    @property
    def d_source(self) -> int:
        return self._stats.d_source

    @property
    def d_target(self) -> int:
        return self._stats.d_target

    @property
    def mean_source(self) -> npt.NDArray[np.float64]:
        return self._stats.mean_source

    @property
    def mean_target(self) -> npt.NDArray[np.float64]:
        return self._stats.mean_target

    def update(self, x: Any, y: Any) -> AffineStats:
        """Add paired rows ``x`` ``(n, d_source)`` and ``y`` ``(n, d_target)`` (numpy or torch)."""
        self._stats.update(_float32_rows("x", x), _float32_rows("y", y))
        return self

    def update_from_store(
        self,
        store: ActivationStore,
        source: str = "source",
        target: str = "target",
        rows: Rows = None,
        progress: bool = True,
    ) -> AffineStats:
        """Add ``rows`` (default: all) of two sites of ``store``, streamed in chunks."""
        sel = row_selection(rows, len(store))
        bar = ProgressBar(selection_size(sel, len(store)), f"affine stats {source}->{target}", progress)
        try:
            self._stats.update_from_store(
                native_store(store), source, target, sel, bar.advance_to if progress else None
            )
        finally:
            bar.close()
        return self

    def merge(self, other: AffineStats) -> AffineStats:
        """Add ``other``'s rows into these statistics (exact; pilots are reconciled)."""
        self._stats.merge(other._stats)
        return self

    def all_reduce(self, group: Group | None = None) -> AffineStats:
        """Every rank's statistics summed (exact, float64), the same on every rank of ``group``
        (default: the initialised default process group).

        Each rank's statistics are re-centred on the global mean (one small all-reduce of the
        counts and sums), then all accumulators go in one float64 all-reduce of about
        ``d_s² + d_s·d_t`` values. Widths that differ between ranks raise
        :class:`DistributedMismatchError` first; a rank that fails raises :class:`DistributedError`.
        """
        group = group if group is not None else active_group("split", what="AffineStats.all_reduce")
        assert group is not None
        d_s, d_t = self.d_source, self.d_target
        check_same(group, "AffineStats.all_reduce", {"d_source": d_s, "d_target": d_t})
        n = self.n
        local = np.concatenate([[float(n)], self.mean_source * n, self.mean_target * n])
        total = all_reduce_sum(group, "AffineStats.all_reduce (means)", local)
        n_all = int(round(total[0]))
        centre = total[1:] / max(total[0], 1.0)
        cx, cy = centre[:d_s].tolist(), centre[d_s:].tolist()
        parts = self._stats.recentred(cx, cy).to_arrays()
        keys = ("sx", "sy", "syy", "sxx", "sxy")
        flat = np.concatenate([np.asarray(parts[k], dtype=np.float64).ravel() for k in keys])
        summed = all_reduce_sum(group, "AffineStats.all_reduce (statistics)", flat)
        sizes = [d_s, d_t, d_t, d_s * d_s, d_s * d_t]
        out = dict(zip(keys, np.split(summed, np.cumsum(sizes)[:-1]), strict=True))
        native = _native.AffineStats.from_arrays(
            d_s,
            d_t,
            n_all,
            cx,
            cy,
            out["sx"].tolist(),
            out["sy"].tolist(),
            out["syy"].tolist(),
            np.ascontiguousarray(out["sxx"]),
            np.ascontiguousarray(out["sxy"]),
        )
        return self._wrap(native)

    def solve(self, ridge: float = 0.0, bias: bool = True, method: FitMethod = "lstsq") -> AffineMap:
        """The affine map these statistics determine.

        ``ridge`` (λ ≥ 0) is added to the diagonal of ``XᵀX`` (centred when ``bias``), like
        sklearn's ``Ridge(alpha=λ)``. ``method``: "lstsq" or "procrustes" (orthogonal, or
        semi-orthogonal when widths differ, from the SVD of the cross-covariance).
        A numerically singular system is solved with a tiny automatic ridge (reported in
        ``metrics["ridge"]`` and by a :class:`MapWarning`).
        """
        weight, b, metrics = self._stats.solve(ridge=float(ridge), bias=bool(bias), method=method)
        if method == "lstsq" and metrics["ridge"] > ridge:
            warnings.warn(
                f"XᵀX was singular; solved with ridge {metrics['ridge']:.3g} instead of {ridge:g}. "
                "Some source dimensions are constant or linearly dependent.",
                MapWarning,
                stacklevel=2,
            )
        config = {"method": method, "ridge": metrics["ridge"], "bias": bool(bias)}
        return AffineMap(weight, b, config=config, metrics=dict(metrics))

    def save(self, path: PathLike) -> None:
        """Write the statistics to a safetensors file (float64)."""
        from safetensors.numpy import save_file

        arrays = self._stats.to_arrays()
        n = int(arrays.pop("n"))
        meta = {
            "format": "actbridge.affine_stats",
            "d_source": str(self.d_source),
            "d_target": str(self.d_target),
            "n": str(n),
        }
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path: PathLike) -> AffineStats:
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
            d_s, d_t, n = int(meta["d_source"]), int(meta["d_target"]), int(meta["n"])
        except Exception as e:  # missing file, damaged safetensors, missing metadata keys
            raise MapError(f"cannot read affine statistics from {path}: {e}") from e

        def vec(k: str) -> list[float]:
            return [float(v) for v in np.asarray(arrays[k], dtype=np.float64).ravel()]

        def mat(k: str) -> npt.NDArray[np.float64]:
            return np.ascontiguousarray(np.asarray(arrays[k], dtype=np.float64).ravel())

        try:
            native = _native.AffineStats.from_arrays(
                d_s,
                d_t,
                n,
                vec("pilot_x"),
                vec("pilot_y"),
                vec("sx"),
                vec("sy"),
                vec("syy"),
                mat("sxx"),
                mat("sxy"),
            )
        except KeyError as e:
            raise MapError(f"{path} lacks the statistics array {e}") from e
        return cls._wrap(native)

    def __repr__(self) -> str:
        return f"AffineStats({self.d_source} -> {self.d_target}, n={self.n})"


class AffineMap:
    """``y = x Wᵀ + b``: ``weight`` ``(d_target, d_source)`` and ``bias`` ``(d_target,)``, float32."""

    kind = "affine"

    def __init__(
        self,
        weight: Any,
        bias: Any = None,
        *,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        w = np.ascontiguousarray(np.asarray(weight, dtype=np.float32))
        if w.ndim != 2:
            raise MapError(f"weight must be 2-D (d_target, d_source), got shape {w.shape}")
        b = np.zeros(w.shape[0], np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        if b.shape != (w.shape[0],):
            raise MapError(f"bias has shape {b.shape}, expected ({w.shape[0]},) for weight {w.shape}")
        self.weight: npt.NDArray[np.float32] = w
        self.bias: npt.NDArray[np.float32] = b
        self.config: dict[str, Any] = dict(config or {})
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.provenance: dict[str, Any] = dict(provenance or {})

    @property
    def d_source(self) -> int:
        return int(self.weight.shape[1])

    @property
    def d_target(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def fit(
        cls,
        data: ActivationStore | Any,
        y: Any = None,
        *,
        source: str = "source",
        target: str = "target",
        rows: Rows = None,
        ridge: float = 0.0,
        bias: bool = True,
        method: FitMethod = "lstsq",
        progress: bool = True,
        distributed: DistributedMode | None = None,
    ) -> AffineMap:
        """Fit on a store (``source``/``target`` sites, ``rows``) in one streaming pass, or on two
        in-memory arrays ``data`` ``(n, d_source)`` and ``y`` ``(n, d_target)``.

        ``metrics`` of the result are training-set MSE/FVU/R² from the statistics (no second pass).

        Inside an initialised torch.distributed group of two or more ranks the fit is collective
        (:mod:`actbridge.distributed`): with a store, each rank reads a contiguous share of
        ``rows`` (``distributed="split"``, the default) or all of the rows it was given
        (``"own"``: e.g. each rank's own store part); with arrays, each rank's own arrays. The
        statistics are all-reduced and every rank returns the same map, equal to a
        single-process fit of all the rows up to float64 summation order. ``"off"``: no
        reduction. The ranks' settings (widths, sites, ridge, bias, method and, for "split",
        the store's length and ``rows``) are checked to agree first.
        """
        group = active_group(distributed, what="AffineMap.fit")
        mode = distributed or ("split" if isinstance(data, ActivationStore) else "own")
        if group is not None and mode == "split" and not isinstance(data, ActivationStore):
            raise MapArgumentError(
                'distributed="split" shares the rows of one store among ranks; with arrays each rank '
                'fits its own rows: pass distributed="own"'
            )
        if group is not None:
            progress = progress and group.rank == 0
        if isinstance(data, ActivationStore):
            if y is not None:
                raise MapError("pass either a store (with source=/target=) or two arrays, not both")
            for site in (source, target):
                if site not in data.sites:
                    raise MapError(f"unknown site {site!r}; the store's sites are {list(data.sites)}")
            stats = AffineStats(data.sites[source], data.sites[target])
            mine: Rows = rows
            if group is not None:
                settings: dict[str, Any] = {
                    "sites": [source, target, data.sites[source], data.sites[target]],
                    "ridge": float(ridge),
                    "bias": bool(bias),
                    "method": method,
                    "mode": mode,
                }
                if mode == "split":
                    sel = row_selection(rows, len(data))
                    settings |= {"store_rows": len(data), "rows": selection_digest(sel)}
                    mine = share_of_selection(group, sel, len(data))
                check_same(group, "AffineMap.fit", settings)
            stats.update_from_store(data, source, target, mine, progress)
            if group is not None:
                stats = stats.all_reduce(group)
            provenance: dict[str, Any] = {
                "store": data.path,
                "source_site": source,
                "target_site": target,
                "rows": stats.n,
                "store_metadata": data.metadata,
            }
        else:
            if y is None:
                raise MapError("AffineMap.fit(x, y): y is missing")
            x32, y32 = _float32_rows("x", data), _float32_rows("y", y)
            if x32.shape[0] != y32.shape[0]:
                raise MapError(f"x has {x32.shape[0]} rows but y has {y32.shape[0]}; pass paired rows")
            stats = AffineStats(x32.shape[1], y32.shape[1]).update(x32, y32)
            if group is not None:
                check_same(
                    group,
                    "AffineMap.fit",
                    {"ridge": float(ridge), "bias": bool(bias), "method": method, "mode": mode},
                )
                stats = stats.all_reduce(group)
            provenance = {"rows": stats.n}
        if group is not None:
            provenance["distributed"] = {"mode": mode, "world": group.world, "backend": group.backend}
        fitted = stats.solve(ridge=ridge, bias=bias, method=method)
        fitted.provenance = provenance
        return fitted

    @overload
    def transform(self, x: Tensor) -> Tensor: ...  # first: a Tensor is array-like too
    @overload
    def transform(self, x: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]: ...
    def transform(self, x: Tensor | npt.ArrayLike) -> Tensor | npt.NDArray[np.floating[Any]]:
        """Map rows ``(..., d_source) -> (..., d_target)``: numpy in, numpy out (float32, or
        float64 for float64 input); torch in, torch out on the same device and dtype."""
        if is_torch_tensor(x):
            import torch

            w = torch.from_numpy(self.weight).to(device=x.device, dtype=x.dtype)
            b = torch.from_numpy(self.bias).to(device=x.device, dtype=x.dtype)
            return torch.nn.functional.linear(x, w, b)
        arr = np.asarray(x)
        if arr.shape[-1] != self.d_source:
            raise MapError(f"input has width {arr.shape[-1]}, this map takes {self.d_source}")
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
        out: npt.NDArray[np.floating[Any]] = arr.astype(dtype, copy=False) @ self.weight.T.astype(
            dtype, copy=False
        )
        out += self.bias.astype(dtype, copy=False)
        return out

    __call__ = transform

    def to_torch(self) -> torch.nn.Module:
        """A ``torch.nn.Linear`` with this map's weight and bias (identical outputs)."""
        import torch

        lin = torch.nn.Linear(self.d_source, self.d_target, bias=True)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(self.weight))
            lin.bias.copy_(torch.from_numpy(self.bias))
        return lin

    def tensors(self) -> dict[str, npt.NDArray[np.float32]]:
        return {"weight": self.weight, "bias": self.bias}

    def save(self, path: PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path``."""
        save_map(self, path)

    def __repr__(self) -> str:
        fvu = self.metrics.get("fvu")
        extra = f", train FVU {fvu:.4f}" if isinstance(fvu, float) else ""
        return f"AffineMap({self.d_source} -> {self.d_target}, {self.config.get('method', 'given')}{extra})"
