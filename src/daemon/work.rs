//! What happens to one chit on the blocking pool: claim it, read and parse
//! it, deliver it from the cache or hand it to the scheduler to wait for a
//! download; and, once a download ends, deliver or fail its waiters.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use crate::chit::{Chit, Digest};
use crate::dir::{Dir, FileId};
use crate::durable::{out_of_resources, sync_dir};
use crate::fetch::Failure;
use crate::inflight::Key;
use crate::spool::{Claim, ReadError, Spool};
use crate::store::Lookup;

use super::Shared;
use super::chit_id::ChitId;

mod deliver;

use self::deliver::begin_delivery;
#[cfg(test)]
pub use self::deliver::target;
pub use self::deliver::{
    Begun, Object, Target, Targets, begin_finish, finish, publish_chased, source_of, upload_later,
};

/// Where the chit was when it was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Request,
    /// Already claimed by an earlier run (or this one): resume it.
    Fetch,
}

/// A chit waiting for its digest to be downloaded.
#[derive(Debug)]
pub struct Waiter {
    pub consumer: usize,
    pub name: String,
    pub chit: Chit,
    /// The `fetch/` it was claimed into ([`Spool::fetch_id`]).
    pub claimed_in: FileId,
    /// Its file was in the cache, corrupt (now in `quarantine/`): it waits
    /// for the file to be fetched again, and fails if that copy is found
    /// corrupt too.
    pub cache_was_corrupt: bool,
}

/// Whether a chit claimed into the `fetch/` identified by `claimed_in`
/// went with it: the consumer removed that `fetch/` and made
/// one anew (`spool` is as opened now). Such a chit is nobody's work any
/// more (not delivered, not moved; a chit of its name in the new one is
/// another); it is logged here.
pub fn went_with_its_fetch(
    shared: &Shared,
    spool: &Spool,
    consumer: usize,
    name: &str,
    claimed_in: FileId,
) -> bool {
    let gone = spool.fetch_id() != claimed_in;
    if gone {
        let consumer = &shared.consumers[consumer].name;
        tracing::info!(consumer = %consumer, chit = %name, "dropped: its fetch/ was removed and made anew meanwhile");
    }
    gone
}

/// The consumer's spool as opened now, unless the chit went with the
/// `fetch/` it was claimed into ([`went_with_its_fetch`]).
fn spool_of(
    shared: &Shared,
    consumer: usize,
    name: &str,
    claimed_in: FileId,
) -> Option<Arc<Spool>> {
    let spool = shared.consumers[consumer].spool();
    (!went_with_its_fetch(shared, &spool, consumer, name, claimed_in)).then_some(spool)
}

/// Chits of files at least this big are delivered in a batch of their own
/// ([`Step::Hit`], and publishes and deliveries after a download: see
/// `Scheduler::next_batch`): their copy takes a millisecond or more, which
/// the other chits of a batch would wait for, and several of them copy
/// side by side.
pub const SOLO_MIN: u64 = 1 << 20;

/// Begin delivering the cache hit `object` to the chit.
pub fn begin_hit(shared: &Shared, waiter: Waiter, object: &std::path::Path) -> Begun {
    let object = Object {
        path: object,
        bytes: None,
    };
    begin_delivery(shared, waiter, object, "cache")
}

