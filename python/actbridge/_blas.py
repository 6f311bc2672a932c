"""Find a BLAS already loaded in this process for the Rust core's products.

The affine fit's products (``ssyrk``, ``sgemm``, ``sgemv``) run fastest on an optimised BLAS.
We link none ourselves: numpy's wheels bundle OpenBLAS (64-bit integers, symbols
``scipy_sgemm_64_``), and scipy exposes its own through ``scipy.linalg.cython_blas``. Using
numpy's copy means our products share a thread pool with the user's numpy work (two OpenBLAS
pools whose idle threads spin slow each other down) and run on the newer build.

The autoencoder trainer's mid-sized products run on torch's ``sgemm`` (Intel MKL in the x86
wheels: 10-20% faster than OpenBLAS or faer at these shapes) when torch is already imported.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
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


def faer_forced() -> bool:
    """Whether ``ACTBRIDGE_GEMM=faer`` asks for faer's products everywhere."""
    return os.environ.get("ACTBRIDGE_GEMM", "").lower() == "faer"


def find_blas() -> Blas | None:
    """numpy's bundled OpenBLAS, else scipy's BLAS, else None."""
    return numpy_openblas() or scipy_blas()


def sgemm_works(address: int) -> bool:
    """Whether the Fortran ``sgemm`` at ``address`` computes a small transposed product right.

    Its integers are passed as zero-padded 64-bit values, which a 32-bit-integer routine on a
    little-endian machine reads the same, so a routine of either width gets sane arguments.
    """
    if sys.byteorder != "little":
        return False
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(address)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)  # column-major (3, 2): op = "T" gives (2, 3)
    b = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0  # column-major (3, 4)
    c = np.full((4, 2), np.nan, dtype=np.float32)  # column-major (2, 4)
    ints = {k: ctypes.c_int64(v) for k, v in {"m": 2, "n": 4, "k": 3, "lda": 3, "ldb": 3, "ldc": 2}.items()}
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    ref = (a @ b.T).T  # c (col-major 2 x 4) = aᵀ(2x3 of col-major a) · b(3x4), stored as (4, 2)
    ptr = ctypes.addressof
    fn(
        ctypes.c_char_p(b"T"),
        ctypes.c_char_p(b"N"),
        *(ptr(ints[k]) for k in ("m", "n", "k")),
        ptr(one),
        a.ctypes.data,
        ptr(ints["lda"]),
        b.ctypes.data,
        ptr(ints["ldb"]),
        ptr(zero),
        c.ctypes.data,
        ptr(ints["ldc"]),
    )
    return bool(np.allclose(c, ref))


_torch_sgemm: int | None = None


def torch_sgemm() -> int | None:
    """The address of torch's ``sgemm_`` when torch is imported and it passes
    :func:`sgemm_works`; None otherwise (torch is never imported here). Found once."""
    global _torch_sgemm
    torch = sys.modules.get("torch")
    if _torch_sgemm is not None or torch is None or torch.__file__ is None:
        return _torch_sgemm
    for path in sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*"))):
        try:
            address = ctypes.cast(ctypes.CDLL(path).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        if address and sgemm_works(address):
            _torch_sgemm = address
            break
    return _torch_sgemm


def dense_sgemm() -> int | None:
    """The ``sgemm`` for the autoencoder trainer: torch's (see :func:`torch_sgemm`), or None for
    faer, always None when ``ACTBRIDGE_GEMM=faer`` is set."""
    return None if faer_forced() else torch_sgemm()
