//! Seeded epoch orders over a row subset (each row exactly once per epoch) and the plan of an
//! epoch's batches, shared by the store's batch iterator and the autoencoder trainer.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, StoreError};

/// The most rows in one batch (and in one shuffle block).
pub const MAX_BATCH_ROWS: usize = 1 << 31;
/// The most blocks in one shuffle window.
pub const MAX_WINDOW_BLOCKS: usize = 1 << 20;
/// The most processes an epoch's batches can be shared among.
pub const MAX_WORLD: usize = 1 << 16;

/// How an epoch visits rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shuffle {
    /// In the given order.
    None,
    /// A uniform random permutation.
    Global,
    /// For stores far larger than RAM: blocks of `block_rows` consecutive rows in random order,
    /// rows shuffled within each window of `window_blocks` consecutive (shuffled) blocks. Reads
    /// stay local (a window at a time) while batches still mix many parts of the store.
    Block {
        block_rows: usize,
        window_blocks: usize,
    },
}

/// ChaCha8 seeded by `seed`, one independent stream per epoch: reproducible on every platform.
pub fn rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(epoch);
    r
}

/// The order in which an epoch visits `rows`.
pub fn epoch_order(mut rows: Vec<u64>, shuffle: Shuffle, seed: u64, epoch: u64) -> Vec<u64> {
    let mut r = rng(seed, epoch);
    match shuffle {
        Shuffle::None => rows,
        Shuffle::Global => {
            rows.shuffle(&mut r);
            rows
        }
        Shuffle::Block {
            block_rows,
            window_blocks,
        } => {
            let block_rows = block_rows.max(1);
            let window = window_blocks.max(1);
            let mut blocks: Vec<&[u64]> = rows.chunks(block_rows).collect();
            blocks.shuffle(&mut r);
            let mut out = Vec::with_capacity(rows.len());
            for group in blocks.chunks(window) {
                let start = out.len();
                for b in group {
                    out.extend_from_slice(b);
                }
                out[start..].shuffle(&mut r);
            }
            out
        }
    }
}

/// One epoch's batches: the seeded order of `rows` cut into batches of `batch_size` rows, the
/// last one shorter, or dropped with `drop_last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochPlan {
    order: Vec<u64>,
    batch_size: usize,
    batches: usize,
    rank: usize,
    world: usize,
}

impl EpochPlan {
    /// Check the sizes and build the order (see [`epoch_order`]).
    pub fn new(
        rows: Vec<u64>,
        shuffle: Shuffle,
        seed: u64,
        epoch: u64,
        batch_size: usize,
        drop_last: bool,
    ) -> Result<EpochPlan> {
        if !(1..=MAX_BATCH_ROWS).contains(&batch_size) {
            return Err(StoreError::invalid(format!(
                "batch_size must be in [1, {MAX_BATCH_ROWS}] rows, got {batch_size}"
            )));
        }
        if let Shuffle::Block {
            block_rows,
            window_blocks,
        } = shuffle
        {
            if !(1..=MAX_BATCH_ROWS).contains(&block_rows) {
                return Err(StoreError::invalid(format!(
                    "block_rows must be in [1, {MAX_BATCH_ROWS}], got {block_rows}"
                )));
            }
            if !(1..=MAX_WINDOW_BLOCKS).contains(&window_blocks) {
                return Err(StoreError::invalid(format!(
                    "window_blocks must be in [1, {MAX_WINDOW_BLOCKS}], got {window_blocks}"
                )));
            }
        }
        let order = epoch_order(rows, shuffle, seed, epoch);
        let batches = if drop_last {
            order.len() / batch_size
        } else {
            order.len().div_ceil(batch_size)
        };
        Ok(EpochPlan {
            order,
            batch_size,
            batches,
            rank: 0,
            world: 1,
        })
    }

    /// This plan seen by process `rank` of `world` (data-parallel training): every global batch
    /// is split into `world` contiguous slices whose sizes differ by at most one row, and
    /// [`batch`](Self::batch) returns slice `rank`. The global batches, their order and the
    /// number of batches are unchanged, so the ranks' slices of batch `i` together are exactly
    /// the single-process batch `i`.
    pub fn shared(mut self, rank: usize, world: usize) -> Result<EpochPlan> {
        if !(1..=MAX_WORLD).contains(&world) || rank >= world {
            return Err(StoreError::invalid(format!(
                "rank must be in [0, world) and world in [1, {MAX_WORLD}], got rank {rank} of {world}"
            )));
        }
        self.rank = rank;
        self.world = world;
        Ok(self)
    }

    /// Rows in global batch `i` (all ranks together).
    pub fn global_batch_len(&self, i: usize) -> usize {
        self.global_batch(i).len()
    }

    fn global_batch(&self, i: usize) -> &[u64] {
        assert!(
            i < self.batches,
            "batch {i} of an epoch of {}",
            self.batches
        );
        &self.order[i * self.batch_size..((i + 1) * self.batch_size).min(self.order.len())]
    }

    /// Batches in the epoch.
    pub fn len(&self) -> usize {
        self.batches
    }

    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// Rows the epoch visits on this rank (all of them, or all but the dropped remainder, with
    /// one process).
    pub fn rows(&self) -> usize {
        if self.world == 1 {
            return (self.batches * self.batch_size).min(self.order.len());
        }
        (0..self.batches).map(|i| self.batch(i).len()).sum()
    }

