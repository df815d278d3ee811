//! What every download knows about each host: one [`Hosts`] registry,
//! shared through the [`super::Fetcher`] by all downloads.
//!
//! A host is a (scheme, host, port), as a browser counts them. For each:
//!
//! - **A connection limit**, `per_host` (configuration; default
//!   [`DEFAULT_PER_HOST`], as browsers allow per origin): at most that many
//!   requests in flight to the host at once, over all downloads, counted
//!   from the request until its body is read or abandoned. Over HTTP/1.1 a
//!   request in flight is a connection. Once a host answers over HTTP/2
//!   (the client then sends every request to it over one connection), up
//!   to [`STREAMS_PER_CONNECTION`] times `per_host` requests may be in
//!   flight to it: many small files then cost one round trip each, side
//!   by side, not `per_host` at a time. The client keeps at most
//!   `per_host` idle connections per host. Redirects are followed within
//!   the request's permit (to another host too).
//! - **When it may be asked again.** A `Retry-After` on a 429 or 503
//!   (seconds or an HTTP date, RFC 9110 §10.2.3) means no download asks the
//!   host before then (capped at [`MAX_RETRY_AFTER`], logged). Other
//!   trouble that says the host is not serving (5xx, 429, 408, refused or
//!   reset connections, timeouts before a response) backs off the host
//!   exponentially with jitter: the first backoff is the fetch settings'
//!   `retry_delay`, doubled per failure up to `max_retry_delay`, and a
//!   random half of it is added or not ("equal jitter"), so downloads that
//!   failed together do not come back together.
//! - **One probe at a time after trouble.** While the host is in trouble,
//!   requests to it go one at a time (of any download), each waiting for
//!   the answer of the one before: a path that failed is asked again only
//!   once the backoff has passed; a path not asked since the trouble began
//!   may be asked at once, one at a time (a 500 for one file says little
//!   about the others, and a good answer for any ends the trouble). Trouble
//!   backs off further. So a host that answers 503 to everything is asked
//!   about once per file and then once per backoff step, however many
//!   chits want files from it.
//!
//! A download whose source's host must not be asked yet goes on to its
//! other sources ([`Admission::Wait`]), and comes back when the host may
//! be asked or its state changes ([`Wait::changed`]).
//!
//! Waiting for a permit (the host busy serving other downloads' bodies,
//! which is progress for them) is not held against a download's
//! `give_up_after`: [`Admitted::waited`] tells how long it waited, and the
//! download moves its no-progress clock on by that much. Waiting out a
//! backoff or a `Retry-After` is: the host is failing for everyone.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use url::Url;

/// Requests in flight to one host when the configuration does not say:
/// what browsers allow per origin over HTTP/1.1.
pub const DEFAULT_PER_HOST: usize = 6;

/// Over HTTP/2, requests in flight per allowed connection (the client
/// multiplexes them on one; servers allow 100 or more streams).
pub const STREAMS_PER_CONNECTION: usize = 16;

/// The longest `Retry-After` honoured; a longer one is cut to this (and
/// logged). A download still fails once its sources made no progress for
/// `give_up_after`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Hosts known before idle ones are forgotten (see [`Hosts::of`]).
const FORGET_IDLE_HOSTS_AT: usize = 1024;

/// (scheme, host, port): what `per_host` counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostKey {
    scheme: String,
    host: String,
    port: u16,
}

