//! `chitd run`: recover, watch, schedule, and (optionally) exit when idle.
//!
//! This module holds the daemon's scheduling policy; `spool-layout.md`
//! holds the files, states, fsync order and crash table it works within.
//!
//! # Parts
//!
//! One task, the `scheduler`, routes events between parts that each own
//! their data:
//!
//! - `queue`: per-consumer queues of chit names and of deliveries;
//! - `downloads`: the downloads, their waiting chits and early
//!   deliveries;
//! - `commit`: the group commit of delivered chits;
//! - `parked`: chits waiting for their delivery target;
//! - `stuck`: retry and backoff of stuck chits;
//! - `scan`: scans, state directories made anew, lost directories;
//! - `housekeeping`: cache directory syncs, orphan sweeps, status files;
//! - `rates`: the download rates the status files show;
//! - `limits`: how much local work runs at once;
//! - `idle`: when `--exit-when-idle` exits;
//! - `notify`: systemd's readiness, reload, status, stopping and watchdog
//!   messages;
//! - [`reload`]: what SIGHUP applies and what it refuses (the policy), and
//!   `scheduler/reload.rs`, which applies it.
//!
//! What happens to one chit on the blocking pool is in `work` (claim,
//! parse, cache lookup, delivery, failure) and `not_utf8` (a chit whose
//! name is not UTF-8); `batch` runs the local work of several chits, and
//! the publish of small downloads, in one task; `local` is that pool.
//!
//! # Admission and fairness
//!
//! Consumers are served round-robin, one item each in turn, so a flood in
//! one spool never starves another. That holds for deliveries too: when a
//! download ends, its chits queue for delivery in their own consumers'
//! turns (before that consumer's new chits), so the thousands of chits one
//! consumer had waiting for it do not hold up another consumer's chit. A
//! name is queued once, however many events and scans name it, until its
//! step is over.
//!
//! At most [`LOCAL_SLOTS`] (128) chits are in their *local step* (claim,
//! parse, cache lookup, delivery: blocking file work) at once, so that
//! many deliveries wait for their flushes together; a chit waiting for a
//! download holds no slot and no task, so a slow download never blocks
//! cache hits. The local steps run in batches of up to 4 chits (a verified
//! download waiting to be published and delivered comes first, then
//! deliveries and new chits in the consumers' turns), up to 32 batches at
//! once: a batch writes all of its files before it flushes any, so they
//! share a journal commit, and it costs one hand-off to a thread and back
//! for its chits, not one each (`batch`, `local`). A batch's chits are
//! done when its last one is, so the publish or delivery of a file of 1
//! MiB or more ([`work::SOLO_MIN`]: a cache hit found by a batch, or a
//! file that a download ended) is set aside for a batch of its own: it
//! holds up no small chit for its copy, and several copy side by side.
//! No new chit starts while twice as many delivered chits wait for their
//! group commit. `chitd run` raises its soft open files limit to
//! the hard one; under a hard limit too low for 128 slots the daemon takes
//! fewer ([`LocalLimits`]) and says so at start. A chit that meets the
//! limit anyway (`EMFILE`, `ENFILE`, `ENOMEM`) is not failed for it: it
//! stays in `fetch/` and is tried again by the next scan of the idle
//! daemon, and is stuck after [`SHORT_TRIES`] such tries in a row.
//!
//! # Group commit
//!
//! A delivered chit waits for the next group commit, which fsyncs each
//! distinct delivery directory of its batch once, moves every chit of the
//! batch `fetch/ → downloaded/` and fsyncs each consumer's `downloaded/`
//! once. One commit runs at a time. While other deliveries are under way,
//! a batch waits up to [`COMMIT_LINGER`] (2 ms) for them, or until it holds
//! [`COMMIT_BATCH`] (256) chits; a lone chit is committed at once.
//!
//! # Downloads
//!
//! At most `jobs` downloads run at once, one per sha256 and size, shared
//! by every chit that names both, shared fairly between consumers and
//! hosts (see [Fair slots](#fair-slots)). A download holds its slot only
//! while it transfers: once verified, the slot goes to the
//! next download and the object is published (fdatasync, rename) on the
//! local pool, beside the slots, with room for one publish per download,
//! so publishes waiting for the disk cannot pile up. A chit that looked in
//! the cache just before such a publish is delivered from the cache, not
//! downloaded again.
//!
//! A chit that joins a running download hands it its own sources (its
//! URLs, then each mirror under its path): they join the end of the
//! download's current round, so a chit with a working URL does not wait
//! for another chit's dead one to give up. A download that fails while a
//! chit names sources nobody tried is started again, from those only.
//! When a shared download fails, each chit's `# error:` line names only
//! the sources that chit would have tried itself (its URLs, and each mirror
//! under its path), each with its answer; sources only other chits named
//! (perhaps private: a token in a query) are counted, never named. The
//! failure stays a value ([`crate::fetch::Failure`]) until that line is
//! rendered; the daemon's log names every source (tested by
//! `dedup::a_shared_failure_names_to_each_consumer_only_its_own_sources`).
//! How
//! the fetcher treats a slow source (left for a source not tried yet,
//! come back to in the next round) is [`crate::fetch`]'s.
//!
//! A running download whose every waiting chit was removed from its
//! `fetch/` is stopped at the next rescan, its partial kept for a later
//! resume (`downloads/stopping.rs`).
//!
//! Two chits that name one sha256 with different sizes never share a
//! download. A size that comes while a download of another size of its
//! sha256 is under way waits for it, for at most one inactivity window
//! (checked every second, with the status files); once one size is
//! verified, downloads of that sha256 with another size are stopped and
//! their chits failed.
//!
//! One delivery at a time per target path (beneath a delivery directory,
//! so consumers sharing one share its paths), from the rename into place
//! until its group commit: a chit whose path another is delivering to is
//! parked (holding no slot) and delivered after that one is terminal.
//!
//! # Fair slots
//!
//! The `jobs` slots are shared fairly between consumers and between hosts
//! (a host: the scheme, host and port of the first source a download
//! asks), so that one consumer's flood of downloads from a slow or dead
//! host cannot hold up another consumer's download for longer than one
//! slot turn:
//!
//! - Queued downloads wait in one lane per consumer, and within it per
//!   host; lanes take turns, and so do the hosts within a lane
//!   ([`crate::inflight`]).
//! - A host may hold at most its *share* of the slots: half of `jobs` at
//!   first (at least one), one more per verified download of its own, up
//!   to all of them (a slow start, like Postfix's per destination), back
//!   to half when one of its downloads fails; and run no more downloads
//!   than the requests it takes at once (`per_host`, more once it speaks
//!   HTTP/2), since a download beyond those would only wait for a permit
//!   while holding a slot ([`host_slots`]).
//! - A host at its share is passed over: its downloads stay queued,
//!   holding no slot, and the next host or consumer in turn starts.
//! - A slot is a connection's worth of downloads: once a host answers
//!   over HTTP/2 (its requests share a connection), 16 of its downloads
//!   share one slot. Over HTTP/1.1 (a request at a time per connection),
//!   once a host has verified a download since its last failure, its small
//!   downloads (at most 1 MiB: mostly a round trip each) share slots too,
//!   `per_host` of them a slot (at most 8), so `jobs = 4` keeps all of
//!   `per_host`'s 6 connections busy; a bigger download, or any before the
//!   host has answered, takes a slot of its own. So many small files cost
//!   one round trip each side by side, up to the host's `per_host` permits,
//!   not `jobs` at a time.
//!
//! So a host that never answers, stalls or is in backoff completes
//! nothing, and holds at most half of the slots (a slot each: nothing is
//! shared before it answers) however many chits want it; the other half
//! goes round the other hosts at once (tested by
//! `hosts::a_flood_for_a_dead_host_does_not_hold_up_another_consumer`).
//! A host's share is checked whenever the scheduler admits work (at every
//! event, at least once a second). A running download keeps its slot while
//! it waits out a backoff between its rounds (its other sources are asked
//! meanwhile); with `jobs = 1` there is one slot and nothing to share.
//!
//! # Scans
//!
//! The directory is the truth, events are hints. An inotify watch on every
//! `request/` turns a chit renamed in into a hint naming it, so it is
//! claimed within milliseconds; every `request/` is rescanned at start, on
//! watcher overflow or error, and every [`RESCAN_INTERVAL`] (2 s). `fetch/`
//! is scanned at start (chits an earlier run claimed are resumed) and
//! whenever the daemon is idle (anything there then is nobody's work).
//!
//! chitd works through directory handles opened at start. A scan that finds
//! a state directory made anew by its consumer (`rm -rf spool/*`, then
//! `mkdir`) opens the state directories anew beneath the spool directory
//! opened at start, watches the new `request/`, and drops the chits that
//! went with the old `fetch/` (see [`Consumer::refresh`]). A directory
//! removed or replaced is logged once; a removed root is served again
//! after a restart.
//!
//! # Stuck chits
//!
//! A chit that can be neither claimed nor moved to `fail/` stays where it
//! is and is never lost. Scans leave it alone for [`STUCK_RETRY_FIRST`]
//! (2 s), then twice as long each time, up to [`STUCK_RETRY_MAX`] (5 min),
//! each retry logging `stuck ...; trying again in <t>`. A consumer's own
//! `mv` of it into `request/` is acted on at once; one it removes is
//! forgotten at the next idle scan.
//!
//! # Reload
//!
//! SIGHUP re-reads the configuration file (see [`reload`] for what is
//! applied, refused and kept). The tasks share a [`Shared`] snapshot; a
//! reload makes a new one, and work started before it finishes with the
//! old. Consumers keep their number for the whole run: a reload appends
//! those it adds and marks those it takes out as retired (no longer
//! watched, scanned or given new work; their chits claimed already
//! finish).
//!
//! # Exit when idle, and shutdown
//!
//! With `--exit-when-idle` the daemon exits once no chit is left in any
//! `request/` or `fetch/`; when only stuck chits are left, it exits 1
//! naming them (see `idle`). On SIGTERM or SIGINT it cancels downloads
//! (each checkpoints), lets local steps finish, syncs the cache
//! directories, removes early deliveries' temporaries and its status
//! files, within [`SHUTDOWN_GRACE`].
//!
//! # Housekeeping
//!
//! Cache directories that received objects are fsync'd at most every
//! [`CACHE_SYNC_INTERVAL`] while busy, at once when quiet. Orphaned partial
//! downloads are swept at the first idle moment and every
//! [`ORPHAN_SWEEP_INTERVAL`] of idleness, or after [`ORPHAN_SWEEP_BUSY`]
//! without one. Each consumer's status file is rewritten every
//! [`STATUS_INTERVAL`] when it changes.
//!
//! # The cache's last uses and collection
//!
//! Each chit the group commit moves to `downloaded/` is a use of its
//! object: handed to the last-use recorder (`crate::uses`: a channel send;
//! its thread writes batches). With `cache_max_size` or `cache_max_age`
//! set, `collect` collects the cache by the rules of `chitd cache gc`, on
//! the blocking pool, one collection at a time: at start, an hour after
//! the last one, and when a publish takes the running total of cache bytes
//! over the size. `--exit-when-idle` waits for a running or due one.

