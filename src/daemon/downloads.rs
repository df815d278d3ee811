//! The downloads: at most one per file ([`InFlight`]), at most `jobs` at
//! once, with the chits waiting for each, their early deliveries, and what
//! each failed download left to try.
//!
//! A chit that misses the cache waits for its file's download, holding no
//! task and no slot. One that joins a running download hands it its
//! sources. A download that fails while a waiter names sources nobody
//! tried is started again for them all, from those sources only, and the
//! final reason lists every round's answer. A verified download is
//! published on the local pool, delivered there to its lone waiter (or the
//! one its early delivery copied for); the others get their delivery
//! queued. Once a file of a digest is known, downloads of the digest with
//! another size are stopped and their chits failed.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::batch::ToPublish;
use super::host_slots::{HostSlots, SLOT};
use super::local::LocalPool;
use super::queue::Queues;
use super::rates::{Rates, Speed, source_host};
use super::work::{self, Step, Waiter};
use crate::chase::{CHASE_MIN, Chase, Target};
use crate::chit::{DeliveryPath, Digest};
use crate::fetch::{Cause, DownloadError, Failure, HostKey, Job, MoreSources};
use crate::inflight::{InFlight, Key};
use crate::partial::{Frontier, Partial};
use crate::store::Lookup;

mod stopping;

/// A chit whose download ended, and that download's outcome: the cache
/// object, or the reason to fail it.
pub type Delivery = (Waiter, Arc<Result<PathBuf, Failure>>);

/// A finished download: what it fetched, the sources it tried, its result.
pub type DownloadOutcome = (Key, Vec<url::Url>, Result<Partial, DownloadError>);

/// A download under way: where chits that join it hand it their sources,
/// and its own cancellation (a child of the daemon's: a download of a size
/// known wrong is stopped).
struct UnderWay {
    more: Arc<MoreSources>,
    cancel: CancellationToken,
    started: std::time::Instant,
}

pub struct Downloads {
    inflight: InFlight<Waiter>,
    /// The download tasks.
    tasks: JoinSet<DownloadOutcome>,
    under_way: HashMap<Key, UnderWay>,
    /// Finished downloads being published, and when each started (for the
    /// log line's duration and rate).
    publishing: HashMap<Key, std::time::Instant>,
    /// Verified downloads not delivered early, waiting to be published
    /// by a batch ([`super::batch`]).
    ready: VecDeque<ToPublish>,
    /// Early deliveries of the downloads under way (see [`crate::chase`]).
    chases: HashMap<Key, Chase>,
    /// Sources already tried in vain for a file that is being retried
    /// from sources that chits joining later named.
    tried: HashMap<Key, Vec<url::Url>>,
    /// The reasons of those earlier, failed downloads: the final reason
    /// lists every source's answer, not only the last round's.
    earlier_failures: HashMap<Key, Failure>,
    /// Samples of the running downloads' progress, for their rates.
    rates: Rates,
    /// Download slots: one download each, or a share of one for
    /// downloads that share slots (see [`super::host_slots`]).
    jobs: usize,
    /// How many of them one host may hold.
    host_slots: HostSlots,
    cancel: CancellationToken,
    /// Downloads being stopped: every chit that waited was removed (see
    /// `stopping`).
    stopping: HashMap<Key, stopping::Stopping>,
}

impl Downloads {
    pub fn new(jobs: usize) -> Downloads {
        Downloads {
            inflight: InFlight::default(),
            tasks: JoinSet::new(),
            under_way: HashMap::new(),
            publishing: HashMap::new(),
            ready: VecDeque::new(),
            chases: HashMap::new(),
            tried: HashMap::new(),
            earlier_failures: HashMap::new(),
            rates: Rates::default(),
            jobs,
            host_slots: HostSlots::new(jobs),
            cancel: CancellationToken::new(),
            stopping: HashMap::new(),
        }
    }

    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// A reload changed `jobs`: downloads running over a lower limit
    /// finish; new ones start under it.
    pub fn set_jobs(&mut self, jobs: usize) {
        self.jobs = jobs;
        self.host_slots.set_jobs(jobs);
    }

