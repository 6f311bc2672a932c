"""Find a BLAS already loaded in this process for the Rust core's chunk products.

The affine fit's products (``ssyrk``, ``sgemm``, ``sgemv``) run fastest on an optimised BLAS.
We link none ourselves: numpy's wheels bundle OpenBLAS (64-bit integers, symbols
``scipy_sgemm_64_``), and scipy exposes its own through ``scipy.linalg.cython_blas``. Using
numpy's copy means our products share a thread pool with the user's numpy work (two OpenBLAS
pools whose idle threads spin slow each other down) and run on the newer build.
"""

from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass

import numpy as np

ROUTINES = ("ssyrk", "sgemm", "sgemv")

# (symbol pattern, 64-bit integers): numpy >= 2 wheels (scipy-openblas64), numpy 1.x wheels
# (openblas64_), then plain 32-bit builds. The integer width follows OpenBLAS's `64_` suffix.
SYMBOLS = (("scipy_{}_64_", True), ("{}_64_", True), ("scipy_{}_", False))


@dataclass(frozen=True)
class Blas:
    """Addresses of the three routines, their integer width, and where they came from."""

    ssyrk: int
    sgemm: int
    sgemv: int
    ilp64: bool
    source: str


def numpy_openblas() -> Blas | None:
    """The OpenBLAS bundled in numpy's wheel, if this numpy has one."""
    root = os.path.dirname(np.__file__)
    candidates = sorted(
        glob.glob(os.path.join(root + ".libs", "*openblas*"))
        + glob.glob(os.path.join(root, ".dylibs", "*openblas*"))
    )
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle
        except OSError:
            continue
        for pattern, ilp64 in SYMBOLS:
            try:
                found = [getattr(lib, pattern.format(r)) for r in ROUTINES]
            except AttributeError:
                continue
            ssyrk, sgemm, sgemv = (ctypes.cast(f, ctypes.c_void_p).value or 0 for f in found)
            return Blas(ssyrk, sgemm, sgemv, ilp64, f"numpy ({os.path.basename(path)})")
    return None


def scipy_blas() -> Blas | None:
    """scipy's BLAS, from the capsules of ``scipy.linalg.cython_blas`` (32-bit integers)."""
    try:
        from scipy.linalg import cython_blas  # type: ignore[import-untyped]
    except ImportError:
        return None
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsules = [cython_blas.__pyx_capi__[r] for r in ROUTINES]
    ssyrk, sgemm, sgemv = (get_pointer(c, get_name(c)) or 0 for c in capsules)
    return Blas(ssyrk, sgemm, sgemv, False, "scipy (cython_blas)")


def find_blas() -> Blas | None:
    """numpy's bundled OpenBLAS, else scipy's BLAS, else None."""
    return numpy_openblas() or scipy_blas()
