//! One attempt at one source: a (possibly ranged) GET streamed into the
//! partial download, or a copy from a local `file://` mirror.
//!
//! The body is received on the async runtime and handed, chunk by chunk
//! through a bounded channel, to a blocking writer that appends and hashes
//! it: receiving and hashing overlap on two cores, and memory stays bounded
//! by the channel. The writer also checkpoints on time while no chunk comes
//! (a stalled body), not only as chunks arrive.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::error::FetchError;
use super::hosts::{Admitted, HostAnswer, parse_retry_after};
use super::pace::Pace;
use crate::chit::Digest;
use crate::partial::{Partial, Validator};

/// Chunks in flight between the receiver and the writer.
const CHANNEL_CHUNKS: usize = 16;
/// Read size for `file://` mirrors.
const FILE_CHUNK: usize = 1 << 20;

/// How an attempt ended when it did not deliver the whole, verified file.
#[derive(Debug)]
pub enum Stop {
    Failed(FetchError),
    Shutdown,
}

impl From<FetchError> for Stop {
    fn from(error: FetchError) -> Stop {
        Stop::Failed(error)
    }
}

pub struct Attempt<'a> {
    pub client: &'a reqwest::Client,
    pub source: &'a Url,
    pub digest: Digest,
    pub inactivity: Duration,
    pub progress: &'a AtomicU64,
    pub cancel: &'a CancellationToken,
    /// Where redirects led the last request, when elsewhere than `source`:
    /// an answer is worth little without it.
    pub redirected: std::sync::Mutex<Option<Url>>,
    /// When the body's last byte arrived, if any did: the download's
    /// no-progress clock starts there, not when the attempt gave up.
    pub last_byte: std::sync::Mutex<Option<Instant>>,
    /// Whether the download has sources it has not tried yet: a slow body
    /// is then left for them (see `pace::SLOW_BYTES`).
    pub untried_elsewhere: &'a (dyn Fn() -> bool + Sync),
    /// The permit of the source's host (none for `file://`): told as soon
    /// as a usable response head arrives, so a probe lets the host's other
    /// downloads go without waiting for its whole body.
    pub host: Option<&'a Admitted>,
}

