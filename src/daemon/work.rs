//! What happens to one chit on the blocking pool: claim it, read and parse
//! it, deliver it from the cache or hand it to the scheduler to wait for a
//! download; and, once a download ends, deliver or fail its waiters.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chase::{Chase, Chased};
use crate::chit::{Chit, Digest};
use crate::deliver::{DeliverError, Delivering, Source, start_delivery};
use crate::dir::{Dir, FileId};
use crate::durable::{out_of_resources, sync_dir};
use crate::fetch::{Cause, Failure};
use crate::inflight::Key;
use crate::spool::{Claim, ReadError, Spool};
use crate::store::Lookup;

use super::Shared;
use super::chit_id::ChitId;

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

/// A delivery target: a path beneath a delivery directory (identified by
/// its [`FileId`], so consumers sharing one directory share targets).
/// One chit at a time delivers to a target, from its rename into place to
/// its group commit: two chits that want different files at one path can
/// never both reach `downloaded/` with only one of the files there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    root: FileId,
    path: String,
}

/// The targets being delivered to (see [`Target`]).
#[derive(Debug, Default)]
pub struct Targets(std::sync::Mutex<std::collections::HashSet<Target>>);

impl Targets {
    /// Take `target` for a delivery; false if another delivery holds it.
    pub fn take(&self, target: &Target) -> bool {
        self.lock().insert(target.clone())
    }

    pub fn release(&self, target: &Target) {
        self.lock().remove(target);
    }

    pub fn is_taken(&self, target: &Target) -> bool {
        self.lock().contains(target)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Target>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cached object to deliver: its path, and its bytes while a small
/// download still holds them in memory.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub path: &'a Path,
    pub bytes: Option<&'a [u8]>,
}

impl Object<'_> {
    /// What to deliver for `chit`: the bytes in memory, else the object,
    /// verified against the chit's digest and size as it is copied.
    fn source<'a>(&'a self, chit: &'a Chit) -> Source<'a> {
        self.bytes.map_or(
            Source::Object {
                path: self.path,
                digest: &chit.digest,
                size: chit.size,
            },
            Source::Bytes,
        )
    }
}

