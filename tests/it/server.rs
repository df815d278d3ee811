//! An in-process HTTP/1.1 server with scriptable faults, for driving chitd's
//! fetcher the way real mirrors misbehave.
//!
//! It speaks HTTP by hand over a `tokio::net::TcpListener` on `127.0.0.1:0`
//! (keep-alive, `Content-Length`, `Range`, `If-Range`), because the faults that
//! matter most live below HTTP: a connection reset mid-body, a body shorter or
//! longer than announced, a stall. The server owns a small tokio runtime, so
//! tests are plain `#[test]` functions; dropping the server ends every
//! connection, including stalled ones.
//!
//! Faults are scripted per path as a queue of rules, each for the next `k`
//! requests or forever: `set_fault_times("/f", Fault::Truncate { after: 100 }, 1)`
//! breaks the first request only. Every request is recorded with its `Range`
//! and `If-Range` headers and the body bytes actually sent, so tests can prove
//! "exactly one GET" or "the second GET resumed".

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub mod front;
#[cfg(test)]
mod tests;
mod wire;

/// How the server misbehaves for a request to a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 404 Not Found.
    NotFound,
    /// 410 Gone.
    Gone,
    /// 403 Forbidden.
    Forbidden,
    /// Any status with a short text body, e.g. 500, 503, 429.
    Status(u16),
    /// A status with a `Retry-After` header of this value, verbatim
    /// (`"2"`, an HTTP date).
    RetryAfter { status: u16, value: String },
    /// Announce the full length, send `after` body bytes, close cleanly.
    Truncate { after: usize },
    /// Send `after` body bytes, then reset the connection (SO_LINGER 0).
    Reset { after: usize },
    /// Send `after` body bytes, then hang until the client closes or the
    /// server is dropped.
    Stall { after: usize },
    /// Same length and headers, different bytes.
    WrongBytes,
    /// Different bytes under the same length and headers (a stale copy
    /// served under the current validator), sent the way the inner fault
    /// says; see [`Fault::stale`].
    Stale(Box<Fault>),
    /// A well-formed response for an object 16 bytes longer than the real one.
    WrongLength,
    /// `Content-Length` says the real length, the body carries 64 junk bytes
    /// more, then the connection closes.
    LongerThanAnnounced,
    /// Ignore `Range`: always 200 with the full body, no `Accept-Ranges`.
    IgnoreRange,
    /// Always 206 with bytes 1 to the end, asked or not.
    UnaskedRange,
    /// Always 206 with this `Content-Range`, verbatim, and the body from
    /// the start asked for (the whole body when no range was asked): a
    /// server that misnumbers its ranges (`bytes 0-99/100` to
    /// `Range: bytes=50-`, another total, `bytes */100`, `bytes garbage`).
    ContentRange(String),
    /// Always 416 Range Not Satisfiable with `Content-Range: bytes */N`,
    /// whatever was asked.
    RangeNotSatisfiable,
    /// The object gets a new ETag and Last-Modified from this request on
    /// (its bytes stay the same), so an `If-Range` from before fails.
    ChangeEtag,
    /// 302 to another path on this server.
    Redirect { to: String },
    /// 302 back to the same path, forever.
    RedirectLoop,
    /// Send the body `bytes_per_tick` at a time, pausing `tick` in between.
    SlowDrip {
        bytes_per_tick: usize,
        tick: Duration,
    },
    /// Send the stored bytes as they are with `Content-Encoding: gzip`; a
    /// client must not decode them.
    Gzip,
    /// 302 with this `Location`, verbatim (e.g. `file:///etc/passwd`).
    RedirectTo(String),
    /// `Transfer-Encoding: chunked` instead of `Content-Length`.
    Chunked,
    /// No `Content-Length`: the body ends when the connection closes.
    UntilClose,
}

impl Fault {
    /// `fault`, with different bytes under the object's headers (its ETag
    /// included): `Fault::stale(Fault::Truncate { after: 100 })` sends 100
    /// wrong bytes and closes.
    pub fn stale(fault: Fault) -> Fault {
        Fault::Stale(Box::new(fault))
    }

    /// Slow but steady: 4 KB/s (200 bytes every 50 ms), above the minimum
    /// pace (never cut for it) and under the 16 KiB/s below which a source
    /// is left for sources not tried yet.
    pub fn slow_but_steady() -> Fault {
        Fault::SlowDrip {
            bytes_per_tick: 200,
            tick: Duration::from_millis(50),
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent (percent-encoded, with any query).
    pub target: String,
    /// The percent-decoded path without the query; objects and faults are
    /// keyed by it.
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub fault: Option<Fault>,
    pub status: u16,
    /// Body bytes actually written to the socket.
    pub body_bytes: u64,
    /// When its head arrived.
    pub arrived: std::time::SystemTime,
}

impl Request {
    /// The first byte asked for by a `Range: bytes=N-...` header.
    pub fn range_start(&self) -> Option<u64> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        spec.split('-').next()?.trim().parse().ok()
    }
}

#[derive(Clone)]
struct Object {
    body: Arc<Vec<u8>>,
    /// Hex prefix of the body's sha256, computed once when added.
    tag: Arc<str>,
    generation: u32,
}

impl Object {
    fn new(body: Vec<u8>) -> Object {
        let tag = hex::encode(Sha256::digest(&body))[..16].into();
        Object {
            body: Arc::new(body),
            tag,
            generation: 0,
        }
    }