impl Attempt<'_> {
    /// Run the attempt. The partial is always handed back, holding whatever
    /// bytes are good (checkpointed when the attempt was cut short).
    pub async fn run(&self, partial: Partial) -> (Partial, Result<(), Stop>) {
        if self.source.scheme() == "file" {
            return self.copy_file(partial).await;
        }
        let mut partial = partial;
        // At most two requests: a ranged one, and a full one if the server
        // answered the range with something unusable.
        for _ in 0..2 {
            let response = match self.send(&partial).await {
                Ok(response) => response,
                Err(stop) => return (partial, Err(stop)),
            };
            *self.redirected.lock().unwrap_or_else(|e| e.into_inner()) =
                (response.url() != self.source).then(|| response.url().clone());
            // (The version of the source's own answer, not of a host it
            // redirected to.)
            if let Some(host) = self.host.filter(|_| response.url() == self.source) {
                host.spoke(response.version());
            }
            match self.check_response(&mut partial, &response) {
                Ok(true) => {
                    if let Some(host) = self.host {
                        host.answered(HostAnswer::Healthy);
                    }
                    return self.stream(partial, response).await;
                }
                Ok(false) => continue, // partial was reset; ask for the whole object
                Err(e) => return (partial, Err(e.into())),
            }
        }
        (partial, Err(FetchError::UnaskedRange.into()))
    }

    async fn send(&self, partial: &Partial) -> Result<reqwest::Response, Stop> {
        let mut request = self
            .client
            .get(self.source.clone())
            .header(header::ACCEPT_ENCODING, "identity");
        if partial.offset() > 0 {
            request = request.header(header::RANGE, format!("bytes={}-", partial.offset()));
            // Whatever the source (the one the bytes came from, or a
            // mirror): the range is wanted only of the object the bytes so
            // far are of; another object is answered 200, whole.
            if let Some(validator) = partial.validator.if_range() {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Stop::Shutdown),
            sent = tokio::time::timeout(self.inactivity, request.send()) => match sent {
                Err(_) => Err(FetchError::NoResponse(self.inactivity).into()),
                Ok(Err(e)) => Err(FetchError::from_reqwest(e).into()),
                Ok(Ok(response)) => Ok(response),
            },
        }
    }

    /// Decide what the response means for the partial: `Ok(true)` to stream
    /// its body at the partial's offset, `Ok(false)` to retry from 0.
    fn check_response(
        &self,
        partial: &mut Partial,
        response: &reqwest::Response,
    ) -> Result<bool, FetchError> {
        let total = partial.total();
        let headers = response.headers();
        match response.status() {
            StatusCode::PARTIAL_CONTENT => self.check_range(partial, headers),
            StatusCode::OK => {
                if let Some(announced) = response.content_length()
                    && announced != total
                {
                    return Err(FetchError::WrongLength {
                        announced,
                        expected: total,
                    });
                }
                if partial.offset() > 0 {
                    tracing::info!(source = %crate::chit::redact_url(self.source), offset = partial.offset(), "server sent the whole object (changed, or ranges unsupported); starting over");
                }
                partial.reset().map_err(FetchError::Disk)?;
                partial.source = Some(self.source.to_string());
                partial.validator = validator(headers);
                Ok(true)
            }
            StatusCode::RANGE_NOT_SATISFIABLE if partial.offset() > 0 => {
                partial.reset().map_err(FetchError::Disk)?;
                Ok(false)
            }
            status if status.is_redirection() => {
                Err(FetchError::Redirect(redirect_target(response)))
            }
            status => Err(refusal(status, headers)),
        }
    }

    /// [`Attempt::check_response`] for a `206`. It is usable when its
    /// `Content-Range` starts at the offset and gives the file's total,
    /// also for a request without `Range` (offset 0):
    /// `bytes 0-<size-1>/<size>` is the whole object, read as a `200`.
    fn check_range(&self, partial: &mut Partial, headers: &HeaderMap) -> Result<bool, FetchError> {
        let total = partial.total();
        let range = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some((start, complete)) = parse_content_range(range) else {
            if partial.offset() > 0 {
                // Ask for the whole object instead.
                tracing::info!(source = %crate::chit::redact_url(self.source), range, "unparseable range answer; starting over");
                partial.reset().map_err(FetchError::Disk)?;
                return Ok(false);
            }
            return Err(FetchError::BadRange(range.into()));
        };
        if complete.is_some_and(|length| length != total) {
            return Err(FetchError::WrongLength {
                announced: complete.unwrap_or(0),
                expected: total,
            });
        }
        if start != partial.offset() || complete.is_none() {
            tracing::info!(source = %crate::chit::redact_url(self.source), range, offset = partial.offset(), "unusable range answer; starting over");
            partial.reset().map_err(FetchError::Disk)?;
            return Ok(false);
        }
        if partial.offset() == 0 {
            // The whole object after all: as for a 200.
            partial.validator = validator(headers);
        } else {
            // The stored validator stays: it matched (`If-Range`), or
            // there is none and the final sha256 decides. The bytes come
            // from more than one response from now on.
            partial.resumed = true;
        }
        partial.source = Some(self.source.to_string());
        Ok(true)
    }

    /// Stream the body into the partial, then verify it when it is all
    /// there.
    async fn stream(
        &self,
        partial: Partial,
        response: reqwest::Response,
    ) -> (Partial, Result<(), Stop>) {
        let (total, offset) = (partial.total(), partial.offset());
        self.progress.store(offset, Ordering::Relaxed);
        let mut sink = Sink::new(partial);
        let mut body = Body {
            offset,
            total,
            pace: Pace::new(self.inactivity, total - offset),
            last_byte: None,
        };
        let mut outcome = self.receive(&mut body, response, &mut sink).await;
        *self.last_byte.lock().unwrap_or_else(|e| e.into_inner()) = body.last_byte;
        let (mut partial, written) = sink.finish().await;
        if let Err(e) = written {
            return (partial, Err(FetchError::Disk(e).into()));
        }
        if let Err(Stop::Failed(FetchError::TooLong { .. })) = outcome {
            // The bytes may be a different object: never keep them.
            if let Err(e) = partial.reset() {
                return (partial, Err(FetchError::Disk(e).into()));
            }
        }
        if outcome.is_ok() {
            outcome = verify(&mut partial, self.digest).map_err(Stop::from);
        }
        (partial, outcome)
    }

    /// Receive the body chunk by chunk into `sink`, judging its pace,
    /// until it ends, breaks, is cut or the writer fails (its error is
    /// the sink's).
    async fn receive(
        &self,
        body: &mut Body,
        response: reqwest::Response,
        sink: &mut Sink,
    ) -> Result<(), Stop> {
        let mut chunks = response.bytes_stream();
        loop {
            let waiting = Instant::now();
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Stop::Shutdown),
                next = tokio::time::timeout(body.pace.budget(), chunks.next()) => next,
            };
            let bytes = match &next {
                Ok(Some(Ok(chunk))) => chunk.len() as u64,
                _ => 0,
            };
            if !matches!(next, Ok(None) | Ok(Some(Err(_)))) {
                body.pace.waited(waiting.elapsed(), bytes)?;
            }
            match next {
                Err(_) => {} // the window or idle budget ran out; judged above
                // Ended by the server's own framing (a body whose length
                // was announced and cut short is an error, not this).
                Ok(None) if body.offset < body.total => {
                    return Err(FetchError::EndedShort {
                        received: body.offset,
                        expected: body.total,
                    }
                    .into());
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(FetchError::from_reqwest(e).into()),
                Ok(Some(Ok(chunk))) => {
                    body.last_byte = Some(Instant::now());
                    if body.offset + chunk.len() as u64 > body.total {
                        return Err(FetchError::TooLong {
                            expected: body.total,
                        }
                        .into());
                    }
                    body.offset += chunk.len() as u64;
                    if !sink.push(chunk).await {
                        return Ok(()); // the writer failed: its error is the sink's
                    }
                    self.progress.store(body.offset, Ordering::Relaxed);
                }
            }
            if let Some(slow) = self.slow(body) {
                return Err(slow.into());
            }
        }
    }

    /// A window that just closed brought less than `pace::SLOW_BYTES` per
    /// second while bytes kept coming into its second half (a source that
    /// sent a few and went silent is left to the stall timer, not come
    /// back to as slow), and sources not tried yet wait: left for them.
    fn slow(&self, body: &mut Body) -> Option<FetchError> {
        let (received, window) = body.pace.take_closed_window()?;
        let minimum = super::pace::slow_below(window);
        let streaming = body.pace.idle() < window / 2;
        let slow = body.offset < body.total && received < minimum && streaming;
        (slow && (self.untried_elsewhere)()).then_some(FetchError::Slow {
            received,
            window,
            minimum,
        })
    }

    /// Copy from a local mirror (always from 0: local reads are cheap).
    async fn copy_file(&self, partial: Partial) -> (Partial, Result<(), Stop>) {
        let source = self.source.clone();
        let cancel = self.cancel.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut partial = partial;
            let result = copy_local(&source, &mut partial, &cancel);
            (partial, result)
        })
        .await;
        let (mut partial, result) = match joined {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let result = result.and_then(|()| verify(&mut partial, self.digest).map_err(Stop::from));
        (partial, result)
    }
}

