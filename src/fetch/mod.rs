//! One download of one digest from its ordered sources.
//!
//! Sources are tried in order (the chit's URLs, then each mirror). Each
//! answer is classified by [`FetchError::is_transient`]: a permanent answer
//! (404, wrong size, wrong digest, refused redirect...) rules that source out;
//! a transient one (refused, reset, stalled, 5xx, 429) is retried in the next
//! round, after a backoff. A source that was making progress when it broke
//! is asked again at once, for the rest only (`Range` + `If-Range`). A
//! sha256 mismatch of bytes that came from more than one response (an
//! earlier run's, an earlier break's, another source's) may be the resume's
//! fault: the partial is discarded and fetched once more from 0, from the
//! first source, before any source is ruled out for it. The
//! download fails when every source has answered permanently, or when
//! `give_up_after` passes without progress: new bytes, at no less than the
//! minimum pace of `pace` (a slow drip is cut and is not progress).
//!
//! Chits that join a running download may bring sources of their own
//! ([`MoreSources`]): they are added at the end of the list, in the
//! current round (a backoff pause ends early for them), so a chit with a
//! working URL does not wait for another chit's dead one to give up.
//!
//! A source that streams, but slowly (under `pace::SLOW_BYTES` per second
//! over a window), while the download has sources it has not tried yet, is
//! left for them ([`FetchError::Slow`]): not ruled out, its bytes kept, and
//! asked again in the next round. So a slow first source, perhaps named by
//! another consumer's chit, does not hold up a fast one behind it.

mod attempt;
mod error;
mod pace;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use url::Url;

use self::attempt::{Attempt, Stop};
pub use self::error::{FetchError, with_causes};
use crate::chit::{Digest, redact_url};
use crate::config::whole_ms;
use crate::partial::{Frontier, Partial};
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
    /// No progress from any source for this long: the download fails.
    pub give_up_after: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            inactivity_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            give_up_after: crate::config::DEFAULT_GIVE_UP_AFTER,
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
}

