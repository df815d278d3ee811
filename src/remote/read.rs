//! The read path: the remote object streamed into the download's partial,
//! ranged from its offset, hashed while streaming, verified at the end,
//! before the chit's own sources are asked. Any trouble (no answer, an
//! error, a stall, a slow drip, a wrong size or digest) rules the remote
//! out for a while and leaves the partial to the chit's sources (with the
//! good bytes so far; wrong ones are discarded by the verification).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object_store::{GetOptions, GetRange, ObjectStore};
use tokio_util::sync::CancellationToken;

use super::lease::Waited;
use super::ranges::{Body, Ranges, cut};
use super::{REMOTE_SOURCE, Remote};
use crate::chit::Digest;
use crate::fetch::{Sink, verify};
use crate::partial::{Partial, Validator};

/// Below this many bytes per second over a stall window, the remote is a
/// slow drip: ruled out, its bytes kept for the chit's sources to resume.
pub const SLOW_BYTES_PER_SECOND: u64 = 1 << 20;
/// Rounds of "the lease's holder uploaded it, but the GET did not find it".
const LOOKS: usize = 3;

/// What the remote tier did for a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The partial holds the whole, verified file.
    Verified,
    /// Not there, ruled out, or another host's lease expired: the chit's
    /// sources are next (the partial keeps any good bytes).
    Elsewhere,
    /// The daemon is stopping.
    Shutdown,
}

/// Why one GET did not give the file.
enum Miss {
    NotThere,
    Failed(String),
    Shutdown,
}

impl Remote {
    /// Fill `partial` from the remote tier if it can: see [`Fill`]. When
    /// the object is missing, take its lease or wait on another host's
    /// (see `lease`).
    pub async fn fill(
        &self,
        partial: Partial,
        digest: Digest,
        progress: &AtomicU64,
        cancel: &CancellationToken,
    ) -> (Partial, Fill) {
        let mut partial = partial;
        for _ in 0..LOOKS {
            if self.is_ruled_out() {
                return (partial, Fill::Elsewhere);
            }
            let got;
            (partial, got) = self.get(partial, digest, progress, cancel).await;
            match got {
                Ok(()) => return (partial, Fill::Verified),
                Err(Miss::Shutdown) => return (partial, Fill::Shutdown),
                Err(Miss::Failed(why)) => {
                    self.rule_out(&digest, &why);
                    return (partial, Fill::Elsewhere);
                }
                Err(Miss::NotThere) if partial.total() < self.settings.lease_min_size => {
                    return (partial, Fill::Elsewhere);
                }
                Err(Miss::NotThere) => {}
            }
            match self.await_lease(digest, cancel).await {
                Waited::Look => continue,
                Waited::DownloadHere => return (partial, Fill::Elsewhere),
                Waited::Shutdown => return (partial, Fill::Shutdown),
            }
        }
        (partial, Fill::Elsewhere)
    }

    /// The object from the partial's offset into the partial: the first
    /// range's GET tells whether it is there, the rest follow as ranges
    /// under way at once (see `ranges`).
    async fn get(
        &self,
        mut partial: Partial,
        digest: Digest,
        progress: &AtomicU64,
        cancel: &CancellationToken,
    ) -> (Partial, Result<(), Miss>) {
        let (offset, total) = (partial.offset(), partial.total());
        let path = self.object_path(&digest);
        let (first, head) = match self.get_first(&path, offset, total, cancel).await {
            Ok(found) => found,
            Err(miss) => return (partial, Err(miss)),
        };
        partial.resumed |= offset > 0;
        partial.source = Some(REMOTE_SOURCE.to_string());
        partial.validator = Validator::default();
        tracing::debug!(%digest, offset, "streaming from {REMOTE_SOURCE}");
        let settings = (self.settings.range_size, self.settings.ranges_at_once);
        let body = Ranges::new(self.store.clone(), path, head, first, total, settings);
        let (mut partial, streamed) = self.stream(partial, body, progress, cancel).await;
        if let Err(miss) = streamed {
            return (partial, Err(miss));
        }
        let verified = verify(&mut partial, digest).map_err(|e| Miss::Failed(e.to_string()));
        (partial, verified)
    }

