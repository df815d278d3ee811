//! Housekeeping: work no chit waits for. Syncing the cache directories
//! that received new objects, sweeping orphaned partial downloads, and the
//! status file of the downloads under way.
//!
//! New cache objects are spread over 256 directories; syncing each as it
//! comes would cost about one fsync per object. So the directories that
//! received objects are fsync'd in rounds, at most every
//! [`CACHE_SYNC_INTERVAL`] while the daemon is busy, at once when it is
//! quiet or stopping.
//!
//! Orphaned partial downloads (no chit wrote to them for
//! [`crate::store::ORPHAN_GRACE`]) are swept at the first idle moment and
//! every [`ORPHAN_SWEEP_INTERVAL`] of idleness after that; a daemon never
//! idle for [`ORPHAN_SWEEP_BUSY`] sweeps anyway, sparing the partials of
//! the downloads under way or waiting for a slot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::rates::Speed;
use super::status_file;
use crate::inflight::Key;

/// How often an idle daemon looks for orphaned partial downloads (and once
/// at its first idle moment).
pub const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// A daemon that has not been idle for this long looks for orphaned
/// partial downloads anyway, sparing those of downloads under way or
/// waiting for a slot.
pub const ORPHAN_SWEEP_BUSY: Duration = Duration::from_secs(24 * 3600);
/// Cache directories that received new objects are fsync'd at most this
/// often while the daemon is busy (at once when it is quiet or stopping):
/// nobody waits for them.
pub const CACHE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Housekeeping {
    /// Cache directories that received new objects since the last round of
    /// their fsyncs.
    unsynced_cache_dirs: BTreeSet<PathBuf>,
    /// Whether a round of cache directory fsyncs is running.
    syncing_cache_dirs: bool,
    last_cache_sync: Option<Instant>,
    /// When orphaned partial downloads were last looked for.
    orphans_swept: Option<Instant>,
    /// The start, or the last sweep: what [`ORPHAN_SWEEP_BUSY`] counts from.
    unswept_since: Instant,
}

impl Housekeeping {
    pub fn new(now: Instant) -> Housekeeping {
        Housekeeping {
            unsynced_cache_dirs: BTreeSet::new(),
            syncing_cache_dirs: false,
            last_cache_sync: None,
            orphans_swept: None,
            unswept_since: now,
        }
    }

    /// A new cache object was published: its directory needs an fsync.
    pub fn published(&mut self, object: &Path) {
        if let Some(dir) = object.parent() {
            self.unsynced_cache_dirs.insert(dir.to_path_buf());
        }
    }

    /// Whether a round of cache directory fsyncs is running (a task on the
    /// local pool that is no chit's).
    pub fn is_syncing(&self) -> bool {
        self.syncing_cache_dirs
    }

