//! Downloads nobody waits for any more.
//!
//! A consumer may remove its chits from `fetch/` while their download
//! runs. At each rescan ([`super::super::RESCAN_INTERVAL`]) the daemon
//! looks at the chits waiting for each running download, in their
//! consumers' `fetch/` (one `stat` per download while its first waiter is
//! there). A download whose every waiting chit is gone is stopped: its
//! task is cancelled and checkpoints, so its partial and progress record
//! stay for a later resume (an orphaned partial is swept only after
//! `store::ORPHAN_GRACE`). Until its task has ended, the status files of
//! the consumers whose chits waited show it as stopping. A chit for the
//! same file that comes meanwhile waits for the end, then gets a download
//! of its own, which resumes from the partial.

use std::collections::HashMap;

use super::Downloads;
use crate::daemon::Shared;
use crate::daemon::queue::Queues;
use crate::daemon::status_file::InFlightChit;
use crate::daemon::work::Waiter;
use crate::inflight::Key;

/// A download being stopped: the chits that waited for it, as (consumer,
/// chit, path), for the status files.
pub type Stopping = Vec<(usize, String, String)>;

impl Downloads {
    /// Stop the running downloads whose every waiting chit was removed
    /// from its `fetch/`; their chits' names are free at once.
    pub fn stop_unwanted<R>(&mut self, shared: &Shared, queues: &mut Queues<R>) {
        let unwanted: Vec<Key> = self
            .inflight
            .running()
            .filter(|(key, _, _)| !self.stopping.contains_key(key))
            .filter(|(_, _, waiters)| waiters.iter().all(|w| removed(shared, w)))
            .map(|(key, _, _)| *key)
            .collect();
        for key in unwanted {
            let of_key = |w: &Waiter| (w.chit.digest, w.chit.size) == (key.digest, key.size);
            let dropped = self.inflight.drop_waiters(of_key);
            for waiter in &dropped {
                queues.finished(waiter.consumer, &waiter.name);
            }
            if let Some(under_way) = self.under_way.get(&key) {
                under_way.cancel.cancel();
            }
            let chits: Vec<&str> = dropped.iter().map(|w| w.name.as_str()).collect();
            tracing::info!(
                digest = %key.digest, size = key.size, chits = %chits.join(", "),
                "download stopping: no chit waits for it (removed from fetch/); its partial is kept for a later resume"
            );
            let waited = dropped.into_iter();
            let waited = waited.map(|w| (w.consumer, w.name, w.chit.path.to_string()));
            self.stopping.insert(key, waited.collect());
        }
    }

    /// The download of `key`, stopped for want of waiters, has ended:
    /// chits that came for its file meanwhile get a download of their own
    /// (it resumes from the partial). Returns whether it was stopping.
    pub(super) fn stopped(&mut self, key: Key) -> bool {
        if self.stopping.remove(&key).is_none() {
            return false;
        }
        let waiters = self.inflight.finish(&key).unwrap_or_default();
        tracing::info!(
            digest = %key.digest, size = key.size, waiting_now = waiters.len(),
            "download stopped: no chit waited for it; its partial is kept"
        );
        for waiter in waiters {
            self.inflight.add(waiter.consumer, key, waiter);
        }
        true
    }

    /// What the status file of `consumer` shows of the downloads being
    /// stopped: each chit of its that waited, marked stopping.
    pub fn stopping_for(&self, consumer: usize) -> Vec<InFlightChit> {
        let progress: HashMap<&Key, u64> = self
            .inflight
            .running()
            .map(|(key, done, _)| (key, done))
            .collect();
        let mut shown = Vec::new();
        for (key, chits) in &self.stopping {
            let mine = chits.iter().filter(|(c, _, _)| *c == consumer);
            shown.extend(mine.map(|(_, chit, path)| InFlightChit {
                chit: chit.clone(),
                digest: key.digest.to_string(),
                path: path.clone(),
                done: progress.get(key).copied().unwrap_or(0),
                total: key.size,
                rate: 0,
                source: None,
                stopping: true,
            }));
        }
        shown
    }
}

/// Whether the chit of `waiter` is no longer in the `fetch/` it was
/// claimed into. Only "no such file" counts: any other error leaves the
/// download be.
fn removed(shared: &Shared, waiter: &Waiter) -> bool {
    let spool = shared.consumers[waiter.consumer].spool();
    if spool.fetch_id() != waiter.claimed_in {
        return true; // that fetch/ was removed, and made anew
    }
    matches!(spool.fetch.kind(&waiter.name), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}
