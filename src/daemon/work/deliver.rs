//! A chit's delivery: from the cache object (verified as it is copied),
//! from the bytes of a small download just published, or from the copy
//! made while a big one downloaded; in two halves for a batch ([`Begun`]),
//! holding the chit's target from its copy until its group commit; and
//! what a failed delivery or download does to the chit.

use std::path::Path;
use std::sync::Arc;

use crate::chase::{Chase, Chased};
use crate::chit::Chit;
use crate::deliver::{DeliverError, Delivering, Source, start_delivery};
use crate::dir::FileId;
use crate::durable::out_of_resources;
use crate::fetch::{Cause, Failure};
use crate::inflight::Key;
use crate::spool::Spool;

use super::super::Shared;
use super::super::chit_id::ChitId;
use super::{Commit, Step, Waiter, fail_read_again, spool_of};

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

/// Publish a verified download that was delivered early (`chase`, see
/// [`crate::chase`]) into the cache, then deliver it to `lone`, its only
/// waiter so far or the one the chase copied for, if any: the chase
/// becomes that delivery; it is discarded if it was for another chit.
/// (Downloads without a chase are published by a batch:
/// [`super::super::batch`].)
pub fn publish_chased(
    shared: &Shared,
    partial: crate::partial::Partial,
    key: Key,
    lone: Option<Waiter>,
    chase: Chase,
) -> Step {
    let (generation, total) = (partial.followed_generation(), partial.total());
    let (source, from_remote) = source_of(&partial);
    // The chaser copies the tail while the `.part` is synced.
    chase.wrap_up();
    let published = shared
        .store
        .publish(partial, &key.digest)
        .map_err(|e| Failure::from(Cause::Publish(e)));
    upload_later(shared, key, &published, from_remote);
    let for_lone = lone
        .as_ref()
        .is_some_and(|w| (w.consumer, &w.name) == (chase.consumer, &chase.name));
    let chased = match (generation, &published) {
        (Some(generation), Ok(_)) if for_lone => chase.finish(generation, total),
        _ => {
            chase.abort();
            None
        }
    };
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

/// Where a verified download's bytes came from (its last source,
/// redacted), and whether that was the remote tier.
pub fn source_of(partial: &crate::partial::Partial) -> (Option<String>, bool) {
    let source = partial.source.as_deref();
    (
        source.map(crate::chit::redact_unparsed_url),
        crate::remote::is_remote_source(source),
    )
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
pub(super) fn begin_delivery(
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

#[cfg(test)]
impl Target {
    pub fn new(root: FileId, path: &str) -> Target {
        Target {
            root,
            path: path.to_owned(),
        }
    }
}