mod batch;
mod chit_id;
mod collect;
mod commit;
mod consumer;
mod downloads;
mod host_slots;
mod housekeeping;
mod idle;
mod limits;
mod local;
mod not_utf8;
mod notify;
mod parked;
mod queue;
mod rates;
pub mod reload;
mod scan;
mod scheduler;
pub mod status_file;
mod stuck;
mod work;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use self::reload::Reloads;
use self::scheduler::Scheduler;
use crate::config::Config;
use crate::dir::{Dir, DurableDirs};
use crate::fetch::{FetchSettings, Fetcher};
use crate::spool::Spool;
use crate::store::Store;
use crate::watch::{Watch, watch};

pub use self::commit::{COMMIT_BATCH, COMMIT_LINGER};
pub use self::consumer::Consumer;
pub use self::housekeeping::{CACHE_SYNC_INTERVAL, ORPHAN_SWEEP_BUSY, ORPHAN_SWEEP_INTERVAL};
pub use self::limits::{LOCAL_SLOTS, LocalLimits};
pub use self::status_file::{STATUS_FILE, StatusFile};
pub use self::stuck::{SHORT_TRIES, STUCK_RETRY_FIRST, STUCK_RETRY_MAX};

/// Safety-net rescan of every `request/`, in case an event was lost.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the in-flight progress file is refreshed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// After SIGTERM, how long downloads get to checkpoint.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub exit_when_idle: bool,
    pub fetch: FetchSettings,
    /// Safety-net rescan of every `request/` ([`RESCAN_INTERVAL`]).
    pub rescan_interval: Duration,
    /// The fleet tier's knobs (used when the configuration has `[remote]`).
    pub remote: crate::remote::Settings,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            exit_when_idle: false,
            fetch: FetchSettings::default(),
            rescan_interval: RESCAN_INTERVAL,
            remote: crate::remote::Settings::default(),
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
    #[error("cannot serve metrics on {address}: {error}")]
    Metrics {
        address: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot watch the spools: {0}")]
    Watch(::notify::Error),
    #[error("{0}")]
    Http(crate::fetch::ClientError),
    #[error("cannot set up the remote tier ([remote]): {0}")]
    Remote(object_store::Error),
    #[error(
        "not idle, but stuck: {0} cannot leave request/ or fetch/ (see the errors above); \
         exiting instead of retrying forever"
    )]
    Stuck(String),
}