/// The end of a chit's local step.
#[derive(Debug)]
pub enum Step {
    /// The chit is terminal, gone, or must wait for a later scan.
    Done(ChitId),
    /// The chit could not be claimed, or not moved to `fail/` (the error is
    /// logged): it stays where it is, and only a later scan retries it.
    Stuck(ChitId),
    /// chitd was short of descriptors or memory for the chit
    /// ([`out_of_resources`]; logged): no fault of the chit, which stays
    /// where it is (in `fetch/`) for the scan of an idle daemon to try
    /// again; stuck after a few such tries (`stuck::SHORT_TRIES`).
    Short(ChitId),
    /// The chit needs its digest downloaded.
    Wait(Waiter),
    /// The chit's file is in the cache at `object`, and big: it is
    /// delivered in a batch of its own ([`SOLO_MIN`]).
    Hit { waiter: Waiter, object: PathBuf },
    /// The steps of a batch's chits (see [`super::batch`]).
    Batch(Vec<Step>),
    /// The chit's file is in the cache at `object`, but another chit is
    /// delivering to its target: it is delivered once that one is done.
    Parked {
        waiter: Waiter,
        object: PathBuf,
        target: Target,
    },
    /// The file is delivered (renamed into place); the chit waits for the
    /// next group commit to make it durable and move it to `downloaded/`.
    Commit(Commit),
    /// A group commit ended: these chits are terminal, or left in `fetch/`
    /// (`left`: [`Step::Stuck`] or [`Step::Short`]), and their targets free
    /// again.
    Committed { done: Vec<ChitId>, left: Vec<Step> },
    /// A round of cache directory fsyncs ended (see [`sync_cache_dirs`]).
    CacheDirsSynced,
    /// An early delivery was stopped and its temporary removed; its
    /// download failed (the sources tried, the reason), or was replaced or
    /// stopped.
    ChaseAborted {
        key: Key,
        failed: Option<(Vec<url::Url>, Failure)>,
    },
    /// A verified download was published into the cache (or could not be),
    /// and its lone waiter delivered (or failed) by the same task.
    Published {
        key: Key,
        /// The source of the bytes (the last one, after a switch), redacted.
        source: Option<String>,
        published: Result<PathBuf, Failure>,
        delivered: Option<Box<Step>>,
    },
}

/// A delivered chit waiting for its group commit.
#[derive(Debug)]
pub struct Commit {
    pub consumer: usize,
    pub name: String,
    pub digest: Digest,
    pub path: String,
    pub from: &'static str,
    pub claimed_in: FileId,
    /// The delivery directory that holds the new file; fsync'd by the
    /// commit. Shared by the chits of a batch delivered into the same one
    /// (see [`super::commit::GroupCommit`]): a batch holds a descriptor per
    /// directory, not per chit.
    pub parent: Arc<Dir>,
    /// Its identity, if it could be read.
    pub parent_id: Option<FileId>,
    /// Held until the commit is over.
    pub target: Target,
}

/// Claim (when in `request/`), read, parse, and try the cache, up to a
/// hit's copy written (see [`Begun`]).
pub fn begin_start(shared: &Shared, consumer: usize, name: String, origin: Origin) -> Begun {
    let spool = shared.consumers[consumer].spool();
    let claimed_in = spool.fetch_id();
    let (bytes, chit) = match claim_and_read(&spool, consumer, &name, origin) {
        ControlFlow::Continue(read) => read,
        ControlFlow::Break(step) => return Begun::Over(step),
    };
    let waiter = Waiter {
        consumer,
        name,
        chit,
        claimed_in,
        cache_was_corrupt: false,
    };
    look_up(shared, &spool, waiter, &bytes)
}

/// Claim the chit and read it: its bytes and the chit, or the step that
/// ends its turn here.
fn claim_and_read(
    spool: &Spool,
    consumer: usize,
    name: &str,
    origin: Origin,
) -> ControlFlow<Step, (Vec<u8>, Chit)> {
    let claimed = claim(spool, consumer, name, origin)?;
    read_chit(spool, consumer, name, origin, claimed)
}

/// Claim `request/NAME` into `fetch/` (one queued from `fetch/` is
/// claimed already): whether it was claimed now, or the step that ends
/// the chit's turn here.
fn claim(spool: &Spool, consumer: usize, name: &str, origin: Origin) -> ControlFlow<Step, bool> {
    if origin == Origin::Fetch {
        return ControlFlow::Continue(false);
    }
    let done = || Step::Done(ChitId::new(consumer, name.to_owned()));
    match spool.claim(name) {
        Ok(Claim::Claimed) => ControlFlow::Continue(true),
        Ok(Claim::Gone) => ControlFlow::Break(done()),
        Ok(Claim::Busy) => {
            tracing::debug!(consumer = %spool.name, chit = %name, "a chit of this name is still in fetch/; leaving request/ for later");
            ControlFlow::Break(done())
        }
        Err(e) => {
            tracing::error!(consumer = %spool.name, chit = %name, "cannot claim the chit: {e}");
            ControlFlow::Break(Step::Stuck(ChitId::new(consumer, name.to_owned())))
        }
    }
}

