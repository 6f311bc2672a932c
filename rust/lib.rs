//! actbridge's Rust core: the memory-mapped activation store (`store`), the affine and autoencoder
//! map fitting (`fit`), and the SIMD conversion kernels they share (`dtype`, `simd`, `stream`).
//! Nothing here knows about Python; `python/` (feature "python") is the only binding code.

pub mod dtype;
pub mod error;
pub mod fit;
pub mod simd;
pub mod store;
pub mod stream;

#[cfg(feature = "python")]
mod python;

pub use error::{Result, StoreError};
