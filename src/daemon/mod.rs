//! `chitd run`: recover, watch, schedule, and (optionally) exit when idle.
//!
//! One scheduler task owns all state: per-consumer queues of chit names
//! (served round-robin, so a flood in one spool never starves another), the
//! [`InFlight`] map of downloads and their waiting chits, and two task sets:
//! *local* steps (claim, parse, cache lookup, delivery: blocking file work,
//! at most [`LOCAL_SLOTS`] at once) and *downloads* (at most `jobs`). A chit
//! waiting for a download holds no task and no slot, so a slow download
//! never blocks cache hits.

mod chit_id;
mod commit;
mod consumer;
mod downloads;
mod housekeeping;
mod idle;
mod limits;
mod not_utf8;
mod parked;
mod queue;
mod scan;
mod scheduler;
pub mod status_file;
mod stuck;
mod work;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    #[error("cannot build the HTTP client: {}", crate::fetch::with_causes(.0))]
    Http(reqwest::Error),
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
    let (shared, hints) = open(&config, &options)?;
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
    let mut scheduler = Scheduler::new(shared, limits, jobs, !options.exit_when_idle);
    scheduler.start();
    scheduler.serve(&options, hints, shutdown).await
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
        fetcher: Fetcher::new(options.fetch.clone(), config.give_up_after)
            .map_err(DaemonError::Http)?,
        mirrors: config.mirrors.clone(),
        targets: work::Targets::default(),
        durable_dirs: DurableDirs::default(),
    });
    Ok((shared, hints))
}

/// The watcher's hints, as the scheduler receives them.
type Hints = tokio::sync::mpsc::UnboundedReceiver<crate::watch::Hint>;