/// Read and parse the claimed chit `fetch/NAME`: its bytes and the chit,
/// or the step that ends its turn here (gone, failed as a bad chit, or
/// left for later).
fn read_chit(
    spool: &Spool,
    consumer: usize,
    name: &str,
    origin: Origin,
    claimed: bool,
) -> ControlFlow<Step, (Vec<u8>, Chit)> {
    let read = spool.read(name);
    if origin == Origin::Fetch
        && let Ok(bytes) = &read
        && let Some(step) = drop_terminal_twin(spool, consumer, name, bytes)
    {
        return ControlFlow::Break(step);
    }
    if !matches!(read, Err(ReadError::Gone | ReadError::Unavailable(_))) {
        // This request supersedes any outcome of an earlier one of its name.
        spool.clear_outcomes(name);
    }
    let parsed = read.as_ref().ok().map(|bytes| Chit::parse(bytes));
    if claimed {
        let digest = parsed
            .as_ref()
            .and_then(|parsed| parsed.as_ref().ok())
            .map(|chit| chit.digest.to_string())
            .unwrap_or_default();
        tracing::info!(consumer = %spool.name, chit = %name, digest = %digest, "claimed: request/ → fetch/");
    }
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(ReadError::Gone) => {
            return ControlFlow::Break(Step::Done(ChitId::new(consumer, name.to_owned())));
        }
        Err(ReadError::Refused(reason)) => {
            return ControlFlow::Break(fail_step(
                spool,
                consumer,
                name.to_owned(),
                None,
                None,
                &reason,
            ));
        }
        Err(ReadError::Unavailable(reason)) => {
            tracing::error!(consumer = %spool.name, chit = %name, "{reason}");
            return ControlFlow::Break(Step::Short(ChitId::new(consumer, name.to_owned())));
        }
    };
    match parsed.unwrap_or_else(|| Chit::parse(&bytes)) {
        Ok(chit) => ControlFlow::Continue((bytes, chit)),
        Err(e) => {
            let reason = format!("bad chit: {e}");
            let name = name.to_owned();
            ControlFlow::Break(fail_step(
                spool,
                consumer,
                name,
                None,
                Some(&bytes),
                &reason,
            ))
        }
    }
}

/// One chit in two places, `fetch/` and a terminal state (`bytes` read
/// from `fetch/`): the terminal copy wins, and the one in `fetch/` is
/// removed. `None` if there is no such twin.
fn drop_terminal_twin(spool: &Spool, consumer: usize, name: &str, bytes: &[u8]) -> Option<Step> {
    let state = spool.terminal_twin(name, bytes)?;
    let id = ChitId::new(consumer, name.to_owned());
    Some(match spool.drop_fetched(name) {
        Ok(()) => {
            tracing::info!(consumer = %spool.name, chit = %name, "the same chit is in fetch/ and {state}/: {state}/ wins; removed it from fetch/");
            Step::Done(id)
        }
        Err(e) => {
            tracing::error!(consumer = %spool.name, chit = %name, "the same chit is in fetch/ and {state}/, and cannot be removed from fetch/: {e}");
            Step::Stuck(id)
        }
    })
}

