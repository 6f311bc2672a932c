"""Turning user arrays (numpy, or torch on any device) into host arrays the native layer takes.

No row is touched in Python: each conversion is one vectorised call (or none, for arrays that
are already contiguous host arrays of a supported dtype).
"""

from __future__ import annotations

from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from actbridge._typing import OutDType, Tensor
from actbridge.errors import StoreArgumentError


def checked_int(
    name: str, value: Any, lo: int, hi: int, *, error: type[Exception] = StoreArgumentError
) -> int:
    """``value`` as a Python int in ``[lo, hi]``; anything else (a bool, a float, a string, a
    number out of range) raises ``error`` naming the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise error(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


#: Float dtypes the native layer reads directly, by numpy dtype name.
_HOST_FLOATS: dict[str, OutDType] = {"float32": "float32", "float64": "float64", "float16": "float16"}


def is_torch_tensor(x: object) -> TypeGuard[Tensor]:
    """True for a ``torch.Tensor`` (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "device")


def float_rows(name: str, x: Any) -> tuple[npt.NDArray[Any], OutDType]:
    """A C-contiguous host array for a site and the dtype name the native layer reads it as.

    ``x``: a 2-D ``(rows, dim)`` numpy array or torch tensor of float16/bfloat16/float32/float64.
    bfloat16 is passed as its raw uint16 bits with the name ``"bfloat16"`` (numpy has no bf16).
    """
    if is_torch_tensor(x):
        import torch

        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        _check_2d(name, tuple(t.shape))
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16), "bfloat16"
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            raise StoreArgumentError(
                f"site {name!r} is a {t.dtype} tensor; pass floating activations "
                "(float16, bfloat16, float32 or float64)"
            )
        host: dict[Any, OutDType] = {
            torch.float16: "float16",
            torch.float32: "float32",
            torch.float64: "float64",
        }
        return np.ascontiguousarray(t.numpy()), host[t.dtype]
    arr = np.asarray(x)
    _check_2d(name, arr.shape)
    if arr.dtype.name == "bfloat16":  # ml_dtypes' bfloat16
        return np.ascontiguousarray(arr).view(np.uint16), "bfloat16"
    kind = _HOST_FLOATS.get(arr.dtype.name)
    if kind is None:
        raise StoreArgumentError(
            f"site {name!r} has dtype {arr.dtype}; pass floating activations "
            "(float16, bfloat16, float32 or float64)"
        )
    return np.ascontiguousarray(arr), kind


def _check_2d(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise StoreArgumentError(
            f"site {name!r} must be 2-D (rows, dim), got shape {shape}; "
            "flatten batch and sequence first, e.g. x.reshape(-1, x.shape[-1])"
        )


def int_column(name: str, x: Any, rows: int) -> npt.NDArray[np.int64]:
    """A contiguous int64 ``(rows,)`` array for a column; a Python/numpy integer is broadcast."""
    if is_torch_tensor(x):
        x = x.detach().to("cpu").numpy()
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return np.full(rows, int(x), dtype=np.int64)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise StoreArgumentError(
            f"column {name!r} has dtype {arr.dtype}; columns hold integers (token ids, indices)"
        )
    if arr.ndim != 1:
        raise StoreArgumentError(f"column {name!r} must be 1-D (rows,), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise StoreArgumentError(f"column {name!r} has values beyond the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def row_selection(rows: Any, n: int) -> tuple[int, int] | npt.NDArray[np.int64] | None:
    """Normalise ``rows`` for the native layer: ``None`` (all), ``(start, stop)`` or int64 array.

    Accepts None, a slice, an integer array/list/tensor (negative counts from the end), or a
    boolean mask of length ``n``.
    """
    if rows is None:
        return None
    if isinstance(rows, slice):
        if rows.step == 0:
            raise StoreArgumentError("a rows slice's step cannot be zero")
        try:
            start, stop, step = rows.indices(n)
        except TypeError as e:
            raise StoreArgumentError(f"rows slice bounds must be integers or None: {e}") from None
        if step == 1:
            return (start, max(start, stop))
        return np.arange(start, stop, step, dtype=np.int64)
    if is_torch_tensor(rows):
        rows = rows.detach().to("cpu").numpy()
    arr = np.asarray(rows)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise StoreArgumentError(f"a boolean row mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise StoreArgumentError(
            f"rows must be None, a slice, an int, a 1-D integer array or a boolean mask; "
            f"got {arr.dtype} array of shape {arr.shape}"
        )
    # range-check in the array's own dtype: a uint64 beyond int64 must not wrap to a negative
    lo, hi = int(arr.min()), int(arr.max())
    if lo < -n or hi >= n:
        raise out_of_range(lo if lo < -n else hi, n)
    return np.ascontiguousarray(arr, dtype=np.int64)


def out_of_range(index: int, n: int) -> StoreArgumentError:
    """The error for row ``index`` of a store of ``n`` rows (one wording everywhere)."""
    return StoreArgumentError(
        f"row index {index} is out of range for a store of {n} rows (valid: -{n} to {n - 1})"
    )


def row_indices(rows: Any, n: int) -> npt.NDArray[np.int64]:
    """``rows`` (any selection :func:`row_selection` takes) as explicit row numbers in ``[0, n)``
    form: negative indices counted from the end. Range checks stay with the store."""
    sel = row_selection(rows, n)
    if sel is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(sel, tuple):
        return np.arange(sel[0], sel[1], dtype=np.int64)
    return np.where(sel < 0, sel + n, sel)


def selection_size(sel: tuple[int, int] | npt.NDArray[np.int64] | None, n: int) -> int:
    """How many rows a :func:`row_selection` result selects (without materialising them)."""
    if sel is None:
        return n
    if isinstance(sel, tuple):
        return sel[1] - sel[0]
    return len(sel)
