//! One download of one digest from its ordered sources.
//!
//! Sources are tried in rounds, in order (the chit's URLs, then each
//! mirror), with a backoff between rounds (`retry_delay`, doubling up to
//! `max_retry_delay`). The download keeps one state value per source
//! (`run::Source`: its last answer, whether it is ruled out or was left
//! while progressing), and what each failed attempt means is decided in
//! one place, [`FetchError::next`], as a [`Next`]:
//!
//! - permanent answers (404, 410, 403, other 4xx, a wrong size, a wrong
//!   digest, a refused redirect, a garbled or unasked range) rule the
//!   source out for this download ([`Next::RuleOut`]);
//! - transient ones (refused, reset, stalled, too slow a drip, 5xx, 408,
//!   429, a local disk error) leave it for the next round
//!   ([`Next::Later`]), or, when the attempt was making progress, ask it
//!   again at once for the rest only, `Range` + `If-Range`
//!   ([`Next::AgainNow`]);
//! - a sha256 mismatch of bytes that came from more than one response (an
//!   earlier run's, an earlier break's, another source's), or a resumed
//!   prefix that changed on disk, may be the resume's fault: the partial is
//!   discarded and fetched once more from 0, from the first source, before
//!   any source is ruled out for it ([`Next::StartOver`], once per
//!   download);
//! - a source that streams, but slowly (under `pace::SLOW_BYTES` per
//!   second over a window), while the download has sources it has not
//!   tried yet, is left for them ([`Next::Yield`]): not ruled out, its
//!   bytes kept, and asked again in the next round without a backoff. So a
//!   slow first source, perhaps named by another consumer's chit, does not
//!   hold up a fast one behind it.
//!
//! The download fails when every source has answered permanently, or when
//! `give_up_after` passes without progress (new bytes, at no less than the
//! minimum pace of `pace`; a slow drip is cut and is not progress) and no
//! source was left while progressing. Its failure is a value,
//! [`DownloadFailure`]: why it gave up and each source's last answer. It
//! stays one ([`Failure`]) until each waiting chit's `# error:` line is
//! rendered from it, naming only that chit's own sources (see `failure`).
//!
//! What one download learns about a host is shared with every other
//! (`hosts`): at most `per_host` requests to it at once, `Retry-After`,
//! and one backoff per host, so a failing host is probed, not asked once
//! per chit. A source whose host must not be asked yet is passed over in
//! the round ([`FetchError::HostWaiting`]) and its other sources are
//! asked; the pause after the round ends when the host may be asked. A
//! TLS certificate the client refuses is permanent for its source
//! ([`FetchError::Certificate`], see `tls`).
//!
//! Chits that join a running download may bring sources of their own
//! ([`MoreSources`]): they are added at the end of the list, in the
//! current round (a backoff pause ends early for them), so a chit with a
//! working URL does not wait for another chit's dead one to give up.

mod attempt;
mod error;
mod failure;
mod hosts;
mod pace;
mod run;
mod tls;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use url::Url;

pub(crate) use self::attempt::{Sink, verify};
pub use self::error::{FetchError, Next, with_causes};
pub use self::failure::{Cause, DownloadFailure, Ending, Failure, SourceAnswer};
pub use self::hosts::{DEFAULT_PER_HOST, HostKey, MAX_RETRY_AFTER, Room, STREAMS_PER_CONNECTION};
use self::run::{Run, Source};
use crate::chit::{Digest, redact_url};
use crate::config::Config;
use crate::partial::{Frontier, Partial};
use crate::remote::{Fill, Remote};
use crate::store::Store;