/// The delivery target of `chit` for `consumer`.
pub fn target(shared: &Shared, consumer: usize, chit: &Chit) -> Target {
    Target {
        root: shared.consumers[consumer].deliver_root,
        path: chit.path.to_string(),
    }
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
            let object = Object {
                path: &object,
                bytes: None,
            };
            return begin_delivery(shared, waiter, object, "cache");
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

/// A download ended: deliver the object, or fail the chit with the
/// reason, which names only the sources this chit would have tried.
pub fn finish(shared: &Shared, waiter: Waiter, outcome: Result<Object<'_>, &Failure>) -> Step {
    begin_finish(shared, waiter, outcome).finish(shared)
}

/// [`finish`], up to the copy written (see [`Begun`]).
pub fn begin_finish(
    shared: &Shared,
    waiter: Waiter,
    outcome: Result<Object<'_>, &Failure>,
) -> Begun {
    let Some(spool) = spool_of(shared, waiter.consumer, &waiter.name, waiter.claimed_in) else {
        return Begun::Over(Step::Done(ChitId::new(waiter.consumer, waiter.name)));
    };
    match outcome {
        Ok(object) => begin_delivery(shared, waiter, object, "download"),
        Err(failure) => Begun::Over({
            let reason = failure.render_for(&waiter.chit.sources(&shared.mirrors));
            let reason = if waiter.cache_was_corrupt {
                format!("{CORRUPT_CACHE}; fetching it again failed: {reason}")
            } else {
                reason
            };
            fail_read_again(
                &spool,
                waiter.consumer,
                waiter.name,
                &waiter.chit.digest,
                &reason,
            )
        }),
    }
}

/// Publish a verified download into the cache, then deliver it to `lone`,
/// its only waiter so far or the one its `chase` copied for, if any (one
/// blocking task for both: a download of a small file costs one hand-off
/// less). The chase becomes that delivery; it is discarded if it was for
/// another chit.
pub fn publish(
    shared: &Shared,
    partial: crate::partial::Partial,
    key: Key,
    lone: Option<Waiter>,
    chase: Option<Chase>,
) -> Step {
    let (generation, total) = (partial.followed_generation(), partial.total());
    let source = partial
        .source
        .as_deref()
        .map(crate::chit::redact_unparsed_url);
    if let Some(chase) = &chase {
        // The chaser copies the tail while the `.part` is synced.
        chase.wrap_up();
    }
    let from_remote = crate::remote::is_remote_source(partial.source.as_deref());
    let published = shared
        .store
        .publish(partial, &key.digest)
        .map_err(|e| Failure::from(Cause::Publish(e)));
    upload_later(shared, key, &published, from_remote);
    let chased = chase.and_then(|chase| {
        let for_lone = lone
            .as_ref()
            .is_some_and(|w| (w.consumer, &w.name) == (chase.consumer, &chase.name));
        match (generation, &published) {
            (Some(generation), Ok(_)) if for_lone => chase.finish(generation, total),
            _ => {
                chase.abort();
                None
            }
        }
    });
    let delivered = lone.map(|waiter| {
        let outcome = published.as_ref().map(|object| Object {
            path: &object.path,
            bytes: object.bytes.as_deref(),
        });
        Box::new(match chased {
            Some(chased) => deliver_chased(shared, waiter, chased, outcome),
            None => finish(shared, waiter, outcome),
        })
    });
    Step::Published {
        key,
        source,
        published: published.map(|object| object.path),
        delivered,
    }
}

/// Have the remote tier (if any) upload a `published` object of `key`,
/// unless it came `from_remote`.
pub fn upload_later(
    shared: &Shared,
    key: Key,
    published: &Result<crate::store::Published, Failure>,
    from_remote: bool,
) {
    if let (Some(remote), Ok(object), false) = (shared.fetcher.remote(), published, from_remote) {
        remote.upload_later(key.digest, key.size, object.path.clone());
    }
}

/// Deliver a chit whose file was copied while it downloaded: rename the
/// copy into place. Should that fail, deliver from `outcome` (the cache).
fn deliver_chased(
    shared: &Shared,
    waiter: Waiter,
    chased: Chased,
    outcome: Result<Object<'_>, &Failure>,
) -> Step {
    if spool_of(shared, waiter.consumer, &waiter.name, waiter.claimed_in).is_none() {
        chased.discard();
        return Step::Done(ChitId::new(waiter.consumer, waiter.name));
    }
    let target = target(shared, waiter.consumer, &waiter.chit);
    if !shared.targets.take(&target) {
        chased.discard();
        return match outcome {
            Ok(object) => Step::Parked {
                waiter,
                object: object.path.to_path_buf(),
                target,
            },
            Err(_) => finish(shared, waiter, outcome),
        };
    }
    match chased.rename_into_place() {
        Ok(()) => {
            tracing::debug!(digest = %waiter.chit.digest, path = %waiter.chit.path, "delivered the copy made while it downloaded");
            crate::metrics::METRICS.delivered(waiter.chit.size);
            Step::Commit(Commit {
                consumer: waiter.consumer,
                name: waiter.name,
                digest: waiter.chit.digest,
                path: waiter.chit.path.to_string(),
                from: "download",
                claimed_in: waiter.claimed_in,
                parent_id: chased.parent.id().ok(),
                parent: Arc::new(chased.parent),
                target,
            })
        }
        Err(e) => {
            tracing::warn!(digest = %waiter.chit.digest, path = %waiter.chit.path, "delivering from the cache instead of the copy made while it downloaded: {e}");
            shared.targets.release(&target);
            finish(shared, waiter, outcome)
        }
    }
}

/// A chit's local work, begun: over, or its copy written and waiting to
/// be flushed and put in place ([`Begun::finish`]). A batch begins every
/// chit's work before it finishes any, so the copies share their flushes
/// (see [`crate::durable::Unnamed::link`]).
#[derive(Debug)]
pub enum Begun {
    Over(Step),
    Placing(Placing),
}

impl Begun {
    /// The chit's step, its delivery finished.
    pub fn finish(self, shared: &Shared) -> Step {
        match self {
            Begun::Over(step) => step,
            Begun::Placing(placing) => placing.finish(shared),
        }
    }
}

/// A chit's delivery, its copy written but not yet durable or in place;
/// it holds the chit's target.
#[derive(Debug)]
pub struct Placing {
    waiter: Waiter,
    spool: Arc<Spool>,
    target: Target,
    from: &'static str,
    delivering: Delivering,
}

impl Placing {
    /// Flush the copy and put it in place: the chit then waits for a
    /// group commit (or is failed).
    fn finish(self, shared: &Shared) -> Step {
        let Placing {
            waiter,
            spool,
            target,
            from,
            delivering,
        } = self;
        let parent = match delivering.finish() {
            Ok(parent) => parent,
            Err(e) => return delivery_failed(shared, &spool, waiter, &target, e),
        };
        let Waiter {
            consumer,
            name,
            chit,
            claimed_in,
            ..
        } = waiter;
        crate::metrics::METRICS.delivered(chit.size);
        Step::Commit(Commit {
            consumer,
            name,
            digest: chit.digest,
            path: chit.path.to_string(),
            from,
            claimed_in,
            parent_id: parent.id().ok(),
            parent: Arc::new(parent),
            target,
        })
    }

    /// Leave the delivery undone (its copy dropped, its target free): the
    /// chit, for another outcome.
    pub fn abandon(self, shared: &Shared) -> Waiter {
        shared.targets.release(&self.target);
        self.waiter
    }
}

/// Begin delivering the cached `object` for the chit (see [`Begun`]:
/// deliver it and wait for a group commit, holding its target; on failure,
/// fail the chit; parked if another chit is delivering to the same
/// target).
fn begin_delivery(
    shared: &Shared,
    waiter: Waiter,
    object: Object<'_>,
    from: &'static str,
) -> Begun {
    let Some(spool) = spool_of(shared, waiter.consumer, &waiter.name, waiter.claimed_in) else {
        return Begun::Over(Step::Done(ChitId::new(waiter.consumer, waiter.name)));
    };
    let target = target(shared, waiter.consumer, &waiter.chit);
    if !shared.targets.take(&target) {
        tracing::debug!(chit = %waiter.name, path = %waiter.chit.path, "another chit is delivering to this path; waiting for it");
        return Begun::Over(Step::Parked {
            waiter,
            object: object.path.to_path_buf(),
            target,
        });
    }
    let root = &shared.consumers[waiter.consumer].deliver;
    let source = object.source(&waiter.chit);
    match start_delivery(root, &waiter.chit.path, source, &shared.durable_dirs) {
        Ok(delivering) => Begun::Placing(Placing {
            waiter,
            spool,
            target,
            from,
            delivering,
        }),
        Err(e) => Begun::Over(delivery_failed(shared, &spool, waiter, &target, e)),
    }
}

/// The chit's delivery to `target` (which it held) failed with `error`.
fn delivery_failed(
    shared: &Shared,
    spool: &Spool,
    waiter: Waiter,
    target: &Target,
    error: DeliverError,
) -> Step {
    shared.targets.release(target);
    let e = match error {
        DeliverError::Corrupt { object, .. } => {
            return corrupt_in_cache(shared, spool, waiter, object);
        }
        DeliverError::Gone(object) => {
            // Collected between its lookup and its copy: a miss after all.
            tracing::info!(consumer = %spool.name, chit = %waiter.name, digest = %waiter.chit.digest, object = %object.display(), "the cached object was removed meanwhile: fetching the file again");
            return Step::Wait(waiter);
        }
        DeliverError::Io(e) => e,
    };
    let Waiter {
        consumer,
        name,
        chit,
        ..
    } = waiter;
    if out_of_resources(&e) {
        tracing::error!(consumer = %spool.name, chit = %name, digest = %chit.digest, "cannot deliver {}: {e}", chit.path);
        return Step::Short(ChitId::new(consumer, name));
    }
    let root = &shared.consumers[consumer].deliver;
    let reason = if root.is_removed() {
        format!(
            "cannot deliver {}: the delivery directory {} was removed while chitd runs \
             (chitd delivers into a new one after a restart)",
            chit.path,
            root.path().display()
        )
    } else {
        format!("cannot deliver {}: {e}", chit.path)
    };
    fail_read_again(spool, consumer, name, &chit.digest, &reason)
}

/// How a failure reason begins when the chit's file was corrupt in the
/// cache.
const CORRUPT_CACHE: &str =
    "the cached copy of this file was corrupt (moved to the cache's quarantine/)";

/// The cached copy of the chit's file, the file `object`, is corrupt:
/// quarantine it, and wait for the file to be fetched again from the
/// chit's sources; fail the chit if it was fetched again already.
fn corrupt_in_cache(shared: &Shared, spool: &Spool, mut waiter: Waiter, object: FileId) -> Step {
    let digest = waiter.chit.digest;
    if let Err(e) = shared.store.quarantine(&digest, object) {
        tracing::error!(digest = %digest, "cannot move a corrupt cached object to quarantine/: {e}");
    }
    if waiter.cache_was_corrupt {
        let reason =
            format!("{CORRUPT_CACHE}, and so was the copy fetched again (a disk or memory fault?)");
        return fail_read_again(spool, waiter.consumer, waiter.name, &digest, &reason);
    }
    tracing::info!(consumer = %spool.name, chit = %waiter.name, digest = %digest, "the cached copy is corrupt: fetching the file again");
    waiter.cache_was_corrupt = true;
    Step::Wait(waiter)
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

#[cfg(test)]
impl Target {
    pub fn new(root: FileId, path: &str) -> Target {
        Target {
            root,
            path: path.to_owned(),
        }
    }
}
