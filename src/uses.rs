//! The last-use record of the cache: when each object was last delivered,
//! and the paths it was delivered as (the newest [`PATHS_KEPT`], newest
//! first).
//!
//! ```text
//! <cache>/sha256-v1/ab/<hex>      its mtime is the object's last use
//! <cache>/uses-v1.sqlite          (digest, path, last_used) per name
//! <cache>/uses-v1.sqlite-wal,-shm SQLite's write-ahead log and its index
//! ```
//!
//! The time of the last use is the object's own mtime: it is set when the
//! object is published (or imported), and again, to the time of the
//! delivery, after each delivery from the cache. A delivery of an object
//! just downloaded leaves it as it is: its publish set it moments before. The directory stays the one truth that
//! `chitd cache ls`, `chitd cache gc` and a person (`ls -lt`, `find
//! -mtime`, `touch`) all read. The names are kept in a small SQLite
//! database in WAL mode: the daemon writes a batch of uses in one
//! transaction while `chitd cache ls` or `gc` read (or `gc` forgets the
//! objects it removed) from another process, each seeing whole batches.
//!
//! The daemon never writes on its hot path: a delivery's commit hands its
//! use to a [`Recorder`] (a channel send), whose thread writes them in
//! batches, at most every [`FLUSH_INTERVAL`] or [`FLUSH_BATCH`] uses, and
//! when it stops. A crash (or power cut) loses at most the batch not yet
//! written (and, with `synchronous=NORMAL`, the last transactions before
//! it): the objects then look as old as their previous use, never newer,
//! and a name may be missing from the list. Nothing else depends on it:
//! collection never removes an object a chit waiting in `request/` or
//! `fetch/` names, and a delivery that finds its object removed downloads
//! it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags, params};

use crate::chit::Digest;

/// The database's name in the cache directory.
pub const FILE: &str = "uses-v1.sqlite";
/// How many paths are kept per object, the newest.
pub const PATHS_KEPT: usize = 8;
/// Uses are written at most this long after the delivery...
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// ...or as soon as this many wait.
pub const FLUSH_BATCH: usize = 4096;
/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS uses (
        digest    BLOB    NOT NULL,
        path      TEXT    NOT NULL,
        last_used INTEGER NOT NULL,
        PRIMARY KEY (digest, path)
    ) WITHOUT ROWID;";

/// One delivery of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub digest: Digest,
    pub path: String,
    pub at: SystemTime,
    /// Whether the object's mtime is to be set to `at`: not for a delivery
    /// right after the object's download, whose publish set it.
    pub touch: bool,
}

/// What the record says about one object: its paths, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub paths: Vec<String>,
}

/// An error of the record, naming the database.
#[derive(Debug, thiserror::Error)]
#[error("the last-use record {}: {error}", path.display())]
pub struct UsesError {
    path: PathBuf,
    error: rusqlite::Error,
}

/// The database of the cache at a path.
pub struct Db {
    connection: Connection,
    path: PathBuf,
}

impl Db {
    /// Open the record of the cache at `cache`, creating it if `create`;
    /// `None` if it does not exist and is not to be created.
    pub fn open(cache: &Path, create: bool) -> Result<Option<Db>, UsesError> {
        let path = cache.join(FILE);
        if !create && !path.exists() {
            return Ok(None);
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let wrap = |error| UsesError {
            path: path.clone(),
            error,
        };
        let connection = Connection::open_with_flags(&path, flags).map_err(wrap)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(wrap)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        connection.execute_batch(SCHEMA).map_err(wrap)?;
        Ok(Some(Db { connection, path }))
    }

    fn wrap(&self, error: rusqlite::Error) -> UsesError {
        UsesError {
            path: self.path.clone(),
            error,
        }
    }

    /// Write a batch of uses in one transaction: each (digest, path) keeps
    /// its newest time, and each digest its [`PATHS_KEPT`] newest paths.
    pub fn record(&mut self, uses: &[Use]) -> Result<(), UsesError> {
        let mut newest: HashMap<(&Digest, &str), i64> = HashMap::new();
        for one in uses {
            let at = millis(one.at);
            let slot = newest.entry((&one.digest, &one.path)).or_insert(at);
            *slot = (*slot).max(at);
        }
        let result = (|| {
            let transaction = self.connection.transaction()?;
            {
                let mut upsert = transaction.prepare_cached(
                    "INSERT INTO uses (digest, path, last_used) VALUES (?1, ?2, ?3)
                     ON CONFLICT (digest, path)
                     DO UPDATE SET last_used = max(last_used, excluded.last_used)",
                )?;
                for ((digest, path), at) in &newest {
                    upsert.execute(params![&digest.as_bytes()[..], path, at])?;
                }
                let mut prune = transaction.prepare_cached(
                    "DELETE FROM uses WHERE digest = ?1 AND path NOT IN
                     (SELECT path FROM uses WHERE digest = ?1
                      ORDER BY last_used DESC, path LIMIT ?2)",
                )?;
                let mut digests: Vec<&Digest> = newest.keys().map(|(digest, _)| *digest).collect();
                digests.sort_unstable();
                digests.dedup();
                for digest in digests {
                    prune.execute(params![&digest.as_bytes()[..], PATHS_KEPT as i64])?;
                }
            }
            transaction.commit()
        })();
        result.map_err(|e| self.wrap(e))
    }

    /// Every object's names.
    pub fn names(&self) -> Result<HashMap<Digest, Names>, UsesError> {
        let result = (|| {
            let mut query = self
                .connection
                .prepare("SELECT digest, path FROM uses ORDER BY digest, last_used DESC, path")?;
            let mut rows = query.query([])?;
            let mut names: HashMap<Digest, Names> = HashMap::new();
            while let Some(row) = rows.next()? {
                let bytes: Vec<u8> = row.get(0)?;
                let Ok(bytes) = <[u8; 32]>::try_from(bytes) else {
                    continue;
                };
                let entry = names.entry(Digest::from_bytes(bytes)).or_default();
                entry.paths.push(row.get(1)?);
            }
            Ok(names)
        })();
        result.map_err(|e| self.wrap(e))
    }

    /// Forget the objects of `digests` (removed from the cache).
    pub fn forget(&mut self, digests: &[Digest]) -> Result<(), UsesError> {
        let result = (|| {
            let transaction = self.connection.transaction()?;
            {
                let mut delete =
                    transaction.prepare_cached("DELETE FROM uses WHERE digest = ?1")?;
                for digest in digests {
                    delete.execute(params![&digest.as_bytes()[..]])?;
                }
            }
            transaction.commit()
        })();
        result.map_err(|e| self.wrap(e))
    }
}

/// Milliseconds since the epoch (0 before it).
fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Set the mtime of the object at `path` to `at`, its last use. An object
/// removed meanwhile is no error.
pub fn touch(path: &Path, at: SystemTime) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_OMIT, utimensat};
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: since.subsec_nanos().into(),
        },
    };
    match utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(crate::durable::with_path(e.into(), "touching", path)),
    }
}