/// Redirects followed per request; more is a redirect loop for our purposes.
pub const MAX_REDIRECTS: usize = 10;
/// Header fields accepted in an HTTP/1 response (hyper's default, made
/// explicit); more fails the attempt.
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Bytes of header list accepted in an HTTP/2 response (hyper's default,
/// made explicit).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Timing knobs. Values, not globals, so tests can shrink them.
/// (`give_up_after` is a configuration key: [`Fetcher::new`] takes it.)
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// First backoff between rounds; doubles each round up to `max_retry_delay`.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// No byte (or no response) for this long, or less than the minimum
    /// progress of `pace` in a window this long: the attempt is
    /// transient-failed.
    pub inactivity_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            inactivity_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What to download.
#[derive(Debug, Clone)]
pub struct Job {
    pub digest: Digest,
    pub size: u64,
    /// In order; the download appends the [`MoreSources`] it takes in.
    pub sources: Vec<Url>,
    pub more: Arc<MoreSources>,
}

/// Sources handed to a running download by chits that joined it.
#[derive(Debug, Default)]
pub struct MoreSources {
    urls: std::sync::Mutex<Offered>,
    added: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Offered {
    /// Every source the download has or was offered.
    known: Vec<Url>,
    /// Those it has not taken in yet.
    pending: Vec<Url>,
    /// The source asked last (for `chitd status`).
    serving: Option<Url>,
}

impl MoreSources {
    /// For a download of `sources`.
    pub fn new(sources: &[Url]) -> MoreSources {
        MoreSources {
            urls: std::sync::Mutex::new(Offered {
                known: sources.to_vec(),
                pending: Vec::new(),
                serving: None,
            }),
            added: tokio::sync::Notify::new(),
        }
    }

    /// Offer `urls` to the download. Only those new to it count: a chit
    /// joining with the same URLs (the usual case) neither grows the list
    /// nor cuts the download's backoff short.
    pub fn add(&self, urls: impl IntoIterator<Item = Url>) {
        let mut offered = self.lock();
        let mut new = false;
        for url in urls {
            if !offered.known.contains(&url) {
                offered.known.push(url.clone());
                offered.pending.push(url);
                new = true;
            }
        }
        if new {
            self.added.notify_one();
        }
    }

    /// The source the download asked last: the one serving it, while
    /// it makes progress.
    pub fn serving(&self) -> Option<Url> {
        self.lock().serving.clone()
    }

    fn now_serving(&self, source: &Url) {
        self.lock().serving = Some(source.clone());
    }

    fn take(&self) -> Vec<Url> {
        std::mem::take(&mut self.lock().pending)
    }

    fn is_empty(&self) -> bool {
        self.lock().pending.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Offered> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Every source failed, or none made progress for `give_up_after`.
    #[error("{0}")]
    Failed(DownloadFailure),
    /// The daemon is stopping; progress was checkpointed.
    #[error("interrupted by shutdown")]
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
    /// The configuration's `give_up_after` (its one home is
    /// [`crate::config::Config`]).
    give_up_after: Duration,
    /// The fleet tier, asked before the sources (see [`crate::remote`]).
    remote: Option<Arc<Remote>>,
    /// Every host's connection limit and backoff, shared by all
    /// downloads (see `hosts`).
    hosts: Arc<hosts::Hosts>,
}

impl Fetcher {
    /// A fetcher for `config`: its downloads fail once their sources made
    /// no progress for `give_up_after`, ask each host at most `per_host`
    /// at a time, and trust `ca_file`'s roots besides the system's.
    pub fn new(settings: FetchSettings, config: &Config) -> Result<Fetcher, ClientError> {
        // reqwest is built without a default crypto provider; installing one
        // twice is harmless (the second attempt is refused and ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let extra_roots = match &config.ca_file {
            Some(path) => tls::load_ca_file(path)?,
            None => Vec::new(),
        };
        let client = client_builder(&settings, config.per_host)
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(ClientError::Client)?;
        let backoff = hosts::Backoff {
            first: settings.retry_delay,
            max: settings.max_retry_delay,
        };
        Ok(Fetcher {
            client,
            settings,
            give_up_after: config.give_up_after,
            remote: None,
            hosts: Arc::new(hosts::Hosts::new(config.per_host, backoff)),
        })
    }

    /// This fetcher under a reloaded `config`: its `give_up_after`; with
    /// `network` (`per_host` or `ca_file` changed), a new HTTP client
    /// (its roots of trust and idle pool). Changes nothing shared: the
    /// hosts' limit is [`Fetcher::set_per_host`]'s. Downloads under way go
    /// on with the fetcher they started with.
    pub fn reconfigured(&self, config: &Config, network: bool) -> Result<Fetcher, ClientError> {
        let mut fetcher = self.clone();
        fetcher.give_up_after = config.give_up_after;
        if network {
            let extra_roots = match &config.ca_file {
                Some(path) => tls::load_ca_file(path)?,
                None => Vec::new(),
            };
            fetcher.client = client_builder(&self.settings, config.per_host)
                .tls_certs_merge(extra_roots)
                .build()
                .map_err(ClientError::Client)?;
        }
        Ok(fetcher)
    }

    /// Every host, known or met later, allows `per_host` requests at once,
    /// for every download (those under way too); what the hosts told
    /// (`Retry-After`, backoff) is kept.
    pub fn set_per_host(&self, per_host: usize) {
        self.hosts.set_per_host(per_host);
    }

    /// Ask `remote` first on every download.
    pub fn with_remote(mut self, remote: Option<Arc<Remote>>) -> Fetcher {
        self.remote = remote;
        self
    }

    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// The room `host` has for more requests now (see `hosts`).
    pub fn host_room(&self, host: &HostKey) -> Room {
        self.hosts.room(host)
    }

    /// Download `job` into a partial download and verify its size and
    /// sha256. The caller publishes it (`Store::publish`: fdatasync and
    /// rename, disk work that need not hold a download slot).
    /// `progress` follows the byte offset for `status`; `frontier`, when
    /// given, lets a reader follow the `.part` (see `chase`).
    pub async fn download(
        &self,
        store: Arc<Store>,
        job: &mut Job,
        progress: &AtomicU64,
        frontier: Option<Arc<Frontier>>,
        cancel: &CancellationToken,
    ) -> Result<Partial, DownloadError> {
        let failed = |ending| {
            DownloadError::Failed(DownloadFailure {
                ending,
                answers: Vec::new(),
            })
        };
        if job.sources.is_empty() && self.remote.is_none() {
            return Err(failed(Ending::NoSource));
        }
        let (digest, size) = (job.digest, job.size);
        let opened = if Partial::fits_in_memory(size) {
            // No file is touched: no need for the blocking pool.
            store.partial(digest, size)
        } else {
            let opener = Arc::clone(&store);
            blocking(move || opener.partial(digest, size)).await
        };
        let mut partial = opened.map_err(|e| failed(Ending::CannotOpen(e)))?;
        if let Some(frontier) = frontier {
            partial.follow(frontier);
        }
        let mut started_over = false;
        if partial.resumed && partial.offset() == size {
            let verified;
            (partial, verified) = verify_whole(partial, digest).await;
            match verified {
                Ok(()) => return Ok(partial),
                Err(error) => {
                    tracing::warn!(digest = %digest, "the progress record covers every byte, but {error}: fetching once more from 0");
                    started_over = true;
                }
            }
        }
        partial = match self.remote_first(partial, job, progress, cancel).await {
            Ok(partial) => partial,
            Err(over) => return over,
        };
        let run = Run {
            fetcher: self,
            sources: job.sources.iter().cloned().map(Source::new).collect(),
            job,
            progress,
            cancel,
            high_water: partial.offset(),
            last_progress: Instant::now(),
            started_over,
            disk_full: false,
            delay: self.settings.retry_delay,
            waits: Vec::new(),
        };
        let result = run.rounds(partial).await;
        if let (Some(remote), Err(DownloadError::Failed(_))) = (&self.remote, &result) {
            remote.release_lease(digest);
        }
        result
    }

    /// The remote tier before the sources: `Err` with the download's end
    /// when it gave the file (or the daemon stops, or there is no source
    /// left to ask), else the partial for the sources.
    async fn remote_first(
        &self,
        partial: Partial,
        job: &Job,
        progress: &AtomicU64,
        cancel: &CancellationToken,
    ) -> Result<Partial, Result<Partial, DownloadError>> {
        let Some(remote) = &self.remote else {
            return Ok(partial);
        };
        let (partial, fill) = remote.fill(partial, job.digest, progress, cancel).await;
        match fill {
            Fill::Verified => Err(Ok(partial)),
            Fill::Shutdown => Err(Err(DownloadError::Shutdown)),
            Fill::Elsewhere if job.sources.is_empty() => {
                remote.release_lease(job.digest);
                if !partial.is_resumable() {
                    blocking(move || partial.discard()).await;
                }
                let ending = Ending::NoSource;
                let answers = Vec::new();
                Err(Err(DownloadError::Failed(DownloadFailure {
                    ending,
                    answers,
                })))
            }
            Fill::Elsewhere => Ok(partial),
        }
    }
}

/// The HTTP client's settings (roots of trust apart).
///
/// Proxies: reqwest's system proxy support is left on, so `HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lower-case forms)
/// are honoured as curl does. Roots of trust: the platform verifier
/// (`rustls-platform-verifier`; on Linux the system's CA store as
/// `rustls-native-certs` finds it, `SSL_CERT_FILE`/`SSL_CERT_DIR`
/// included), merged with `ca_file`'s.
fn client_builder(settings: &FetchSettings, per_host: usize) -> reqwest::ClientBuilder {
    // Each refusal names the target (without credentials): it becomes
    // part of the chit's `# error:` line.
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let target = redact_url(attempt.url());
        let scheme = attempt.url().scheme();
        if scheme != "http" && scheme != "https" {
            attempt.error(format!("redirect to {target}, which is not http or https"))
        } else if attempt.previous().iter().any(|seen| seen == attempt.url()) {
            attempt.error(format!("redirect loop: back to {target}"))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!(
                "more than {MAX_REDIRECTS} redirects (the last to {target})"
            ))
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("chitd/", env!("CARGO_PKG_VERSION")))
        .redirect(redirects)
        // Response heads are bounded: hyper keeps at most about 400 KiB
        // of an HTTP/1 head (not configurable through reqwest) and
        // these many fields; HTTP/2 header lists are capped in bytes.
        .http1_max_headers(MAX_RESPONSE_HEADERS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .connect_timeout(settings.connect_timeout)
        // No more idle connections to a host than may be busy at once.
        .pool_max_idle_per_host(per_host)
        // HTTP/2 flow control: the defaults (2 MiB a stream, 5 MiB the
        // connection) let a connection carry 5 MiB per round trip, 62 MB/s
        // at 80 ms, however many downloads share it, and small files wait
        // for window behind big ones. These fill 1 Gbit/s at 80 ms; what
        // is buffered unread stays within the connection's window.
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
}

/// The HTTP/2 receive window of one download (one stream).
const H2_STREAM_WINDOW: u32 = 16 << 20;
/// The HTTP/2 receive window of one connection, shared by its streams.
const H2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Why no [`Fetcher`] could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {}", with_causes(.0))]
    Client(reqwest::Error),
    /// `ca_file` cannot be read or holds no usable certificate.
    #[error("ca_file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// A partial whose progress record covers every byte (a checkpoint of the
/// whole file, then a crash before it was published) has nothing left to
/// ask for: verified without a request, its digest from the restored
/// midstate and its prefix re-hashed ([`attempt::verify`]; reset when it
/// does not verify).
async fn verify_whole(partial: Partial, digest: Digest) -> (Partial, Result<(), FetchError>) {
    blocking(move || {
        let mut partial = partial;
        let verified = attempt::verify(&mut partial, digest);
        if verified.is_ok() {
            tracing::info!(digest = %digest, "the progress record covers every byte: verified without a request");
        }
        (partial, verified)
    })
    .await
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_sources_new_to_the_download_are_offered_and_wake_it() {
        let url = |s: &str| Url::parse(s).unwrap();
        let more = MoreSources::new(&[url("http://a/x")]);
        // The same source again, as most joining chits bring: nothing.
        more.add([url("http://a/x")]);
        assert!(more.is_empty());
        let woken = tokio::time::timeout(Duration::from_millis(50), more.added.notified());
        assert!(woken.await.is_err(), "a known source cut the backoff short");
        // A new one: offered once, and it wakes the download.
        more.add([url("http://b/x"), url("http://b/x"), url("http://a/x")]);
        more.added.notified().await;
        assert_eq!(more.take(), [url("http://b/x")]);
        more.add([url("http://b/x")]);
        assert!(more.is_empty());
    }
}