/// Read-only state shared with every task: a snapshot. A reload makes a
/// new one (see `reload`); tasks started before it finish with theirs.
/// Consumers keep their number for the whole run: a reload appends the
/// consumers it adds and marks those it takes out as retired.
#[derive(Debug)]
pub struct Shared {
    pub consumers: Vec<Arc<Consumer>>,
    /// Per consumer: taken out by a reload (its chits under way finish;
    /// nothing new of it starts).
    pub retired: Vec<bool>,
    /// The watch on each consumer's `request/`, renewed when the consumer
    /// makes it anew.
    pub watch: Arc<std::sync::Mutex<Watch>>,
    pub store: Arc<Store>,
    pub fetcher: Fetcher,
    pub mirrors: Vec<url::Url>,
    /// The delivery targets being delivered to.
    pub targets: Arc<work::Targets>,
    /// Directories in delivery directories whose names are durable.
    pub durable_dirs: Arc<DurableDirs>,
    /// The last-use record: each delivery is recorded by its commit.
    pub uses: Arc<crate::uses::Recorder>,
}

impl Shared {
    /// The consumers served now (not retired), by number.
    pub fn serving(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.consumers.len()).filter(|&consumer| !self.retired[consumer])
    }

    /// Whether `consumer` is served now.
    pub fn is_serving(&self, consumer: usize) -> bool {
        self.retired.get(consumer).is_some_and(|retired| !retired)
    }
}