/// After the body ended (or for a partial whose record covers every
/// byte): all bytes there, their prefix as checkpointed, and their digest
/// `digest`? The partial is reset when its bytes are wrong.
pub fn verify(partial: &mut Partial, digest: Digest) -> Result<(), FetchError> {
    if partial.offset() < partial.total() {
        return Err(FetchError::Truncated {
            received: partial.offset(),
            expected: partial.total(),
        });
    }
    if let Err(reason) = partial.verify_prefix() {
        partial.reset().map_err(FetchError::Disk)?;
        return Err(FetchError::CorruptPartial(reason));
    }
    match partial.finished_digest() {
        Some(got) if got == digest => Ok(()),
        Some(got) => {
            let resumed = partial.resumed;
            partial.reset().map_err(FetchError::Disk)?;
            Err(FetchError::DigestMismatch { got, resumed })
        }
        None => Err(FetchError::Truncated {
            received: partial.offset(),
            expected: partial.total(),
        }),
    }
}

/// A body being received: how far it got, its pace, when its last byte
/// came.
struct Body {
    offset: u64,
    total: u64,
    pace: Pace,
    last_byte: Option<Instant>,
}

/// Where the received chunks of a body go: through a bounded channel to a
/// blocking writer that appends and hashes them (receiving and writing
/// overlap), or, for a partial held in memory, straight into it (a few KiB:
/// no thread, no hand-offs).
pub(crate) enum Sink {
    Writer {
        sender: tokio::sync::mpsc::Sender<Bytes>,
        writer: tokio::task::JoinHandle<(Partial, std::io::Result<()>)>,
    },
    Inline(Box<Partial>, std::io::Result<()>),
}

impl Sink {
    pub(crate) fn new(partial: Partial) -> Sink {
        if partial.is_in_memory() {
            return Sink::Inline(Box::new(partial), Ok(()));
        }
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let runtime = tokio::runtime::Handle::current();
        let writer = tokio::task::spawn_blocking(move || {
            let mut partial = partial;
            let mut result = write_chunks(&mut partial, &mut receiver, &runtime);
            if result.is_ok() && partial.offset() < partial.total() {
                result = partial.checkpoint();
            }
            (partial, result)
        });
        Sink::Writer { sender, writer }
    }

    /// Hand over a chunk; false once writing has failed.
    pub(crate) async fn push(&mut self, chunk: Bytes) -> bool {
        match self {
            Sink::Writer { sender, .. } => sender.send(chunk).await.is_ok(),
            Sink::Inline(partial, result) => {
                if result.is_ok() {
                    *result = partial.append(chunk);
                }
                result.is_ok()
            }
        }
    }

