//! The daemon's own collection of the cache within `cache_max_size` and
//! `cache_max_age`, by the rules of `gc`: at start, every
//! [`COLLECT_INTERVAL`], and when a publish takes the cache over its size.
//!
//! It runs on the blocking pool, one at a time, off the scheduler's
//! thread: deliveries never wait for it. The size of the cache is kept as
//! a running total: counted by each collection, plus the objects
//! published since it began.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use crate::cache::gc::{self, Summary};
use crate::config::{CacheLimits, Config};
use crate::uses::Recorder;

/// A collection runs this long after the last one ended, at the latest.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(3600);
/// After a collection that left the cache over its size (chits named what
/// it holds), a publish starts the next one no sooner than this.
pub const COLLECT_GAP: Duration = Duration::from_secs(10);

/// The last-use record of the cache of `config`. Lists the consumers'
/// spools in the cache for `chitd cache gc` ([`gc::publish_spools`]).
pub fn record_uses(config: &Config) -> Recorder {
    if let Err(e) = gc::publish_spools(&config.cache, &spools(config)) {
        tracing::warn!(
            "cannot list the spools for `chitd cache gc` to spare their chits' objects: {e}"
        );
    }
    let objects = config.cache.join(crate::cache::OBJECTS_DIR);
    Recorder::start(&config.cache, objects)
}

fn spools(config: &Config) -> Vec<PathBuf> {
    config.consumers.iter().map(|c| c.spool.clone()).collect()
}

/// When and how the cache is collected.
pub struct Collector {
    limits: CacheLimits,
    cache: PathBuf,
    /// The consumers' spools: their chits' objects are spared.
    spools: Vec<PathBuf>,
    /// Bytes of objects in the cache: the last count, plus publishes.
    bytes: u64,
    /// Bytes published while a collection runs (it may not count them).
    published_during: u64,
    running: Option<JoinHandle<Option<Summary>>>,
    /// When the next collection is due (`None`: no limit is set).
    due: Option<Instant>,
    /// When the last one ended, and whether it left the cache too big.
    ended: Option<(Instant, bool)>,
}

impl Collector {
    /// The collector of the cache of `config`, by its limits.
    pub fn for_config(config: &Config) -> Collector {
        Collector::new(config.cache_limits, config.cache.clone(), spools(config))
    }

    /// Due at once, if there is a limit at all.
    pub fn new(limits: CacheLimits, cache: PathBuf, spools: Vec<PathBuf>) -> Collector {
        Collector {
            due: limits.is_set().then(Instant::now),
            limits,
            cache,
            spools,
            bytes: 0,
            published_during: 0,
            running: None,
            ended: None,
        }
    }

    /// When to start the next collection: `None` while one runs.
    pub fn due(&self) -> Option<Instant> {
        self.due.filter(|_| self.running.is_none())
    }

    /// An object of `size` bytes was published: collect if that takes the
    /// cache over its size.
    pub fn published(&mut self, size: u64) {
        self.bytes = self.bytes.saturating_add(size);
        if self.running.is_some() {
            self.published_during = self.published_during.saturating_add(size);
            return;
        }
        if self.limits.max_size.is_some_and(|max| self.bytes > max) {
            let now = Instant::now();
            let at = match self.ended {
                Some((ended, true)) => (ended + COLLECT_GAP).max(now),
                _ => now,
            };
            self.due = Some(self.due.map_or(at, |due| due.min(at)));
        }
    }

    /// Start a collection on the blocking pool.
    pub fn start(&mut self, shared: &Arc<Shared>) {
        let (cache, spools, limits) = (self.cache.clone(), self.spools.clone(), self.limits);
        let shared = Arc::clone(shared);
        self.published_during = 0;
        self.running = Some(tokio::task::spawn_blocking(move || {
            // The uses not yet written count: they are recent.
            shared.uses.flush();
            collect(&cache, &spools, &limits)
        }));
    }

