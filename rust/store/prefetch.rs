//! Gathering an epoch's batches ahead on a background thread: a bounded queue of `depth`
//! batches, cancelled when the consumer goes away, and a panic in the gathering thread reported
//! to the consumer instead of an epoch that silently ends early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use super::sampler::EpochPlan;
use crate::error::{Result, StoreError};

/// The most batches gathered ahead (each is a whole batch in memory).
pub const MAX_PREFETCH: usize = 1024;

/// What the background thread does per batch. `finish` runs on that thread once it stops (to
/// release resources that must be released there, or under a lock the consumer also takes).
pub trait Gather: Send + 'static {
    type Batch: Send + 'static;
    fn gather(&mut self, rows: &[u64]) -> Self::Batch;
    fn finish(self)
    where
        Self: Sized,
    {
    }
}

/// The result of [`Prefetch::recv`].
#[derive(Debug)]
pub enum Next<T> {
    Batch(T),
    /// The epoch is over.
    Done,
    /// The thread stopped early; why.
    Failed(String),
}

/// An epoch's batches in plan order, gathered up to `depth` ahead.
pub struct Prefetch<T> {
    rx: Option<Receiver<T>>,
    remaining: usize,
    /// Rows of each global batch (all ranks together), from the plan.
    global_lens: Vec<usize>,
    cancelled: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
}

