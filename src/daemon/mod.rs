//! `chitd run`: recover, watch, schedule, and (optionally) exit when idle.
//!
//! One scheduler task owns all state: per-consumer queues of chit names
//! (served round-robin, so a flood in one spool never starves another), the
//! [`InFlight`] map of downloads and their waiting chits, and two task sets:
//! *local* steps (claim, parse, cache lookup, delivery: blocking file work,
//! at most [`LOCAL_SLOTS`] at once) and *downloads* (at most `jobs`). A chit
//! waiting for a download holds no task and no slot, so a slow download
//! never blocks cache hits.

mod consumer;
mod queue;
pub mod status_file;
mod work;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::queue::{Next, Queues};
use self::work::{Origin, Step, Waiter};
use crate::chase::{CHASE_MIN, Chase, Target};
use crate::chit::Digest;
use crate::config::Config;
use crate::dir::{Dir, DurableDirs};
use crate::fetch::{Cause, DownloadError, Failure, FetchSettings, Fetcher, Job, MoreSources};
use crate::inflight::{InFlight, Key};
use crate::partial::{Frontier, Partial};
use crate::spool::Spool;
use crate::store::{Lookup, Store};
use crate::watch::{Hint, Watch, watch};

pub use self::consumer::Consumer;
pub use self::status_file::{STATUS_FILE, StatusFile};

/// Chits whose local step (claim, parse, lookup, delivery) runs at once,
/// at most (fewer under a low open files limit: see [`LocalLimits`]).
/// Each delivery waits for its file's flush, and a disk serves the flushes
/// in flight together: on the 2-core VM of BENCHMARKS.md, 2,000 new 4 KiB
/// files are fdatasync'd in 1.1 s from one thread, 0.19 s from 32, 0.08-0.11 s
/// from 128, and no faster from more (256 threads cost more than they
/// overlap). Idle slots cost nothing: the blocking pool's threads exit
/// after 10 s without work.
pub const LOCAL_SLOTS: usize = 128;
/// How often an idle daemon looks for orphaned partial downloads (and once
/// at its first idle moment).
pub const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A daemon that has not been idle for this long looks for orphaned
/// partial downloads anyway, sparing those of downloads under way or
/// waiting for a slot.
pub const ORPHAN_SWEEP_BUSY: Duration = Duration::from_secs(24 * 3600);

/// Safety-net rescan of every `request/`, in case an event was lost.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the in-flight progress file is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// A delivered chit waits at most this long for others to share its group
/// commit (two directory fsyncs per commit) while more deliveries are under
/// way; a lone chit is committed at once.
pub const COMMIT_LINGER: Duration = Duration::from_millis(2);
/// A group commit starts at once when this many chits wait for it.
pub const COMMIT_BATCH: usize = 256;
/// Cache directories that received new objects are fsync'd at most this
/// often while the daemon is busy (at once when it is idle or stopping):
/// nobody waits for them, and new objects are spread over 256 directories,
/// so syncing them as they come would cost about one fsync per object.
pub const CACHE_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A stuck chit (one that cannot be claimed, or moved to `fail/`) is tried
/// again after this long, then twice as long each time it is still stuck,
/// up to [`STUCK_RETRY_MAX`]: a chit the consumer made immovable costs a
/// log line now and then, not one per rescan. (With `--exit-when-idle`
/// the daemon exits 1 instead, naming it.)
pub const STUCK_RETRY_FIRST: Duration = RESCAN_INTERVAL;
pub const STUCK_RETRY_MAX: Duration = Duration::from_secs(300);
/// A chit that chitd was short of descriptors or memory for
/// ([`Step::Short`]) is tried again at the next scan of an idle daemon (in
/// `fetch/`, where it was left; everything else is done by then, so what
/// it needs is free); this many times in a row, and it is stuck.
pub const SHORT_TRIES: u32 = 3;
/// After SIGTERM, how long downloads get to checkpoint.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How much local work may be under way at once, from the open files
/// limit: every local step holds a few descriptors (the chit, the cache
/// object, the delivery's directory and temporary), and so does every
/// delivered chit waiting for its group commit (its delivery directory,
/// shared with the others delivered into it, but chits may each have their
/// own). A budget that fits the limit keeps chitd from running out of
/// descriptors under a low one (then chits would be stuck, not failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLimits {
    /// Local steps at once ([`LOCAL_SLOTS`] at most).
    pub slots: usize,
    /// No new chit starts while this many delivered chits wait for a group
    /// commit (one is running, and slower than the deliveries): each holds
    /// its target and a descriptor, and the backlog would only grow, while
    /// the commit is what they all wait for.
    pub commit_backlog: usize,
}

impl LocalLimits {
    /// Descriptors a slot may account for: its own step's (up to 4: the
    /// chit, or the cache object, the delivery's directory and temporary),
    /// and the directories of chits waiting for a commit: up to
    /// `commit_backlog` (2 a slot) and the steps that end meanwhile (1) in
    /// the running commit, as many waiting for the next. Measured: 906 open
    /// at most with 128 slots, 30,000 chits each delivered into a directory
    /// of its own. (Counting the steps under way against the backlog would
    /// save two a slot, but costs a fifth of the throughput of a 100,000-chit
    /// backlog: smaller commits.)
    const PER_SLOT: u64 = 10;
    /// Descriptors kept for what does not grow with the slots (runtime,
    /// watches, spools, cache, logs, status file), and per download (its
    /// files, connection, early delivery).
    const BASE: u64 = 64;
    const PER_JOB: u64 = 16;
    /// The spool, its four state directories and the delivery directory,
    /// twice while they are opened anew.
    const PER_CONSUMER: u64 = 12;