/// Look the chit's file up in the cache: deliver a hit, wait for a
/// download on a miss, fail a chit whose size the cache proves wrong.
fn look_up(shared: &Shared, spool: &Spool, waiter: Waiter, bytes: &[u8]) -> Begun {
    let chit = &waiter.chit;
    let reason = match shared.store.lookup(&chit.digest, chit.size) {
        Ok(Lookup::Hit(object)) => {
            crate::metrics::METRICS.cache_hit();
            if chit.size >= SOLO_MIN {
                return Begun::Over(Step::Hit { waiter, object });
            }
            return begin_hit(shared, waiter, &object);
        }
        Ok(Lookup::Miss) => return Begun::Over(Step::Wait(waiter)),
        Ok(Lookup::OtherSize(actual)) => format!(
            "the chit says {} bytes, but the file with this sha256 is {actual} bytes \
             (verified, in the cache)",
            chit.size
        ),
        Err(e) if out_of_resources(&e) => {
            tracing::error!(consumer = %spool.name, chit = %waiter.name, digest = %chit.digest, "cannot look in the cache: {e}");
            return Begun::Over(Step::Short(ChitId::new(waiter.consumer, waiter.name)));
        }
        Err(e) => format!("cannot read the cache: {e}"),
    };
    let digest = chit.digest;
    Begun::Over(fail_step(
        spool,
        waiter.consumer,
        waiter.name,
        Some(&digest),
        Some(bytes),
        &reason,
    ))
}

/// Make the renames that published new cache objects durable: one fsync
/// of each cache directory that received objects since the last round.
/// No delivery waits for this (a delivered file is durable on its own): a
/// crash before it may lose a cache name, never the bytes under one, and
/// the object is then downloaded again.
/// The fsyncs run on up to 64 threads at once, so the disk can serve their
/// flushes together.
pub fn sync_cache_dirs(dirs: Vec<PathBuf>) -> Step {
    const THREADS: usize = 64;
    tracing::debug!(dirs = dirs.len(), "syncing cache directories");
    let chunk = dirs.len().div_ceil(THREADS).max(1);
    std::thread::scope(|scope| {
        for part in dirs.chunks(chunk) {
            scope.spawn(move || {
                for dir in part {
                    if let Err(e) = sync_dir(dir) {
                        tracing::warn!("cannot make a cache entry durable: {e}");
                    }
                }
            });
        }
    });
    Step::CacheDirsSynced
}

/// [`fail_step`] for a chit whose bytes were not kept after its parse:
/// they are read again, so `fail/` gets them with the reason.
pub fn fail_read_again(
    spool: &Spool,
    consumer: usize,
    name: String,
    digest: &Digest,
    reason: &str,
) -> Step {
    let original = match spool.read(&name) {
        Ok(bytes) => Some(bytes),
        // Failed without its lines, the chit would lose them: it stays in
        // fetch/, and its next try starts over.
        Err(ReadError::Unavailable(why)) => {
            tracing::error!(consumer = %spool.name, chit = %name, digest = %digest, reason, "cannot fail the chit now: {why}");
            return Step::Short(ChitId::new(consumer, name));
        }
        Err(ReadError::Gone | ReadError::Refused(_)) => None,
    };
    fail_step(
        spool,
        consumer,
        name,
        Some(digest),
        original.as_deref(),
        reason,
    )
}

/// `fetch/ → fail/` with the reason; never loses the chit. Done, or stuck
/// when it could not move (it stays in `fetch/` and the error is logged).
fn fail_step(
    spool: &Spool,
    consumer: usize,
    name: String,
    digest: Option<&Digest>,
    original: Option<&[u8]>,
    reason: &str,
) -> Step {
    let digest = digest.map(ToString::to_string).unwrap_or_default();
    match spool.fail(&name, original, reason) {
        Ok(()) => {
            tracing::info!(consumer = %spool.name, chit = %name, digest = %digest, reason, "failed: fetch/ → fail/");
            Step::Done(ChitId::new(consumer, name))
        }
        Err(e) => {
            tracing::error!(consumer = %spool.name, chit = %name, digest = %digest, reason, "cannot move the chit to fail/: {e}");
            Step::Stuck(ChitId::new(consumer, name))
        }
    }
}
