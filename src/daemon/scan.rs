//! Scans: the directories are the truth, events only hints. Each scan of
//! a consumer opens its state directories anew if the consumer made them
//! anew, reports directories removed or replaced while chitd runs (once
//! each), and queues every chit in `request/` (and `fetch/`, at start and
//! when idle: anything there then is nobody's work) that is not queued or
//! worked on already, but the stuck chits whose retry is not due.

use std::collections::HashSet;
use std::path::PathBuf;

use tokio::time::Instant;

use super::Shared;
use super::chit_id::display_name;
use super::queue::Queues;
use super::stuck::Stuck;
use super::work::Origin;
use crate::spool::Spool;

/// What scans have reported, so they report each thing once.
#[derive(Debug, Default)]
pub struct Scans {
    /// Directories found removed or replaced, per consumer.
    lost_dirs: HashSet<(usize, PathBuf)>,
    /// Consumers whose new state directories could not be opened.
    refresh_failing: HashSet<usize>,
}

impl Scans {
    /// Open the state directories of `consumer` anew if it made them anew;
    /// returns whether they were (then what their `fetch/` holds is
    /// nobody's work, and what waited in the old ones is gone).
    pub fn refresh(&mut self, shared: &Shared, consumer: usize) -> bool {
        let opened = &shared.consumers[consumer];
        match opened.refresh(&shared.watch) {
            Ok(true) => {
                self.refresh_failing.remove(&consumer);
                true
            }
            Ok(false) => false,
            Err(e) if self.refresh_failing.insert(consumer) => {
                tracing::error!(consumer = %opened.name, "cannot open the new state directories: {e}");
                false
            }
            Err(e) => {
                tracing::debug!(consumer = %opened.name, "cannot open the new state directories: {e}");
                false
            }
        }
    }

    /// Log each directory of `consumer` that was removed or replaced while
    /// chitd runs, once, with what it means.
    pub fn report_lost(&mut self, shared: &Shared, consumer: usize, spool: &Spool) {
        let opened = &shared.consumers[consumer];
        let remedy = if spool.root_removed() {
            "this consumer is served again after a restart of chitd"
        } else {
            "chitd serves a new one once it is made again"
        };
        let mut lost: Vec<(PathBuf, &str)> = spool
            .lost_states()
            .into_iter()
            .map(|dir| (dir.path().to_path_buf(), remedy))
            .collect();
        if opened.deliver.is_removed() {
            let remedy = "deliveries to this consumer fail until chitd is restarted";
            lost.push((opened.deliver.path().to_path_buf(), remedy));
        }
        if lost.is_empty() {
            self.lost_dirs.retain(|(c, _)| *c != consumer);
        }
        for (path, remedy) in lost {
            if self.lost_dirs.insert((consumer, path.clone())) {
                tracing::error!(
                    consumer = %opened.name,
                    "{} was removed or replaced while chitd runs: {remedy}",
                    path.display()
                );
            }
        }
    }
}

/// Queue the chits of `consumer` in `request/` (and first `fetch/`, if
/// `with_fetch`) that are neither known nor held by `stuck`. With both
/// directories listed, a stuck chit found in neither was removed by its
/// consumer: it is forgotten.
pub fn queue_chits<R>(
    spool: &Spool,
    consumer: usize,
    with_fetch: bool,
    queues: &mut Queues<R>,
    stuck: &mut Stuck,
) {
    let mut dirs = vec![(&spool.request, Origin::Request)];
    if with_fetch {
        dirs.insert(0, (&spool.fetch, Origin::Fetch));
    }
    let mut prune = with_fetch && stuck.any(consumer);
    let mut seen = HashSet::new();
    for (dir, origin) in dirs {
        let names = match spool.chits(dir) {
            Ok(names) => names,
            Err(e) => {
                prune = false;
                tracing::error!(consumer = %spool.name, "cannot scan {}: {e}", dir.path().display());
                continue;
            }
        };
        let now = Instant::now();
        for name in names {
            if stuck.any(consumer) {
                if prune {
                    seen.insert(name.clone());
                }
                if stuck.is_held(consumer, &name, now) {
                    continue;
                }
            }
            queues.push(consumer, name, origin);
        }
    }
    if prune {
        for name in stuck.prune(consumer, &seen) {
            tracing::info!(consumer = %spool.name, chit = %display_name(&name), "the stuck chit is gone from request/ and fetch/; forgotten");
        }
    }
}
