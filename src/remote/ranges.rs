//! The remote object's bytes as one ordered stream, fetched as several
//! ranged GETs at once, as the AWS CLI's parallel download does: one
//! request's pace is bounded by the store's pipeline behind it (Garage
//! reads, checks and sends one block after another; S3 serves a
//! connection about 100 MB/s), and several keep the store and the link
//! busy while chitd hashes and writes.
//!
//! The object from the partial's offset is cut into ranges of
//! [`Settings::range_size`](super::Settings::range_size) bytes. The first
//! one's GET is `read`'s (it tells whether the object is there and how big
//! it is); the next ranges are asked at once after it, up to
//! [`Settings::ranges_at_once`](super::Settings::ranges_at_once) under
//! way, each received by its own task into a short queue of its own. The
//! stream yields the head range's chunks as they arrive and the later
//! ranges' when their turn comes, so the partial is still written (and
//! hashed) strictly in order; a later range reads ahead a few chunks
//! ([`PIECE_CHUNKS`]), then waits. When a range ends, the next one is
//! asked. Dropping the stream (an error, a stall, shutdown) aborts every
//! range under way. A store that answers a range with anything but that
//! range (S3 requires `Range`) fails the read, which rules the remote out.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::mpsc::{Receiver, Sender, channel};
use tokio::task::JoinSet;

/// Chunks a range under way may hold before its task waits for them to be
/// taken: later ranges read ahead this far (hyper's reads are at most a
/// few hundred KiB), then the store waits on TCP. Memory stays bounded
/// by the ranges under way, not by their size.
const PIECE_CHUNKS: usize = 8;

/// A chunk of the object, or why its range failed (for the log).
pub type Chunk = Result<Bytes, String>;

/// One GET's body, as object_store streams it.
pub type Body = BoxStream<'static, object_store::Result<Bytes>>;

/// The ranges `[start, total)` is cut into: each ends at a multiple of
/// `size` (the first one may be shorter, as may the last), so that after
/// a resume from any offset the ranges still fall on the same boundaries
/// and a store's blocks (Garage's 1 MiB, the parts of a multipart upload)
/// are not read twice for two ranges.
pub fn cut(start: u64, total: u64, size: u64) -> impl Iterator<Item = Range<u64>> {
    let size = size.max(1);
    let mut from = start;
    std::iter::from_fn(move || {
        if from >= total {
            return None;
        }
        let end = total.min((from / size + 1).saturating_mul(size));
        let range = from..end;
        from = end;
        Some(range)
    })
}

/// The object's bytes in order, from ranges received concurrently.
pub struct Ranges {
    store: AmazonS3,
    path: Path,
    /// The ranges not asked for yet.
    unasked: Box<dyn Iterator<Item = Range<u64>> + Send>,
    /// The ranges under way, in order: the head's chunks are next.
    queue: VecDeque<Piece>,
    at_once: usize,
    /// The receiving tasks; dropping the set aborts them.
    tasks: JoinSet<()>,
}

/// One range under way: its chunks as received, and how many bytes of it
/// were yielded.
struct Piece {
    range: Range<u64>,
    chunks: Receiver<Chunk>,
    yielded: u64,
}

impl Ranges {
    /// The object at `path` from `first.start` to `total`: `head`, the
    /// body of the GET of `first`, then the rest in `size`-byte ranges,
    /// `at_once` under way.
    pub fn new(
        store: AmazonS3,
        path: Path,
        head: Body,
        first: Range<u64>,
        total: u64,
        (size, at_once): (u64, usize),
    ) -> Ranges {
        let mut ranges = Ranges {
            store,
            path,
            unasked: Box::new(cut(first.end, total, size)),
            queue: VecDeque::new(),
            at_once: at_once.max(1),
            tasks: JoinSet::new(),
        };
        let (sender, chunks) = channel(PIECE_CHUNKS);
        ranges.tasks.spawn(receive(head, sender));
        ranges.queue.push_back(Piece {
            range: first,
            chunks,
            yielded: 0,
        });
        ranges.ask();
        ranges
    }