    /// The partial back, with the first write error; an incomplete one on
    /// disk is checkpointed.
    pub(crate) async fn finish(self) -> (Partial, std::io::Result<()>) {
        match self {
            Sink::Writer { sender, writer } => {
                drop(sender);
                match writer.await {
                    Ok(done) => done,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            Sink::Inline(partial, result) => (*partial, result),
        }
    }
}

/// The blocking writer's loop: append the chunks of a body as they come.
/// While none comes, checkpoints still fall due by time (see
/// `Partial::checkpoint_due_in`): the bytes received before a stall are
/// durable within `CHECKPOINT_INTERVAL`, not only once the inactivity
/// timeout ends the attempt.
fn write_chunks(
    partial: &mut Partial,
    chunks: &mut tokio::sync::mpsc::Receiver<Bytes>,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    loop {
        // A chunk already waiting needs no timer.
        let ready = match chunks.try_recv() {
            Ok(chunk) => Some(Some(chunk)),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(None),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
        };
        let next = match (ready, partial.checkpoint_due_in()) {
            (Some(next), _) => next,
            (None, None) => chunks.blocking_recv(),
            (None, Some(due)) => match runtime.block_on(tokio::time::timeout(due, chunks.recv())) {
                Ok(next) => next,
                Err(_) => {
                    partial.start_checkpoint()?;
                    continue;
                }
            },
        };
        let Some(chunk) = next else {
            return Ok(());
        };
        partial.append(chunk)?;
    }
}

fn copy_local(source: &Url, partial: &mut Partial, cancel: &CancellationToken) -> Result<(), Stop> {
    let path = source
        .to_file_path()
        .map_err(|()| FetchError::Local(format!("{source} is not a local file path")))?;
    let mut file = std::fs::File::open(&path)
        .map_err(|e| FetchError::Local(format!("cannot open {}: {e}", path.display())))?;
    let length = file
        .metadata()
        .map_err(|e| FetchError::Local(format!("{}: {e}", path.display())))?
        .len();
    if length != partial.total() {
        return Err(FetchError::WrongLength {
            announced: length,
            expected: partial.total(),
        }
        .into());
    }
    partial.reset().map_err(FetchError::Disk)?;
    partial.source = Some(source.to_string());
    let mut buffer = vec![0u8; FILE_CHUNK];
    loop {
        if cancel.is_cancelled() {
            partial.checkpoint().map_err(FetchError::Disk)?;
            return Err(Stop::Shutdown);
        }
        let n = file
            .read(&mut buffer)
            .map_err(|e| FetchError::Local(format!("reading {}: {e}", path.display())))?;
        if n == 0 {
            return Ok(());
        }
        if partial.offset() + n as u64 > partial.total() {
            return Err(FetchError::TooLong {
                expected: partial.total(),
            }
            .into());
        }
        partial
            .append(Bytes::copy_from_slice(&buffer[..n]))
            .map_err(FetchError::Disk)?;
    }
}

/// An error status; a 429 or 503 that says when to come back
/// (`Retry-After`) is [`FetchError::Busy`].
fn refusal(status: StatusCode, headers: &HeaderMap) -> FetchError {
    let busy = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()));
    match retry_after {
        Some(retry_after) if busy => FetchError::Busy {
            status,
            retry_after,
        },
        _ => FetchError::Status(status),
    }
}

/// Why a redirect reached us instead of being followed (the client
/// follows http(s) redirects itself).
fn redirect_target(response: &reqwest::Response) -> String {
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok());
    match location.map(|l| response.url().join(l)) {
        Some(Ok(target)) => format!(
            "HTTP {} redirected to {}, which is not http or https",
            response.status(),
            crate::chit::redact_url(&target)
        ),
        Some(Err(_)) => format!(
            "HTTP {} with an unusable Location {:?}",
            response.status(),
            crate::chit::redact_unparsed_url(location.unwrap_or(""))
        ),
        None => format!("HTTP {} without a Location", response.status()),
    }
}

/// The strong ETag and Last-Modified of a response.
fn validator(headers: &HeaderMap) -> Validator {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    // "-" is how a progress record writes "none": a server's "-" could not
    // survive a restart, so it is no validator.
    Validator {
        etag: text(header::ETAG).filter(|etag| !etag.starts_with("W/") && etag != "-"),
        last_modified: text(header::LAST_MODIFIED).filter(|value| value != "-"),
    }
}

/// `bytes START-END/LENGTH` → (START, Some(LENGTH)); `*` length → None.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, length) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let length = match length.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 9-1/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range(""), None);
    }
}