/// The recorder's database, opened when the first batch is written.
struct LazyDb {
    cache: PathBuf,
    db: Option<Db>,
    /// It could not be opened (logged once): not tried again.
    failed: bool,
}

impl LazyDb {
    fn get(&mut self) -> Option<&mut Db> {
        if self.db.is_none() && !self.failed {
            match Db::open(&self.cache, true) {
                Ok(db) => self.db = db,
                Err(e) => {
                    tracing::error!("the paths objects are delivered as are not recorded: {e}");
                    self.failed = true;
                }
            }
        }
        self.db.as_mut()
    }
}

/// What the recorder's thread is asked to do.
enum Message {
    /// The uses of one group commit.
    Uses(Vec<Use>),
    /// Write what waits now, then answer.
    Flush(mpsc::SyncSender<()>),
}

/// The daemon's side of the record: [`Recorder::record`] queues a use;
/// a thread of its own writes the queue in batches (see the module doc),
/// and everything left when the recorder is dropped.
pub struct Recorder {
    sender: Option<Sender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Record the uses of the objects of `objects` (the cache's
    /// `sha256-v1/`), the names in the record of the cache at `cache`
    /// (made with the first batch: a cache nothing was delivered from has
    /// none). A record that cannot be opened is logged; the uses are then
    /// only written to the objects' mtimes.
    pub fn start(cache: &Path, objects: PathBuf) -> Recorder {
        let db = LazyDb {
            cache: cache.to_path_buf(),
            db: None,
            failed: false,
        };
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("chitd-uses".into())
            .spawn(move || write_batches(db, &objects, &receiver));
        match thread {
            Ok(thread) => Recorder {
                sender: Some(sender),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::error!("cannot start the thread that records last uses: {e}");
                Recorder {
                    sender: None,
                    thread: None,
                }
            }
        }
    }

    /// Queue one delivery of `digest` as `path` from the cache, now.
    pub fn record(&self, digest: Digest, path: &str) {
        self.record_all([(digest, path, true)]);
    }

    /// Queue deliveries (a group commit's), now: one message for all, so
    /// the writing thread is woken once for them, not once each. Each is
    /// a digest, the path it was delivered as, and whether to touch the
    /// object ([`Use::touch`]).
    pub fn record_all<'a>(&self, uses: impl IntoIterator<Item = (Digest, &'a str, bool)>) {
        if let Some(sender) = &self.sender {
            let at = SystemTime::now();
            let uses: Vec<Use> = uses
                .into_iter()
                .map(|(digest, path, touch)| Use {
                    digest,
                    path: path.to_owned(),
                    at,
                    touch,
                })
                .collect();
            if !uses.is_empty() {
                let _ = sender.send(Message::Uses(uses));
            }
        }
    }

    /// Write every use queued so far, and wait until it is written.
    pub fn flush(&self) {
        let Some(sender) = &self.sender else {
            return;
        };
        let (done, written) = mpsc::sync_channel(1);
        if sender.send(Message::Flush(done)).is_ok() {
            let _ = written.recv();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The thread writes what is left once the channel closes.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The recorder's thread: gather uses, write them (see [`write`]).
fn write_batches(mut db: LazyDb, objects: &Path, receiver: &Receiver<Message>) {
    let mut batch: Vec<Use> = Vec::new();
    let mut since: Option<Instant> = None;
    loop {
        let message = match since {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => {
                let left = FLUSH_INTERVAL.saturating_sub(since.elapsed());
                receiver.recv_timeout(left)
            }
        };
        match message {
            Ok(Message::Uses(uses)) => {
                since.get_or_insert_with(Instant::now);
                batch.extend(uses);
                if batch.len() < FLUSH_BATCH {
                    continue;
                }
            }
            Ok(Message::Flush(done)) => {
                write(&mut db, objects, &mut batch);
                since = None;
                let _ = done.send(());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                write(&mut db, objects, &mut batch);
                return;
            }
        }
        write(&mut db, objects, &mut batch);
        since = None;
    }
}

/// Write a batch: each object's mtime set to its newest use, then the
/// names. Errors are logged; the batch is dropped either way.
fn write(db: &mut LazyDb, objects: &Path, batch: &mut Vec<Use>) {
    if batch.is_empty() {
        return;
    }
    let mut newest: HashMap<Digest, SystemTime> = HashMap::new();
    for one in batch.iter().filter(|one| one.touch) {
        let slot = newest.entry(one.digest).or_insert(one.at);
        *slot = (*slot).max(one.at);
    }
    for (digest, at) in &newest {
        let hex = digest.to_hex();
        if let Err(e) = touch(&objects.join(&hex[..2]).join(&hex), *at) {
            tracing::warn!(digest = %digest, "cannot record the object's last use in its mtime: {e}");
        }
    }
    if let Some(db) = db.get()
        && let Err(e) = db.record(batch)
    {
        tracing::warn!(
            uses = batch.len(),
            "cannot record the paths objects were delivered as: {e}"
        );
    }
    tracing::debug!(
        uses = batch.len(),
        objects = newest.len(),
        "recorded last uses"
    );
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest::from_bytes([byte; 32])
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn one(byte: u8, path: &str, seconds: u64) -> Use {
        Use {
            digest: digest(byte),
            path: path.into(),
            at: at(seconds),
            touch: true,
        }
    }

    #[test]
    fn paths_are_kept_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap().unwrap();
        let mut uses: Vec<Use> = (0..12).map(|i| one(1, &format!("p{i:02}"), i)).collect();
        uses.push(one(2, "other", 5));
        db.record(&uses[..6]).unwrap();
        db.record(&uses[6..]).unwrap();
        // An older use of a kept path does not make it older.
        db.record(&[one(1, "p11", 0)]).unwrap();
        // A new use of a dropped path brings it back, first.
        db.record(&[one(1, "p00", 20)]).unwrap();
        let names = db.names().unwrap();
        let expected: Vec<String> = ["p00", "p11", "p10", "p09", "p08", "p07", "p06", "p05"]
            .map(String::from)
            .into();
        assert_eq!(names[&digest(1)].paths, expected);
        assert_eq!(names[&digest(2)].paths, ["other"]);
        db.forget(&[digest(1)]).unwrap();
        assert_eq!(db.names().unwrap().keys().collect::<Vec<_>>(), [&digest(2)]);
    }

    #[test]
    fn a_missing_record_is_not_made_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Db::open(dir.path(), false).unwrap().is_none());
        assert!(!dir.path().join(FILE).exists());
    }

    #[test]
    fn the_recorder_touches_objects_and_writes_names_when_flushed_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let objects = dir.path().join("sha256-v1");
        let object = |byte: u8| {
            let hex = digest(byte).to_hex();
            let path = objects.join(&hex[..2]).join(&hex);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
            let old = SystemTime::now() - Duration::from_secs(86_400);
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
            path
        };
        let (first, second) = (object(1), object(2));
        let recorder = Recorder::start(dir.path(), objects.clone());
        let before = SystemTime::now() - Duration::from_secs(1);
        recorder.record(digest(1), "a/one");
        recorder.flush();
        let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
        assert!(mtime(&first) >= before, "touched when flushed");
        assert!(mtime(&second) < before);
        // A delivery right after a download leaves the mtime alone, but
        // names the path.
        recorder.record_all([(digest(2), "fresh", false)]);
        recorder.flush();
        assert!(mtime(&second) < before, "not touched for a download");
        recorder.record(digest(2), "two");
        // A removed object is no error.
        recorder.record(digest(3), "three");
        drop(recorder);
        assert!(mtime(&second) >= before, "touched when dropped");
        let names = Db::open(dir.path(), false)
            .unwrap()
            .unwrap()
            .names()
            .unwrap();
        assert_eq!(names[&digest(1)].paths, ["a/one"]);
        let mut paths = names[&digest(2)].paths.clone();
        paths.sort();
        assert_eq!(paths, ["fresh", "two"]);
    }
}
