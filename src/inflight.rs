//! At most one download per digest; the chits waiting for it share its
//! outcome.
//!
//! A plain data structure owned by the scheduler (no locks, no tasks): a
//! chit that misses the cache is [`InFlight::add`]ed as a waiter; the first
//! waiter for a digest queues a download, later ones just join. The
//! scheduler starts queued downloads with [`InFlight::start_next`] (as job
//! slots allow), and when one ends, [`InFlight::finish`] hands back every
//! waiter. Call `finish` for every started download, or its waiters hang.
//!
//! Chits name a digest *and* a size. A chit whose size differs from the one
//! a download for its digest was started with cannot share it (at most one
//! of the two sizes is right): it waits *later*, and gets the outcome
//! after the download ends (see [`Finished::later`]).
//!
//! Queued downloads wait in one *lane* per consumer (the consumer of the
//! chit that queued it) and start round-robin across lanes, so a consumer
//! that queues thousands of downloads delays another consumer's download
//! by at most one download per lane, not by its whole queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::chit::Digest;

#[derive(Debug)]
struct Entry<W> {
    waiters: Vec<W>,
    /// Waiters for the same digest with another size.
    later: Vec<W>,
    /// Bytes done, shared with the running download (for `status`).
    progress: Arc<AtomicU64>,
    size: u64,
    started: bool,
}

#[derive(Debug)]
pub struct InFlight<W> {
    entries: HashMap<Digest, Entry<W>>,
    /// Queued (not yet started) digests, one queue per lane.
    lanes: Vec<VecDeque<Digest>>,
    /// The lane served next.
    cursor: usize,
    running: usize,
}

impl<W> Default for InFlight<W> {
    fn default() -> Self {
        InFlight {
            entries: HashMap::new(),
            lanes: Vec::new(),
            cursor: 0,
            running: 0,
        }
    }
}

/// A download's end: who waited for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Finished<W> {
    /// The size the download was for.
    pub size: u64,
    /// The waiters of that size, to be told the outcome.
    pub waiters: Vec<W>,
    /// The waiters for the same digest with another size: wrong if the
    /// download succeeded, else owed a download of their own.
    pub later: Vec<W>,
}

