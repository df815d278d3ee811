//! The fleet tier (contract §11): an S3-compatible store that the chitd of
//! every host treats as a shared second-level cache.
//!
//! - Objects are `<prefix>sha256/<hex>`, immutable, never overwritten.
//! - **Read** (`read`, `ranges`): on a local miss the download asks the
//!   remote tier first, then the chit's URLs and mirrors. The object from
//!   the partial's offset is read as ranged GETs of
//!   [`Settings::range_size`], [`Settings::ranges_at_once`] under way,
//!   their bytes hashed while streaming, in order, into the same partial
//!   as any source's. A remote that is down, stalls, is slow or sends
//!   wrong bytes never fails a chit: it is ruled out for
//!   [`Settings::rule_out_for`] (logged) and the chit's sources are asked.
//!   A chit's `# error:` line never names the remote; it is "the remote
//!   tier" in logs and status.
//! - **Write** (`upload`): a file downloaded from elsewhere is uploaded in
//!   the background once published; delivery never waits for it. Small
//!   objects are one `PUT` with `If-None-Match: *`; objects of at least
//!   [`Settings::multipart_threshold`] bytes are multipart uploads whose
//!   id and finished parts are recorded durably in
//!   `<cache>/upload-v1/<hex>.json`, so that after a crash the next start
//!   resumes the same upload without sending the finished parts again.
//!   Every pending upload has such a record, so an upload the store refused
//!   or a shutdown cut is tried again at the next start.
//! - **Lease** (`lease`): a host that misses an object of at least
//!   [`Settings::lease_min_size`] (a smaller one costs less to fetch twice
//!   than a lease's round trips would add to every miss) creates
//!   `<prefix>lease/<hex>` with `If-None-Match: *` (its name and expiry in
//!   the body) and downloads upstream; a host that finds the lease taken
//!   waits for the object and downloads it from the remote, or downloads
//!   upstream itself once the lease expires or is released. Whether the
//!   store honours conditional creates is probed at start; if it does not,
//!   leases are skipped (logged): hosts may then both download, which is
//!   correct, only wasteful.

pub mod config;

mod client;
mod lease;
mod ranges;
mod read;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3;

pub use self::config::RemoteConfig;
pub use self::read::Fill;
use crate::chit::Digest;

/// How the remote tier is named in logs, `status` and progress records.
pub const REMOTE_SOURCE: &str = "the remote tier";
/// The cache subdirectory of the pending uploads' records.
pub const UPLOAD_DIR: &str = "upload-v1";

/// Timing and size knobs. Values, not globals, so tests can shrink them
/// (`CHITD_REMOTE_*`, see [`Settings::from_environment`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A remote that failed is not asked again for this long.
    pub rule_out_for: Duration,
    /// No byte from the remote for this long: it is ruled out.
    pub stall: Duration,
    /// A read is cut into ranged GETs of this many bytes (see `ranges`).
    pub range_size: u64,
    /// Ranged GETs of one read under way at once.
    pub ranges_at_once: usize,
    /// Objects this big or bigger are uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of each part but the last (S3 wants at least 5 MiB).
    pub part_size: u64,
    /// Uploads at once.
    pub uploads_at_once: usize,
    /// Bytes per second of all uploads together; 0: unbounded.
    pub upload_rate: u64,
    /// A multipart upload older than this is aborted, not resumed.
    pub abort_after: Duration,
    /// How long a lease holds before others download themselves.
    pub lease_ttl: Duration,
    /// How often a host waiting on a lease looks for the object.
    pub lease_poll: Duration,
    /// Smaller files take no lease: fetching one twice costs less than
    /// the lease's round trips would add to every miss.
    pub lease_min_size: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            rule_out_for: Duration::from_secs(60),
            stall: Duration::from_secs(10),
            range_size: 8 << 20,
            ranges_at_once: 4,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            uploads_at_once: 2,
            upload_rate: 0,
            abort_after: Duration::from_secs(7 * 24 * 3600),
            lease_ttl: Duration::from_secs(600),
            lease_poll: Duration::from_millis(500),
            lease_min_size: 1 << 20,
        }
    }
}

impl Settings {
    /// Defaults, with test and tuning knobs from the environment:
    /// `CHITD_REMOTE_RULE_OUT_MS`, `CHITD_REMOTE_STALL_MS`,
    /// `CHITD_REMOTE_RANGE_SIZE` (bytes), `CHITD_REMOTE_RANGES_AT_ONCE`,
    /// `CHITD_REMOTE_MULTIPART_THRESHOLD` and `CHITD_REMOTE_PART_SIZE`
    /// (bytes), `CHITD_REMOTE_UPLOAD_RATE` (bytes per second),
    /// `CHITD_REMOTE_LEASE_TTL_MS`, `CHITD_REMOTE_LEASE_POLL_MS`.
    pub fn from_environment(knobs: &crate::env::RemoteKnobs) -> Settings {
        let defaults = Settings::default();
        Settings {
            rule_out_for: knobs.rule_out_for.unwrap_or(defaults.rule_out_for),
            stall: knobs.stall.unwrap_or(defaults.stall),
            range_size: knobs.range_size.unwrap_or(defaults.range_size),
            ranges_at_once: knobs.ranges_at_once.unwrap_or(defaults.ranges_at_once),
            multipart_threshold: knobs
                .multipart_threshold
                .unwrap_or(defaults.multipart_threshold),
            part_size: knobs.part_size.unwrap_or(defaults.part_size),
            upload_rate: knobs.upload_rate.unwrap_or(defaults.upload_rate),
            lease_ttl: knobs.lease_ttl.unwrap_or(defaults.lease_ttl),
            lease_poll: knobs.lease_poll.unwrap_or(defaults.lease_poll),
            ..defaults
        }
    }
}

