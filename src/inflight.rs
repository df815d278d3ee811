//! At most one download per digest; the chits waiting for it share its
//! outcome.
//!
//! A plain data structure owned by the scheduler (no locks, no tasks): a
//! chit that misses the cache is [`InFlight::add`]ed as a waiter; the first
//! waiter for a digest queues a download, later ones just join. The
//! scheduler starts queued downloads with [`InFlight::start_next`] (as job
//! slots allow), and when one ends, [`InFlight::finish`] hands back every
//! waiter. Call `finish` for every started download, or its waiters hang.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::chit::Digest;

#[derive(Debug)]
struct Entry<W> {
    waiters: Vec<W>,
    /// Bytes done, shared with the running download (for `status`).
    progress: Arc<AtomicU64>,
    size: u64,
    started: bool,
}

#[derive(Debug)]
pub struct InFlight<W> {
    entries: HashMap<Digest, Entry<W>>,
    queue: VecDeque<Digest>,
    running: usize,
}

impl<W> Default for InFlight<W> {
    fn default() -> Self {
        InFlight {
            entries: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
        }
    }
}

impl<W> InFlight<W> {
    /// Wait for `digest`. Returns true when this queued a new download.
    pub fn add(&mut self, digest: Digest, size: u64, waiter: W) -> bool {
        match self.entries.get_mut(&digest) {
            Some(entry) => {
                entry.waiters.push(waiter);
                false
            }
            None => {
                self.entries.insert(
                    digest,
                    Entry {
                        waiters: vec![waiter],
                        progress: Arc::new(AtomicU64::new(0)),
                        size,
                        started: false,
                    },
                );
                self.queue.push_back(digest);
                true
            }
        }
    }

    /// Start the next queued download if fewer than `jobs` are running.
    /// Returns its digest, its waiters so far (whose chits describe the
    /// job) and the progress counter to update.
    pub fn start_next(&mut self, jobs: usize) -> Option<(Digest, &[W], Arc<AtomicU64>)> {
        if self.running >= jobs {
            return None;
        }
        let digest = self.queue.pop_front()?;
        let entry = self.entries.get_mut(&digest)?;
        entry.started = true;
        self.running += 1;
        Some((
            digest,
            entry.waiters.as_slice(),
            Arc::clone(&entry.progress),
        ))
    }

    /// The download of `digest` ended: every waiter, to be told the outcome.
    pub fn finish(&mut self, digest: &Digest) -> Vec<W> {
        match self.entries.remove(digest) {
            Some(entry) => {
                if entry.started {
                    self.running -= 1;
                }
                entry.waiters
            }
            None => Vec::new(),
        }
    }

    /// Nothing queued, running or waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Running downloads: digest, bytes done, size, waiters.
    pub fn running(&self) -> impl Iterator<Item = (&Digest, u64, u64, &[W])> {
        self.entries
            .iter()
            .filter(|(_, e)| e.started)
            .map(|(digest, e)| {
                (
                    digest,
                    e.progress.load(std::sync::atomic::Ordering::Relaxed),
                    e.size,
                    e.waiters.as_slice(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn one_download_per_digest_and_all_waiters_return() {
        let mut inflight = InFlight::default();
        assert!(inflight.add(digest(1), 10, "a"));
        assert!(!inflight.add(digest(1), 10, "b"));
        assert!(inflight.add(digest(2), 10, "c"));
        let (first, waiters, _) = inflight.start_next(1).unwrap();
        assert_eq!((first, waiters), (digest(1), &["a", "b"][..]));
        assert!(inflight.start_next(1).is_none(), "jobs limit");
        // A waiter joining a running download does not queue another.
        assert!(!inflight.add(digest(1), 10, "d"));
        assert_eq!(inflight.running().count(), 1);
        assert_eq!(inflight.finish(&digest(1)), ["a", "b", "d"]);
        let (second, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(second, digest(2));
        assert_eq!(inflight.finish(&digest(2)), ["c"]);
        assert!(inflight.is_empty());
        assert!(inflight.finish(&digest(3)).is_empty());
    }
}