    /// GET the first range of `[offset, total)` (all of it when it fits in
    /// one): the range and its body, once the store said it holds an
    /// object of `total` bytes there.
    async fn get_first(
        &self,
        path: &object_store::path::Path,
        offset: u64,
        total: u64,
        cancel: &CancellationToken,
    ) -> Result<(Range<u64>, Body), Miss> {
        let first = cut(offset, total, self.settings.range_size)
            .next()
            .unwrap_or(offset..total);
        let range = if first.end < total {
            Some(GetRange::Bounded(first.clone()))
        } else {
            (offset > 0).then_some(GetRange::Offset(offset))
        };
        let options = GetOptions {
            range,
            ..GetOptions::default()
        };
        let stall = self.settings.stall;
        let answer = tokio::select! {
            _ = cancel.cancelled() => return Err(Miss::Shutdown),
            answer = tokio::time::timeout(stall, self.store.get_opts(path, options)) => answer,
        };
        let result = match answer {
            Err(_) => return Err(Miss::Failed(format!("no answer within {stall:?}"))),
            Ok(Err(object_store::Error::NotFound { .. })) => return Err(Miss::NotThere),
            Ok(Err(e)) => return Err(Miss::Failed(e.to_string())),
            Ok(Ok(result)) => result,
        };
        if result.meta.size != total || result.range != first {
            let (size, got) = (result.meta.size, &result.range);
            return Err(Miss::Failed(format!(
                "it holds {size} bytes under the digest (sent {}-{}), the chit says {total} \
                 (asked {}-{})",
                got.start, got.end, first.start, first.end
            )));
        }
        Ok((first, result.into_stream()))
    }

    /// Receive the body into the partial (through the same writer as an
    /// HTTP source's), cutting it when it stalls or drips.
    async fn stream(
        &self,
        partial: Partial,
        mut body: Ranges,
        progress: &AtomicU64,
        cancel: &CancellationToken,
    ) -> (Partial, Result<(), Miss>) {
        let (mut offset, total) = (partial.offset(), partial.total());
        progress.store(offset, Ordering::Relaxed);
        let mut sink = Sink::new(partial);
        let mut window = Window::new(self.settings.stall, offset);
        let outcome = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break Err(Miss::Shutdown),
                next = tokio::time::timeout(self.settings.stall, body.next()) => next,
            };
            let chunk = match next {
                Err(_) => {
                    break Err(Miss::Failed(format!(
                        "no data for {:?}",
                        self.settings.stall
                    )));
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(why))) => break Err(Miss::Failed(why)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            offset += chunk.len() as u64;
            if offset > total {
                break Err(Miss::Failed(format!("it sent more than {total} bytes")));
            }
            if !sink.push(chunk).await {
                break Ok(()); // the writer failed: its error is the sink's
            }
            progress.store(offset, Ordering::Relaxed);
            if let Some(slow) = window.slow(offset) {
                break Err(Miss::Failed(slow));
            }
        };
        drop(body); // abort the ranges under way before the writer's last checkpoint
        let (partial, written) = sink.finish().await;
        match written {
            Err(e) => (
                partial,
                Err(Miss::Failed(format!("cannot write the partial: {e}"))),
            ),
            Ok(()) => (partial, outcome),
        }
    }
}

/// The pace of a body: bytes per window of `length`.
struct Window {
    length: Duration,
    started: Instant,
    offset: u64,
}

impl Window {
    fn new(length: Duration, offset: u64) -> Window {
        Window {
            length,
            started: Instant::now(),
            offset,
        }
    }

    /// When a window closes: why it was too slow, if it was.
    fn slow(&mut self, offset: u64) -> Option<String> {
        let elapsed = self.started.elapsed();
        if elapsed < self.length {
            return None;
        }
        let received = offset - self.offset;
        let minimum = (SLOW_BYTES_PER_SECOND as f64 * elapsed.as_secs_f64()) as u64;
        (*self) = Window::new(self.length, offset);
        (received < minimum).then(|| {
            format!("too slow: {received} bytes in {elapsed:?}, under {SLOW_BYTES_PER_SECOND} bytes per second")
        })
    }
}
