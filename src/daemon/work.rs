//! What happens to one chit on the blocking pool: claim it, read and parse
//! it, deliver it from the cache or hand it to the scheduler to wait for a
//! download; and, once a download ends, deliver or fail its waiters.

use std::path::Path;

use crate::chit::{Chit, Digest};
use crate::deliver::deliver;
use crate::spool::{Claim, ReadError};

use super::Shared;

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
}

/// The end of a chit's local step.
#[derive(Debug)]
pub enum Step {
    /// The chit is terminal, gone, or must wait for a later scan.
    Done { consumer: usize, name: String },
    /// The chit needs its digest downloaded.
    Wait(Waiter),
}

/// Claim (when in `request/`), read, parse, and try the cache.
pub fn start(shared: &Shared, consumer: usize, name: String, origin: Origin) -> Step {
    let spool = &shared.consumers[consumer].spool;
    let done = |name| Step::Done { consumer, name };
    if origin == Origin::Request {
        match spool.claim(&name) {
            Ok(Claim::Claimed) => {
                tracing::info!(consumer = %spool.name, chit = %name, "claimed: request/ → fetch/")
            }
            Ok(Claim::Gone) => return done(name),
            Ok(Claim::Busy) => {
                tracing::debug!(consumer = %spool.name, chit = %name, "a chit of this name is still in fetch/; leaving request/ for later");
                return done(name);
            }
            Err(e) => {
                tracing::error!(consumer = %spool.name, chit = %name, "cannot claim the chit: {e}");
                return done(name);
            }
        }
    }
    let bytes = match spool.read(&name) {
        Ok(bytes) => bytes,
        Err(ReadError::Gone) => return done(name),
        Err(ReadError::Refused(reason)) => {
            fail(shared, consumer, &name, None, None, &reason);
            return done(name);
        }
    };
    let chit = match Chit::parse(&bytes) {
        Ok(chit) => chit,
        Err(e) => {
            fail(
                shared,
                consumer,
                &name,
                None,
                Some(&bytes),
                &format!("bad chit: {e}"),
            );
            return done(name);
        }
    };
    match shared.store.lookup(&chit.digest, chit.size) {
        Ok(Some(object)) => {
            complete(shared, consumer, &name, &chit, &object, "cache");
            done(name)
        }
        Ok(None) => Step::Wait(Waiter {
            consumer,
            name,
            chit,
        }),
        Err(e) => {
            fail(
                shared,
                consumer,
                &name,
                Some(&chit.digest),
                Some(&bytes),
                &format!("cannot read the cache: {e}"),
            );
            done(name)
        }
    }
}

/// A download ended: deliver the object, or fail the chit with the reason.
pub fn finish(shared: &Shared, waiter: &Waiter, outcome: Result<&Path, &str>) {
    match outcome {
        Ok(object) => complete(
            shared,
            waiter.consumer,
            &waiter.name,
            &waiter.chit,
            object,
            "download",
        ),
        Err(reason) => {
            let original = shared.consumers[waiter.consumer]
                .spool
                .read(&waiter.name)
                .ok();
            fail(
                shared,
                waiter.consumer,
                &waiter.name,
                Some(&waiter.chit.digest),
                original.as_deref(),
                reason,
            );
        }
    }
}

/// Deliver, then `fetch/ → downloaded/`.
fn complete(shared: &Shared, consumer: usize, name: &str, chit: &Chit, object: &Path, from: &str) {
    let target = &shared.consumers[consumer];
    if let Err(e) = deliver(&target.deliver, &chit.path, object) {
        let reason = format!("cannot deliver {}: {e}", chit.path);
        let original = target.spool.read(name).ok();
        fail(
            shared,
            consumer,
            name,
            Some(&chit.digest),
            original.as_deref(),
            &reason,
        );
        return;
    }
    match target.spool.complete(name) {
        Ok(()) => tracing::info!(
            consumer = %target.spool.name, chit = %name, digest = %chit.digest, path = %chit.path, from,
            "downloaded: fetch/ → downloaded/"
        ),
        Err(e) => {
            tracing::error!(consumer = %target.spool.name, chit = %name, "cannot move the chit to downloaded/: {e}")
        }
    }
}

/// `fetch/ → fail/` with the reason; never loses the chit.
fn fail(
    shared: &Shared,
    consumer: usize,
    name: &str,
    digest: Option<&Digest>,
    original: Option<&[u8]>,
    reason: &str,
) {
    let spool = &shared.consumers[consumer].spool;
    let digest = digest.map(ToString::to_string).unwrap_or_default();
    match spool.fail(name, original, reason) {
        Ok(()) => {
            tracing::info!(consumer = %spool.name, chit = %name, digest, reason, "failed: fetch/ → fail/")
        }
        Err(e) => {
            tracing::error!(consumer = %spool.name, chit = %name, digest, reason, "cannot move the chit to fail/: {e}")
        }
    }
}
