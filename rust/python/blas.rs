//! Registering a host BLAS for the fits' products, and the SIMD level report.

use pyo3::prelude::*;

/// Use the Fortran BLAS routines at these addresses (`ssyrk`, `sgemm`, `sgemv`; 64-bit integers
/// when `ilp64`) for the affine fit's chunk products and column sums. Private: the Python
/// package passes routines it found in a BLAS library already loaded by numpy or scipy.
#[pyfunction]
pub(super) fn register_blas(ssyrk: usize, sgemm: usize, sgemv: usize, ilp64: bool) -> PyResult<()> {
    if ssyrk == 0 || sgemm == 0 || sgemv == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "a BLAS routine's address is null",
        ));
    }
    // SAFETY: the package passes routines of a loaded BLAS library (never unloaded: extension
    // modules stay loaded), thread-safe, with the integer width of their symbol names.
    unsafe {
        crate::fit::gemm::register_blas(
            ssyrk as *const std::ffi::c_void,
            sgemm as *const std::ffi::c_void,
            sgemv as *const std::ffi::c_void,
            ilp64,
        )
    };
    Ok(())
}

/// Run the autoencoder trainer's products on the Fortran `sgemm` at this address (32- or 64-bit
/// integers), or on faer (None). Private, like `register_blas`.
#[pyfunction]
#[pyo3(signature = (sgemm=None))]
pub(super) fn register_dense_sgemm(sgemm: Option<usize>) -> PyResult<()> {
    if sgemm == Some(0) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "the sgemm address is null",
        ));
    }
    // SAFETY: the package passes the sgemm of a loaded, never-unloaded BLAS, after checking a
    // small product against numpy (see actbridge._blas).
    unsafe { crate::fit::gemm::register_dense_sgemm(sgemm.map(|a| a as *const std::ffi::c_void)) };
    Ok(())
}

/// "blas" or "faer": what the autoencoder trainer's products run on.
#[pyfunction]
pub(super) fn dense_gemm_backend() -> &'static str {
    crate::fit::gemm::dense_backend()
}

/// Go back to faer's GEMM for the affine fit.
#[pyfunction]
pub(super) fn unregister_blas() {
    crate::fit::gemm::unregister_blas()
}

/// "blas" or "faer": what the affine fit's chunk products run on.
#[pyfunction]
pub(super) fn gemm_backend() -> &'static str {
    crate::fit::gemm::backend()
}

/// `(detected, active, requested)`: the highest vector level this CPU has, the one the kernels
/// run at, and the raw `ACTBRIDGE_SIMD` value (None when unset).
#[pyfunction]
pub(super) fn simd_levels() -> (&'static str, &'static str, Option<String>) {
    let requested = crate::simd::requested().map(|r| match r {
        Ok(level) => level.name().to_string(),
        Err(raw) => raw,
    });
    (
        crate::simd::detected().name(),
        crate::simd::active().name(),
        requested,
    )
}
