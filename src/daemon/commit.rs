//! The group commit: delivered chits wait together for the fsyncs that
//! make their deliveries durable and the renames that move them to
//! `downloaded/`.
//!
//! A delivered chit holds its delivery target until its commit: one
//! directory fsync per delivery directory and one of each consumer's
//! `downloaded/` then serve the whole batch. A commit starts at once for
//! a full batch ([`COMMIT_BATCH`], or the backlog the open files limit
//! allows) or when no other delivery is under way (nothing to wait for);
//! otherwise the oldest chit waits at most [`COMMIT_LINGER`] for others to
//! join. One commit runs at a time: chits delivered meanwhile wait for the
//! next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::chit_id::ChitId;
use super::work::{Commit, Step, fail_read_again, went_with_its_fetch};
use crate::dir::{Dir, FileId};
use crate::spool::Spool;

/// A delivered chit waits at most this long for others to share its group
/// commit (two directory fsyncs per commit) while more deliveries are under
/// way; a lone chit is committed at once.
pub const COMMIT_LINGER: Duration = Duration::from_millis(2);
/// A group commit starts at once when this many chits wait for it.
pub const COMMIT_BATCH: usize = 256;

/// The delivered chits waiting for the next group commit, and whether one
/// is running.
#[derive(Debug)]
pub struct GroupCommit {
    batch: Vec<Commit>,
    /// The delivery directories of `batch` by identity, each held open
    /// once: a chit delivered into one of them shares it (its own
    /// descriptor is closed at once).
    dirs: HashMap<FileId, Arc<Dir>>,
    /// When the oldest chit in `batch` was delivered.
    since: Option<Instant>,
    running: bool,
    /// A full batch: it starts at once.
    full: usize,
}

impl GroupCommit {
    /// A group commit of at most `backlog` chits at once.
    pub fn new(backlog: usize) -> GroupCommit {
        GroupCommit {
            batch: Vec::new(),
            dirs: HashMap::new(),
            since: None,
            running: false,
            full: COMMIT_BATCH.min(backlog),
        }
    }

    /// Chits waiting for the next commit.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// A chit delivered at `now` waits for the next commit.
    pub fn add(&mut self, mut commit: Commit, now: Instant) {
        self.since.get_or_insert(now);
        if let Some(id) = commit.parent_id {
            let parent = self
                .dirs
                .entry(id)
                .or_insert_with(|| Arc::clone(&commit.parent));
            commit.parent = Arc::clone(parent);
        }
        self.batch.push(commit);
    }

    /// When the waiting chits' commit is due, given whether other
    /// deliveries are under way: at once for a full batch or with nothing
    /// to wait for, else [`COMMIT_LINGER`] after the oldest was delivered.
    /// `None` when no chit is waiting or a commit is running.
    pub fn deadline(&self, deliveries_under_way: bool) -> Option<Instant> {
        let since = self.since.filter(|_| !self.running)?;
        if self.batch.len() >= self.full || !deliveries_under_way {
            Some(since)
        } else {
            Some(since + COMMIT_LINGER)
        }
    }

    /// The batch to commit now, if its commit is due at `now`; the commit
    /// runs until [`GroupCommit::ended`].
    pub fn take_due(&mut self, now: Instant, deliveries_under_way: bool) -> Option<Vec<Commit>> {
        let due = self.deadline(deliveries_under_way)?;
        if due > now {
            return None;
        }
        self.running = true;
        self.since = None;
        self.dirs.clear();
        Some(std::mem::take(&mut self.batch))
    }

    /// The running commit ended.
    pub fn ended(&mut self) {
        self.running = false;
    }
}

/// Group commit: fsync each delivery directory of the batch once, then move
/// every chit `fetch/ → downloaded/` with one fsync of each consumer's
/// `downloaded/`. A chit whose delivery cannot be made durable, or that
/// cannot move to `downloaded/`, is failed with the reason (stuck if it
/// cannot move to `fail/` either).
pub fn commit(shared: &Shared, batch: Vec<Commit>) -> Step {
    tracing::debug!(chits = batch.len(), "group commit");
    let synced = sync_parents(&batch);
    let mut left = Vec::new();
    let mut fail = |spool: &Spool, entry: &Commit, reason: String| {
        let name = entry.name.clone();
        let step = fail_read_again(spool, entry.consumer, name, &entry.digest, &reason);
        if matches!(step, Step::Stuck(_) | Step::Short(_)) {
            left.push(step);
        }
    };
    // Each consumer's spool once, for the whole batch.
    let mut durable: Vec<(Option<Arc<Spool>>, Vec<&Commit>)> = (0..shared.consumers.len())
        .map(|_| (None, Vec::new()))
        .collect();
    for entry in &batch {
        let (spool, entries) = &mut durable[entry.consumer];
        let spool = spool.get_or_insert_with(|| shared.consumers[entry.consumer].spool());
        if went_with_its_fetch(shared, spool, entry.consumer, &entry.name, entry.claimed_in) {
            continue;
        }
        match synced
            .iter()
            .find(|(dir, _)| Arc::ptr_eq(dir, &entry.parent))
        {
            Some((_, Err(e))) => {
                let reason = format!("cannot make the delivery of {} durable: {e}", entry.path);
                fail(spool, entry, reason);
            }
            _ => entries.push(entry),
        }
    }
    for (spool, entries) in &durable {
        if let (Some(spool), false) = (spool, entries.is_empty()) {
            complete(spool, entries, &shared.uses, &mut fail);
        }
    }
    // Every chit of the batch is terminal (or stuck in fetch/): their
    // targets are free for the chits parked on them.
    for entry in &batch {
        shared.targets.release(&entry.target);
    }
    let is_left = |id: &ChitId| {
        left.iter()
            .any(|step| matches!(step, Step::Stuck(left) | Step::Short(left) if left == id))
    };
    let done = batch
        .into_iter()
        .map(|e| ChitId::new(e.consumer, e.name))
        .filter(|id| !is_left(id))
        .collect();
    Step::Committed { done, left }
}