    /// For an open files limit of `open_files` (`None`: unlimited), `jobs`
    /// downloads at once and `consumers` consumers.
    pub fn for_open_files(open_files: Option<u64>, jobs: usize, consumers: usize) -> LocalLimits {
        let reserved =
            Self::BASE + Self::PER_JOB * jobs as u64 + Self::PER_CONSUMER * consumers as u64;
        let slots = open_files.map_or(LOCAL_SLOTS, |limit| {
            let fit = limit.saturating_sub(reserved) / Self::PER_SLOT;
            usize::try_from(fit)
                .unwrap_or(usize::MAX)
                .clamp(1, LOCAL_SLOTS)
        });
        LocalLimits {
            slots,
            commit_backlog: 2 * slots,
        }
    }

    /// For this process's open files limit.
    pub fn for_this_process(jobs: usize, consumers: usize) -> LocalLimits {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        LocalLimits::for_open_files(limit, jobs, consumers)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub exit_when_idle: bool,
    pub fetch: FetchSettings,
    /// Safety-net rescan of every `request/` ([`RESCAN_INTERVAL`]).
    pub rescan_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            exit_when_idle: false,
            fetch: FetchSettings::default(),
            rescan_interval: RESCAN_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the cache: {0}")]
    Cache(std::io::Error),
    #[error("cannot open the spool of consumer {name}: {error}")]
    Spool { name: String, error: std::io::Error },
    #[error("cannot open the delivery directory of consumer {name}: {error}")]
    Deliver { name: String, error: std::io::Error },
    #[error("no consumer's directories could be opened")]
    NoConsumer,
    #[error("cannot watch the spools: {0}")]
    Watch(notify::Error),
    #[error("{0}")]
    Http(crate::fetch::ClientError),
    #[error(
        "not idle, but stuck: {0} cannot leave request/ or fetch/ (see the errors above); \
         exiting instead of retrying forever"
    )]
    Stuck(String),
}

/// Read-only state shared with every task.
#[derive(Debug)]
pub struct Shared {
    pub consumers: Vec<Consumer>,
    /// The watch on each consumer's `request/`, renewed when the consumer
    /// makes it anew.
    pub watch: std::sync::Mutex<Watch>,
    pub store: Arc<Store>,
    pub fetcher: Fetcher,
    pub mirrors: Vec<url::Url>,
    /// The delivery targets being delivered to.
    pub targets: work::Targets,
    /// Directories in delivery directories whose names are durable.
    pub durable_dirs: DurableDirs,
}

