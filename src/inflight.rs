//! At most one download per file (sha256 and size); the chits waiting for
//! it share its outcome.
//!
//! A plain data structure owned by the scheduler (no locks, no tasks): a
//! chit that misses the cache is [`InFlight::add`]ed as a waiter; the first
//! waiter for a file queues a download, later ones just join. The
//! scheduler starts queued downloads with [`InFlight::start_next`] (as job
//! slots allow), and when one ends, [`InFlight::finish`] hands back every
//! waiter. Call `finish` for every started download, or its waiters hang.
//!
//! Chits name a digest *and* a size. Two chits that name one digest with
//! different sizes cannot both be right, so they never share a download:
//! each size gets its own ([`Key`]). One that comes while a download of
//! another size of its digest is queued or running is *held*: it waits, out
//! of the lanes, for that one to end (when it succeeds, the file of that
//! digest is known, and the scheduler takes the held ones out with
//! [`InFlight::take_other_sizes`] to fail their chits, with no request of
//! their own), but only for so long: [`InFlight::release_overdue`] lets it
//! start beside a download that has run longer than the scheduler allows,
//! so a wrong size from a slow server cannot hold the right one up.
//!
//! Queued downloads wait in one *lane* per consumer (the consumer of the
//! chit that queued it) and start round-robin across lanes, so a consumer
//! that queues thousands of downloads delays another consumer's download
//! by at most one download per lane, not by its whole queue. Within a
//! lane, downloads wait per *host* (that of the first source they ask) and
//! the hosts take turns too; [`InFlight::start_next_where`] passes over a
//! host the scheduler says may not take another slot (it counts each
//! host's running downloads and the parts of the slots they hold,
//! [`HostLoad`]), so the downloads of a host that holds its share wait
//! without holding up the others.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::chit::Digest;
use crate::fetch::HostKey;

/// What one download fetches: the file of this digest, if it has this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug)]
struct Entry<W> {
    waiters: Vec<W>,
    /// Bytes done, shared with the running download (for `status`).
    progress: Arc<AtomicU64>,
    /// The lane it queues in.
    lane: usize,
    /// The host of the first source it asks (none: no network host).
    host: Option<HostKey>,
    /// Waiting, out of the lanes, for the download of another size of its
    /// digest.
    held: bool,
    /// In a lane, not started yet.
    queued: bool,
    /// Holding a job slot, since then.
    started: Option<Instant>,
    /// The part of the slots it holds while started (see
    /// [`InFlight::start_next_where`]).
    cost: usize,
}

#[derive(Debug)]
pub struct InFlight<W> {
    entries: HashMap<Key, Entry<W>>,
    /// The sizes with an entry, per digest.
    sizes: HashMap<Digest, Vec<u64>>,
    /// Queued (not yet started) downloads, one lane per consumer; a key
    /// whose entry was taken out meanwhile is skipped.
    lanes: Vec<Lane>,
    /// The lane served next.
    cursor: usize,
    /// The parts of the slots the running downloads hold.
    running: usize,
    /// What runs per host.
    running_on: HashMap<HostKey, HostLoad>,
}

/// What one host's running downloads hold (see
/// [`InFlight::start_next_where`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostLoad {
    /// Running downloads whose first source is on the host.
    pub downloads: usize,
    /// The parts of the slots they hold.
    pub parts: usize,
}

/// One consumer's queued downloads, per host, the hosts in turn.
#[derive(Debug, Default)]
struct Lane {
    /// Hosts with queued downloads, the next to be served first.
    turns: VecDeque<Option<HostKey>>,
    queued: HashMap<Option<HostKey>, VecDeque<Key>>,
}

impl Lane {
    fn push(&mut self, host: Option<HostKey>, key: Key) {
        let queue = self.queued.entry(host.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(host);
        }
        queue.push_back(key);
    }

