//! The activation store: a directory of immutable safetensors shards plus `manifest.json`.
//!
//! - [`writer::StoreWriter`] appends rows; a background thread seals shards and commits them
//!   (temp file, fsync, rename; then the manifest the same way and an fsync of the directory).
//! - [`reader::ActivationStore`] maps committed shards read-only and gathers rows in parallel.
//! - [`sampler`] builds seeded epoch orders and plans ([`sampler::EpochPlan`]); [`prefetch`]
//!   gathers a plan's batches ahead on a thread; [`stats`] streams per-dimension statistics.

pub mod files;
pub mod manifest;
pub mod prefetch;
pub mod reader;
pub mod sampler;
pub mod shard;
pub mod stats;
pub mod writer;

pub use manifest::{ColumnSpec, Manifest, ShardEntry, SiteSpec};
pub use reader::{ActivationStore, Rows};
pub use sampler::{EpochPlan, Shuffle};
pub use writer::{Mode, StoreWriter, WriterOptions};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