impl<W> InFlight<W> {
    /// Wait for `digest` of `size` bytes. Returns true when this queued a
    /// new download (in `lane`, the waiter's consumer).
    pub fn add(&mut self, lane: usize, digest: Digest, size: u64, waiter: W) -> bool {
        match self.entries.get_mut(&digest) {
            Some(entry) if entry.size == size => {
                entry.waiters.push(waiter);
                false
            }
            Some(entry) => {
                entry.later.push(waiter);
                false
            }
            None => {
                self.entries.insert(
                    digest,
                    Entry {
                        waiters: vec![waiter],
                        later: Vec::new(),
                        progress: Arc::new(AtomicU64::new(0)),
                        size,
                        started: false,
                    },
                );
                if self.lanes.len() <= lane {
                    self.lanes.resize_with(lane + 1, VecDeque::new);
                }
                self.lanes[lane].push_back(digest);
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
        let lanes = self.lanes.len();
        let (lane, digest) = (0..lanes)
            .map(|offset| (self.cursor + offset) % lanes)
            .find_map(|lane| Some((lane, self.lanes[lane].pop_front()?)))?;
        self.cursor = (lane + 1) % lanes;
        let entry = self.entries.get_mut(&digest)?;
        entry.started = true;
        self.running += 1;
        Some((
            digest,
            entry.waiters.as_slice(),
            Arc::clone(&entry.progress),
        ))
    }

    /// The transfer of `digest` is over and its result is being published:
    /// its job slot is free. Its waiters stay (and more may join) until
    /// [`InFlight::finish`].
    pub fn release(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.get_mut(digest)
            && entry.started
        {
            entry.started = false;
            self.running -= 1;
        }
    }

    /// Take the waiter of `digest` if it is the only one (the common case:
    /// it can be delivered by the task that publishes the download). The
    /// entry stays: chits that join later wait for [`InFlight::finish`].
    pub fn take_lone_waiter(&mut self, digest: &Digest) -> Option<W> {
        let entry = self.entries.get_mut(digest)?;
        if entry.waiters.len() == 1 {
            entry.waiters.pop()
        } else {
            None
        }
    }

    /// Take the first waiter of `digest` that is `wanted`, however many
    /// wait (the one a download was early-delivered to).
    pub fn take_waiter(&mut self, digest: &Digest, wanted: impl Fn(&W) -> bool) -> Option<W> {
        let entry = self.entries.get_mut(digest)?;
        let at = entry.waiters.iter().position(wanted)?;
        Some(entry.waiters.remove(at))
    }

    /// The download of `digest` ended: every waiter, to be told the outcome
    /// (`None` if no download of it was queued).
    pub fn finish(&mut self, digest: &Digest) -> Option<Finished<W>> {
        let entry = self.entries.remove(digest)?;
        if entry.started {
            self.running -= 1;
        }
        Some(Finished {
            size: entry.size,
            waiters: entry.waiters,
            later: entry.later,
        })
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

    fn finished<W>(inflight: &mut InFlight<W>, digest: Digest) -> Vec<W> {
        inflight
            .finish(&digest)
            .map_or_else(Vec::new, |f| f.waiters)
    }

    #[test]
    fn a_released_slot_starts_the_next_download_while_waiters_stay() {
        let mut inflight = InFlight::default();
        inflight.add(0, digest(1), 10, "a");
        inflight.add(0, digest(2), 10, "b");
        assert!(inflight.start_next(1).is_some());
        assert!(inflight.start_next(1).is_none());
        inflight.release(&digest(1));
        inflight.release(&digest(1)); // twice is harmless
        let (second, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(second, digest(2));
        // A chit joining while digest 1 is being published shares it.
        assert!(!inflight.add(0, digest(1), 10, "c"));
        assert_eq!(finished(&mut inflight, digest(1)), ["a", "c"]);
        assert!(
            inflight.start_next(1).is_none(),
            "digest 2 still holds the slot"
        );
    }

    #[test]
    fn one_download_per_digest_and_all_waiters_return() {
        let mut inflight = InFlight::default();
        assert!(inflight.add(0, digest(1), 10, "a"));
        assert!(!inflight.add(1, digest(1), 10, "b"));
        assert!(inflight.add(0, digest(2), 10, "c"));
        let (first, waiters, _) = inflight.start_next(1).unwrap();
        assert_eq!((first, waiters), (digest(1), &["a", "b"][..]));
        assert!(inflight.start_next(1).is_none(), "jobs limit");
        // A waiter joining a running download does not queue another.
        assert!(!inflight.add(0, digest(1), 10, "d"));
        assert_eq!(inflight.running().count(), 1);
        assert_eq!(finished(&mut inflight, digest(1)), ["a", "b", "d"]);
        let (second, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(second, digest(2));
        assert_eq!(finished(&mut inflight, digest(2)), ["c"]);
        assert!(inflight.is_empty());
        assert!(inflight.finish(&digest(3)).is_none());
    }

    #[test]
    fn a_lone_waiter_or_a_wanted_one_is_taken_and_the_others_stay() {
        let mut inflight = InFlight::default();
        inflight.add(0, digest(1), 10, "a");
        inflight.add(1, digest(1), 10, "b");
        inflight.add(0, digest(1), 10, "c");
        assert_eq!(inflight.take_lone_waiter(&digest(1)), None);
        assert_eq!(inflight.take_waiter(&digest(1), |w| *w == "b"), Some("b"));
        assert_eq!(inflight.take_waiter(&digest(1), |w| *w == "b"), None);
        assert_eq!(inflight.take_waiter(&digest(2), |_| true), None);
        assert_eq!(finished(&mut inflight, digest(1)), ["a", "c"]);
        inflight.add(0, digest(2), 10, "d");
        assert_eq!(inflight.take_lone_waiter(&digest(2)), Some("d"));
    }

    #[test]
    fn a_waiter_of_another_size_never_shares_the_download() {
        let mut inflight = InFlight::default();
        assert!(inflight.add(0, digest(1), 13, "right"));
        assert!(!inflight.add(1, digest(1), 14, "wrong"));
        assert!(!inflight.add(2, digest(1), 13, "right too"));
        let (_, started_for, _) = inflight.start_next(4).unwrap();
        assert_eq!(started_for, ["right", "right too"]);
        assert!(inflight.start_next(4).is_none(), "one download per digest");
        assert_eq!(inflight.take_lone_waiter(&digest(1)), None);
        assert_eq!(
            inflight.finish(&digest(1)),
            Some(Finished {
                size: 13,
                waiters: vec!["right", "right too"],
                later: vec!["wrong"],
            })
        );
        assert!(inflight.is_empty());
    }

    #[test]
    fn lanes_take_turns() {
        let mut inflight = InFlight::default();
        for n in 0..100 {
            inflight.add(0, digest(n), 10, "flood");
        }
        inflight.add(2, digest(200), 10, "other");
        inflight.add(2, digest(201), 10, "other");
        let mut order = Vec::new();
        while let Some((next, _, _)) = inflight.start_next(1) {
            order.push(next);
            inflight.finish(&next);
        }
        assert_eq!(order.len(), 102);
        assert_eq!(
            &order[..4],
            [digest(0), digest(200), digest(1), digest(201)]
        );
        assert!(inflight.is_empty());
    }
}