/// The remote tier of one daemon: its client, whether it is ruled out,
/// whether it honours conditional creates, and the upload queue.
#[derive(Debug)]
pub struct Remote {
    store: AmazonS3,
    /// Empty or ending in `/`.
    prefix: String,
    settings: Settings,
    /// Not asked before this instant (a failure ruled it out).
    ruled_out_until: Mutex<Option<Instant>>,
    /// [`Conditional`] as probed at start.
    conditional: AtomicU8,
    /// The first probe is over (whatever it found): leases wait for it.
    probed: tokio::sync::watch::Sender<bool>,
    /// This host's name in the leases it takes.
    holder: String,
    /// The leases this daemon holds, released once the object is uploaded
    /// or the download failed.
    leases: Mutex<std::collections::HashSet<Digest>>,
    /// Where pending uploads are recorded (`<cache>/upload-v1`).
    upload_dir: PathBuf,
    uploads: tokio::sync::mpsc::UnboundedSender<upload::Upload>,
}

/// Whether the store refuses a second create of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Conditional {
    Unknown = 0,
    Honoured = 1,
    Ignored = 2,
}

impl Remote {
    /// Build the client and start the uploader, which first probes the
    /// store and resumes the uploads pending in `<cache>/upload-v1`. Must
    /// be called within the Tokio runtime.
    pub fn start(
        config: &RemoteConfig,
        settings: Settings,
        cache: &Path,
    ) -> Result<Arc<Remote>, object_store::Error> {
        let store = client::build(config)?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let remote = Arc::new(Remote {
            store,
            prefix: config.prefix.clone(),
            settings,
            ruled_out_until: Mutex::new(None),
            conditional: AtomicU8::new(Conditional::Unknown as u8),
            probed: tokio::sync::watch::Sender::new(false),
            holder: holder_name(),
            leases: Mutex::default(),
            upload_dir: cache.join(UPLOAD_DIR),
            uploads: sender,
        });
        tracing::info!(remote = %describe(config), "remote tier configured");
        tokio::spawn(upload::serve(Arc::clone(&remote), receiver));
        Ok(remote)
    }

    fn object_path(&self, digest: &Digest) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}sha256/{digest}", self.prefix))
    }

    fn lease_path(&self, digest: &Digest) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}lease/{digest}", self.prefix))
    }

    /// Ruled out by a recent failure.
    pub fn is_ruled_out(&self) -> bool {
        let until = *self
            .ruled_out_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Not asked again for [`Settings::rule_out_for`]; logged with `why`.
    fn rule_out(&self, digest: &Digest, why: &dyn std::fmt::Display) {
        let until = Instant::now() + self.settings.rule_out_for;
        *self
            .ruled_out_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(until);
        let seconds = self.settings.rule_out_for.as_secs_f64();
        tracing::warn!(%digest, "{REMOTE_SOURCE} ruled out for {seconds}s: {why}");
    }

    fn conditional(&self) -> Conditional {
        match self.conditional.load(Ordering::Relaxed) {
            1 => Conditional::Honoured,
            2 => Conditional::Ignored,
            _ => Conditional::Unknown,
        }
    }

    /// Upload the published object at `object` in the background (see
    /// `upload`); a no-op once the daemon stops.
    pub fn upload_later(&self, digest: Digest, size: u64, object: PathBuf) {
        let _ = self.uploads.send(upload::Upload {
            digest,
            size,
            object,
        });
    }
}

/// The uploads to the remote tier that `cache` has not finished: the
/// digests recorded in its `upload-v1/` (for `status` and metrics).
pub fn pending_uploads(cache: &Path) -> Vec<Digest> {
    upload::pending(&cache.join(UPLOAD_DIR))
}

/// Whether a partial's bytes came from the remote tier (its
/// `Partial::source`): such a file is not uploaded back.
pub fn is_remote_source(source: Option<&str>) -> bool {
    source == Some(REMOTE_SOURCE)
}

/// The store as logs and `chitd run`'s layout show it (no credentials:
/// the endpoint holds none).
pub fn describe(config: &RemoteConfig) -> String {
    let endpoint = config.endpoint.as_str().trim_end_matches('/');
    format!(
        "{endpoint}, bucket {}, prefix {:?}",
        config.bucket, config.prefix
    )
}

/// `<hostname> pid <pid>`, for lease bodies.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = match host.trim() {
        "" => "unknown-host",
        name => name,
    };
    format!("{host} pid {}", std::process::id())
}
