//! Leases: one host downloads a digest upstream for the whole fleet.
//!
//! A host that misses an object (of at least `Settings::lease_min_size`)
//! creates `<prefix>lease/<hex>` with
//! `If-None-Match: *` (`PutMode::Create`), its body `{"holder",
//! "expires"}` (Unix seconds). Whoever creates it downloads upstream and
//! deletes it once the object is uploaded or the download failed. The
//! others poll: the object (then they read it from the remote), the lease
//! (gone: they try to take it), and its expiry (past: they download
//! themselves). Nobody waits longer than one lease's time to live.
//! Leases are used only where the store refuses a second create of one
//! key, which [`Remote::probe`] checks at start. A lease is read back a
//! moment after its create: a store whose check-then-create is not atomic
//! (s3s-fs) can let two creates of one key both succeed, and then only the
//! host whose body stayed holds it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Conditional, REMOTE_SOURCE, Remote};
use crate::chit::Digest;

/// How long a download waits for the start-up probe before going on
/// without a lease.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// How long after creating a lease it is read back (see
/// [`Remote::take_lease`]).
const LEASE_SETTLE: Duration = Duration::from_millis(100);

/// What a host that missed the object does next.
pub(super) enum Waited {
    /// The object may be there now: GET it.
    Look,
    /// Download from the chit's sources (the lease is ours, expired, or
    /// leases are not used).
    DownloadHere,
    Shutdown,
}

#[derive(Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    /// Unix seconds.
    expires: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Remote {
    /// Whether the store refuses a second create of one key: create a
    /// probe object twice. Logged either way; leases are used only if so.
    pub(super) async fn probe(&self) {
        self.probe_once().await;
        self.probed.send_replace(true);
    }

    async fn probe_once(&self) {
        let path = self.lease_path_named(&format!("probe-{}", crate::durable::unique_suffix()));
        let create = || {
            let options = PutOptions::from(PutMode::Create);
            self.store
                .put_opts(&path, PutPayload::from_static(b"probe"), options)
        };
        let verdict = match (create().await, create().await) {
            (Ok(_), Err(object_store::Error::AlreadyExists { .. }))
            | (Ok(_), Err(object_store::Error::Precondition { .. })) => Conditional::Honoured,
            (Ok(_), Ok(_)) => Conditional::Ignored,
            (Err(e), _) | (Ok(_), Err(e)) => {
                tracing::warn!(
                    "{REMOTE_SOURCE} did not answer the conditional-create probe ({e}); no leases until it does"
                );
                return;
            }
        };
        let _ = self.store.delete(&path).await;
        self.conditional
            .store(verdict as u8, std::sync::atomic::Ordering::Relaxed);
        match verdict {
            Conditional::Honoured => tracing::info!(
                "{REMOTE_SOURCE} honours conditional creates: hosts missing the same file at once share one upstream download"
            ),
            _ => tracing::warn!(
                "{REMOTE_SOURCE} ignores If-None-Match: * (a second create of one key succeeded): no leases, so hosts missing the same file at once may each download it"
            ),
        }
    }

    fn lease_path_named(&self, name: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}lease/{name}", self.prefix))
    }

    /// The object is not there: take its lease, or wait on another host's.
    pub(super) async fn await_lease(&self, digest: Digest, cancel: &CancellationToken) -> Waited {
        let mut probed = self.probed.subscribe();
        let _ = tokio::time::timeout(PROBE_WAIT, probed.wait_for(|done| *done)).await;
        if self.conditional() != Conditional::Honoured {
            return Waited::DownloadHere;
        }
        let deadline = Instant::now() + self.settings.lease_ttl;
        while Instant::now() < deadline {
            let expires = match self.take_lease(digest).await {
                Ok(None) => return Waited::DownloadHere, // ours
                Ok(Some(expires)) => expires,
                Err(e) => {
                    tracing::warn!(%digest, "cannot take the lease on {REMOTE_SOURCE}: {e}");
                    return Waited::DownloadHere;
                }
            };
            if expires <= unix_now() {
                tracing::info!(%digest, "another host's lease expired: downloading here");
                return Waited::DownloadHere;
            }
            match self.watch_lease(digest, expires, deadline, cancel).await {
                Some(waited) => return waited,
                None => continue, // released: try to take it
            }
        }
        Waited::DownloadHere
    }

    /// Create the lease: `None` if this host now holds it, else when the
    /// holder's expires (0 if its body is unreadable: expired).
    async fn take_lease(&self, digest: Digest) -> object_store::Result<Option<u64>> {
        let path = self.lease_path(&digest);
        let ttl = self.settings.lease_ttl.as_secs().max(1);
        let body = LeaseBody {
            holder: self.holder.clone(),
            expires: unix_now() + ttl,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let options = PutOptions::from(PutMode::Create);
        match self.store.put_opts(&path, bytes.into(), options).await {
            Ok(_) => {}
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(e),
        }
        // Read it back a moment later: a store whose check-then-create is
        // not atomic (s3s-fs) may have let two hosts create it; the last
        // one's body stays, and only that host holds the lease.
        tokio::time::sleep(LEASE_SETTLE).await;
        let held = self.store.get(&path).await?.bytes().await?;
        let body: Option<LeaseBody> = serde_json::from_slice(&held).ok();
        let expires = body.as_ref().map_or(0, |body| body.expires);
        let holder = body.map(|body| body.holder).unwrap_or_default();
        if holder == self.holder {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            leases.insert(digest);
            tracing::info!(%digest, "took the lease on {REMOTE_SOURCE}: downloading for the fleet");
            return Ok(None);
        }
        tracing::info!(%digest, holder, "another host is downloading it: waiting for {REMOTE_SOURCE}");
        Ok(Some(expires))
    }

    /// Poll until the object is there (`Look`), the lease is released
    /// (`None`), or it expires or the wait's deadline passes.
    async fn watch_lease(
        &self,
        digest: Digest,
        expires: u64,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Option<Waited> {
        let (object, lease) = (self.object_path(&digest), self.lease_path(&digest));
        while Instant::now() < deadline && unix_now() < expires {
            tokio::select! {
                _ = cancel.cancelled() => return Some(Waited::Shutdown),
                _ = tokio::time::sleep(self.settings.lease_poll) => {}
            }
            match self.store.head(&object).await {
                Ok(_) => return Some(Waited::Look),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    self.rule_out(&digest, &e);
                    return Some(Waited::DownloadHere);
                }
            }
            if let Err(object_store::Error::NotFound { .. }) = self.store.head(&lease).await {
                return None;
            }
        }
        tracing::info!(%digest, "the lease on {REMOTE_SOURCE} ran out: downloading here");
        Some(Waited::DownloadHere)
    }

    /// Delete the lease on `digest` if this daemon holds it (its object is
    /// uploaded, or its download failed). In the background.
    pub fn release_lease(self: &std::sync::Arc<Self>, digest: Digest) {
        let held = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest);
        if held {
            let remote = std::sync::Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = remote.store.delete(&remote.lease_path(&digest)).await {
                    tracing::warn!(%digest, "cannot release the lease on {REMOTE_SOURCE} (it expires on its own): {e}");
                }
            });
        }
    }
}