    /// Ask for the next ranges while fewer than `at_once` are under way.
    fn ask(&mut self) {
        // Reap the tasks of the ranges done with (a panic in one is a bug:
        // raised here, as the sink's writer does).
        while let Some(joined) = self.tasks.try_join_next() {
            if let Err(e) = joined
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        while self.queue.len() < self.at_once {
            let Some(range) = self.unasked.next() else {
                return;
            };
            let (sender, chunks) = channel(PIECE_CHUNKS);
            let (store, path) = (self.store.clone(), self.path.clone());
            self.tasks.spawn(get(store, path, range.clone(), sender));
            self.queue.push_back(Piece {
                range,
                chunks,
                yielded: 0,
            });
        }
    }

    /// The next chunk in the object's order; `None` after the last range
    /// ended whole. After an error the stream is done with.
    pub async fn next(&mut self) -> Option<Chunk> {
        loop {
            let piece = self.queue.front_mut()?;
            let expected = piece.range.end - piece.range.start;
            match piece.chunks.recv().await {
                Some(Ok(chunk)) => {
                    piece.yielded += chunk.len() as u64;
                    if piece.yielded > expected {
                        return Some(Err(format!("{} sent more bytes", describe(&piece.range))));
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(why)) => return Some(Err(why)),
                None if piece.yielded < expected => {
                    let why = format!(
                        "{} ended after {} bytes",
                        describe(&piece.range),
                        piece.yielded
                    );
                    return Some(Err(why));
                }
                None => {
                    self.queue.pop_front();
                    self.ask();
                }
            }
        }
    }
}

/// GET `range` of the object and receive it into `sender`.
async fn get(store: AmazonS3, path: Path, range: Range<u64>, sender: Sender<Chunk>) {
    let options = GetOptions {
        range: Some(GetRange::Bounded(range.clone())),
        ..GetOptions::default()
    };
    match store.get_opts(&path, options).await {
        Err(e) => {
            let _ = sender.send(Err(format!("{}: {e}", describe(&range)))).await;
        }
        Ok(result) if result.range != range => {
            let got = result.range;
            let why = format!(
                "{} was answered with bytes {}-{}",
                describe(&range),
                got.start,
                got.end
            );
            let _ = sender.send(Err(why)).await;
        }
        Ok(result) => receive(result.into_stream(), sender).await,
    }
}

/// Pass a body's chunks on until it ends, fails, or no one listens.
async fn receive(mut body: Body, sender: Sender<Chunk>) {
    while let Some(chunk) = body.next().await {
        let failed = chunk.is_err();
        if sender.send(chunk.map_err(|e| e.to_string())).await.is_err() || failed {
            return;
        }
    }
}

/// A range as the log names it.
fn describe(range: &Range<u64>) -> String {
    format!("the range {}-{}", range.start, range.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_rest_of_the_object_once_on_multiples_of_the_size() {
        // (start, total, size) → the ranges as (start, end)
        type Case = (u64, u64, u64, &'static [(u64, u64)]);
        let cases: [Case; 7] = [
            (0, 10, 4, &[(0, 4), (4, 8), (8, 10)]),
            (3, 10, 4, &[(3, 4), (4, 8), (8, 10)]),
            (4, 10, 4, &[(4, 8), (8, 10)]),
            (0, 8, 4, &[(0, 4), (4, 8)]),
            (10, 10, 4, &[]),
            (0, 3, 100, &[(0, 3)]),
            (5, 10, u64::MAX, &[(5, 10)]),
        ];
        for (start, total, size, expected) in cases {
            let got: Vec<_> = cut(start, total, size).map(|r| (r.start, r.end)).collect();
            assert_eq!(got, expected, "cut({start}, {total}, {size})");
        }
    }
}