    /// Cache directories wait for their fsync.
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced_cache_dirs.is_empty()
    }

    /// The cache directories to fsync now, if a round is due at `now`
    /// (`quiet`: no chit is being worked on); the round runs until
    /// [`Housekeeping::cache_synced`].
    pub fn cache_sync_due(&mut self, now: Instant, quiet: bool) -> Option<Vec<PathBuf>> {
        let due = quiet
            || self
                .last_cache_sync
                .is_none_or(|last| now - last >= CACHE_SYNC_INTERVAL);
        if self.syncing_cache_dirs || self.unsynced_cache_dirs.is_empty() || !due {
            return None;
        }
        self.syncing_cache_dirs = true;
        self.last_cache_sync = Some(now);
        Some(
            std::mem::take(&mut self.unsynced_cache_dirs)
                .into_iter()
                .collect(),
        )
    }

    pub fn cache_synced(&mut self) {
        self.syncing_cache_dirs = false;
    }

    /// Every cache directory waiting for its fsync (when stopping).
    pub fn take_unsynced(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.unsynced_cache_dirs)
            .into_iter()
            .collect()
    }

    /// Whether orphaned partials are to be swept at `now`: `idle` and
    /// never swept or not for [`ORPHAN_SWEEP_INTERVAL`], or not swept for
    /// [`ORPHAN_SWEEP_BUSY`], busy or not.
    pub fn orphan_sweep_due(&self, now: Instant, idle: bool) -> bool {
        let idle_due = idle
            && self
                .orphans_swept
                .is_none_or(|last| now - last >= ORPHAN_SWEEP_INTERVAL);
        idle_due || now - self.unswept_since >= ORPHAN_SWEEP_BUSY
    }

    /// Remove the partial downloads no chit has written to for
    /// [`crate::store::ORPHAN_GRACE`], but those of `spared` (the
    /// downloads under way or waiting for a slot); see
    /// [`crate::store::Store::remove_orphaned_partials`].
    pub async fn sweep_orphans(&mut self, shared: &Arc<Shared>, spared: HashSet<Key>) {
        let now = Instant::now();
        self.orphans_swept = Some(now);
        self.unswept_since = now;
        let shared = Arc::clone(shared);
        let swept = tokio::task::spawn_blocking(move || {
            shared
                .store
                .remove_orphaned_partials(|digest, size| spared.contains(&Key { digest, size }))
        })
        .await;
        match swept {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot remove orphaned partial downloads: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Write each consumer's status file: its chits waiting for a running
/// download, and how far each download is.
pub fn write_status(
    shared: &Shared,
    downloads: &super::downloads::Downloads,
    speeds: &HashMap<Key, Speed>,
) {
    let inflight = downloads.inflight();
    for index in shared.serving() {
        let consumer = &shared.consumers[index];
        let stopping = downloads.stopping_for(index);
        let downloads = inflight.running().flat_map(|(key, done, waiters)| {
            waiters
                .iter()
                .filter(move |w| w.consumer == index)
                .map(move |w| status_file::InFlightChit {
                    chit: w.name.clone(),
                    digest: key.digest.to_string(),
                    path: w.chit.path.to_string(),
                    done,
                    total: key.size,
                    rate: speeds.get(key).map_or(0, |speed| speed.rate),
                    source: speeds.get(key).and_then(|speed| speed.source.clone()),
                    stopping: false,
                })
        });
        let mut shown: Vec<_> = downloads.collect();
        shown.extend(stopping);
        consumer.status.write(shown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy, the cache directories are synced at most once a
    /// [`CACHE_SYNC_INTERVAL`]; quiet, at once; one round at a time.
    #[tokio::test(start_paused = true)]
    async fn cache_syncs_are_paced_while_busy() {
        let mut housekeeping = Housekeeping::new(Instant::now());
        assert_eq!(housekeeping.cache_sync_due(Instant::now(), true), None);
        housekeeping.published(Path::new("/cache/ab/object"));
        let dirs = housekeeping.cache_sync_due(Instant::now(), false);
        assert_eq!(dirs, Some(vec![PathBuf::from("/cache/ab")]), "the first");
        housekeeping.published(Path::new("/cache/cd/object"));
        assert_eq!(housekeeping.cache_sync_due(Instant::now(), true), None);
        housekeeping.cache_synced();
        assert_eq!(housekeeping.cache_sync_due(Instant::now(), false), None);
        tokio::time::sleep(CACHE_SYNC_INTERVAL / 2).await;
        assert_eq!(housekeeping.cache_sync_due(Instant::now(), false), None);
        let quiet = housekeeping.cache_sync_due(Instant::now(), true);
        assert_eq!(quiet, Some(vec![PathBuf::from("/cache/cd")]));
        housekeeping.cache_synced();
        housekeeping.published(Path::new("/cache/ef/object"));
        tokio::time::sleep(CACHE_SYNC_INTERVAL).await;
        assert!(housekeeping.cache_sync_due(Instant::now(), false).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn orphans_are_swept_when_idle_hourly_and_daily_when_busy() {
        let mut housekeeping = Housekeeping::new(Instant::now());
        assert!(!housekeeping.orphan_sweep_due(Instant::now(), false));
        assert!(
            housekeeping.orphan_sweep_due(Instant::now(), true),
            "first idle moment"
        );
        housekeeping.orphans_swept = Some(Instant::now());
        housekeeping.unswept_since = Instant::now();
        tokio::time::sleep(ORPHAN_SWEEP_INTERVAL - Duration::from_secs(1)).await;
        assert!(!housekeeping.orphan_sweep_due(Instant::now(), true));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(housekeeping.orphan_sweep_due(Instant::now(), true));
        assert!(!housekeeping.orphan_sweep_due(Instant::now(), false));
        tokio::time::sleep(ORPHAN_SWEEP_BUSY).await;
        assert!(
            housekeeping.orphan_sweep_due(Instant::now(), false),
            "a day busy"
        );
    }
}
