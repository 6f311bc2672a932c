//! The Python binding, and the only Python-aware code: converts types, releases the GIL around
//! every heavy call, and maps core errors onto one exception hierarchy (`errors.rs`). The
//! documented API is the Python package; this module is private.
//!
//! `convert` (Python objects <-> core types) · `errors` (exceptions, the one error mapping) ·
//! `store` (writer, store, batches) · `fit` (affine statistics, autoencoder trainer) · `blas`
//! (host BLAS registration, SIMD levels).

mod blas;
mod convert;
mod errors;
mod fit;
mod store;

use pyo3::prelude::*;

use crate::store::reader::default_page_budget;

use blas::*;
use convert::*;
use errors::*;
use fit::*;
use store::*;

/// Run `f` without the GIL. A panic inside it (a bug in actbridge) becomes an
/// `ActbridgeError` that names it, never pyo3's `PanicException` (a `BaseException`, which
/// `except Exception` does not catch).
pub(super) fn guarded<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|payload| panic_error(payload.as_ref()))
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ActbridgeError", py.get_type::<ActbridgeError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("StoreCorruptError", py.get_type::<StoreCorruptError>())?;
    m.add("MapError", py.get_type::<MapError>())?;
    for dual in Dual::ALL {
        m.add(dual.name(), dual.get(py)?)?;
    }
    m.add_class::<PyAffineStats>()?;
    m.add_function(pyo3::wrap_pyfunction!(register_blas, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(unregister_blas, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(gemm_backend, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(register_dense_sgemm, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(dense_gemm_backend, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(autoencoder_loss_and_grad, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(train_autoencoder, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(fold_standardization, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(evaluate_autoencoder, m)?)?;
    m.add_class::<PyPlateau>()?;
    m.add_function(pyo3::wrap_pyfunction!(simd_levels, m)?)?;
    m.add_class::<PyStoreWriter>()?;
    m.add_class::<PyStore>()?;
    m.add_class::<BatchIter>()?;
    m.add("DEFAULT_PAGE_BUDGET", default_page_budget())?;
    // The core's bounds, for the Python layer's argument checks (one definition).
    m.add("MAX_BATCH_ROWS", crate::store::sampler::MAX_BATCH_ROWS)?;
    m.add(
        "MAX_WINDOW_BLOCKS",
        crate::store::sampler::MAX_WINDOW_BLOCKS,
    )?;
    m.add("MAX_WORLD", crate::store::sampler::MAX_WORLD)?;
    m.add("MAX_PREFETCH", crate::store::prefetch::MAX_PREFETCH)?;
    m.add("MAX_SHARD_ROWS", crate::store::writer::MAX_SHARD_ROWS)?;
    m.add("MAX_SHARD_BYTES", crate::store::writer::MAX_SHARD_BYTES)?;
    m.add("MAX_QUEUE", crate::store::writer::MAX_QUEUE)?;
    Ok(())
}