/// Serve until `shutdown` resolves (or, with `exit_when_idle`, until no
/// chit is left in any `request/` or `fetch/`).
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let store = Store::open(&config.cache).map_err(DaemonError::Cache)?;
    let mut consumers = Vec::new();
    for consumer in &config.consumers {
        // A consumer can make its own spool unusable (a symlink where a
        // state directory should be); that must not stop everyone else's.
        match Consumer::open(consumer) {
            Ok(opened) => {
                consumers.push(opened);
            }
            Err(e) if config.consumers.len() > 1 => {
                tracing::error!(consumer = %consumer.name, "not serving this consumer: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if consumers.is_empty() {
        return Err(DaemonError::NoConsumer);
    }
    let (hint_sender, hints) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let spools: Vec<Arc<Spool>> = consumers.iter().map(Consumer::spool).collect();
        let request_dirs: Vec<&Dir> = spools.iter().map(|spool| &spool.request).collect();
        watch(&request_dirs, hint_sender).map_err(DaemonError::Watch)?
    };
    let shared = Arc::new(Shared {
        consumers,
        watch: std::sync::Mutex::new(watch),
        store: Arc::new(store),
        fetcher: Fetcher::new(options.fetch.clone(), &config).map_err(DaemonError::Http)?,
        mirrors: config.mirrors.clone(),
        targets: work::Targets::default(),
        durable_dirs: DurableDirs::default(),
    });
    let jobs = config.jobs.max(1);
    let limits = LocalLimits::for_this_process(jobs, shared.consumers.len());
    if limits.slots < LOCAL_SLOTS {
        tracing::info!(
            slots = limits.slots,
            "the open files limit allows {} chits in local work at once (of {LOCAL_SLOTS}); \
             raise it (ulimit -n, LimitNOFILE=) for more",
            limits.slots
        );
    }
    let mut scheduler = Scheduler {
        limits,
        queues: Queues::new(shared.consumers.len()),
        shared,
        inflight: InFlight::default(),
        local: JoinSet::new(),
        downloads: JoinSet::new(),
        commits: Vec::new(),
        commit_dirs: HashMap::new(),
        committing: false,
        unsynced_cache_dirs: BTreeSet::new(),
        syncing_cache_dirs: false,
        orphans_swept: None,
        unswept_since: tokio::time::Instant::now(),
        last_cache_sync: None,
        commits_since: None,
        tried: HashMap::new(),
        earlier_failures: HashMap::new(),
        jobs,
        cancel: CancellationToken::new(),
        stuck: HashMap::new(),
        short: HashMap::new(),
        hold_stuck: false,
        chases: HashMap::new(),
        under_way: HashMap::new(),
        parked: HashMap::new(),
        names_checks: Vec::new(),
        lost_dirs: HashSet::new(),
        refresh_failing: HashSet::new(),
    };
    scheduler.names_checks = (0..scheduler.shared.consumers.len())
        .map(|_| NamesCheck::default())
        .collect();
    scheduler.scan(true);
    for consumer in 0..scheduler.shared.consumers.len() {
        scheduler.check_names(consumer, true);
    }
    scheduler.serve(&options, hints, shutdown).await
}

/// A chit whose download ended, and that download's outcome: the cache
/// object, or the reason to fail it.
type Delivery = (Waiter, Arc<Result<PathBuf, Failure>>);

/// A finished download: what it fetched, the sources it tried, its result.
type DownloadOutcome = (Key, Vec<url::Url>, Result<Partial, DownloadError>);

struct Scheduler {
    shared: Arc<Shared>,
    limits: LocalLimits,
    /// Chits to start and chits whose download ended, per consumer.
    queues: Queues<Delivery>,
    inflight: InFlight<Waiter>,
    local: JoinSet<Step>,
    downloads: JoinSet<DownloadOutcome>,
    /// Delivered chits waiting for the next group commit.
    commits: Vec<work::Commit>,
    /// The delivery directories of `commits` by device and inode, each
    /// held open once: a chit delivered into one of them shares it (its own
    /// descriptor is closed at once).
    commit_dirs: HashMap<(u64, u64), Arc<Dir>>,
    /// Whether a group commit is running.
    committing: bool,
    /// Cache directories that received new objects since the last round of
    /// their fsyncs, and whether a round is running.
    unsynced_cache_dirs: BTreeSet<PathBuf>,
    syncing_cache_dirs: bool,
    /// When orphaned partial downloads were last looked for.
    orphans_swept: Option<tokio::time::Instant>,
    /// The start, or the last sweep: what [`ORPHAN_SWEEP_BUSY`] counts from.
    unswept_since: tokio::time::Instant,
    last_cache_sync: Option<tokio::time::Instant>,
    /// When the oldest chit in `commits` was delivered.
    commits_since: Option<tokio::time::Instant>,
    /// Sources already tried in vain for a file that is being retried
    /// from sources that chits joining later named.
    tried: HashMap<Key, Vec<url::Url>>,
    /// The reasons of those earlier, failed downloads: the final reason
    /// lists every source's answer, not only the last round's.
    earlier_failures: HashMap<Key, Failure>,
    jobs: usize,
    cancel: CancellationToken,
    /// Chits whose last attempt could not claim them or move them to
    /// `fail/` (see [`Step::Stuck`]), and when scans may queue them again.
    stuck: HashMap<(usize, String), StuckRetry>,
    /// Chits left in `fetch/` because chitd was short of descriptors or
    /// memory ([`Step::Short`]), and how many times in a row.
    short: HashMap<(usize, String), u32>,
    /// Whether scans leave stuck chits alone until their retry is due
    /// (serving), or queue them at once (`--exit-when-idle`, which exits
    /// when nothing but stuck chits is left).
    hold_stuck: bool,
    /// Early deliveries of the downloads under way (see [`crate::chase`]).
    chases: HashMap<Key, Chase>,
    /// The downloads under way.
    under_way: HashMap<Key, UnderWay>,
    /// Chits waiting for their delivery target (another chit is delivering
    /// to it), with the cached object to deliver, in arrival order.
    parked: HashMap<work::Target, std::collections::VecDeque<(Waiter, PathBuf)>>,
    /// Per consumer: the check for chits whose names are not UTF-8.
    names_checks: Vec<NamesCheck>,
    /// Directories found removed or replaced, per consumer (logged once
    /// each).
    lost_dirs: HashSet<(usize, PathBuf)>,
    /// Consumers whose new state directories could not be opened (logged
    /// once).
    refresh_failing: HashSet<usize>,
}

/// A download under way: where chits that join it hand it their sources,
/// and its own cancellation (a child of the scheduler's: a download of a
/// size known wrong is stopped).
struct UnderWay {
    more: Arc<MoreSources>,
    cancel: CancellationToken,
}

/// A consumer's check for chits whose names are not UTF-8: whether one
/// runs, and whether (and with `fetch/` or not) another is due after it.
#[derive(Debug, Default)]
struct NamesCheck {
    running: bool,
    again: Option<bool>,
}

/// When a stuck chit is tried again, and the delay that led there.
#[derive(Debug, Clone, Copy)]
struct StuckRetry {
    at: tokio::time::Instant,
    delay: Duration,
}

impl Scheduler {
    async fn serve(
        &mut self,
        options: &Options,
        mut hints: tokio::sync::mpsc::UnboundedReceiver<Hint>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let exit_when_idle = options.exit_when_idle;
        self.hold_stuck = !exit_when_idle;
        let mut rescan = tokio::time::interval(options.rescan_interval);
        rescan.tick().await;
        let mut status = tokio::time::interval(STATUS_INTERVAL);
        loop {
            self.admit();
            let linger = self.commit_deadline();
            if self.is_idle() && exit_when_idle {
                // The directories are the truth: look once more, including
                // fetch/ (anything there now is nobody's work), and fail the
                // chits whose names are not UTF-8 (here, before deciding).
                for consumer in 0..self.shared.consumers.len() {
                    work::fail_names_not_utf8(&self.shared, consumer, true);
                }
                self.scan(true);
                // Chits whose names are not UTF-8 and could not be failed
                // are in no queue.
                let odd: Vec<String> = self
                    .shared
                    .consumers
                    .iter()
                    .flat_map(|c| {
                        c.spool()
                            .stuck_names_not_utf8()
                            .into_iter()
                            .map(|name| format!("{}/{name}", c.name))
                    })
                    .collect();
                if self.queues.is_empty() && odd.is_empty() {
                    self.sweep_orphans().await;
                    tracing::info!("idle: no chit in any request/ or fetch/; exiting");
                    break;
                }
                // What is left was tried and could not move: retrying it
                // at once, forever, would only spin.
                let left: Vec<(usize, &str)> = self.queues.known().collect();
                if left.iter().all(|(consumer, name)| {
                    self.stuck.contains_key(&(*consumer, (*name).to_owned()))
                }) {
                    const NAMED: usize = 10;
                    let all: Vec<String> = left
                        .iter()
                        .map(|(consumer, name)| {
                            format!("{}/{name}", self.shared.consumers[*consumer].name)
                        })
                        .chain(odd)
                        .collect();
                    let mut names: Vec<String> = all.iter().take(NAMED).cloned().collect();
                    if all.len() > NAMED {
                        names.push(format!("and {} more", all.len() - NAMED));
                    }
                    let error =
                        DaemonError::Stuck(format!("{} chit(s) ({})", all.len(), names.join(", ")));
                    self.stop().await;
                    return Err(error);
                }
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down; downloads keep their progress for the next start");
                    break;
                }
                Some(hint) = hints.recv() => {
                    // A burst of events (a flood of chits, a storm of names
                    // chitd cannot take) is handled as one: each chit once,
                    // each rescan once.
                    let mut burst = vec![hint];
                    while let Ok(hint) = hints.try_recv() {
                        burst.push(hint);
                    }
                    self.hints(burst);
                }
                Some(step) = self.local.join_next() => match step {
                    Ok(step) => {
                        self.step_done(step);
                        self.unpark_freed();
                    }
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                Some(outcome) = self.downloads.join_next() => match outcome {
                    Ok(outcome) => self.download_done(outcome),
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                // When idle, fetch/ too: anything there then is nobody's work.
                _ = rescan.tick() => {
                    let idle = self.is_idle();
                    self.scan(idle);
                    // Before the name checks below, which are work too.
                    if !exit_when_idle {
                        self.sweep_orphans_when_due().await;
                    }
                    if idle && !exit_when_idle {
                        for consumer in 0..self.shared.consumers.len() {
                            self.check_names(consumer, true);
                        }
                    }
                }
                _ = status.tick() => {
                    // A download of another size of a digest waits for the
                    // one under way no longer than an inactivity window.
                    let limit = self.shared.fetcher.settings().inactivity_timeout;
                    self.inflight.release_overdue(std::time::Instant::now(), limit);
                    self.write_status();
                }
                _ = sleep_until(linger) => {}
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Start what the slots allow: a group commit of the delivered chits
    /// (one at a time: chits delivered meanwhile wait for the next one),
    /// deliveries (they finish chits), new chits round-robin across
    /// consumers, then downloads.
    fn admit(&mut self) {
        let now = tokio::time::Instant::now();
        if !self.committing
            && !self.commits.is_empty()
            && self
                .commit_deadline()
                .is_none_or(|deadline| deadline <= now)
        {
            self.committing = true;
            self.commits_since = None;
            self.commit_dirs.clear();
            let batch = std::mem::take(&mut self.commits);
            let shared = Arc::clone(&self.shared);
            self.local
                .spawn_blocking(move || work::commit(&shared, batch));
        }
        if !self.syncing_cache_dirs
            && !self.unsynced_cache_dirs.is_empty()
            && (self.is_quiet()
                || self
                    .last_cache_sync
                    .is_none_or(|last| now - last >= CACHE_SYNC_INTERVAL))
        {
            self.syncing_cache_dirs = true;
            self.last_cache_sync = Some(now);
            let dirs = std::mem::take(&mut self.unsynced_cache_dirs);
            self.local
                .spawn_blocking(move || work::sync_cache_dirs(dirs.into_iter().collect()));
        }
        while self.local.len() < self.limits.slots
            && self.commits.len() < self.limits.commit_backlog
        {
            let shared = Arc::clone(&self.shared);
            match self.queues.next() {
                Some(Next::Deliver((waiter, outcome))) => self.local.spawn_blocking(move || {
                    let outcome = outcome.as_ref().as_ref().map(|object| work::Object {
                        path: object,
                        bytes: None,
                    });
                    work::finish(&shared, waiter, outcome)
                }),
                Some(Next::Start(consumer, name, origin)) => self
                    .local
                    .spawn_blocking(move || work::start(&shared, consumer, name, origin)),
                None => break,
            };
        }
        // A finished download is published on the local pool, beside the
        // slots: room for one per download at most, so publishes waiting
        // for the disk hold up new downloads, not their own descriptors.
        while self.local.len() < self.limits.slots + self.jobs
            && let Some((key, waiters, progress)) = self.inflight.start_next(self.jobs)
        {
            let mut job = job(&self.shared.mirrors, key.digest, waiters);
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
            let frontier = self.start_chase(key, first);
            let cancel = self.cancel.child_token();
            let under_way = UnderWay {
                more: Arc::clone(&job.more),
                cancel: cancel.clone(),
            };
            self.under_way.insert(key, under_way);
            let shared = Arc::clone(&self.shared);
            self.downloads.spawn(async move {
                let store = Arc::clone(&shared.store);
                let download = shared
                    .fetcher
                    .download(store, &mut job, &progress, frontier, &cancel);
                let result = Box::pin(download).await;
                (key, job.sources, result)
            });
        }
    }

    /// For a big download, start delivering it to its first waiter while
    /// it downloads (see [`crate::chase`]); returns the frontier the
    /// download must publish.
    fn start_chase(
        &mut self,
        key: Key,
        first: Option<(usize, String, crate::chit::DeliveryPath)>,
    ) -> Option<Arc<Frontier>> {
        let (consumer, name, path) = first?;
        let Key { digest, size } = key;
        if size < CHASE_MIN || Partial::fits_in_memory(size) {
            return None;
        }
        let frontier = Arc::new(Frontier::default());
        let part = Partial::part_path(self.shared.store.partials_dir(), &digest, size);
        let shared = Arc::clone(&self.shared);
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
            self.abort_chase(earlier, key, None);
        }
        Some(frontier)
    }

    /// Stop an early delivery and remove its temporary, on the local pool
    /// (the daemon is not idle until that is done); then fail its download's
    /// waiters, if it `failed` (so no temporary outlives a failed chit).
    fn abort_chase(&mut self, chase: Chase, key: Key, failed: Option<(Vec<url::Url>, Failure)>) {
        self.local.spawn_blocking(move || {
            chase.abort();
            Step::ChaseAborted { key, failed }
        });
    }

    fn step_done(&mut self, step: Step) {
        match step {
            Step::Done { consumer, name } => {
                self.queues.finished(consumer, &name);
                if !self.short.is_empty() {
                    self.short.remove(&(consumer, name.clone()));
                }
                self.stuck.remove(&(consumer, name));
            }
            Step::Short { consumer, name } => {
                self.queues.finished(consumer, &name);
                let key = (consumer, name);
                let tries = self.short.entry(key.clone()).or_insert(0);
                *tries += 1;
                if *tries >= SHORT_TRIES {
                    self.short.remove(&key);
                    self.step_done(Step::Stuck {
                        consumer: key.0,
                        name: key.1,
                    });
                }
            }
            Step::Stuck { consumer, name } => {
                self.queues.finished(consumer, &name);
                let key = (consumer, name);
                let delay = self
                    .stuck
                    .get(&key)
                    .map_or(STUCK_RETRY_FIRST, |retry| retry.delay * 2)
                    .min(STUCK_RETRY_MAX);
                if self.hold_stuck {
                    tracing::warn!(
                        consumer = %self.shared.consumers[consumer].name, chit = %key.1,
                        "stuck (see the error above); trying again in {}",
                        humantime::format_duration(delay)
                    );
                }
                let at = tokio::time::Instant::now() + delay;
                self.stuck.insert(key, StuckRetry { at, delay });
            }
            Step::Commit(mut commit) => {
                self.commits_since
                    .get_or_insert_with(tokio::time::Instant::now);
                if let Some(id) = commit.parent_id {
                    let parent = self
                        .commit_dirs
                        .entry(id)
                        .or_insert_with(|| Arc::clone(&commit.parent));
                    commit.parent = Arc::clone(parent);
                }
                self.commits.push(commit);
            }
            Step::Committed { done, left } => {
                // The targets it held are free: `unpark_freed` follows.
                self.committing = false;
                for (consumer, name) in done {
                    self.step_done(Step::Done { consumer, name });
                }
                for step in left {
                    self.step_done(step);
                }
            }
            Step::CacheDirsSynced => self.syncing_cache_dirs = false,
            Step::NamesChecked { consumer } => {
                let check = &mut self.names_checks[consumer];
                check.running = false;
                if let Some(with_fetch) = check.again.take() {
                    self.check_names(consumer, with_fetch);
                }
            }
            Step::ChaseAborted { key, failed } => {
                if let Some((tried, reason)) = failed {
                    self.settle(key, Some(tried), Err(reason));
                }
            }
            Step::Published {
                key,
                source,
                published,
                delivered,
            } => {
                if let Some(step) = delivered {
                    self.step_done(*step);
                }
                if let Ok(object) = &published {
                    tracing::info!(digest = %key.digest, source = %source.unwrap_or_default(), "download finished, verified and cached");
                    if let Some(dir) = object.parent() {
                        self.unsynced_cache_dirs.insert(dir.to_path_buf());
                    }
                }
                self.settle(key, None, published);
            }
            Step::Parked {
                waiter,
                object,
                target,
            } => {
                // Taken: wait for the holder's commit (or failure). Already
                // free again (released before this step was seen): at once.
                if self.shared.targets.is_taken(&target) {
                    self.parked
                        .entry(target)
                        .or_default()
                        .push_back((waiter, object));
                } else {
                    self.deliver(waiter, Arc::new(Ok(object)));
                }
            }
            Step::Wait(waiter) => {
                let key = Key {
                    digest: waiter.chit.digest,
                    size: waiter.chit.size,
                };
                // Its lookup missed a download that was being published,
                // and is over now: deliver from the cache, not download it
                // again. (One `stat`, only when the digest is one this run
                // published or checked and no download of it is left.)
                if !self.inflight.contains(&key)
                    && self.shared.store.published_or_checked(&key.digest)
                    && let Ok(Lookup::Hit(object)) = self.shared.store.lookup(&key.digest, key.size)
                {
                    tracing::debug!(digest = %key.digest, chit = %waiter.name, "published while the chit looked for it");
                    self.deliver(waiter, Arc::new(Ok(object)));
                    return;
                }
                // Joining a running download: it tries this chit's sources
                // too.
                if let Some(under_way) = self.under_way.get(&key) {
                    let tried = self.tried.get(&key);
                    let sources = self
                        .sources_of(&waiter)
                        .into_iter()
                        .filter(|source| tried.is_none_or(|tried| !tried.contains(source)));
                    under_way.more.add(sources);
                }
                self.inflight.add(waiter.consumer, key, waiter);
            }
        }
    }

    /// Where one chit's file can come from: its URLs, then each mirror.
    fn sources_of(&self, waiter: &Waiter) -> Vec<url::Url> {
        sources(&self.shared.mirrors, std::slice::from_ref(waiter))
    }

    /// Queue the delivery (or failure) of a chit whose download ended.
    fn deliver(&mut self, waiter: Waiter, outcome: Arc<Result<PathBuf, Failure>>) {
        self.queues
            .push_delivery(waiter.consumer, (waiter, outcome));
    }

    /// `target` is free: deliver the first chit parked on it.
    fn unpark(&mut self, target: &work::Target) {
        if let Some(queue) = self.parked.get_mut(target) {
            let first = queue.pop_front();
            if queue.is_empty() {
                self.parked.remove(target);
            }
            if let Some((waiter, object)) = first {
                self.deliver(waiter, Arc::new(Ok(object)));
            }
        }
    }

    /// Unpark the first chit parked on each target that is free again (a
    /// commit or a failed delivery released it). Run after every step.
    fn unpark_freed(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let freed: Vec<work::Target> = self
            .parked
            .keys()
            .filter(|target| !self.shared.targets.is_taken(target))
            .cloned()
            .collect();
        for target in freed {
            self.unpark(&target);
        }
    }

    fn download_done(&mut self, (key, tried, result): DownloadOutcome) {
        self.under_way.remove(&key);
        match result {
            Ok(partial) => {
                // The transfer is over: its slot is free for the next one,
                // while the local pool publishes (fdatasync and rename: for
                // many small files, this is where the time goes).
                self.inflight.release(&key);
                // The waiter a chase copied for is delivered with the
                // publish, whoever else waits; else a lone waiter.
                let chase = self.chases.remove(&key);
                let lone = chase
                    .as_ref()
                    .and_then(|chase| {
                        self.inflight.take_waiter(&key, |w| {
                            (w.consumer, &w.name) == (chase.consumer, &chase.name)
                        })
                    })
                    .or_else(|| self.inflight.take_lone_waiter(&key));
                let shared = Arc::clone(&self.shared);
                self.local
                    .spawn_blocking(move || work::publish(&shared, partial, key, lone, chase));
            }
            Err(error) => {
                let failed = match error {
                    DownloadError::Failed(failure) => {
                        tracing::warn!(digest = %key.digest, size = key.size, "download failed: {failure}");
                        Some((tried, Failure::from(failure)))
                    }
                    // Shut down, or stopped because its size is known
                    // wrong (its chits were failed then).
                    DownloadError::Shutdown => None,
                };
                match (self.chases.remove(&key), failed) {
                    (Some(chase), failed) => self.abort_chase(chase, key, failed),
                    (None, Some((tried, reason))) => self.settle(key, Some(tried), Err(reason)),
                    (None, None) => {}
                }
            }
        }
    }

    /// A download is over: hand its outcome to every waiter, or, when it
    /// failed (`tried`: the sources it tried) and a waiter names sources
    /// nobody tried yet, queue another download for them all. When it
    /// succeeded, the file of its digest is known: downloads of the digest
    /// with another size are stopped, and their chits failed.
    fn settle(
        &mut self,
        key: Key,
        tried: Option<Vec<url::Url>>,
        outcome: Result<PathBuf, Failure>,
    ) {
        let Some(waiters) = self.inflight.finish(&key) else {
            return;
        };
        if let (Err(_), Some(tried)) = (&outcome, tried) {
            // A chit that joined after the download started may name sources
            // nobody tried yet: then all waiters get another download, from
            // those sources only.
            self.tried.entry(key).or_default().extend(tried);
            let tried_before = &self.tried[&key];
            let untried = waiters.iter().any(|waiter| {
                self.sources_of(waiter)
                    .iter()
                    .any(|source| !tried_before.contains(source))
            });
            if untried {
                if let Err(failure) = outcome {
                    let failure = failure.after(self.earlier_failures.remove(&key));
                    self.earlier_failures.insert(key, failure);
                }
                for waiter in waiters {
                    self.inflight.add(waiter.consumer, key, waiter);
                }
                return;
            }
        }
        if outcome.is_ok() {
            self.fail_other_sizes(key);
        }
        self.tried.remove(&key);
        let earlier = self.earlier_failures.remove(&key);
        let outcome = outcome.map_err(|last| last.after(earlier));
        let outcome = Arc::new(outcome);
        for waiter in waiters {
            self.deliver(waiter, Arc::clone(&outcome));
        }
    }

    /// The file of `key.digest` is `key.size` bytes (verified): chits
    /// that name the digest with another size are wrong. Their downloads
    /// are taken out (a running one is cancelled: it could never verify)
    /// and the chits failed.
    fn fail_other_sizes(&mut self, key: Key) {
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
                self.deliver(waiter, Arc::clone(&reason));
            }
        }
    }

    fn hints(&mut self, burst: Vec<Hint>) {
        let mut rescan = BTreeSet::new();
        for hint in burst {
            match hint {
                Hint::Chit(consumer, name) => self.queues.push(consumer, name, Origin::Request),
                Hint::Rescan(consumer) => {
                    rescan.insert(consumer);
                }
                Hint::RescanAll => rescan.extend(0..self.shared.consumers.len()),
            }
        }
        for consumer in rescan {
            // Also what made the watcher ask (a name that is not UTF-8?).
            self.check_names(consumer, false);
            self.scan_consumer(consumer, false);
        }
    }

    /// Fail the chits of `consumer` whose names are not UTF-8 (see
    /// [`Spool::fail_names_not_utf8`]), on the local pool; one check per
    /// consumer at a time, another one after it if asked meanwhile.
    fn check_names(&mut self, consumer: usize, with_fetch: bool) {
        let check = &mut self.names_checks[consumer];
        if check.running {
            check.again = Some(check.again.unwrap_or(false) || with_fetch);
            return;
        }
        check.running = true;
        let shared = Arc::clone(&self.shared);
        self.local.spawn_blocking(move || {
            work::fail_names_not_utf8(&shared, consumer, with_fetch);
            Step::NamesChecked { consumer }
        });
    }

    /// Forget the chits of `consumer` waiting for a download or a target
    /// that went with the `fetch/` they were claimed into
    /// ([`work::went_with_its_fetch`]): their names are free for new chits
    /// at once, and a download that has not started for anybody else never
    /// does.
    fn drop_gone_waiters(&mut self, consumer: usize) {
        let shared = Arc::clone(&self.shared);
        let spool = shared.consumers[consumer].spool();
        let gone = |w: &Waiter| {
            w.consumer == consumer
                && work::went_with_its_fetch(&shared, &spool, consumer, &w.name, w.claimed_in)
        };
        let mut dropped = self.inflight.drop_waiters(gone);
        for queue in self.parked.values_mut() {
            let (out, kept): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(w, _)| gone(w));
            *queue = kept.into();
            dropped.extend(out.into_iter().map(|(w, _)| w));
        }
        self.parked.retain(|_, queue| !queue.is_empty());
        for waiter in dropped {
            self.queues.finished(consumer, &waiter.name);
        }
    }

    /// Queue every chit in each `request/` (and `fetch/`, at start and when
    /// idle) that is not already queued or being worked on.
    fn scan(&mut self, with_fetch: bool) {
        for consumer in 0..self.shared.consumers.len() {
            self.scan_consumer(consumer, with_fetch);
        }
    }

    fn scan_consumer(&mut self, consumer: usize, mut with_fetch: bool) {
        let shared = Arc::clone(&self.shared);
        let opened = &shared.consumers[consumer];
        match opened.refresh(&shared.watch) {
            // New state directories: what their fetch/ holds is nobody's work.
            Ok(true) => {
                with_fetch = true;
                self.refresh_failing.remove(&consumer);
                // Stuck in the old directories: they are gone, and a chit of
                // the name in the new ones is another.
                self.stuck.retain(|(c, _), _| *c != consumer);
                self.short.retain(|(c, _), _| *c != consumer);
                self.drop_gone_waiters(consumer);
            }
            Ok(false) => {}
            Err(e) if self.refresh_failing.insert(consumer) => {
                tracing::error!(consumer = %opened.name, "cannot open the new state directories: {e}");
            }
            Err(e) => {
                tracing::debug!(consumer = %opened.name, "cannot open the new state directories: {e}");
            }
        }
        let spool = opened.spool();
        let mut lost: Vec<(PathBuf, &str)> = Vec::new();
        let remedy = if spool.root_removed() {
            "this consumer is served again after a restart of chitd"
        } else {
            "chitd serves a new one once it is made again"
        };
        for dir in spool.lost_states() {
            lost.push((dir.path().to_path_buf(), remedy));
        }
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
        let mut dirs = vec![(&spool.request, Origin::Request)];
        if with_fetch {
            dirs.insert(0, (&spool.fetch, Origin::Fetch));
        }
        // With both directories listed, a stuck chit found in neither was
        // removed by its consumer: forget it.
        let mut prune = with_fetch && !self.stuck.is_empty();
        let mut seen = HashSet::new();
        for (dir, origin) in dirs {
            match spool.chits(dir) {
                Ok(names) => {
                    let now = tokio::time::Instant::now();
                    for name in names {
                        let stuck = if self.stuck.is_empty() {
                            None
                        } else {
                            if prune {
                                seen.insert(name.clone());
                            }
                            self.stuck.get(&(consumer, name.clone()))
                        };
                        let held = self.hold_stuck && stuck.is_some_and(|retry| retry.at > now);
                        if !held {
                            self.queues.push(consumer, name, origin);
                        }
                    }
                }
                Err(e) => {
                    prune = false;
                    tracing::error!(consumer = %spool.name, "cannot scan {}: {e}", dir.path().display())
                }
            }
        }
        if prune {
            self.stuck.retain(|(of, name), _| {
                let kept = *of != consumer || seen.contains(name);
                if !kept {
                    tracing::info!(consumer = %spool.name, chit = %name, "the stuck chit is gone from request/ and fetch/; forgotten");
                }
                kept
            });
        }
    }

    /// Remove the partial downloads no chit has written to for
    /// [`crate::store::ORPHAN_GRACE`]; only while no chit is worked on
    /// (see [`crate::store::Store::remove_orphaned_partials`]).
    async fn sweep_orphans(&mut self) {
        let now = tokio::time::Instant::now();
        self.orphans_swept = Some(now);
        self.unswept_since = now;
        // Downloads under way or waiting for a slot keep their partials
        // (none when idle).
        let spared: HashSet<Key> = self.inflight.keys().copied().collect();
        let shared = Arc::clone(&self.shared);
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

    /// Sweep orphaned partials when it is time: at the first idle moment
    /// and hourly after that while idle (checked after a rescan, so a chit
    /// the rescan just found counts as work); after a whole day without an
    /// idle moment, busy or not.
    async fn sweep_orphans_when_due(&mut self) {
        let idle = self.is_idle()
            && self
                .orphans_swept
                .is_none_or(|last| last.elapsed() >= ORPHAN_SWEEP_INTERVAL);
        if idle || self.unswept_since.elapsed() >= ORPHAN_SWEEP_BUSY {
            self.sweep_orphans().await;
        }
    }

    fn is_idle(&self) -> bool {
        self.is_quiet() && self.unsynced_cache_dirs.is_empty()
    }

    /// Blocking steps running that work on chits: all but a round of cache
    /// directory fsyncs.
    fn chit_steps_running(&self) -> usize {
        self.local
            .len()
            .saturating_sub(usize::from(self.syncing_cache_dirs))
    }

    /// No chit is being worked on (cache directory fsyncs aside).
    fn is_quiet(&self) -> bool {
        self.chit_steps_running() == 0
            && self.downloads.is_empty()
            && self.commits.is_empty()
            && self.parked.is_empty()
            && self.inflight.is_empty()
            && self.queues.is_empty()
    }

    /// When the waiting chits' group commit is due: at once for a full
    /// batch or when no other delivery is under way (nothing to wait for),
    /// else [`COMMIT_LINGER`] after the oldest was delivered. `None` when
    /// no commit is waiting or one is running.
    fn commit_deadline(&self) -> Option<tokio::time::Instant> {
        let since = self.commits_since.filter(|_| !self.committing)?;
        let deliveries_under_way =
            self.chit_steps_running() > 0 || self.queues.deliveries_waiting() > 0;
        let full = COMMIT_BATCH.min(self.limits.commit_backlog);
        if self.commits.len() >= full || !deliveries_under_way {
            Some(since)
        } else {
            Some(since + COMMIT_LINGER)
        }
    }

    fn write_status(&self) {
        for (index, consumer) in self.shared.consumers.iter().enumerate() {
            let downloads = self.inflight.running().flat_map(|(key, done, waiters)| {
                waiters
                    .iter()
                    .filter(move |w| w.consumer == index)
                    .map(move |w| status_file::InFlightChit {
                        chit: w.name.clone(),
                        digest: key.digest.to_string(),
                        path: w.chit.path.to_string(),
                        done,
                        total: key.size,
                    })
            });
            consumer.status.write(downloads.collect());
        }
    }

    /// Stop: cancel downloads (each checkpoints), let local steps finish.
    async fn stop(&mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.downloads.join_next().await.is_some() {}
            while let Some(step) = self.local.join_next().await {
                // An object published meanwhile: its directory is synced
                // below with the others.
                if let Ok(Step::Published {
                    published: Ok(object),
                    ..
                }) = &step
                    && let Some(dir) = object.parent()
                {
                    self.unsynced_cache_dirs.insert(dir.to_path_buf());
                }
            }
            let dirs: Vec<PathBuf> = std::mem::take(&mut self.unsynced_cache_dirs)
                .into_iter()
                .collect();
            if !dirs.is_empty() {
                let _ = tokio::task::spawn_blocking(move || work::sync_cache_dirs(dirs)).await;
            }
            // Downloads that stopped leave their early deliveries behind.
            let chases: Vec<Chase> = self.chases.drain().map(|(_, chase)| chase).collect();
            if !chases.is_empty() {
                let _ =
                    tokio::task::spawn_blocking(move || chases.into_iter().for_each(Chase::abort))
                        .await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "some work did not stop within {SHUTDOWN_GRACE:?}; its chits stay in fetch/"
            );
        }
        for consumer in &self.shared.consumers {
            consumer.status.remove();
        }
    }
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_limits_fit_the_open_files_limit() {
        let unlimited = LocalLimits::for_open_files(None, 4, 1);
        assert_eq!(unlimited.slots, LOCAL_SLOTS);
        assert_eq!(unlimited.commit_backlog, 2 * LOCAL_SLOTS);
        // A server's usual limit: all the slots.
        assert_eq!(
            LocalLimits::for_open_files(Some(65536), 4, 10).slots,
            LOCAL_SLOTS
        );
        // The common soft default, not raised: what fits, with room for
        // the downloads and the rest.
        let default = LocalLimits::for_open_files(Some(1024), 4, 1);
        assert!(
            default.slots < LOCAL_SLOTS && default.slots >= 80,
            "{default:?}"
        );
        for (limit, jobs, consumers) in [(1024, 4, 1), (256, 4, 1), (256, 8, 3), (400, 1, 10)] {
            let limits = LocalLimits::for_open_files(Some(limit), jobs, consumers);
            let reserved = LocalLimits::BASE
                + LocalLimits::PER_JOB * jobs as u64
                + LocalLimits::PER_CONSUMER * consumers as u64;
            let used = reserved + LocalLimits::PER_SLOT * limits.slots as u64;
            assert!(
                used <= limit,
                "{limit} {jobs} {consumers}: {limits:?} needs {used}"
            );
            assert_eq!(limits.commit_backlog, 2 * limits.slots);
        }
        // Even under a limit too low for the reserve: one at a time.
        assert_eq!(LocalLimits::for_open_files(Some(32), 4, 1).slots, 1);
        assert_eq!(LocalLimits::for_open_files(Some(0), 64, 1).slots, 1);
    }
}
