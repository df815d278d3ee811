//! The write path: published objects uploaded in the background.
//!
//! Each pending upload has a record, `<cache>/upload-v1/<hex>.json`,
//! written (`durable::write_atomic`) before the upload starts and removed
//! once the object is in the store: an upload a crash, a shutdown or an
//! unreachable store cut is tried again at the next start and every
//! [`Settings::rule_out_for`] while the daemon runs. A multipart upload
//! records its id when created and each part's ETag once the store has
//! it, so it resumes without sending those parts again; one older than
//! [`Settings::abort_after`] is aborted and started anew. An object
//! already in the store is never sent (HEAD first, then `If-None-Match:
//! *` on a single `PUT`). At most [`Settings::uploads_at_once`] run at
//! once, each at most [`Settings::upload_rate`] bytes per second.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[cfg(doc)]
use super::Settings;
use super::{Conditional, REMOTE_SOURCE, Remote};
use crate::chit::Digest;

/// One object to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub digest: Digest,
    pub size: u64,
    /// The published cache object.
    pub object: PathBuf,
}

/// The durable state of one pending upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub size: u64,
    pub object: PathBuf,
    pub multipart: Option<Multipart>,
}

/// A multipart upload under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Multipart {
    pub upload_id: String,
    /// Unix seconds.
    pub created: u64,
    pub part_size: u64,
    /// The ETags of parts 1, 2, … that the store has.
    pub parts: Vec<String>,
}

/// Why an upload did not finish (it stays pending).
type Failed = String;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The uploader: probe the store, resume the pending uploads, then take
/// new ones as they come, and retry the pending ones now and then.
pub(super) async fn serve(
    remote: Arc<Remote>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Upload>,
) {
    let prober = Arc::clone(&remote);
    tokio::spawn(async move { prober.probe().await });
    let uploader = Uploader {
        remote: Arc::clone(&remote),
        slots: Arc::new(Semaphore::new(remote.settings.uploads_at_once.max(1))),
        running: Arc::default(),
    };
    let period = remote.settings.rule_out_for.max(Duration::from_secs(1));
    let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    uploader.resume_pending().await;
    loop {
        tokio::select! {
            upload = queue.recv() => match upload {
                Some(upload) => uploader.add(upload).await,
                None => return,
            },
            _ = retry.tick() => {
                if remote.conditional() == Conditional::Unknown {
                    remote.probe().await;
                }
                uploader.resume_pending().await;
            }
        }
    }
}

#[derive(Clone)]
struct Uploader {
    remote: Arc<Remote>,
    slots: Arc<Semaphore>,
    /// Digests being uploaded now.
    running: Arc<Mutex<HashSet<Digest>>>,
}

impl Uploader {
    /// Record a new upload durably (a record already there, perhaps of a
    /// multipart upload under way, is kept), then start it.
    async fn add(&self, upload: Upload) {
        let record = Record {
            size: upload.size,
            object: upload.object.clone(),
            multipart: None,
        };
        let (dir, digest) = (self.remote.upload_dir.clone(), upload.digest);
        let saved = blocking(move || match record_path(&dir, &digest).try_exists() {
            Ok(true) => Ok(()),
            _ => save(&dir, &digest, &record),
        });
        if let Err(e) = saved.await {
            tracing::warn!(%digest, "cannot record the upload to {REMOTE_SOURCE}, so it is not made: {e}");
            return;
        }
        self.spawn(upload.digest);
    }

    /// Start every pending upload not running.
    async fn resume_pending(&self) {
        let dir = self.remote.upload_dir.clone();
        let pending = blocking(move || pending(&dir)).await;
        if !pending.is_empty() {
            let count = pending.len();
            tracing::info!(
                count,
                "uploads to {REMOTE_SOURCE} pending (upload-v1/): starting those not under way"
            );
        }
        for digest in pending {
            self.spawn(digest);
        }
    }

