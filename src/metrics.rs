//! Prometheus metrics of `chitd run` (contract §9), served at `/metrics`
//! when `metrics = "ADDR"` or `--metrics ADDR` asks for it (see
//! [`server`]).
//!
//! The counters live in one process-wide [`METRICS`], so the daemon's parts
//! count where things happen without carrying it around; each count is an
//! atomic add (a labelled one, a look-up under a read lock first: chits are
//! counted per group commit, not per chit). They count from the start of
//! the process, as Prometheus counters do.
//!
//! What the directories already hold is not counted twice but read at
//! scrape time, on the blocking pool: the chits in each consumer's state
//! directories (`chitd_chits{consumer,state}`), the objects in the
//! cache (`chitd_cache_objects`, `chitd_cache_bytes`: a walk of
//! `sha256-v1/`, which is 256 directories; a walk of a cache of a million
//! objects costs about a second of `stat`s, so a scrape walks it only if
//! the last walk is older than [`CACHE_WALK_EVERY`]), and the uploads to
//! the fleet tier not done yet (`chitd_uploads_pending`: the records in
//! `upload-v1/`).
//!
//! Beyond the contract's list, the fleet tier's uploads:
//! `chitd_uploads_total{outcome}` (`uploaded`; `skipped`: the store had
//! it already, or the object left the cache; `failed`: tried again later), `chitd_uploaded_bytes_total`,
//! `chitd_uploads_in_flight`.
//!
//! The text served is Prometheus's text format 0.0.4 (the form every
//! scraper reads), made from `prometheus-client`'s OpenMetrics text: a
//! counter's `# HELP`/`# TYPE` name it with its `_total`, so that the
//! counter `chitd_chits_total` and the gauge `chitd_chits` are two
//! families.

pub mod server;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fetch::FetchError;

/// The cache is walked for `chitd_cache_objects` and `chitd_cache_bytes`
/// at most this often; scrapes in between serve the last walk's counts.
pub const CACHE_WALK_EVERY: Duration = Duration::from_secs(60);

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChitLabels {
    consumer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    consumer: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceErrorLabels {
    host: String,
    class: &'static str,
}

/// Every series; counters and gauges are atomics.
#[derive(Debug)]
pub struct Metrics {
    chits_total: Family<ChitLabels, Counter>,
    chits: Family<StateLabels, Gauge>,
    cache_hits: Counter,
    downloads_total: Family<OutcomeLabels, Counter>,
    downloaded_bytes: Counter,
    delivered_bytes: Counter,
    downloads_in_flight: Gauge,
    download_duration: Histogram,
    cache_bytes: Gauge,
    cache_objects: Gauge,
    source_errors: Family<SourceErrorLabels, Counter>,
    uploads_total: Family<OutcomeLabels, Counter>,
    uploaded_bytes: Counter,
    uploads_in_flight: Gauge,
    uploads_pending: Gauge,
    /// When the cache was last walked.
    cache_walked: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            chits_total: Family::default(),
            chits: Family::default(),
            cache_hits: Counter::default(),
            downloads_total: Family::default(),
            downloaded_bytes: Counter::default(),
            delivered_bytes: Counter::default(),
            downloads_in_flight: Gauge::default(),
            // 10 ms to about 3 hours.
            download_duration: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            cache_bytes: Gauge::default(),
            cache_objects: Gauge::default(),
            source_errors: Family::default(),
            uploads_total: Family::default(),
            uploaded_bytes: Counter::default(),
            uploads_in_flight: Gauge::default(),
            uploads_pending: Gauge::default(),
            cache_walked: std::sync::Mutex::new(None),
        }
    }
}

/// What the directories hold, read at scrape time.
#[derive(Debug, Clone)]
pub struct Layout {
    /// (consumer name, spool directory).
    pub spools: Vec<(String, PathBuf)>,
    pub cache: PathBuf,
}

impl Metrics {
    /// `count` chits of `consumer` moved to `downloaded/`.
    pub fn chits_downloaded(&self, consumer: &str, count: u64) {
        self.chit_outcome(consumer, "downloaded").inc_by(count);
    }

    /// A chit of `consumer` moved to `fail/`.
    pub fn chit_failed(&self, consumer: &str) {
        self.chit_outcome(consumer, "failed").inc();
    }

    fn chit_outcome(&self, consumer: &str, outcome: &'static str) -> Counter {
        let labels = ChitLabels {
            consumer: consumer.to_owned(),
            outcome,
        };
        self.chits_total.get_or_create_owned(&labels)
    }