    /// The first queued download of the first host in turn that `may`
    /// start (asked with the host and that download), skipping keys that
    /// are not `live`; that host goes to the back of the turns.
    fn pop(
        &mut self,
        live: impl Fn(&Key) -> bool,
        mut may: impl FnMut(Option<&HostKey>, &Key) -> Option<()>,
    ) -> Option<Key> {
        let mut turn = 0;
        while turn < self.turns.len() {
            let host = self.turns[turn].clone();
            let queue = self.queued.get_mut(&host)?;
            while queue.front().is_some_and(|key| !live(key)) {
                queue.pop_front();
            }
            if queue.is_empty() {
                self.queued.remove(&host);
                self.turns.remove(turn);
                continue;
            }
            if queue
                .front()
                .and_then(|key| may(host.as_ref(), key))
                .is_none()
            {
                turn += 1;
                continue;
            }
            let key = queue.pop_front()?;
            self.turns.remove(turn);
            if queue.is_empty() {
                self.queued.remove(&host);
            } else {
                self.turns.push_back(host);
            }
            return Some(key);
        }
        None
    }
}

impl<W> Default for InFlight<W> {
    fn default() -> Self {
        InFlight {
            entries: HashMap::new(),
            sizes: HashMap::new(),
            lanes: Vec::new(),
            cursor: 0,
            running: 0,
            running_on: HashMap::new(),
        }
    }
}

/// A download taken out by [`InFlight::take_other_sizes`].
#[derive(Debug, PartialEq, Eq)]
pub struct TakenOut<W> {
    pub key: Key,
    pub waiters: Vec<W>,
    /// Whether it was running (its task must be cancelled).
    pub started: bool,
}

impl<W> InFlight<W> {
    /// Wait for the file `key`, from no network host. Returns true when
    /// this queued a new download (in `lane`, the waiter's consumer), held
    /// or not.
    pub fn add(&mut self, lane: usize, key: Key, waiter: W) -> bool {
        self.add_from(lane, None, key, waiter)
    }