    /// The same object (headers, ETag) with different bytes.
    fn stale(&self) -> Object {
        let body = self.body.iter().map(|b| b ^ 0x5a).collect();
        Object {
            body: Arc::new(body),
            ..self.clone()
        }
    }

    fn etag(&self) -> String {
        format!("\"{}-{}\"", self.tag, self.generation)
    }

    fn last_modified(&self) -> String {
        let minute = self.generation / 60 % 60;
        let second = self.generation % 60;
        format!("Wed, 21 Oct 2015 07:{minute:02}:{second:02} GMT")
    }
}

struct Rule {
    fault: Fault,
    /// `None`: forever.
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Object>,
    rules: HashMap<String, VecDeque<Rule>>,
    requests: Vec<Request>,
    /// Paths whose requests wait (before any reply) until released.
    held: HashSet<String>,
}

impl State {
    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let queue = self.rules.get_mut(path)?;
        loop {
            let rule = queue.front_mut()?;
            match &mut rule.remaining {
                Some(0) => {
                    queue.pop_front();
                }
                Some(n) => {
                    *n -= 1;
                    return Some(rule.fault.clone());
                }
                None => return Some(rule.fault.clone()),
            }
        }
    }
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    /// Requests being answered now (from the head until the reply is
    /// sent or the connection ends), and the most there ever were.
    active: std::sync::atomic::AtomicUsize,
    most_active: std::sync::atomic::AtomicUsize,
    /// Woken whenever a held path is released.
    released: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the server's records.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_body_bytes(&self, index: usize, n: usize) {
        self.lock().requests[index].body_bytes += n as u64;
    }
}

/// The fault-injecting server. Dropping it closes every connection.
pub struct Server {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    pub fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-http-server")
            .enable_all()
            .build()
            .expect("build server runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State::default()),
            active: Default::default(),
            most_active: Default::default(),
            released: tokio::sync::Notify::new(),
        });
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(wire::serve_connection(accept_shared.clone(), stream));
            }
        });
        Server {
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path` as given (encode it yourself).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.shared.addr, path)
    }

    /// Serve `body` at `path` (the decoded path, starting with `/`).
    pub fn add(&self, path: &str, body: impl Into<Vec<u8>>) {
        let object = Object::new(body.into());
        self.shared.lock().objects.insert(path.to_string(), object);
    }

    pub fn remove(&self, path: &str) {
        self.shared.lock().objects.remove(path);
    }

    /// The ETag currently served for `path`.
    pub fn etag(&self, path: &str) -> Option<String> {
        self.shared.lock().objects.get(path).map(Object::etag)
    }

    /// Replace the rules for `path` with `fault`, forever.
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.clear_fault(path);
        self.push_rule(path, fault, None);
    }

    /// Replace the rules for `path` with `fault` for the next `times` requests.
    pub fn set_fault_times(&self, path: &str, fault: Fault, times: usize) {
        self.clear_fault(path);
        self.push_rule(path, fault, Some(times));
    }

    /// Append `fault` for `times` requests after the rules already queued.
    pub fn then_fault_times(&self, path: &str, fault: Fault, times: usize) {
        self.push_rule(path, fault, Some(times));
    }

    /// Append `fault`, forever, after the rules already queued.
    pub fn then_fault(&self, path: &str, fault: Fault) {
        self.push_rule(path, fault, None);
    }

    /// Requests for `path` wait, before any reply, until [`Server::release`]
    /// (they are recorded when they arrive).
    pub fn hold(&self, path: &str) {
        self.shared.lock().held.insert(path.to_string());
    }

    /// Let held requests for `path`, and later ones, be answered.
    pub fn release(&self, path: &str) {
        self.shared.lock().held.remove(path);
        self.shared.released.notify_waiters();
    }

    /// Serve `path` normally again.
    pub fn clear_fault(&self, path: &str) {
        self.shared.lock().rules.remove(path);
    }

    fn push_rule(&self, path: &str, fault: Fault, remaining: Option<usize>) {
        let mut state = self.shared.lock();
        let queue = state.rules.entry(path.to_string()).or_default();
        queue.push_back(Rule { fault, remaining });
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Requests for `path` (decoded, without query), any method.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests_for(path).len()
    }

    pub fn gets(&self, path: &str) -> usize {
        let state = self.shared.lock();
        let is_get = |r: &&Request| r.path == path && r.method == "GET";
        state.requests.iter().filter(is_get).count()
    }

    /// The most requests that were ever being answered at once (held,
    /// or sending their bodies).
    pub fn most_concurrent(&self) -> usize {
        self.shared
            .most_active
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests being answered now (held, sending, or stalled until the
    /// client closes).
    pub fn active(&self) -> usize {
        self.shared.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn total_requests(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Body bytes written for all requests.
    pub fn bytes_served(&self) -> u64 {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|r| r.body_bytes)
            .sum()
    }

    pub fn bytes_served_for(&self, path: &str) -> u64 {
        let state = self.shared.lock();
        let of_path = state.requests.iter().filter(|r| r.path == path);
        of_path.map(|r| r.body_bytes).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
