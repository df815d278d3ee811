//! The local pool: blocking tasks (a batch of chits' local work, a group
//! commit, a big download's publish, a round of cache directory fsyncs),
//! and how many chits they hold, which [`super::limits::LocalLimits`]
//! bounds.

use tokio::task::JoinSet;

use super::work::Step;

/// Blocking tasks working on chits at once, at most, when chits are
/// waiting to start ([`super::batch`]: each works on a batch of them).
/// Measured on the 2-core VM of BENCHMARKS.md, 2,000 small misses: 8 tasks
/// of 32 chits leave the CPU idle while their batches wait for flushes
/// (0.63 s), 128 of one cost more CPU in hand-offs and journal commits;
/// 16 to 64 tasks of 2 to 8 chits run within noise of each other (0.45 to
/// 0.49 s, 10 to 15 % less CPU than a task per chit).
pub const LOCAL_TASKS: usize = 32;

#[derive(Default)]
pub struct LocalPool {
    /// Each task's result, and the chits it held.
    tasks: JoinSet<(usize, Step)>,
    chits: usize,
}

impl LocalPool {
    /// Run `work`, which holds `chits` chits, on the blocking pool.
    pub fn spawn(&mut self, chits: usize, work: impl FnOnce() -> Step + Send + 'static) {
        self.chits += chits;
        self.tasks.spawn_blocking(move || (chits, work()));
    }

    /// The next task's step once it ends (a panic in it is resumed here).
    pub async fn join_next(&mut self) -> Option<Step> {
        let (chits, step) = match self.tasks.join_next().await? {
            Ok(ended) => ended,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.chits -= chits;
        Some(step)
    }

    /// Tasks running.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Chits the running tasks hold.
    pub fn chits(&self) -> usize {
        self.chits
    }
}