    /// The downloads and their waiters.
    pub fn inflight(&self) -> &InFlight<Waiter> {
        &self.inflight
    }

    /// Each running download's rate and the host of the source it asked
    /// last, sampled now (see [`super::rates`]).
    pub fn speeds(&mut self) -> HashMap<Key, Speed> {
        let running = self.inflight.running().map(|(key, done, _)| (*key, done));
        let rates = self.rates.sample(running, std::time::Instant::now());
        let source = |key: &Key| {
            let serving = self.under_way.get(key)?.more.serving()?;
            Some(source_host(&serving))
        };
        rates
            .into_iter()
            .map(|(key, rate)| {
                (
                    key,
                    Speed {
                        rate,
                        source: source(&key),
                    },
                )
            })
            .collect()
    }

    /// No download is running, waiting for a slot or to be published.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.inflight.is_empty() && self.ready.is_empty()
    }

    /// The next verified download waiting to be published by a batch.
    pub fn next_to_publish(&mut self) -> Option<ToPublish> {
        self.ready.pop_front()
    }

    /// Verified downloads wait to be published by a batch.
    pub fn publishes_waiting(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next download that ended.
    pub async fn join_next(&mut self) -> Option<DownloadOutcome> {
        match self.tasks.join_next().await? {
            Ok(outcome) => Some(outcome),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// A download of another size of a digest waits for the one under way
    /// no longer than `limit`.
    pub fn release_overdue(&mut self, limit: std::time::Duration) {
        self.inflight
            .release_overdue(std::time::Instant::now(), limit);
    }

    /// Start the downloads the job slots allow while `local` holds, with
    /// the downloads waiting to be published, fewer than `local_limit`
    /// chits (a finished download is published there).
    pub fn start(&mut self, shared: &Arc<Shared>, local: &mut LocalPool, local_limit: usize) {
        while local.chits() + self.ready.len() < local_limit
            && let Some((key, waiters, progress)) =
                self.inflight
                    .start_next_where(self.jobs * SLOT, |host, load, key| {
                        let Some(host) = host else {
                            return Some(SLOT);
                        };
                        let room = shared.fetcher.host_room(host);
                        self.host_slots.admit(host, load, room, key.size)
                    })
        {
            let mut job = job(&shared.mirrors, key.digest, waiters);
            if let Some(tried) = self.tried.get(&key) {
                job.sources.retain(|source| !tried.contains(source));
            }
            tracing::info!(
                digest = %key.digest, size = job.size, waiters = waiters.len(),
                sources = job.sources.len(), "download started"
            );
            let first = waiters
                .first()
                .map(|w| (w.consumer, w.name.clone(), w.chit.path.clone()));
            let frontier = self.start_chase(shared, local, key, first);
            let cancel = self.cancel.child_token();
            let under_way = UnderWay {
                more: Arc::clone(&job.more),
                cancel: cancel.clone(),
                started: std::time::Instant::now(),
            };
            self.under_way.insert(key, under_way);
            let shared = Arc::clone(shared);
            self.tasks.spawn(async move {
                let store = Arc::clone(&shared.store);
                let download = shared
                    .fetcher
                    .download(store, &mut job, &progress, frontier, &cancel);
                let result = Box::pin(download).await;
                (key, job.sources, result)
            });
        }
        crate::metrics::METRICS.downloads_running(self.tasks.len());
    }

    /// For a big download, start delivering it to its first waiter while
    /// it downloads (see [`crate::chase`]); returns the frontier the
    /// download must publish.
    fn start_chase(
        &mut self,
        shared: &Arc<Shared>,
        local: &mut LocalPool,
        key: Key,
        first: Option<(usize, String, DeliveryPath)>,
    ) -> Option<Arc<Frontier>> {
        let (consumer, name, path) = first?;
        let Key { digest, size } = key;
        if size < CHASE_MIN || Partial::fits_in_memory(size) {
            return None;
        }
        let frontier = Arc::new(Frontier::default());
        let part = Partial::part_path(shared.store.partials_dir(), &digest, size);
        let shared = Arc::clone(shared);
        let prepare = move || {
            // Only into a directory that exists: a download that fails
            // must leave nothing in the consumer's directory, not even a
            // new empty directory.
            let root = &shared.consumers[consumer].deliver;
            let parent = root.open_dirs(path.parent_components(), &shared.durable_dirs)?;
            let name = path.file_name().to_owned();
            let (temp, file) = parent.create_temp(&name)?;
            Ok(Target {
                parent,
                temp,
                file,
                name,
            })
        };
        let chase = Chase::start(consumer, name, part, size, Arc::clone(&frontier), prepare)?;
        if let Some(earlier) = self.chases.insert(key, chase) {
            abort_chase(local, earlier, key, None);
        }
        Some(frontier)
    }

    /// A chit that missed the cache waits for its file's download (joining
    /// a running one hands it the chit's sources), unless the download it
    /// missed was being published and is over now: then its delivery from
    /// the cache is queued.
    pub fn wait(&mut self, shared: &Shared, waiter: Waiter, queues: &mut Queues<Delivery>) {
        let key = Key {
            digest: waiter.chit.digest,
            size: waiter.chit.size,
        };
        // One `stat`, only when the digest is one this run published or
        // checked and no download of it is left.
        if !self.inflight.contains(&key)
            && shared.store.published_or_checked(&key.digest)
            && let Ok(Lookup::Hit(object)) = shared.store.lookup(&key.digest, key.size)
        {
            tracing::debug!(digest = %key.digest, chit = %waiter.name, "published while the chit looked for it");
            queues.push_delivery(waiter.consumer, (waiter, Arc::new(Ok(object))));
            return;
        }
        if let Some(under_way) = self.under_way.get(&key) {
            let tried = self.tried.get(&key);
            let sources = sources(&shared.mirrors, std::slice::from_ref(&waiter))
                .into_iter()
                .filter(|source| tried.is_none_or(|tried| !tried.contains(source)));
            under_way.more.add(sources);
        }
        let host = first_host(&shared.mirrors, &waiter, self.tried.get(&key));
        self.inflight.add_from(waiter.consumer, host, key, waiter);
    }

    /// A download ended: publish it on the `local` pool (delivering it to
    /// one waiter there), or settle its failure.
    pub fn done(
        &mut self,
        shared: &Arc<Shared>,
        (key, tried, result): DownloadOutcome,
        local: &mut LocalPool,
        queues: &mut Queues<Delivery>,
    ) {
        let started = self
            .under_way
            .remove(&key)
            .map(|under_way| under_way.started);
        if let Some(host) = self.inflight.host_of(&key) {
            match &result {
                Ok(_) => self.host_slots.verified(host),
                Err(DownloadError::Failed(_)) => self.host_slots.failed(host),
                Err(DownloadError::Shutdown) => {}
            }
        }
        crate::metrics::METRICS.downloads_running(self.tasks.len());
        if matches!(result, Err(DownloadError::Shutdown)) && self.stopped(key) {
            if let Some(chase) = self.chases.remove(&key) {
                abort_chase(local, chase, key, None);
            }
            return;
        }
        self.stopping.remove(&key);
        let error = match result {
            Ok(partial) => {
                if let Some(started) = started {
                    self.publishing.insert(key, started);
                }
                return self.publish(shared, key, partial, local);
            }
            Err(error) => error,
        };
        let failed = match error {
            DownloadError::Failed(failure) => {
                tracing::warn!(digest = %key.digest, size = key.size, "download failed: {failure}");
                let errors = failure.answers.iter();
                let errors = errors.filter_map(|a| Some((&a.source, a.error.as_ref()?)));
                crate::metrics::METRICS.download_failed(errors);
                Some((tried, Failure::from(failure)))
            }
            // Shut down, or stopped because its size is known wrong (its
            // chits were failed then).
            DownloadError::Shutdown => None,
        };
        match (self.chases.remove(&key), failed) {
            (Some(chase), failed) => abort_chase(local, chase, key, failed),
            (None, Some((tried, reason))) => {
                self.settle(shared, key, Some(tried), Err(reason), queues)
            }
            (None, None) => {}
        }
    }

    /// How long the download of `key`, published now, took: from its start
    /// to the file in the cache (zero if not known).
    pub fn took(&mut self, key: &Key) -> std::time::Duration {
        self.publishing
            .remove(key)
            .map_or(std::time::Duration::ZERO, |started| started.elapsed())
    }

    /// The transfer is over: its slot is free for the next one, while the
    /// local pool publishes (fdatasync and rename: for many small files,
    /// this is where the time goes). The waiter a chase copied for is
    /// delivered with the publish, whoever else waits; else a lone waiter.
    fn publish(&mut self, shared: &Arc<Shared>, key: Key, partial: Partial, local: &mut LocalPool) {
        self.inflight.release(&key);
        let chase = self.chases.remove(&key);
        let lone = chase
            .as_ref()
            .and_then(|chase| {
                self.inflight.take_waiter(&key, |w| {
                    (w.consumer, &w.name) == (chase.consumer, &chase.name)
                })
            })
            .or_else(|| self.inflight.take_lone_waiter(&key));
        let Some(chase) = chase else {
            self.ready.push_back(ToPublish { partial, key, lone });
            return;
        };
        let shared = Arc::clone(shared);
        local.spawn(1, move || {
            work::publish_chased(&shared, partial, key, lone, chase)
        });
    }

    /// A download is over: hand its outcome to every waiter, or, when it
    /// failed (`tried`: the sources it tried) and a waiter names sources
    /// nobody tried yet, queue another download for them all. When it
    /// succeeded, the file of its digest is known: downloads of the digest
    /// with another size are stopped, and their chits failed.
    pub fn settle(
        &mut self,
        shared: &Shared,
        key: Key,
        tried: Option<Vec<url::Url>>,
        outcome: Result<PathBuf, Failure>,
        queues: &mut Queues<Delivery>,
    ) {
        let Some(waiters) = self.inflight.finish(&key) else {
            return;
        };
        match (outcome, tried) {
            (Err(failure), Some(tried)) if self.untried(shared, key, &tried, &waiters) => {
                let failure = failure.after(self.earlier_failures.remove(&key));
                self.earlier_failures.insert(key, failure);
                let tried = self.tried.get(&key);
                for waiter in waiters {
                    let host = first_host(&shared.mirrors, &waiter, tried);
                    self.inflight.add_from(waiter.consumer, host, key, waiter);
                }
            }
            (outcome, _) => self.hand_over(key, outcome, waiters, queues),
        }
    }

    /// Hand the final `outcome` of the download of `key` to its `waiters`
    /// (a failure after the earlier rounds' answers).
    fn hand_over(
        &mut self,
        key: Key,
        outcome: Result<PathBuf, Failure>,
        waiters: Vec<Waiter>,
        queues: &mut Queues<Delivery>,
    ) {
        if outcome.is_ok() {
            self.fail_other_sizes(key, queues);
        }
        self.tried.remove(&key);
        let earlier = self.earlier_failures.remove(&key);
        let outcome = Arc::new(outcome.map_err(|last| last.after(earlier)));
        for waiter in waiters {
            queues.push_delivery(waiter.consumer, (waiter, Arc::clone(&outcome)));
        }
    }

    /// Whether the failed download of `key` (from `tried`) goes again: a
    /// chit that joined after it started may name sources nobody tried yet;
    /// then all waiters get another download, from those sources only.
    fn untried(
        &mut self,
        shared: &Shared,
        key: Key,
        tried: &[url::Url],
        waiters: &[Waiter],
    ) -> bool {
        let tried_before = self.tried.entry(key).or_default();
        tried_before.extend_from_slice(tried);
        waiters.iter().any(|waiter| {
            sources(&shared.mirrors, std::slice::from_ref(waiter))
                .iter()
                .any(|source| !tried_before.contains(source))
        })
    }

    /// The file of `key.digest` is `key.size` bytes (verified): chits
    /// that name the digest with another size are wrong. Their downloads
    /// are taken out (a running one is cancelled: it could never verify)
    /// and the chits failed.
    fn fail_other_sizes(&mut self, key: Key, queues: &mut Queues<Delivery>) {
        for other in self.inflight.take_other_sizes(&key) {
            if let Some(under_way) = self.under_way.get(&other.key) {
                under_way.cancel.cancel();
            }
            self.tried.remove(&other.key);
            self.earlier_failures.remove(&other.key);
            tracing::info!(
                digest = %key.digest, size = other.key.size, waiters = other.waiters.len(),
                "download stopped: the file of this sha256 is {} bytes", key.size
            );
            let reason = Arc::new(Err(Failure::from(Cause::OtherSize {
                said: other.key.size,
                actual: key.size,
            })));
            for waiter in other.waiters {
                queues.push_delivery(waiter.consumer, (waiter, Arc::clone(&reason)));
            }
        }
    }

    /// Take out the waiters that are `gone`.
    pub fn drop_waiters(&mut self, gone: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
        self.inflight.drop_waiters(gone)
    }

    /// Stop: cancel every download (each checkpoints) and wait for them;
    /// returns the early deliveries they leave behind.
    pub async fn stop(&mut self) -> Vec<Chase> {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.chases.drain().map(|(_, chase)| chase).collect()
    }
}

/// Stop an early delivery and remove its temporary, on the local pool
/// (the daemon is not idle until that is done); then fail its download's
/// waiters, if it `failed` (so no temporary outlives a failed chit).
fn abort_chase(
    local: &mut LocalPool,
    chase: Chase,
    key: Key,
    failed: Option<(Vec<url::Url>, Failure)>,
) {
    local.spawn(1, move || {
        chase.abort();
        Step::ChaseAborted { key, failed }
    });
}

/// A download for `waiters`: their sources (see [`sources`]).
fn job(mirrors: &[url::Url], digest: Digest, waiters: &[Waiter]) -> Job {
    let sources = sources(mirrors, waiters);
    Job {
        digest,
        size: waiters[0].chit.size,
        more: Arc::new(MoreSources::new(&sources)),
        sources,
    }
}

/// The host of the first source `waiter` would ask that is not among
/// those `tried` (see [`super::host_slots`]).
fn first_host(
    mirrors: &[url::Url],
    waiter: &Waiter,
    tried: Option<&Vec<url::Url>>,
) -> Option<HostKey> {
    let sources = sources(mirrors, std::slice::from_ref(waiter));
    let first = sources
        .iter()
        .find(|source| tried.is_none_or(|tried| !tried.contains(source)))?;
    HostKey::of(first)
}

/// Sources for a download: every waiting chit's URLs (in order, once),
/// then each mirror as `<mirror>/<path>` for each distinct path.
fn sources(mirrors: &[url::Url], waiters: &[Waiter]) -> Vec<url::Url> {
    let mut sources: Vec<url::Url> = Vec::new();
    let mut push = |url: url::Url| {
        if !sources.contains(&url) {
            sources.push(url);
        }
    };
    waiters
        .iter()
        .flat_map(|w| w.chit.urls.iter().cloned())
        .for_each(&mut push);
    for mirror in mirrors {
        waiters
            .iter()
            .map(|w| w.chit.path.under(mirror))
            .for_each(&mut push);
    }
    sources
}