impl HostKey {
    /// The host of an `http`/`https` URL; `None` for other schemes
    /// (`file://` mirrors are not network hosts).
    pub fn of(url: &Url) -> Option<HostKey> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        Some(HostKey {
            scheme: scheme.to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

impl std::fmt::Display for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// What an answer says about its host (see
/// [`super::FetchError::for_host`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAnswer {
    /// The host answered (a good response head, or a permanent answer).
    Healthy,
    /// The host is not serving: back off (the text is the answer).
    Trouble(String),
    /// The host said when to come back (`Retry-After`).
    Busy { after: Duration, answer: String },
    /// Nothing about the host (a local error, a shutdown).
    Neutral,
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP
/// date, as the time from `now`; a date in the past is zero. `None` for
/// anything else.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is as good as forever.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Backoff timing, from the fetch settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The backoff after `failures` failures in a row (≥ 1), before
    /// jitter: `first` doubled per failure after the first, up to `max`.
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// [`Backoff::after`] with equal jitter: half of it, plus a random
    /// part of the other half (`random` in `[0, 1)`).
    pub fn jittered(&self, failures: u32, random: f64) -> Duration {
        let full = self.after(failures);
        full / 2 + (full / 2).mul_f64(random.clamp(0.0, 1.0))
    }
}

/// Every host's state; one per fetcher.
#[derive(Debug)]
pub struct Hosts {
    /// Changed by a reload ([`Hosts::set_per_host`]).
    per_host: AtomicUsize,
    backoff: Backoff,
    hosts: Mutex<HashMap<HostKey, Arc<Host>>>,
}

impl Hosts {
    pub fn new(per_host: usize, backoff: Backoff) -> Hosts {
        Hosts {
            per_host: AtomicUsize::new(per_host.max(1)),
            backoff,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The state of `url`'s host; `None` for a `file://` source.
    pub fn of(&self, url: &Url) -> Option<Arc<Host>> {
        let key = HostKey::of(url)?;
        let mut hosts = self.lock();
        if hosts.len() >= FORGET_IDLE_HOSTS_AT && !hosts.contains_key(&key) {
            // Chits may name any number of hosts: keep only those in use
            // or with something to remember.
            hosts.retain(|_, host| Arc::strong_count(host) > 1 || !host.lock().is_idle());
        }
        let per_host = self.per_host.load(Ordering::Acquire);
        let host = hosts.entry(key.clone()).or_insert_with(|| {
            Arc::new(Host {
                permits: Arc::new(Semaphore::new(per_host)),
                capacity: Mutex::new(Capacity {
                    per_host,
                    multiplexed: false,
                }),
                state: Mutex::new(State::default()),
                changed: watch::Sender::new(0),
                backoff: self.backoff,
                key,
            })
        });
        Some(Arc::clone(host))
    }

    /// A reload changed `per_host`: every host known, and every host met
    /// later, allows that many requests at once. Requests in flight over
    /// a lower limit finish; no new one goes until they are under it.
    pub fn set_per_host(&self, per_host: usize) {
        let per_host = per_host.max(1);
        self.per_host.store(per_host, Ordering::Release);
        for host in self.lock().values() {
            let mut capacity = host.capacity();
            let before = capacity.permits();
            capacity.per_host = per_host;
            resize(&host.permits, before, capacity.permits());
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<HostKey, Arc<Host>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many requests a host may have in flight.
#[derive(Debug)]
struct Capacity {
    per_host: usize,
    /// It answered over HTTP/2: it has more permits (see the module doc).
    multiplexed: bool,
}

impl Capacity {
    fn permits(&self) -> usize {
        match self.multiplexed {
            true => self.per_host * STREAMS_PER_CONNECTION,
            false => self.per_host,
        }
    }
}

/// Make `permits`, which allowed `from` at once, allow `to`: permits not
/// held are taken away at once, the rest as their holders let them go
/// (a task waits for them, ahead of new requests: the semaphore is fair).
fn resize(permits: &Arc<Semaphore>, from: usize, to: usize) {
    if to >= from {
        permits.add_permits(to - from);
        return;
    }
    let excess = from - to;
    let rest = excess - permits.forget_permits(excess);
    if rest > 0 {
        let permits = Arc::clone(permits);
        let rest = u32::try_from(rest).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(held) = permits.acquire_many_owned(rest).await {
                held.forget();
            }
        });
    }
}

/// What the scheduler may know of a host before it starts a download from
/// it (see [`Hosts::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Requests it takes at once: `per_host`, or more once it answered
    /// over HTTP/2.
    pub requests: usize,
    /// It answered over HTTP/2: its requests share its connections.
    pub multiplexed: bool,
}

impl Hosts {
    /// The room `key`'s host has now; a host never asked has `per_host`.
    pub fn room(&self, key: &HostKey) -> Room {
        let host = self.lock().get(key).cloned();
        match host {
            Some(host) => {
                let capacity = host.capacity.lock().unwrap_or_else(|e| e.into_inner());
                Room {
                    requests: capacity.permits(),
                    multiplexed: capacity.multiplexed,
                }
            }
            None => Room {
                requests: self.per_host.load(Ordering::Acquire),
                multiplexed: false,
            },
        }
    }
}

/// One host: its permits and its backoff state.
#[derive(Debug)]
pub struct Host {
    key: HostKey,
    permits: Arc<Semaphore>,
    capacity: Mutex<Capacity>,
    state: Mutex<State>,
    /// Bumped at every change of `state` that may let a waiter go.
    changed: watch::Sender<u64>,
    backoff: Backoff,
}

#[derive(Debug, Default)]
struct State {
    /// Not asked at all before this (`Retry-After`).
    told_until: Option<Instant>,
    /// The backoff: the paths that failed are not asked before this.
    not_before: Option<Instant>,
    /// Trouble in a row; while any, requests go one at a time (probes).
    failures: u32,
    /// The paths that met trouble since the host last answered well.
    failed_paths: HashSet<String>,
    /// A probe is under way: the others wait for its answer.
    probing: bool,
    /// The last trouble, for the answer of a source that waited.
    last: Option<String>,
}

impl State {
    /// Nothing to remember: as a host never asked.
    fn is_idle(&self) -> bool {
        let now = Instant::now();
        self.failures == 0 && !self.probing && self.told_until.is_none_or(|until| until <= now)
    }

    /// Whether a request for `path` must wait, and until when (`None`:
    /// until the probe under way answers).
    fn wait_for(&self, path: &str, now: Instant) -> Option<Option<Instant>> {
        let future = |time: Option<Instant>| time.filter(|&time| time > now);
        if let Some(until) = future(self.told_until) {
            return Some(Some(until));
        }
        if self.failures == 0 {
            return None;
        }
        if self.probing {
            return Some(None);
        }
        match future(self.not_before) {
            Some(until) if self.failed_paths.contains(path) => Some(Some(until)),
            _ => None,
        }
    }
}

/// Whether a request may go to a host now.
pub enum Admission {
    /// It may: hold this until the attempt is over.
    Go(Admitted),
    /// Not yet: try other sources meanwhile.
    Wait(Wait),
}

/// A host that must not be asked yet.
pub struct Wait {
    /// When it may be asked again, if a time is known (else: when a probe
    /// under way answers).
    pub until: Option<Instant>,
    /// Why, for the source's answer.
    pub reason: String,
    changed: watch::Receiver<u64>,
}

impl Wait {
    /// Resolves when the host's state changed since the wait began (a
    /// probe answered); `until` is the caller's to sleep for.
    pub async fn changed(mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Leave to ask a host: a permit, and, after trouble, the probe's role.
pub struct Admitted {
    host: Arc<Host>,
    path: String,
    _permit: OwnedSemaphorePermit,
    /// This request is the probe after trouble, until it answers.
    probe: AtomicBool,
    /// How long the request waited for its permit.
    pub waited: Duration,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn capacity(&self) -> MutexGuard<'_, Capacity> {
        self.capacity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a permit, then see whether the host may be asked for
    /// `url` now.
    pub async fn admit(self: &Arc<Host>, url: &Url) -> Admission {
        let started = Instant::now();
        let permit = match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("a host's semaphore is never closed"),
        };
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(until) = state.wait_for(url.path(), now) {
            let last = state.last.as_deref().unwrap_or("trouble");
            let reason = match until {
                Some(until) => format!(
                    "not asked: {} answered {last}, and is not asked again for {}",
                    self.key,
                    humantime::format_duration(crate::config::whole_ms(until - now))
                ),
                None => format!(
                    "not asked: {} answered {last}, and is being probed",
                    self.key
                ),
            };
            let changed = self.changed.subscribe();
            return Admission::Wait(Wait {
                until,
                reason,
                changed,
            });
        }
        let probe = state.failures > 0;
        state.probing |= probe;
        drop(state);
        Admission::Go(Admitted {
            host: Arc::clone(self),
            path: url.path().to_string(),
            _permit: permit,
            probe: AtomicBool::new(probe),
            waited: now - started,
        })
    }

    /// Take in what an answer to a request for `path` says about the
    /// host.
    fn answered(&self, path: &str, answer: HostAnswer, probe: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        if probe {
            state.probing = false;
        }
        let backing_off = state.not_before.is_some_and(|until| until > now);
        if matches!(answer, HostAnswer::Trouble(_) | HostAnswer::Busy { .. }) {
            state.failed_paths.insert(path.to_string());
        }
        match answer {
            HostAnswer::Neutral => {}
            HostAnswer::Healthy => {
                state.failures = 0;
                state.failed_paths.clear();
                state.not_before = None;
            }
            HostAnswer::Trouble(answer) => {
                // Requests that were in flight together fail together:
                // one step of backoff for them, not one each.
                if !backing_off {
                    state.failures = state.failures.saturating_add(1);
                    let pause = self.backoff.jittered(state.failures, fastrand::f64());
                    state.not_before = Some(now + pause);
                    tracing::info!(host = %self.key, failures = state.failures, "host answered {answer}: not asked again for {}", humantime::format_duration(crate::config::whole_ms(pause)));
                }
                state.last = Some(answer);
            }
            HostAnswer::Busy { after, answer } => {
                if after > MAX_RETRY_AFTER {
                    tracing::warn!(host = %self.key, "host asked to wait {} (Retry-After); waiting {} instead", humantime::format_duration(after), humantime::format_duration(MAX_RETRY_AFTER));
                }
                let until = now + after.min(MAX_RETRY_AFTER);
                state.told_until = state.told_until.max(Some(until));
                state.failures = state.failures.max(1);
                tracing::info!(host = %self.key, "host answered {answer}: not asked again for {}", humantime::format_duration(crate::config::whole_ms(after.min(MAX_RETRY_AFTER))));
                state.last = Some(answer);
            }
        }
        drop(state);
        self.changed.send_modify(|version| *version += 1);
    }
}

impl Admitted {
    /// The host answered in `version`: over HTTP/2, requests to it are
    /// multiplexed, and more of them may be in flight at once.
    pub fn spoke(&self, version: reqwest::Version) {
        let host = &self.host;
        if version != reqwest::Version::HTTP_2 {
            return;
        }
        let mut capacity = host.capacity();
        if !capacity.multiplexed {
            let before = capacity.permits();
            capacity.multiplexed = true;
            resize(&host.permits, before, capacity.permits());
            tracing::debug!(host = %host.key, in_flight = capacity.permits(), "host speaks HTTP/2: requests are multiplexed");
        }
    }

    /// What the attempt's answer says about the host. May be called more
    /// than once (a good response head, then how its body ended); the
    /// probe's role ends at the first.
    pub fn answered(&self, answer: HostAnswer) {
        let probe = self.probe.swap(false, Ordering::AcqRel);
        self.host.answered(&self.path, answer, probe);
    }
}

impl Drop for Admitted {
    /// A probe that never answered (a shutdown, a local error) lets the
    /// others go.
    fn drop(&mut self) {
        if self.probe.load(Ordering::Acquire) {
            self.host.answered(&self.path, HostAnswer::Neutral, true);
        }
    }
}

#[cfg(test)]
mod tests;