/// Serve until `shutdown` resolves (or, with `exit_when_idle`, until no
/// chit is left in any `request/` or `fetch/`), reloading the
/// configuration at each of `reloads` (see [`reload`]).
pub async fn run(
    config: Config,
    options: Options,
    reloads: Reloads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let (shared, hints) = open(&config, &options)?;
    let metrics = match config.metrics {
        Some(address) => Some(
            crate::metrics::server::start(address, metrics_layout(&config))
                .await
                .map_err(|error| DaemonError::Metrics { address, error })?,
        ),
        None => None,
    };
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
    let collector = collect::Collector::for_config(&config);
    // A consumer that could not be opened is not running: a reload tries
    // it again.
    let mut config = config;
    config.consumers = scheduler::served(&config, &shared);
    let mut scheduler = Scheduler::new(shared, limits, jobs, !options.exit_when_idle)
        .with_collector(collector)
        .with_running(scheduler::Running { config, metrics });
    scheduler.start();
    let notifier = notify::Notifier::from_env();
    notifier.ready();
    scheduler
        .serve(&options, hints, notifier, reloads, shutdown)
        .await
}

/// Open the cache and each consumer's directories (a consumer that cannot
/// be opened is left out when there are others), and watch every
/// `request/`: the state shared with every task, and the watcher's hints.
fn open(config: &Config, options: &Options) -> Result<(Arc<Shared>, Hints), DaemonError> {
    let store = Store::open(&config.cache).map_err(DaemonError::Cache)?;
    let mut consumers = Vec::new();
    for consumer in &config.consumers {
        // A consumer can make its own spool unusable (a symlink where a
        // state directory should be); that must not stop everyone else's.
        match Consumer::open(consumer) {
            Ok(opened) => {
                consumers.push(Arc::new(opened));
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
        let spools: Vec<Arc<Spool>> = consumers.iter().map(|c| c.spool()).collect();
        let request_dirs: Vec<&Dir> = spools.iter().map(|spool| &spool.request).collect();
        watch(&request_dirs, hint_sender).map_err(DaemonError::Watch)?
    };
    let shared = Arc::new(Shared {
        retired: vec![false; consumers.len()],
        consumers,
        watch: Arc::new(std::sync::Mutex::new(watch)),
        store: Arc::new(store),
        fetcher: Fetcher::new(options.fetch.clone(), config)
            .map_err(DaemonError::Http)?
            .with_remote(open_remote(config, options)?),
        mirrors: config.mirrors.clone(),
        targets: Arc::default(),
        durable_dirs: Arc::default(),
        uses: Arc::new(collect::record_uses(config)),
    });
    Ok((shared, hints))
}

/// The fleet tier, when the configuration has `[remote]`.
fn open_remote(
    config: &Config,
    options: &Options,
) -> Result<Option<Arc<crate::remote::Remote>>, DaemonError> {
    let Some(remote) = &config.remote else {
        return Ok(None);
    };
    let settings = options.remote.clone();
    crate::remote::Remote::start(remote, settings, &config.cache)
        .map(Some)
        .map_err(DaemonError::Remote)
}

/// What a metrics scrape reads: every configured consumer's spool, and
/// the cache.
fn metrics_layout(config: &Config) -> crate::metrics::Layout {
    let spools = config.consumers.iter();
    crate::metrics::Layout {
        spools: spools.map(|c| (c.name.clone(), c.spool.clone())).collect(),
        cache: config.cache.clone(),
    }
}

/// The watcher's hints, as the scheduler receives them.
type Hints = tokio::sync::mpsc::UnboundedReceiver<crate::watch::Hint>;