    /// A chit's file was found in the cache.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// A file of `bytes` bytes was delivered to a chit.
    pub fn delivered(&self, bytes: u64) {
        self.delivered_bytes.inc_by(bytes);
    }

    /// `running` downloads are transferring now.
    pub fn downloads_running(&self, running: usize) {
        self.downloads_in_flight
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    /// A download of `bytes` bytes was verified and published; it took
    /// `took`.
    pub fn download_finished(&self, bytes: u64, took: Duration) {
        self.download_outcome("downloaded").inc();
        self.downloaded_bytes.inc_by(bytes);
        self.download_duration.observe(took.as_secs_f64());
    }

    /// A download failed; each source's last error is counted by host and
    /// class.
    pub fn download_failed<'a>(
        &self,
        errors: impl IntoIterator<Item = (&'a url::Url, &'a FetchError)>,
    ) {
        self.download_outcome("failed").inc();
        for (source, error) in errors {
            let labels = SourceErrorLabels {
                host: source.host_str().unwrap_or("").to_owned(),
                class: error_class(error),
            };
            self.source_errors.get_or_create(&labels).inc();
        }
    }

    /// An upload to the fleet tier started sending (or checking).
    pub fn upload_started(&self) {
        self.uploads_in_flight.inc();
    }

    /// An upload ended: `outcome` is `uploaded` (with the `bytes` sent),
    /// `skipped` (nothing to send) or `failed`.
    pub fn upload_ended(&self, outcome: &'static str, bytes: u64) {
        self.uploads_in_flight.dec();
        self.uploads_total
            .get_or_create_owned(&OutcomeLabels { outcome })
            .inc();
        self.uploaded_bytes.inc_by(bytes);
    }

    fn download_outcome(&self, outcome: &'static str) -> Counter {
        self.downloads_total
            .get_or_create_owned(&OutcomeLabels { outcome })
    }

    /// The text served at `/metrics`: the counters, and what `layout`'s
    /// directories hold now (blocking file work).
    pub fn scrape(&self, layout: &Layout) -> String {
        self.read_directories(layout);
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &registry);
        prometheus_text(&text)
    }

    fn read_directories(&self, layout: &Layout) {
        // Every series a scraper may compare is there, at 0 until counted.
        for outcome in ["downloaded", "failed"] {
            self.download_outcome(outcome);
        }
        for (consumer, spool) in &layout.spools {
            self.chit_outcome(consumer, "downloaded");
            self.chit_outcome(consumer, "failed");
            let root = crate::dir::Dir::open_existing(spool).ok();
            for state in crate::spool::STATES {
                let count = root
                    .as_ref()
                    .and_then(|root| crate::status::count_chits(root, state).ok())
                    .unwrap_or(0);
                let labels = StateLabels {
                    consumer: consumer.clone(),
                    state,
                };
                let count = i64::try_from(count).unwrap_or(i64::MAX);
                self.chits.get_or_create(&labels).set(count);
            }
        }
        let pending = crate::remote::pending_uploads(&layout.cache).len();
        self.uploads_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.read_cache(&layout.cache);
    }

    /// Walk the cache for its objects and bytes, unless the last walk is
    /// recent (see [`CACHE_WALK_EVERY`]).
    fn read_cache(&self, cache: &Path) {
        {
            let mut walked = self.cache_walked.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if walked.is_some_and(|at| now.duration_since(at) < CACHE_WALK_EVERY) {
                return;
            }
            *walked = Some(now);
        }
        let (objects, bytes) = cache_contents(cache);
        self.cache_objects
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry;
        let chits_total = self.chits_total.clone();
        r.register(
            "chitd_chits",
            "Chits moved to downloaded/ or fail/",
            chits_total,
        );
        r.register(
            "chitd_chits",
            "Chits in each state directory",
            self.chits.clone(),
        );
        let hits = self.cache_hits.clone();
        r.register(
            "chitd_cache_hits",
            "Chits whose file was in the cache",
            hits,
        );
        let downloads = self.downloads_total.clone();
        r.register(
            "chitd_downloads",
            "Downloads that ended, by outcome",
            downloads,
        );
        let bytes = self.downloaded_bytes.clone();
        r.register(
            "chitd_downloaded_bytes",
            "Bytes of verified downloads",
            bytes,
        );
        let bytes = self.delivered_bytes.clone();
        r.register("chitd_delivered_bytes", "Bytes delivered to chits", bytes);
        let running = self.downloads_in_flight.clone();
        r.register(
            "chitd_downloads_in_flight",
            "Downloads transferring now",
            running,
        );
        let help = "Time from a download's start to its file in the cache";
        let duration = self.download_duration.clone();
        r.register("chitd_download_duration_seconds", help, duration);
        let bytes = self.cache_bytes.clone();
        r.register(
            "chitd_cache_bytes",
            "Bytes of the objects in the cache",
            bytes,
        );
        let objects = self.cache_objects.clone();
        r.register("chitd_cache_objects", "Objects in the cache", objects);
        let help = "Last errors of the sources of failed downloads, by host and class";
        r.register("chitd_source_errors", help, self.source_errors.clone());
        let help = "Uploads to the fleet tier that ended, by outcome";
        r.register("chitd_uploads", help, self.uploads_total.clone());
        let help = "Bytes uploaded to the fleet tier";
        r.register("chitd_uploaded_bytes", help, self.uploaded_bytes.clone());
        let help = "Uploads to the fleet tier sending now";
        let running = self.uploads_in_flight.clone();
        r.register("chitd_uploads_in_flight", help, running);
        let help = "Uploads to the fleet tier not done yet (records in upload-v1/)";
        let pending = self.uploads_pending.clone();
        r.register("chitd_uploads_pending", help, pending);
    }
}

