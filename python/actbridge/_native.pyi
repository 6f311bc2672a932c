"""Type stub of the private native module (checked against the build by mypy stubtest)."""

from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from typing import Any, Literal, Protocol, final

import numpy as np
import numpy.typing as npt

_Rows = tuple[int, int] | npt.NDArray[np.int64] | None
_Path = str | PathLike[str]
_Tensors = list[npt.NDArray[np.float32]]
_AeTuple = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]
]
_Standardize = tuple[list[float], list[float], list[float], list[float]]
_OutDtype = Literal["float32", "float64", "float16", "bfloat16"]
_InDtype = Literal["float32", "float64", "float16", "bfloat16"]

class _TrainConfig(Protocol):
    """The attributes ``train_autoencoder`` reads (``actbridge.AutoencoderConfig`` has them)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def plateau_patience(self) -> int: ...
    @property
    def lr_factor(self) -> float: ...
    @property
    def early_stop(self) -> int | None: ...
    @property
    def grad_clip(self) -> float | None: ...

__all__ = [
    "ActbridgeError",
    "StoreError",
    "StoreCorruptError",
    "MapError",
    "StoreArgumentError",
    "StoreNotFoundError",
    "StoreExistsError",
    "MapArgumentError",
    "AffineStats",
    "StoreWriter",
    "ActivationStore",
    "BatchIter",
    "DEFAULT_PAGE_BUDGET",
    "register_blas",
    "simd_levels",
    "unregister_blas",
    "gemm_backend",
    "register_dense_sgemm",
    "dense_gemm_backend",
    "autoencoder_loss_and_grad",
    "train_autoencoder",
    "fold_standardization",
    "evaluate_autoencoder",
    "PlateauSchedule",
    "MAX_BATCH_ROWS",
    "MAX_WINDOW_BLOCKS",
    "MAX_WORLD",
    "MAX_PREFETCH",
    "MAX_SHARD_ROWS",
    "MAX_SHARD_BYTES",
    "MAX_QUEUE",
]

DEFAULT_PAGE_BUDGET: int
MAX_BATCH_ROWS: int
MAX_WINDOW_BLOCKS: int
MAX_WORLD: int
MAX_PREFETCH: int
MAX_SHARD_ROWS: int
MAX_SHARD_BYTES: int
MAX_QUEUE: int

def simd_levels() -> tuple[str, str, str | None]: ...  # (detected, active, ACTBRIDGE_SIMD)
def register_blas(ssyrk: int, sgemm: int, sgemv: int, ilp64: bool) -> None: ...  # routine addresses
def unregister_blas() -> None: ...
def gemm_backend() -> str: ...
def register_dense_sgemm(sgemm: int | None = None) -> None: ...  # a routine address
def dense_gemm_backend() -> str: ...
def autoencoder_loss_and_grad(
    dims: tuple[int, int, int],
    params: list[npt.NDArray[np.float32]],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
) -> tuple[
    float, npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]
]: ...
def train_autoencoder(
    *,
    store: ActivationStore,
    source: str,
    target: str,
    rows: npt.NDArray[np.int64],
    val_rows: npt.NDArray[np.int64] | None,
    hidden: int,
    config: _TrainConfig,
    init: _Tensors | None,
    progress: Callable[[int, int], object] | None,
    standardize: _Standardize | None = None,
) -> tuple[_AeTuple, list[dict[str, float]]]: ...
def fold_standardization(
    *, dims: tuple[int, int, int], tensors: _Tensors, standardize: _Standardize, inverse: bool = False
) -> _AeTuple: ...
def evaluate_autoencoder(
    *,
    store: ActivationStore,
    source: str,
    target: str,
    rows: npt.NDArray[np.int64],
    dims: tuple[int, int, int],
    tensors: _Tensors,
) -> dict[str, float]: ...

@final
class PlateauSchedule:
    def __new__(
        cls, *, lr: float, lr_factor: float, plateau_patience: int, early_stop: int | None
    ) -> PlateauSchedule: ...
    def step(self, score: float) -> bool: ...
    @property
    def lr(self) -> float: ...

class ActbridgeError(Exception): ...
class StoreError(ActbridgeError): ...
class StoreCorruptError(StoreError): ...
class MapError(ActbridgeError): ...
class StoreArgumentError(StoreError, ValueError): ...
class StoreNotFoundError(StoreError, FileNotFoundError): ...
class StoreExistsError(StoreError, FileExistsError): ...
class MapArgumentError(MapError, ValueError): ...

@final
class AffineStats:
    def __new__(cls, d_source: int, d_target: int) -> AffineStats: ...
    def update(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> None: ...
    def update_from_store(
        self,
        store: ActivationStore,
        source: str,
        target: str,
        rows: _Rows = None,
        progress: Callable[[int], object] | None = None,
    ) -> None: ...
    def merge(self, other: AffineStats) -> None: ...
    def solve(
        self, *, ridge: float = 0.0, bias: bool = True, method: Literal["lstsq", "procrustes"] = "lstsq"
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, Any]]: ...
    @property
    def n(self) -> int: ...
    @property
    def d_source(self) -> int: ...
    @property
    def d_target(self) -> int: ...
    @property
    def mean_source(self) -> npt.NDArray[np.float64]: ...
    @property
    def mean_target(self) -> npt.NDArray[np.float64]: ...
    def to_arrays(self) -> dict[str, Any]: ...
    def recentred(self, pilot_x: list[float], pilot_y: list[float]) -> AffineStats: ...
    @staticmethod
    def from_arrays(
        d_source: int,
        d_target: int,
        n: int,
        pilot_x: list[float],
        pilot_y: list[float],
        sx: list[float],
        sy: list[float],
        syy: list[float],
        sxx: npt.NDArray[np.float64],
        sxy: npt.NDArray[np.float64],
    ) -> AffineStats: ...

@final
class StoreWriter:
    def __new__(
        cls,
        *,
        path: _Path,
        sites: Sequence[tuple[str, int, str]],
        columns: list[str] | None,
        metadata_json: str,
        mode: Literal["x", "a"],
        shard_rows: int | None,
        shard_bytes: int,
        queue: int,
    ) -> StoreWriter: ...
    def append(
        self,
        *,
        sites: Sequence[tuple[str, npt.NDArray[Any], _InDtype]],
        columns: list[tuple[str, npt.NDArray[np.int64]]],
        check_finite: bool = False,
    ) -> None: ...
    def flush(self) -> int: ...
    def close(self) -> int: ...
    def update_metadata(self, metadata_json: str) -> None: ...
    @property
    def rows(self) -> int: ...
    @property
    def committed_rows(self) -> int: ...
    @property
    def columns(self) -> list[str] | None: ...
    @property
    def metadata_json(self) -> str: ...

@final
class ActivationStore:
    def __new__(cls, paths: Sequence[_Path], page_budget: int | None = None) -> ActivationStore: ...
    def refreshed(self) -> ActivationStore: ...
    def __len__(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def sites(self) -> list[tuple[str, int, str]]: ...
    @property
    def columns(self) -> list[str]: ...
    @property
    def metadata_json(self) -> str: ...
    @property
    def parts(self) -> list[str]: ...
    @property
    def shards(self) -> list[tuple[str, int, int, str]]: ...
    def read(self, name: str, rows: _Rows = None, *, dtype: _OutDtype = "float32") -> npt.NDArray[Any]: ...
    def stats(self, name: str, rows: _Rows = None) -> dict[str, Any]: ...
    def verify(self) -> None: ...
    def release_pages(self) -> None: ...
    def batches(
        self,
        *,
        names: list[str],
        batch_size: int,
        shuffle: Literal["none", "global", "block"],
        seed: int,
        epoch: int,
        rows: _Rows,
        drop_last: bool,
        dtype: _OutDtype,
        block_rows: int,
        window_blocks: int,
        prefetch: int,
        rank: int = 0,
        world: int = 1,
    ) -> BatchIter: ...

@final
class BatchIter(Iterator[dict[str, npt.NDArray[Any]]]):
    def __iter__(self) -> BatchIter: ...
    def __next__(self) -> dict[str, npt.NDArray[Any]]: ...
    def __len__(self) -> int: ...
    def global_batch_rows(self, i: int) -> int: ...