    /// The rows of batch `i` (`i < len()`) in visiting order: this rank's slice of it.
    pub fn batch(&self, i: usize) -> &[u64] {
        let all = self.global_batch(i);
        let (n, r, w) = (all.len(), self.rank, self.world);
        &all[n * r / w..n * (r + 1) / w]
    }

    /// Every batch, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u64]> + '_ {
        (0..self.batches).map(|i| self.batch(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_plans_split_every_batch_in_order() {
        let rows: Vec<u64> = (0..1003).collect();
        let single = EpochPlan::new(rows.clone(), Shuffle::Global, 3, 1, 100, false).unwrap();
        for world in [1, 2, 3, 7, 150] {
            let plans: Vec<EpochPlan> = (0..world)
                .map(|r| {
                    EpochPlan::new(rows.clone(), Shuffle::Global, 3, 1, 100, false)
                        .unwrap()
                        .shared(r, world)
                        .unwrap()
                })
                .collect();
            let mut total = 0;
            for i in 0..single.len() {
                let joined: Vec<u64> = plans.iter().flat_map(|p| p.batch(i).to_vec()).collect();
                assert_eq!(joined, single.batch(i), "world {world}, batch {i}");
                let sizes: Vec<usize> = plans.iter().map(|p| p.batch(i).len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
                assert_eq!(plans[0].global_batch_len(i), single.batch(i).len());
            }
            for p in &plans {
                assert_eq!(p.len(), single.len());
                total += p.rows();
            }
            assert_eq!(total, single.rows());
        }
        let plan = || EpochPlan::new(rows.clone(), Shuffle::None, 0, 0, 10, false).unwrap();
        assert!(plan().shared(2, 2).is_err());
        assert!(plan().shared(0, 0).is_err());
        assert!(plan().shared(0, MAX_WORLD + 1).is_err());
    }

    #[test]
    fn every_mode_is_a_seeded_permutation() {
        let rows: Vec<u64> = (0..10_000).map(|i| i * 3 + 1).collect();
        for shuffle in [
            Shuffle::None,
            Shuffle::Global,
            Shuffle::Block {
                block_rows: 97,
                window_blocks: 4,
            },
        ] {
            let a = epoch_order(rows.clone(), shuffle, 5, 0);
            let b = epoch_order(rows.clone(), shuffle, 5, 0);
            assert_eq!(a, b, "{shuffle:?} is not reproducible");
            let mut sorted = a.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, rows, "{shuffle:?} is not a permutation");
            if shuffle != Shuffle::None {
                assert_ne!(a, rows);
                assert_ne!(
                    a,
                    epoch_order(rows.clone(), shuffle, 5, 1),
                    "epochs must differ"
                );
                assert_ne!(
                    a,
                    epoch_order(rows.clone(), shuffle, 6, 0),
                    "seeds must differ"
                );
            }
        }
    }

    #[test]
    fn block_mode_keeps_reads_within_a_window() {
        let rows: Vec<u64> = (0..4096).collect();
        let out = epoch_order(
            rows,
            Shuffle::Block {
                block_rows: 256,
                window_blocks: 2,
            },
            0,
            0,
        );
        for window in out.chunks(512) {
            let mut blocks: Vec<u64> = window.iter().map(|r| r / 256).collect();
            blocks.sort_unstable();
            blocks.dedup();
            assert_eq!(blocks.len(), 2);
        }
    }

    #[test]
    fn an_epoch_plan_cuts_the_order_into_batches() {
        let rows: Vec<u64> = (0..1003).map(|i| i * 2).collect();
        let order = epoch_order(rows.clone(), Shuffle::Global, 3, 1);
        for (batch, drop_last, expect) in [
            (100, false, 11),
            (100, true, 10),
            (1003, true, 1),
            (2000, true, 0),
        ] {
            let plan =
                EpochPlan::new(rows.clone(), Shuffle::Global, 3, 1, batch, drop_last).unwrap();
            assert_eq!(plan.len(), expect, "batch {batch}, drop_last {drop_last}");
            let flat: Vec<u64> = plan.iter().flatten().copied().collect();
            assert_eq!(
                flat,
                order[..plan.rows()],
                "the batches are the epoch order"
            );
            assert!(plan.iter().all(|b| !b.is_empty() && b.len() <= batch));
            if !drop_last {
                assert_eq!(plan.rows(), rows.len());
                assert_eq!(plan.batch(plan.len() - 1).len(), 3);
            } else {
                assert!(plan.iter().all(|b| b.len() == batch));
            }
        }
        assert!(EpochPlan::new(vec![], Shuffle::None, 0, 0, 8, false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_epoch_plan_refuses_sizes_out_of_range() {
        let bad = [
            (Shuffle::Global, 0),
            (Shuffle::Global, MAX_BATCH_ROWS + 1),
            (
                Shuffle::Block {
                    block_rows: 0,
                    window_blocks: 1,
                },
                8,
            ),
            (
                Shuffle::Block {
                    block_rows: 8,
                    window_blocks: 0,
                },
                8,
            ),
            (
                Shuffle::Block {
                    block_rows: 8,
                    window_blocks: MAX_WINDOW_BLOCKS + 1,
                },
                8,
            ),
        ];
        for (shuffle, batch) in bad {
            let e = EpochPlan::new((0..10).collect(), shuffle, 0, 0, batch, false).unwrap_err();
            assert!(
                matches!(e, StoreError::Invalid(_)),
                "{shuffle:?} {batch}: {e}"
            );
            assert!(e.to_string().contains("must be in ["), "{e}");
        }
    }
}