    fn spawn(&self, digest: Digest) {
        if !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest)
        {
            return;
        }
        let uploader = self.clone();
        tokio::spawn(async move {
            let _slot = uploader.slots.acquire().await;
            let remote = &uploader.remote;
            let metrics = &crate::metrics::METRICS;
            metrics.upload_started();
            let uploaded = remote.upload(digest).await;
            match &uploaded {
                Ok(Some(bytes)) => metrics.upload_ended("uploaded", *bytes),
                Ok(None) => metrics.upload_ended("skipped", 0),
                Err(_) => metrics.upload_ended("failed", 0),
            }
            match uploaded {
                Ok(_) => {
                    let dir = remote.upload_dir.clone();
                    let _ =
                        blocking(move || std::fs::remove_file(record_path(&dir, &digest))).await;
                    remote.release_lease(digest);
                }
                Err(why) => {
                    tracing::warn!(%digest, "upload to {REMOTE_SOURCE} not done (tried again later): {why}")
                }
            }
            uploader
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest);
        });
    }
}

impl Remote {
    /// Upload `digest` as its record says: done when the store has it.
    /// `Some(size)` if this sent it, `None` if there was nothing to send.
    async fn upload(&self, digest: Digest) -> Result<Option<u64>, Failed> {
        let dir = self.upload_dir.clone();
        let record = blocking(move || load(&dir, &digest))
            .await
            .map_err(|e| format!("cannot read its record: {e}"))?;
        let object = record.object.clone();
        if let Ok(false) = blocking(move || object.try_exists()).await {
            tracing::info!(%digest, "left the cache before its upload to {REMOTE_SOURCE}: not uploaded");
            return Ok(None);
        }
        let path = self.object_path(&digest);
        match self.store.head(&path).await {
            Ok(_) => {
                tracing::debug!(%digest, "already in {REMOTE_SOURCE}");
                return Ok(None);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let (started, size) = (Instant::now(), record.size);
        if size < self.settings.multipart_threshold {
            self.put_whole(&path, &record).await?;
        } else {
            self.put_parts(digest, &path, record).await?;
        }
        let rate = (size as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64;
        tracing::info!(%digest, size, rate, "uploaded to {REMOTE_SOURCE}");
        Ok(Some(size))
    }

    /// One `PUT` with `If-None-Match: *` (or a HEAD just before where the
    /// store ignores it).
    async fn put_whole(
        &self,
        path: &object_store::path::Path,
        record: &Record,
    ) -> Result<(), Failed> {
        let object = record.object.clone();
        let bytes = blocking(move || std::fs::read(&object))
            .await
            .map_err(|e| format!("cannot read {}: {e}", record.object.display()))?;
        if bytes.len() as u64 != record.size {
            return Err(format!(
                "{} is not {} bytes",
                record.object.display(),
                record.size
            ));
        }
        let started = Instant::now();
        let options = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.pace(record.size, started).await;
        Ok(())
    }

    /// A multipart upload, resumed from its record.
    async fn put_parts(
        &self,
        digest: Digest,
        path: &object_store::path::Path,
        mut record: Record,
    ) -> Result<(), Failed> {
        let multipart = match record.multipart.take() {
            Some(old)
                if unix_now().saturating_sub(old.created) > self.settings.abort_after.as_secs() =>
            {
                tracing::info!(%digest, "aborting a multipart upload older than {:?}", self.settings.abort_after);
                let _ = self.store.abort_multipart(path, &old.upload_id).await;
                None
            }
            kept => kept,
        };
        let multipart = match multipart {
            Some(resumed) => {
                tracing::info!(%digest, parts = resumed.parts.len(), "resuming the multipart upload to {REMOTE_SOURCE}");
                resumed
            }
            None => Multipart {
                upload_id: self
                    .store
                    .create_multipart(path)
                    .await
                    .map_err(|e| e.to_string())?,
                created: unix_now(),
                part_size: self.settings.part_size.max(1),
                parts: Vec::new(),
            },
        };
        record.multipart = Some(multipart);
        self.save_record(digest, &record).await?;
        self.send_parts(digest, path, &mut record).await?;
        let Some(multipart) = &record.multipart else {
            return Err("no multipart upload".into());
        };
        let parts = (multipart.parts.iter())
            .map(|etag| PartId {
                content_id: etag.clone(),
            })
            .collect();
        if let Err(e) = self
            .store
            .complete_multipart(path, &multipart.upload_id, parts)
            .await
        {
            // The store may have forgotten the upload: start anew next time.
            record.multipart = None;
            let _ = self.save_record(digest, &record).await;
            return Err(format!("cannot complete the multipart upload: {e}"));
        }
        Ok(())
    }

    /// Send the parts the record does not have yet, recording each.
    async fn send_parts(
        &self,
        digest: Digest,
        path: &object_store::path::Path,
        record: &mut Record,
    ) -> Result<(), Failed> {
        let size = record.size;
        loop {
            let Some(multipart) = record.multipart.as_mut() else {
                return Err("no multipart upload".into());
            };
            let index = multipart.parts.len() as u64;
            let start = index * multipart.part_size;
            if start >= size {
                return Ok(());
            }
            let length = multipart.part_size.min(size - start);
            let object = record.object.clone();
            let bytes = blocking(move || read_at(&object, start, length))
                .await
                .map_err(|e| format!("cannot read {}: {e}", record.object.display()))?;
            let started = Instant::now();
            let id = multipart.upload_id.clone();
            let part = self
                .store
                .put_part(path, &id, index as usize, PutPayload::from(bytes))
                .await;
            match part {
                Ok(part) => multipart.parts.push(part.content_id),
                Err(e) => return Err(format!("part {} not sent: {e}", index + 1)),
            }
            self.save_record(digest, record).await?;
            self.pace(length, started).await;
        }
    }

    async fn save_record(&self, digest: Digest, record: &Record) -> Result<(), Failed> {
        let (dir, record) = (self.upload_dir.clone(), record.clone());
        blocking(move || save(&dir, &digest, &record))
            .await
            .map_err(|e| format!("cannot record the upload's progress: {e}"))
    }

    /// After sending `bytes` since `started`: wait as long as
    /// [`Settings::upload_rate`] asks.
    async fn pace(&self, bytes: u64, started: Instant) {
        let rate = self.settings.upload_rate;
        if rate > 0 {
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
    }
}

fn read_at(path: &Path, start: u64, length: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = vec![0; usize::try_from(length).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

pub fn record_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(format!("{digest}.json"))
}

fn save(dir: &Path, digest: &Digest, record: &Record) -> std::io::Result<()> {
    crate::durable::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::durable::write_atomic(&record_path(dir, digest), &text)
}

fn load(dir: &Path, digest: &Digest) -> std::io::Result<Record> {
    let mut text = Vec::new();
    std::fs::File::open(record_path(dir, digest))?.read_to_end(&mut text)?;
    serde_json::from_slice(&text).map_err(std::io::Error::other)
}

/// The digests with a record in `dir` (none if it does not exist).
pub(super) fn pending(dir: &Path) -> Vec<Digest> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    (entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect()
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_pending_lists_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest: Digest = "ab".repeat(32).parse().expect("digest");
        let record = Record {
            size: 3 << 20,
            object: "/cache/sha256-v1/ab/x".into(),
            multipart: Some(Multipart {
                upload_id: "id-1".into(),
                created: 1_700_000_000,
                part_size: 1 << 20,
                parts: vec!["\"e1\"".into(), "\"e2\"".into()],
            }),
        };
        let uploads = dir.path().join("upload-v1");
        save(&uploads, &digest, &record).expect("save");
        assert_eq!(load(&uploads, &digest).expect("load"), record);
        std::fs::write(uploads.join("junk.json"), b"{}").expect("junk");
        assert_eq!(pending(&uploads), vec![digest]);
        assert!(pending(&dir.path().join("none")).is_empty());
    }
}