impl MoreSources {
    /// For a download of `sources`.
    pub fn new(sources: &[Url]) -> MoreSources {
        MoreSources {
            urls: std::sync::Mutex::new(Offered {
                known: sources.to_vec(),
                pending: Vec::new(),
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
    /// Every source failed; the message lists each and its answer.
    #[error("{0}")]
    Failed(String),
    /// The daemon is stopping; progress was checkpointed.
    #[error("interrupted by shutdown")]
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Fetcher, reqwest::Error> {
        // reqwest is built without a default crypto provider; installing one
        // twice is harmless (the second attempt is refused and ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
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
        let client = reqwest::Client::builder()
            .user_agent(concat!("chitd/", env!("CARGO_PKG_VERSION")))
            .redirect(redirects)
            // Response heads are bounded: hyper keeps at most about 400 KiB
            // of an HTTP/1 head (not configurable through reqwest) and
            // these many fields; HTTP/2 header lists are capped in bytes.
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(Fetcher { client, settings })
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
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
        if job.sources.is_empty() {
            return Err(DownloadError::Failed(
                "no source to try: the chit has no URL and no mirror is configured".into(),
            ));
        }
        let (digest, size) = (job.digest, job.size);
        let opened = if Partial::fits_in_memory(size) {
            // No file is touched: no need for the blocking pool.
            store.partial(digest, size)
        } else {
            let opener = Arc::clone(&store);
            blocking(move || opener.partial(digest, size)).await
        };
        let mut partial = opened
            .map_err(|e| DownloadError::Failed(format!("cannot open the partial download: {e}")))?;
        if let Some(frontier) = frontier {
            partial.follow(frontier);
        }
        let mut restarted_after_resume = false;
        if partial.resumed && partial.offset() == size {
            let verified;
            (partial, verified) = verify_whole(partial, digest).await;
            match verified {
                Ok(()) => return Ok(partial),
                Err(error) => {
                    tracing::warn!(digest = %digest, "the progress record covers every byte, but {error}: fetching once more from 0");
                    restarted_after_resume = true;
                }
            }
        }
        let mut answers: Vec<Option<String>> = vec![None; job.sources.len()];
        let mut ruled_out = vec![false; job.sources.len()];
        // Left for untried sources while still making progress (`Slow`),
        // and not asked again since: not judged by time it did not have.
        let mut yielded = vec![false; job.sources.len()];
        let give_up_after = self.settings.give_up_after;
        let left = |last_progress: Instant| {
            whole_ms(give_up_after.saturating_sub(last_progress.elapsed()))
        };
        // How long an attempt may wait for bytes: never past
        // `give_up_after` without progress, except that a source not asked
        // yet (or left while it progressed) gets a whole window of its own:
        // a chit is not failed before each source was asked.
        let window = whole_ms(self.settings.inactivity_timeout.min(give_up_after));
        let mut high_water = partial.offset();
        let mut last_progress = Instant::now();
        let mut disk_full = false;
        let mut delay = self.settings.retry_delay;
        loop {
            let mut index = 0;
            // Set to go back to the first source (once more from 0).
            let mut from_the_first = false;
            loop {
                // Sources that chits joining meanwhile brought: in this round.
                for url in job.more.take() {
                    if !job.sources.contains(&url) {
                        tracing::debug!(digest = %digest, source = %redact_url(&url), "source added by a chit that joined");
                        job.sources.push(url);
                        answers.push(None);
                        ruled_out.push(false);
                        yielded.push(false);
                    }
                }
                let Some(source) = job.sources.get(index) else {
                    break;
                };
                if ruled_out[index] {
                    index += 1;
                    continue;
                }
                // Never asked in this download, besides this one.
                let untried = answers
                    .iter()
                    .enumerate()
                    .any(|(other, answer)| other != index && answer.is_none());
                let more = &job.more;
                let untried_elsewhere = || untried || !more.is_empty();
                loop {
                    let inactivity = if answers[index].is_none() || yielded[index] {
                        window
                    } else {
                        window.min(left(last_progress))
                    };
                    if inactivity.is_zero() {
                        break; // its time is up: on to the give-up check
                    }
                    yielded[index] = false;
                    let attempt = Attempt {
                        client: &self.client,
                        source,
                        digest,
                        inactivity,
                        progress,
                        cancel,
                        redirected: std::sync::Mutex::new(None),
                        last_byte: std::sync::Mutex::new(None),
                        untried_elsewhere: &untried_elsewhere,
                    };
                    tracing::debug!(digest = %digest, source = %redact_url(source), offset = partial.offset(), "requesting");
                    let (returned, result) = attempt.run(partial).await;
                    partial = returned;
                    // Bytes from a server cut for dripping them too slowly
                    // are kept, but are not progress (see `pace`).
                    let too_slow = matches!(result, Err(Stop::Failed(FetchError::TooSlow { .. })));
                    let advanced = partial.offset() > high_water;
                    if advanced {
                        high_water = partial.offset();
                    }
                    let progressed = advanced && !too_slow;
                    if progressed {
                        last_progress = attempt
                            .last_byte
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .unwrap_or_else(Instant::now);
                    }
                    let error = match result {
                        Ok(()) => return Ok(partial),
                        Err(Stop::Shutdown) => return Err(DownloadError::Shutdown),
                        Err(Stop::Failed(error)) => error,
                    };
                    tracing::warn!(digest = %digest, source = %redact_url(source), "attempt failed: {error}");
                    answers[index] = Some(match attempt.redirected.into_inner() {
                        Ok(Some(to)) => format!("{error} (redirected to {})", redact_url(&to)),
                        _ => error.to_string(),
                    });
                    disk_full |= matches!(&error, FetchError::Disk(e) if matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ));
                    match error {
                        FetchError::DigestMismatch { resumed: true, .. }
                        | FetchError::CorruptPartial(_)
                            if !restarted_after_resume =>
                        {
                            // The resumed prefix (from an earlier run, an
                            // earlier response or another source) may be the
                            // culprit, not this source: once more from 0,
                            // from the first source again.
                            restarted_after_resume = true;
                            high_water = 0;
                            from_the_first = true;
                            break;
                        }
                        // Left for the sources not tried yet; asked again
                        // (resuming) in the next round.
                        FetchError::Slow { .. } => {
                            yielded[index] = true;
                            break;
                        }
                        e if e.is_transient() && progressed => continue,
                        e if e.is_transient() => break,
                        _ => {
                            ruled_out[index] = true;
                            break;
                        }
                    }
                }
                index = if std::mem::take(&mut from_the_first) {
                    0
                } else {
                    index + 1
                };
            }
            let what = if !job.more.is_empty() {
                // Sources that joined meanwhile get their round first.
                None
            } else if ruled_out.iter().all(|&out| out) {
                Some("every source failed".to_owned())
            } else if left(last_progress).is_zero() && !yielded.contains(&true) {
                let after = humantime::format_duration(give_up_after);
                Some(format!("no progress for {after}"))
            } else {
                None
            };
            if let Some(what) = what {
                // Keep only what a later download can resume from: an empty
                // `.part`, or bytes no record covers, would only take space;
                // and on a full disk, the space matters more than a resume.
                if !partial.is_resumable() || disk_full {
                    blocking(move || partial.discard()).await;
                }
                return Err(DownloadError::Failed(summary(
                    &what,
                    &job.sources,
                    &answers,
                )));
            }
            let pause = if yielded.contains(&true) {
                Duration::ZERO // back to the source it left, at once
            } else {
                delay.min(left(last_progress))
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(DownloadError::Shutdown),
                _ = tokio::time::sleep(pause) => {}
                _ = job.more.added.notified() => {}
            }
            delay = (delay * 2).min(self.settings.max_retry_delay);
        }
    }
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

/// "every source failed: http://a/x: HTTP 404 Not Found; http://b/x: ..."
fn summary(what: &str, sources: &[Url], answers: &[Option<String>]) -> String {
    let each: Vec<String> = sources
        .iter()
        .zip(answers)
        .map(|(source, answer)| {
            format!(
                "{}: {}",
                redact_url(source),
                answer.as_deref().unwrap_or("not tried")
            )
        })
        .collect();
    format!("{what}: {}", each.join("; "))
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