/// A panic payload's message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl<T: Send + 'static> Prefetch<T> {
    /// Start the thread: it gathers `plan`'s batches in order with `gather`, at most `depth`
    /// (≥ 1 is used even for 0: one batch in flight) ahead of the consumer.
    pub fn spawn<G: Gather<Batch = T>>(
        plan: EpochPlan,
        depth: usize,
        mut gather: G,
    ) -> Result<Self> {
        if depth > MAX_PREFETCH {
            return Err(StoreError::invalid(format!(
                "prefetch must be in [0, {MAX_PREFETCH}] (batches gathered ahead), got {depth}"
            )));
        }
        let (tx, rx) = sync_channel::<T>(depth.max(1));
        let cancelled = Arc::new(AtomicBool::new(false));
        let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (stop, failed) = (cancelled.clone(), failure.clone());
        let remaining = plan.len();
        let global_lens = (0..plan.len()).map(|i| plan.global_batch_len(i)).collect();
        let work = move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for rows in plan.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break; // the consumer went away: stop gathering
                    }
                    if tx.send(gather.gather(rows)).is_err() {
                        break;
                    }
                }
                gather.finish();
            }));
            if let Err(payload) = run {
                if let Ok(mut f) = failed.lock() {
                    *f = Some(format!(
                        "internal error in actbridge's native code (a bug; please report it with this message): {}",
                        panic_message(payload.as_ref())
                    ));
                }
            }
        };
        std::thread::Builder::new()
            .name("actbridge-batches".into())
            .spawn(work)
            .map_err(|e| StoreError::invalid(format!("could not start the batch thread: {e}")))?;
        Ok(Prefetch {
            rx: Some(rx),
            remaining,
            global_lens,
            cancelled,
            failure,
        })
    }

    /// Batches not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Rows in global batch `i` of the epoch (all ranks' slices together; the batch itself
    /// under one process), or `None` past the epoch's end.
    pub fn global_batch_len(&self, i: usize) -> Option<usize> {
        self.global_lens.get(i).copied()
    }

    /// The next batch (blocks until the thread has gathered it).
    pub fn recv(&mut self) -> Next<T> {
        let Some(rx) = &self.rx else {
            return Next::Done;
        };
        match rx.recv() {
            Ok(batch) => {
                self.remaining = self.remaining.saturating_sub(1);
                Next::Batch(batch)
            }
            Err(_) => {
                self.rx = None;
                let left = std::mem::take(&mut self.remaining);
                let why = self.failure.lock().ok().and_then(|mut f| f.take());
                match (left, why) {
                    (_, Some(msg)) => Next::Failed(msg),
                    (0, None) => Next::Done,
                    (k, None) => Next::Failed(format!(
                        "the batch thread stopped with {k} batches of the epoch left"
                    )),
                }
            }
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Shuffle;

    struct Copy;
    impl Gather for Copy {
        type Batch = Vec<u64>;
        fn gather(&mut self, rows: &[u64]) -> Vec<u64> {
            rows.to_vec()
        }
    }

    fn plan(n: u64, batch: usize) -> EpochPlan {
        EpochPlan::new((0..n).collect(), Shuffle::Global, 9, 0, batch, false).unwrap()
    }

    #[test]
    fn batches_arrive_in_plan_order_then_done() {
        for depth in [0, 1, 3, 64] {
            let p = plan(1000, 64);
            let expect: Vec<Vec<u64>> = p.iter().map(|b| b.to_vec()).collect();
            let mut it = Prefetch::spawn(p, depth, Copy).unwrap();
            let mut got = Vec::new();
            loop {
                match it.recv() {
                    Next::Batch(b) => got.push(b),
                    Next::Done => break,
                    Next::Failed(m) => panic!("{m}"),
                }
                assert_eq!(it.remaining(), expect.len() - got.len());
            }
            assert_eq!(got, expect, "depth {depth}");
            assert!(matches!(it.recv(), Next::Done), "done stays done");
        }
    }

    #[test]
    fn global_batch_lengths_are_the_whole_batches_under_any_share() {
        // 1000 rows in batches of 64: 15 full ones and a last one of 40
        let whole: Vec<usize> = plan(1000, 64).iter().map(|b| b.len()).collect();
        for world in [1, 2, 3, 7] {
            for rank in 0..world {
                let p = plan(1000, 64).shared(rank, world).unwrap();
                let it = Prefetch::spawn(p, 1, Copy).unwrap();
                let got: Vec<usize> = (0..whole.len())
                    .map(|i| it.global_batch_len(i).unwrap())
                    .collect();
                assert_eq!(got, whole, "rank {rank} of {world}");
                assert_eq!(it.global_batch_len(whole.len()), None);
            }
        }
        assert_eq!(whole.last(), Some(&40));
    }

    #[test]
    fn a_panic_while_gathering_is_reported_not_an_early_end() {
        struct Boom(usize);
        impl Gather for Boom {
            type Batch = usize;
            fn gather(&mut self, _: &[u64]) -> usize {
                self.0 += 1;
                assert!(self.0 < 3, "gathering failed at batch {}", self.0);
                self.0
            }
        }
        let mut it = Prefetch::spawn(plan(100, 10), 1, Boom(0)).unwrap();
        assert!(matches!(it.recv(), Next::Batch(1)));
        assert!(matches!(it.recv(), Next::Batch(2)));
        match it.recv() {
            Next::Failed(m) => assert!(m.contains("gathering failed at batch 3"), "{m}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn dropping_the_consumer_stops_the_thread_and_runs_finish() {
        use std::sync::atomic::AtomicUsize;
        struct Count(Arc<AtomicUsize>, Arc<AtomicBool>);
        impl Gather for Count {
            type Batch = ();
            fn gather(&mut self, _: &[u64]) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            fn finish(self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let (n, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut it = Prefetch::spawn(plan(100_000, 1), 2, Count(n.clone(), done.clone())).unwrap();
        assert!(matches!(it.recv(), Next::Batch(())));
        drop(it);
        let t0 = std::time::Instant::now();
        while !done.load(Ordering::SeqCst) {
            assert!(t0.elapsed().as_secs() < 10, "the thread did not stop");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            n.load(Ordering::SeqCst) < 100,
            "gathered {} of 100000",
            n.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn too_deep_a_queue_is_refused() {
        let e = Prefetch::spawn(plan(10, 1), MAX_PREFETCH + 1, Copy)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("prefetch must be in [0, 1024]"),
            "{e}"
        );
    }
}