    /// Start a collection if one is due by now.
    pub fn start_if_due(&mut self, shared: &Arc<Shared>) {
        if self.due().is_some_and(|due| due <= Instant::now()) {
            self.start(shared);
        }
    }

    /// Wait for the running collection to end (forever if none runs).
    pub async fn ended(&mut self) -> Option<Summary> {
        let Some(running) = &mut self.running else {
            return std::future::pending().await;
        };
        let summary = match running.await {
            Ok(summary) => summary,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.running = None;
        summary
    }

    /// A collection ended: count the cache anew, plan the next one.
    pub fn done(&mut self, summary: Option<Summary>) {
        let now = Instant::now();
        let too_big = |bytes: u64| self.limits.max_size.is_some_and(|max| bytes > max);
        // The objects chits name held the cache over its size.
        let left_over = summary.as_ref().is_some_and(|s| too_big(s.bytes));
        if let Some(summary) = summary {
            self.bytes = summary.bytes.saturating_add(self.published_during);
        }
        self.ended = Some((now, left_over));
        let next = match (too_big(self.bytes) && self.published_during > 0, left_over) {
            (true, false) => now,
            (true, true) => now + COLLECT_GAP,
            (false, _) => now + COLLECT_INTERVAL,
        };
        self.published_during = 0;
        self.due = self.limits.is_set().then_some(next);
    }

    /// A reload: collect by `config`'s limits, sparing its consumers'
    /// chits, from now on (the list for `chitd cache gc` too). Changed
    /// limits make a collection due at once; none stops collecting.
    pub fn reconfigure(&mut self, config: &Config) {
        self.spools = spools(config);
        if let Err(e) = gc::publish_spools(&config.cache, &self.spools) {
            tracing::warn!(
                "cannot list the spools for `chitd cache gc` to spare their chits' objects: {e}"
            );
        }
        if config.cache_limits != self.limits {
            self.limits = config.cache_limits;
            self.due = self.limits.is_set().then(Instant::now);
        }
    }

    /// Let a running collection end (at shutdown).
    pub async fn stop(&mut self) {
        if self.running.is_some() {
            let summary = self.ended().await;
            self.done(summary);
        }
    }
}

/// One collection, logged; `None` if it failed (logged too).
fn collect(cache: &std::path::Path, spools: &[PathBuf], limits: &CacheLimits) -> Option<Summary> {
    let removed = |object: &crate::cache::ls::Object| {
        let last_used = humantime::format_rfc3339_seconds(object.last_used);
        tracing::info!(digest = %object.digest, size = object.size, last_used = %last_used, "removed from the cache: least recently used");
    };
    match gc::collect(cache, spools, limits, false, removed) {
        Ok(summary) => {
            tracing::info!(
                removed = summary.removed,
                removed_bytes = summary.removed_bytes,
                objects = summary.objects,
                bytes = summary.bytes,
                pinned = summary.pinned,
                "cache collected"
            );
            Some(summary)
        }
        Err(e) => {
            tracing::error!("cannot collect the cache: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload that sets limits makes a collection due at once; one that
    /// removes them stops collecting; the same limits leave the plan be.
    #[tokio::test(start_paused = true)]
    async fn a_reload_sets_or_lifts_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_layout(dir.path());
        let mut collector = Collector::for_config(&config);
        assert_eq!(collector.due(), None, "no limit: never");

        config.cache_limits.max_size = Some(1_000);
        collector.reconfigure(&config);
        assert_eq!(collector.due(), Some(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        collector.done(None);
        let planned = collector.due();
        assert_eq!(planned, Some(Instant::now() + COLLECT_INTERVAL));
        collector.reconfigure(&config);
        assert_eq!(collector.due(), planned, "unchanged limits");

        config.cache_limits = CacheLimits::default();
        collector.reconfigure(&config);
        assert_eq!(collector.due(), None);
        collector.done(None);
        assert_eq!(collector.due(), None, "a collection that ends plans none");
    }
}
