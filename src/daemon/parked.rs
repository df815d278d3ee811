//! Chits waiting for their delivery target.
//!
//! One chit at a time delivers to a target (see [`Target`]), from its
//! rename into place to its group commit. A chit whose file is cached but
//! whose target another chit holds is *parked* on it, with the object to
//! deliver, in arrival order; once the holder's commit (or failure)
//! releases the target, the first chit parked on it is delivered.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use super::work::{Target, Targets, Waiter};

/// Parked chits, per target.
#[derive(Debug, Default)]
pub struct Parked(HashMap<Target, VecDeque<(Waiter, PathBuf)>>);

impl Parked {
    /// Park `waiter` (to be delivered `object`) on `target`, unless the
    /// target is free already (released before this was seen): then it is
    /// handed back, to be delivered at once.
    pub fn park(
        &mut self,
        targets: &Targets,
        target: Target,
        waiter: Waiter,
        object: PathBuf,
    ) -> Option<(Waiter, PathBuf)> {
        if targets.is_taken(&target) {
            self.0
                .entry(target)
                .or_default()
                .push_back((waiter, object));
            None
        } else {
            Some((waiter, object))
        }
    }

    /// The first chit parked on each target that is free again (a commit or
    /// a failed delivery released it), taken out to be delivered.
    pub fn unpark_freed(&mut self, targets: &Targets) -> Vec<(Waiter, PathBuf)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut freed = Vec::new();
        self.0.retain(|target, queue| {
            if targets.is_taken(target) {
                return true;
            }
            freed.extend(queue.pop_front());
            !queue.is_empty()
        });
        freed
    }

    /// Take out the parked chits that are `gone`.
    pub fn drop_waiters(&mut self, gone: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
        let mut dropped = Vec::new();
        for queue in self.0.values_mut() {
            let (out, kept): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(w, _)| gone(w));
            *queue = kept.into();
            dropped.extend(out.into_iter().map(|(w, _)| w));
        }
        self.0.retain(|_, queue| !queue.is_empty());
        dropped
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