    /// [`InFlight::add`], for a download whose first source is on `host`.
    pub fn add_from(&mut self, lane: usize, host: Option<HostKey>, key: Key, waiter: W) -> bool {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.waiters.push(waiter);
            return false;
        }
        let held = self.has_unheld(&key.digest);
        self.entries.insert(
            key,
            Entry {
                waiters: vec![waiter],
                progress: Arc::new(AtomicU64::new(0)),
                lane,
                host,
                held,
                queued: false,
                started: None,
                cost: 0,
            },
        );
        self.sizes.entry(key.digest).or_default().push(key.size);
        if !held {
            self.enqueue(key);
        }
        true
    }

    /// Whether `digest` has a download that is not held.
    fn has_unheld(&self, digest: &Digest) -> bool {
        self.sizes.get(digest).is_some_and(|sizes| {
            sizes.iter().any(|&size| {
                self.entries
                    .get(&Key {
                        digest: *digest,
                        size,
                    })
                    .is_some_and(|e| !e.held)
            })
        })
    }

    fn enqueue(&mut self, key: Key) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.held = false;
        entry.queued = true;
        let lane = entry.lane;
        if self.lanes.len() <= lane {
            self.lanes.resize_with(lane + 1, Lane::default);
        }
        self.lanes[lane].push(entry.host.clone(), key);
    }

    /// Queue the held downloads of `digest`.
    fn release_held(&mut self, digest: &Digest) {
        let held: Vec<Key> = self
            .sizes
            .get(digest)
            .into_iter()
            .flatten()
            .map(|&size| Key {
                digest: *digest,
                size,
            })
            .filter(|key| self.entries.get(key).is_some_and(|e| e.held))
            .collect();
        for key in held {
            self.enqueue(key);
        }
    }

    /// Queue the downloads held behind one that started at least `limit`
    /// before `now`.
    pub fn release_overdue(&mut self, now: Instant, limit: Duration) {
        let overdue: Vec<Digest> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.started
                    .is_some_and(|since| now.duration_since(since) >= limit)
            })
            .map(|(key, _)| key.digest)
            .filter(|digest| self.sizes.get(digest).is_some_and(|sizes| sizes.len() > 1))
            .collect();
        for digest in overdue {
            self.release_held(&digest);
        }
    }

    /// Start the next queued download if fewer than `jobs` are running,
    /// whatever its host.
    pub fn start_next(&mut self, jobs: usize) -> Option<(Key, &[W], Arc<AtomicU64>)> {
        self.start_next_where(jobs, |_, _, _| Some(1))
    }

    /// Start the next queued download that fits in `capacity`: the lanes
    /// in turn, in each the hosts in turn. `admit(host, what runs on it,
    /// the download's key)` says what part of the capacity the download,
    /// from `host`, takes (`None`: the host may not take it now, and is
    /// passed over); one that does not fit in what is left is passed over
    /// too.
    /// Returns its key, its waiters so far (whose chits describe the job)
    /// and the progress counter to update.
    pub fn start_next_where(
        &mut self,
        capacity: usize,
        mut admit: impl FnMut(Option<&HostKey>, HostLoad, &Key) -> Option<usize>,
    ) -> Option<(Key, &[W], Arc<AtomicU64>)> {
        if self.running >= capacity {
            return None;
        }
        let left = capacity - self.running;
        let lanes = self.lanes.len();
        let (entries, running_on) = (&self.entries, &self.running_on);
        let live = |key: &Key| entries.get(key).is_some_and(|entry| entry.queued);
        let mut cost = 0;
        let mut may = |host: Option<&HostKey>, key: &Key| {
            let load = host.and_then(|host| running_on.get(host)).copied();
            cost = admit(host, load.unwrap_or_default(), key).filter(|&cost| cost <= left)?;
            Some(())
        };
        let (lane, key) = (0..lanes)
            .map(|offset| (self.cursor + offset) % lanes)
            .find_map(|lane| Some((lane, self.lanes[lane].pop(live, &mut may)?)))?;
        self.cursor = (lane + 1) % lanes;
        let entry = self.entries.get_mut(&key)?;
        entry.queued = false;
        entry.started = Some(Instant::now());
        entry.cost = cost;
        self.running += cost;
        if let Some(host) = &entry.host {
            let load = self.running_on.entry(host.clone()).or_default();
            load.downloads += 1;
            load.parts += cost;
        }
        Some((key, entry.waiters.as_slice(), Arc::clone(&entry.progress)))
    }

    /// What runs whose first source is on `host`.
    pub fn running_on(&self, host: &HostKey) -> HostLoad {
        self.running_on.get(host).copied().unwrap_or_default()
    }

    /// The host of the first source the download of `key` asks.
    pub fn host_of(&self, key: &Key) -> Option<&HostKey> {
        self.entries.get(key)?.host.as_ref()
    }

    /// The transfer of `key` is over and its result is being published:
    /// its job slot is free for the next one. Its waiters stay (and more
    /// may join) until [`InFlight::finish`].
    pub fn release(&mut self, key: &Key) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry.started.take().is_some()
        {
            let (host, cost) = (entry.host.clone(), entry.cost);
            self.stopped(host.as_ref(), cost);
        }
    }

    /// A running download stopped holding its slot.
    fn stopped(&mut self, host: Option<&HostKey>, cost: usize) {
        self.running -= cost;
        if let Some(host) = host
            && let Some(load) = self.running_on.get_mut(host)
        {
            load.downloads -= 1;
            load.parts -= cost;
            if load.downloads == 0 {
                self.running_on.remove(host);
            }
        }
    }

    /// Take the waiter of `key` if it is the only one (the common case:
    /// it can be delivered by the task that publishes the download). The
    /// entry stays: chits that join later wait for [`InFlight::finish`].
    pub fn take_lone_waiter(&mut self, key: &Key) -> Option<W> {
        let entry = self.entries.get_mut(key)?;
        if entry.waiters.len() == 1 {
            entry.waiters.pop()
        } else {
            None
        }
    }

    /// Take the first waiter of `key` that is `wanted`, however many wait
    /// (the one a download was early-delivered to).
    pub fn take_waiter(&mut self, key: &Key, wanted: impl Fn(&W) -> bool) -> Option<W> {
        let entry = self.entries.get_mut(key)?;
        let at = entry.waiters.iter().position(wanted)?;
        Some(entry.waiters.remove(at))
    }

    /// Take out every waiter that is `gone`, wherever it waits. A download
    /// left with no waiter is taken out too if it has not started (held or
    /// queued); one running (or being published) stays, for its task to
    /// end (the daemon stops a running one nobody waits for: see
    /// `daemon::downloads::stopping`).
    pub fn drop_waiters(&mut self, gone: impl Fn(&W) -> bool) -> Vec<W> {
        let mut dropped = Vec::new();
        let mut empty = Vec::new();
        for (key, entry) in &mut self.entries {
            let (out, kept) = std::mem::take(&mut entry.waiters)
                .into_iter()
                .partition(|waiter| gone(waiter));
            entry.waiters = kept;
            dropped.extend::<Vec<W>>(out);
            if entry.waiters.is_empty() && (entry.queued || entry.held) {
                empty.push(*key);
            }
        }
        for key in empty {
            self.remove(&key);
            if !self.has_unheld(&key.digest) {
                self.release_held(&key.digest);
            }
        }
        dropped
    }

    /// The download of `key` ended: every waiter, to be told the outcome
    /// (`None` if no download of it was queued). Downloads of its digest
    /// held behind it are queued, unless another one still runs.
    pub fn finish(&mut self, key: &Key) -> Option<Vec<W>> {
        let entry = self.remove(key)?;
        if !self.has_unheld(&key.digest) {
            self.release_held(&key.digest);
        }
        Some(entry.waiters)
    }

    fn remove(&mut self, key: &Key) -> Option<Entry<W>> {
        let entry = self.entries.remove(key)?;
        if entry.started.is_some() {
            self.stopped(entry.host.as_ref(), entry.cost);
        }
        if let Some(sizes) = self.sizes.get_mut(&key.digest) {
            sizes.retain(|&size| size != key.size);
            if sizes.is_empty() {
                self.sizes.remove(&key.digest);
            }
        }
        Some(entry)
    }

    /// Take out the downloads of `key`'s digest with another size, held,
    /// queued or running (their job slots are free at once).
    pub fn take_other_sizes(&mut self, key: &Key) -> Vec<TakenOut<W>> {
        let others: Vec<Key> = self
            .sizes
            .get(&key.digest)
            .into_iter()
            .flatten()
            .filter(|&&size| size != key.size)
            .map(|&size| Key {
                digest: key.digest,
                size,
            })
            .collect();
        others
            .into_iter()
            .filter_map(|other| {
                let entry = self.remove(&other)?;
                Some(TakenOut {
                    key: other,
                    waiters: entry.waiters,
                    started: entry.started.is_some(),
                })
            })
            .collect()
    }

    /// Every key with a download held, queued or running.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    /// Whether a download of `key` is held, queued or running.
    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    /// Nothing queued, running or waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Running downloads: key, bytes done, waiters.
    pub fn running(&self) -> impl Iterator<Item = (&Key, u64, &[W])> {
        self.entries
            .iter()
            .filter(|(_, e)| e.started.is_some())
            .map(|(key, e)| {
                (
                    key,
                    e.progress.load(std::sync::atomic::Ordering::Relaxed),
                    e.waiters.as_slice(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File `n` of 10 bytes.
    fn key(n: u8) -> Key {
        sized(n, 10)
    }

    fn sized(n: u8, size: u64) -> Key {
        Key {
            digest: Digest::from_bytes([n; 32]),
            size,
        }
    }

    fn finished<W>(inflight: &mut InFlight<W>, key: Key) -> Vec<W> {
        inflight.finish(&key).unwrap_or_default()
    }

    #[test]
    fn a_released_slot_starts_the_next_download_while_waiters_stay() {
        let mut inflight = InFlight::default();
        inflight.add(0, key(1), "a");
        inflight.add(0, key(2), "b");
        assert!(inflight.start_next(1).is_some());
        assert!(inflight.start_next(1).is_none());
        inflight.release(&key(1));
        inflight.release(&key(1)); // twice is harmless
        let (second, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(second, key(2));
        // A chit joining while file 1 is being published shares it.
        assert!(!inflight.add(0, key(1), "c"));
        assert_eq!(finished(&mut inflight, key(1)), ["a", "c"]);
        assert!(
            inflight.start_next(1).is_none(),
            "file 2 still holds the slot"
        );
    }

    #[test]
    fn one_download_per_file_and_all_waiters_return() {
        let mut inflight = InFlight::default();
        assert!(inflight.add(0, key(1), "a"));
        assert!(!inflight.add(1, key(1), "b"));
        assert!(inflight.add(0, key(2), "c"));
        let (first, waiters, _) = inflight.start_next(1).unwrap();
        assert_eq!((first, waiters), (key(1), &["a", "b"][..]));
        assert!(inflight.start_next(1).is_none(), "jobs limit");
        // A waiter joining a running download does not queue another.
        assert!(!inflight.add(0, key(1), "d"));
        assert_eq!(inflight.running().count(), 1);
        assert_eq!(finished(&mut inflight, key(1)), ["a", "b", "d"]);
        let (second, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(second, key(2));
        assert_eq!(finished(&mut inflight, key(2)), ["c"]);
        assert!(inflight.is_empty());
        assert!(inflight.finish(&key(3)).is_none());
    }

    #[test]
    fn a_lone_waiter_or_a_wanted_one_is_taken_and_the_others_stay() {
        let mut inflight = InFlight::default();
        inflight.add(0, key(1), "a");
        inflight.add(1, key(1), "b");
        inflight.add(0, key(1), "c");
        assert_eq!(inflight.take_lone_waiter(&key(1)), None);
        assert_eq!(inflight.take_waiter(&key(1), |w| *w == "b"), Some("b"));
        assert_eq!(inflight.take_waiter(&key(1), |w| *w == "b"), None);
        assert_eq!(inflight.take_waiter(&key(2), |_| true), None);
        assert_eq!(finished(&mut inflight, key(1)), ["a", "c"]);
        inflight.add(0, key(2), "d");
        assert_eq!(inflight.take_lone_waiter(&key(2)), Some("d"));
    }

    /// Dropped waiters leave every download they waited for; one left
    /// with nobody is taken out if it had not started (held ones behind it
    /// then queue), and runs on if it had.
    #[test]
    fn dropped_waiters_leave_and_unstarted_downloads_of_nobody_go() {
        let mut inflight = InFlight::default();
        inflight.add(0, key(1), "old-a");
        inflight.add(1, key(1), "b");
        inflight.add(0, key(2), "old-c");
        inflight.add(0, sized(3, 10), "old-d");
        inflight.add(1, sized(3, 20), "e"); // held behind size 10
        let (running, _, _) = inflight.start_next(1).unwrap();
        assert_eq!(running, key(1));
        let mut dropped = inflight.drop_waiters(|w| w.starts_with("old"));
        dropped.sort_unstable();
        assert_eq!(dropped, ["old-a", "old-c", "old-d"]);
        assert!(!inflight.contains(&key(2)), "queued for nobody");
        assert!(!inflight.contains(&sized(3, 10)));
        assert!(inflight.contains(&sized(3, 20)));
        assert_eq!(finished(&mut inflight, key(1)), ["b"]);
        let (next, waiters, _) = inflight.start_next(1).unwrap();
        assert_eq!((next, waiters), (sized(3, 20), &["e"][..]), "released");
        // A running download that loses its last waiter runs on.
        assert_eq!(inflight.drop_waiters(|w| *w == "e"), ["e"]);
        assert_eq!(inflight.running().count(), 1);
        assert_eq!(finished(&mut inflight, sized(3, 20)), Vec::<&str>::new());
        assert!(inflight.is_empty());
    }

    /// Two sizes of one digest are two downloads. The later is held
    /// behind the first until it ends or runs too long; when one is
    /// verified, the others (running, queued or held) are taken out; and a
    /// stale lane entry never starts anything.
    #[test]
    fn each_size_of_a_digest_is_its_own_download_held_for_a_while() {
        let hour = Duration::from_secs(3600);
        let mut inflight = InFlight::default();
        assert!(inflight.add(0, sized(1, 14), "wrong"));
        assert!(inflight.add(1, sized(1, 13), "right"));
        assert!(!inflight.add(2, sized(1, 13), "right too"));
        assert!(inflight.add(2, sized(1, 15), "wrong too"));
        assert_eq!(inflight.start_next(4).unwrap().0, sized(1, 14));
        assert!(inflight.start_next(4).is_none(), "the others are held");
        let now = Instant::now();
        inflight.release_overdue(now, hour);
        assert!(inflight.start_next(4).is_none(), "not overdue yet");
        inflight.release_overdue(now + 2 * hour, hour);
        let (second, started_for, _) = inflight.start_next(4).unwrap();
        assert_eq!(second, sized(1, 13));
        assert_eq!(started_for, ["right", "right too"], "never shared");
        assert_eq!(inflight.start_next(4).unwrap().0, sized(1, 15));
        assert_eq!(inflight.running().count(), 3);
        inflight.release(&sized(1, 13));
        let mut others = inflight.take_other_sizes(&sized(1, 13));
        others.sort_by_key(|o| o.key.size);
        assert_eq!(
            others,
            [
                TakenOut {
                    key: sized(1, 14),
                    waiters: vec!["wrong"],
                    started: true
                },
                TakenOut {
                    key: sized(1, 15),
                    waiters: vec!["wrong too"],
                    started: true
                },
            ]
        );
        assert_eq!(inflight.running().count(), 0, "their slots are free");
        // Another size comes while the right one is published: held until
        // it is finished, then queued once; the stale lane entry from
        // before does not start it a second time.
        assert!(inflight.add(0, sized(1, 15), "again"));
        assert!(inflight.start_next(4).is_none());
        assert_eq!(
            finished(&mut inflight, sized(1, 13)),
            ["right", "right too"]
        );
        assert_eq!(inflight.start_next(4).unwrap().0, sized(1, 15));
        inflight.release(&sized(1, 15));
        assert!(inflight.start_next(4).is_none());
        assert_eq!(finished(&mut inflight, sized(1, 15)), ["again"]);
        assert!(inflight.is_empty());
    }

    /// When the first size's download fails, the one held behind it gets
    /// its turn at once.
    #[test]
    fn a_held_size_starts_when_the_first_fails() {
        let mut inflight = InFlight::default();
        inflight.add(0, sized(1, 14), "first");
        inflight.add(1, sized(1, 13), "held");
        inflight.add(0, key(2), "other file");
        assert_eq!(inflight.start_next(1).unwrap().0, sized(1, 14));
        assert_eq!(finished(&mut inflight, sized(1, 14)), ["first"]);
        let mut started = Vec::new();
        while let Some((next, _, _)) = inflight.start_next(1) {
            started.push(next);
            inflight.release(&next);
        }
        started.sort_by_key(|k| k.digest.as_bytes()[0]);
        assert_eq!(started, [sized(1, 13), key(2)]);
    }

    fn host(name: &str) -> Option<HostKey> {
        HostKey::of(&url::Url::parse(&format!("https://{name}/f")).unwrap())
    }

    /// A consumer floods a dead host; another consumer's download from a
    /// working host starts at once though the dead host's downloads hold
    /// their share (two here): the dead host is passed over, the slots
    /// left go to others, and the flood waits without holding one.
    #[test]
    fn a_host_at_its_share_is_passed_over_for_others() {
        let (dead, live) = (host("dead"), host("live"));
        let mut inflight = InFlight::default();
        for n in 0..100 {
            inflight.add_from(0, dead.clone(), key(n), "flood");
        }
        let share = |host: Option<&HostKey>, load: HostLoad, _: &Key| {
            (host.is_none() || load.downloads < 2).then_some(1)
        };
        let mut started = Vec::new();
        while let Some((next, _, _)) = inflight.start_next_where(4, share) {
            started.push(next);
        }
        assert_eq!(started, [key(0), key(1)], "two slots left free");
        let load = inflight.running_on(dead.as_ref().unwrap());
        assert_eq!(
            load,
            HostLoad {
                downloads: 2,
                parts: 2
            }
        );
        inflight.add_from(1, live.clone(), key(200), "other");
        let (next, waiters, _) = inflight.start_next_where(4, share).unwrap();
        assert_eq!((next, waiters), (key(200), &["other"][..]));
        inflight.add_from(0, None, key(201), "file mirror");
        let (next, _, _) = inflight.start_next_where(4, share).unwrap();
        assert_eq!(next, key(201), "no network host: not held back");
        assert!(inflight.start_next_where(8, share).is_none());
        // A dead download that ends frees its host's turn for the next.
        assert_eq!(finished(&mut inflight, key(0)), ["flood"]);
        assert_eq!(inflight.running_on(dead.as_ref().unwrap()).downloads, 1);
        assert_eq!(inflight.start_next_where(4, share).unwrap().0, key(2));
        assert_eq!(inflight.host_of(&key(2)), dead.as_ref());
    }

    /// Each host's load counts its running downloads and the parts of
    /// the slots each was admitted with, asked per download (its key);
    /// both go down as downloads end.
    #[test]
    fn a_host_load_counts_downloads_and_their_parts() {
        let x = host("x").unwrap();
        let mut inflight = InFlight::default();
        inflight.add_from(0, Some(x.clone()), sized(1, 100), "big");
        for n in 2..6 {
            inflight.add_from(0, Some(x.clone()), sized(n, 10), "small");
        }
        // Big ones take 4 parts, small ones 1; the host may hold 6.
        let admit = |_: Option<&HostKey>, load: HostLoad, key: &Key| {
            let cost = if key.size > 50 { 4 } else { 1 };
            (load.parts + cost <= 6).then_some(cost)
        };
        let mut started = Vec::new();
        while let Some((next, _, _)) = inflight.start_next_where(64, admit) {
            started.push(next);
        }
        assert_eq!(started, [sized(1, 100), sized(2, 10), sized(3, 10)]);
        let load = inflight.running_on(&x);
        assert_eq!(
            load,
            HostLoad {
                downloads: 3,
                parts: 6
            }
        );
        inflight.release(&sized(1, 100));
        assert_eq!(
            inflight.running_on(&x),
            HostLoad {
                downloads: 2,
                parts: 2
            }
        );
        assert_eq!(
            inflight.start_next_where(64, admit).unwrap().0,
            sized(4, 10)
        );
        assert_eq!(finished(&mut inflight, sized(2, 10)), ["small"]);
        assert_eq!(
            inflight.running_on(&x),
            HostLoad {
                downloads: 2,
                parts: 2
            }
        );
        for key in [sized(3, 10), sized(4, 10)] {
            inflight.release(&key);
        }
        assert_eq!(inflight.running_on(&x), HostLoad::default());
    }

    /// Within a consumer's lane, the hosts take turns.
    #[test]
    fn hosts_take_turns_within_a_lane() {
        let mut inflight = InFlight::default();
        for n in 0..3 {
            inflight.add_from(0, host("x"), key(n), "x");
        }
        inflight.add_from(0, host("y"), key(10), "y");
        inflight.add_from(0, host("y"), key(11), "y");
        let mut order = Vec::new();
        while let Some((next, _, _)) = inflight.start_next(8) {
            order.push(next);
        }
        assert_eq!(order, [key(0), key(10), key(1), key(11), key(2)]);
    }

    #[test]
    fn lanes_take_turns() {
        let mut inflight = InFlight::default();
        for n in 0..100 {
            inflight.add(0, key(n), "flood");
        }
        inflight.add(2, key(200), "other");
        inflight.add(2, key(201), "other");
        let mut order = Vec::new();
        while let Some((next, _, _)) = inflight.start_next(1) {
            order.push(next);
            inflight.finish(&next);
        }
        assert_eq!(order.len(), 102);
        assert_eq!(&order[..4], [key(0), key(200), key(1), key(201)]);
        assert!(inflight.is_empty());
    }
}