/// fsync each delivery directory of `batch` once (chits delivered into one
/// share it).
fn sync_parents(batch: &[Commit]) -> Vec<(&Arc<Dir>, std::io::Result<()>)> {
    let mut synced: Vec<(&Arc<Dir>, std::io::Result<()>)> = Vec::new();
    for entry in batch {
        if !synced
            .iter()
            .any(|(dir, _)| Arc::ptr_eq(dir, &entry.parent))
        {
            synced.push((&entry.parent, entry.parent.sync()));
        }
    }
    synced
}

/// Move one consumer's durably delivered chits `fetch/ → downloaded/`
/// with one fsync of `downloaded/`, recording each as a use of its object;
/// `fail` those that cannot move.
fn complete(
    spool: &Spool,
    entries: &[&Commit],
    uses: &crate::uses::Recorder,
    fail: &mut impl FnMut(&Spool, &Commit, String),
) {
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let completed = spool.complete_all(&names);
    let mut used = Vec::with_capacity(entries.len());
    for (entry, renamed) in entries.iter().zip(completed.renamed) {
        match renamed {
            Ok(()) => {
                tracing::info!(
                    consumer = %spool.name, chit = %entry.name, digest = %entry.digest, path = %entry.path,
                    from = entry.from, "downloaded: fetch/ → downloaded/"
                );
                // Just downloaded, the object's publish set its last use.
                let touch = entry.from != "download";
                used.push((entry.digest, entry.path.as_str(), touch));
            }
            Err(e) => fail(
                spool,
                entry,
                format!(
                    "{} was delivered, but the chit cannot move to downloaded/: {e}",
                    entry.path
                ),
            ),
        }
    }
    // A delivery is a use of its object (written in batches).
    uses.record_all(used);
    if let Err(e) = completed.synced {
        tracing::error!(consumer = %spool.name, chits = names.len(), "moved to downloaded/, but a power cut may undo it: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chit::Digest;
    use crate::daemon::work::Target;

    fn delivered(dir: &Arc<Dir>, name: &str) -> Commit {
        let id = FileId { dev: 1, ino: 2 };
        Commit {
            consumer: 0,
            name: name.to_owned(),
            digest: Digest::parse_hex(&"ab".repeat(32)).unwrap(),
            path: name.to_owned(),
            from: "cache",
            claimed_in: id,
            parent: Arc::clone(dir),
            parent_id: Some(id),
            target: Target::new(id, name),
        }
    }

    fn dir() -> (tempfile::TempDir, Arc<Dir>) {
        let temp = tempfile::tempdir().unwrap();
        let dir = Arc::new(Dir::open_root(temp.path()).unwrap());
        (temp, dir)
    }

    /// With other deliveries under way, the oldest chit waits at most
    /// [`COMMIT_LINGER`]; with none, it is committed at once; chits
    /// delivered while a commit runs wait for the next one.
    #[tokio::test(start_paused = true)]
    async fn a_commit_lingers_only_while_deliveries_are_under_way() {
        let (_temp, dir) = dir();
        let mut commits = GroupCommit::new(512);
        assert_eq!(commits.deadline(true), None, "nothing waits");
        let start = Instant::now();
        commits.add(delivered(&dir, "a"), start);
        assert_eq!(commits.deadline(true), Some(start + COMMIT_LINGER));
        assert_eq!(commits.deadline(false), Some(start), "nothing to wait for");
        tokio::time::sleep(COMMIT_LINGER / 2).await;
        commits.add(delivered(&dir, "b"), Instant::now());
        assert_eq!(
            commits.deadline(true),
            Some(start + COMMIT_LINGER),
            "from the oldest"
        );
        assert!(commits.take_due(Instant::now(), true).is_none());
        tokio::time::sleep_until(commits.deadline(true).unwrap()).await;
        let batch = commits.take_due(Instant::now(), true).unwrap();
        assert_eq!(batch.len(), 2);
        // One directory handle for the batch's chits delivered into one.
        assert!(Arc::ptr_eq(&batch[0].parent, &batch[1].parent));
        // Running: the next chit waits for it to end, whatever the time.
        commits.add(delivered(&dir, "c"), Instant::now());
        assert_eq!(commits.deadline(false), None);
        tokio::time::sleep(10 * COMMIT_LINGER).await;
        assert!(commits.take_due(Instant::now(), false).is_none());
        commits.ended();
        assert_eq!(commits.take_due(Instant::now(), true).unwrap().len(), 1);
    }

    /// A full batch ([`COMMIT_BATCH`], or less under a low open files
    /// limit) starts at once, deliveries under way or not.
    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_committed_at_once() {
        let (_temp, dir) = dir();
        for (backlog, full) in [(4 * COMMIT_BATCH, COMMIT_BATCH), (8, 8)] {
            let mut commits = GroupCommit::new(backlog);
            let start = Instant::now();
            for i in 0..full - 1 {
                commits.add(delivered(&dir, &i.to_string()), start);
            }
            assert_eq!(commits.deadline(true), Some(start + COMMIT_LINGER));
            commits.add(delivered(&dir, "last"), start);
            assert_eq!(commits.deadline(true), Some(start));
            assert_eq!(commits.take_due(start, true).unwrap().len(), full);
        }
    }
}
