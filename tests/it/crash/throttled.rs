//! A tiny HTTP server for the crash torture test: objects generated from a
//! seed on the fly (no 64 MiB copies in memory), `Range: bytes=N-` with a
//! strong ETag and `If-Range`, an optional per-connection rate limit for
//! "slow" objects that can be lifted at any time, and a count of the body
//! bytes each object sent. (The shared fault server hashes every object on
//! every request to make its ETag, and cannot throttle a ranged answer.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// Bytes per body chunk (and per rate-limiting pause).
const CHUNK: u64 = 16 << 10;

/// splitmix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fill `buffer` with the bytes at `offset` of the object generated from
/// `seed`: byte `i` is byte `i % 8` of `mix(seed + (i / 8) · φ)`, so any
/// range can be produced without the rest.
pub fn fill(seed: u64, offset: u64, buffer: &mut [u8]) {
    let mut done = 0;
    while done < buffer.len() {
        let position = offset + done as u64;
        let word = mix(seed.wrapping_add((position / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let skip = (position % 8) as usize;
        let n = (8 - skip).min(buffer.len() - done);
        buffer[done..done + n].copy_from_slice(&word.to_le_bytes()[skip..skip + n]);
        done += n;
    }
}

struct Object {
    seed: u64,
    size: u64,
    slow: bool,
    served: AtomicU64,
}

impl Object {
    fn etag(&self) -> String {
        format!("\"{:016x}-{}\"", self.seed, self.size)
    }
}

struct Shared {
    objects: HashMap<String, Arc<Object>>,
    /// Bytes per second for slow objects while throttling.
    rate: u64,
    throttling: AtomicBool,
    requests: AtomicU64,
    ranged: AtomicU64,
}

pub struct Throttled {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Throttled {
    /// Serve `objects` (path, seed, size, slow), slow ones at `rate` bytes
    /// per second per connection until [`Throttled::unthrottle`].
    pub fn start(objects: &[(String, u64, u64, bool)], rate: u64) -> Throttled {
        let objects = objects
            .iter()
            .map(|(path, seed, size, slow)| {
                let object = Object {
                    seed: *seed,
                    size: *size,
                    slow: *slow,
                    served: AtomicU64::new(0),
                };
                (path.clone(), Arc::new(object))
            })
            .collect();
        let shared = Arc::new(Shared {
            objects,
            rate,
            throttling: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            ranged: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("throttled-http")
            .enable_all()
            .build()
            .expect("server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Throttled {
            shared,
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn unthrottle(&self) {
        self.shared.throttling.store(false, Ordering::Relaxed);
    }

    /// Body bytes sent for `path` so far.
    pub fn served(&self, path: &str) -> u64 {
        let object = self.shared.objects.get(path);
        object.map_or(0, |o| o.served.load(Ordering::Relaxed))
    }

    /// (requests, requests answered with 206).
    pub fn requests(&self) -> (u64, u64) {
        let shared = &self.shared;
        (
            shared.requests.load(Ordering::Relaxed),
            shared.ranged.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Throttled {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where a `Range: bytes=N-` asks to start, if it may be honoured.
fn range_start(headers: &HeaderMap, object: &Object) -> Option<u64> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let start = text(header::RANGE)?.strip_prefix("bytes=")?;
    let start: u64 = start.strip_suffix('-')?.parse().ok()?;
    match text(header::IF_RANGE) {
        Some(validator) if validator != object.etag() => None,
        _ => Some(start),
    }
}

async fn serve(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let Some(object) = shared.objects.get(uri.path()).cloned() else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let start = range_start(&headers, &object).unwrap_or(0);
    if start >= object.size && start > 0 {
        let range = format!("bytes */{}", object.size);
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, range)],
        )
            .into_response();
    }
    let mut response = Response::builder()
        .header(header::ETAG, object.etag())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, object.size - start);
    if start > 0 {
        shared.ranged.fetch_add(1, Ordering::Relaxed);
        let range = format!("bytes {start}-{}/{}", object.size - 1, object.size);
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, range);
    }
    let body = futures_util::stream::unfold(start, move |position| {
        let (shared, object) = (Arc::clone(&shared), Arc::clone(&object));
        async move {
            if position >= object.size {
                return None;
            }
            let n = CHUNK.min(object.size - position);
            if object.slow && shared.throttling.load(Ordering::Relaxed) {
                let pause = Duration::from_secs_f64(n as f64 / shared.rate as f64);
                tokio::time::sleep(pause).await;
            }
            let mut chunk = vec![0u8; n as usize];
            fill(object.seed, position, &mut chunk);
            object.served.fetch_add(n, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(Bytes::from(chunk)), position + n))
        }
    });
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}