/// The objects in `cache`'s `sha256-v1/` and their bytes (names of 64 hex
/// digits: temporaries left out).
fn cache_contents(cache: &Path) -> (u64, u64) {
    let objects = walkdir::WalkDir::new(cache.join("sha256-v1"))
        .min_depth(2)
        .max_depth(2)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().as_encoded_bytes();
            entry.file_type().is_file()
                && name.len() == 64
                && name.iter().all(u8::is_ascii_hexdigit)
        });
    objects.fold((0, 0), |(count, bytes), entry| {
        let size = entry.metadata().map_or(0, |meta| meta.len());
        (count + 1, bytes + size)
    })
}

/// The class of a source's error, for `chitd_source_errors_total`.
fn error_class(error: &FetchError) -> &'static str {
    match error {
        FetchError::Status(status) if status.is_client_error() => "http_4xx",
        FetchError::Status(status) if status.is_server_error() => "http_5xx",
        FetchError::Status(_) => "http_other",
        FetchError::Transport(_) => "transport",
        FetchError::Redirect(_) => "redirect",
        FetchError::Stalled(_) | FetchError::NoResponse(_) => "timeout",
        FetchError::TooSlow { .. } | FetchError::Slow { .. } => "slow",
        FetchError::WrongLength { .. }
        | FetchError::TooLong { .. }
        | FetchError::Truncated { .. }
        | FetchError::EndedShort { .. }
        | FetchError::BadRange(_)
        | FetchError::UnaskedRange => "length",
        FetchError::DigestMismatch { .. } | FetchError::CorruptPartial(_) => "digest",
        FetchError::Local(_) | FetchError::Disk(_) => "local",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4: a counter's
/// `# HELP` and `# TYPE` carry its `_total`; `# UNIT` and `# EOF` go.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            if let Some(help) = help.take() {
                let text = help.strip_prefix(&format!("# HELP {name} ")).unwrap_or("");
                out.push_str(&format!("# HELP {name}_total {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(help) = help.take() {
            out.push_str(help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_of_one_name_are_two_families() {
        let metrics = Metrics::default();
        metrics.chits_downloaded("c", 2);
        metrics
            .chits
            .get_or_create(&StateLabels {
                consumer: "c".into(),
                state: "fail",
            })
            .set(3);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &registry).unwrap();
        let text = prometheus_text(&text);
        assert!(text.contains("# HELP chitd_chits_total Chits moved to downloaded/ or fail/.\n# TYPE chitd_chits_total counter\nchitd_chits_total{consumer=\"c\",outcome=\"downloaded\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "# TYPE chitd_chits gauge\nchitd_chits{consumer=\"c\",state=\"fail\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE chitd_download_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn source_errors_are_counted_by_host_and_class() {
        let metrics = Metrics::default();
        let url = url::Url::parse("http://example.org:8080/x").unwrap();
        let error = FetchError::Status(reqwest::StatusCode::NOT_FOUND);
        metrics.download_failed([(&url, &error)]);
        let labels = SourceErrorLabels {
            host: "example.org".into(),
            class: "http_4xx",
        };
        assert_eq!(metrics.source_errors.get_or_create(&labels).get(), 1);
        assert_eq!(metrics.download_outcome("failed").get(), 1);
    }
}
