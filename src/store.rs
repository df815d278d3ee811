//! The content-addressed cache shared by every consumer.
//!
//! ```text
//! <cache>/
//!   lock                     flock'd by the running daemon (one per cache)
//!   sha256-v1/ab/<hex>       complete, verified objects, named by digest (0444)
//!   quarantine/<hex>.<time>  objects found corrupt, kept for a person to look at
//!   partial-v1/<hex>-<size>.part      downloads in progress (see `partial`;
//!   partial-v1/<hex>-<size>.progress  small ones are held in memory instead)
//! ```
//!
//! An object appears under its final name only by `rename(2)` of a complete,
//! verified, fdatasync'd, read-only file (a `.part`, or a temporary beside the final
//! name for a download held in memory), so a name in `sha256-v1/` always
//! holds exactly the bytes of its digest. The directory is fsync'd later, in
//! a background round (`daemon::CACHE_SYNC_INTERVAL`): a crash before it can
//! lose a name, never the content under one. The
//! layout is versioned in the directory names so a future layout can live
//! beside this one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::chit::Digest;
use crate::dir::FileId;
use crate::durable::{Unnamed, with_path, write_then_rename_mode, write_unnamed};
use crate::partial::{Complete, Partial};

/// Orphaned partial downloads (no chit has asked for them since) are kept
/// this long, in case the chit comes back (e.g. `mv fail/X request/X`).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    objects: PathBuf,
    partials: PathBuf,
    /// Which of the 256 `sha256-v1/ab/` directories this run has made sure
    /// exist (saves a `mkdir` and a `stat` per object).
    fanout_made: [std::sync::atomic::AtomicBool; 256],
    /// Objects known to match their digest, with their size: published by
    /// this run, or checked by [`Store::lookup`]. (A size is only a hint of
    /// integrity: deliveries hash what they copy.)
    intact: std::sync::Mutex<HashMap<Digest, u64>>,
    _lock: File,
}

impl Store {
    /// Open (creating) the cache at `root`, take its lock, and remove the
    /// temporary files a crash may have left.
    pub fn open(root: &Path) -> io::Result<Store> {
        let objects = root.join("sha256-v1");
        let partials = root.join("partial-v1");
        for dir in [&objects, &partials] {
            crate::durable::create_dir_all(dir)?;
        }
        let lock_path = root.join("lock");
        let lock = File::create(&lock_path).map_err(|e| with_path(e, "creating", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "cache {} is in use by another chitd (its lock file is held)",
                        root.display()
                    ),
                )
            },
        )?;
        let store = Store {
            root: root.to_path_buf(),
            objects,
            partials,
            fanout_made: std::array::from_fn(|_| std::sync::atomic::AtomicBool::new(false)),
            intact: std::sync::Mutex::new(HashMap::new()),
            _lock: lock,
        };
        store.remove_temporaries()?;
        store.make_fanout()?;
        Ok(store)
    }

    /// Make the 256 fan-out directories of `sha256-v1/` that a new cache
    /// lacks, with one fsync of `sha256-v1/` for them all: a first run then
    /// publishes into directories that exist, instead of its first
    /// publishes each making one and syncing their parent on the way.
    fn make_fanout(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let mut made = false;
        for (byte, flag) in self.fanout_made.iter().enumerate() {
            let dir = self.objects.join(format!("{byte:02x}"));
            match fs::create_dir(&dir) {
                Ok(()) => made = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(with_path(e, "creating", &dir)),
            }
            flag.store(true, Ordering::Relaxed);
        }
        if made {
            crate::durable::sync_dir(&self.objects)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn partials_dir(&self) -> &Path {
        &self.partials
    }

    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.objects.join(&hex[..2]).join(hex)
    }

    /// What the cache holds for a chit of `digest` and `size`.
    ///
    /// An object of another size either proves the chit's size wrong (it
    /// was verified when published: a file has one size) or was damaged
    /// behind chitd's back. Its digest is checked once per run to tell
    /// which: damaged, it is removed and the chit misses; intact, it stays
    /// (a chit cannot evict a good object by naming a wrong size).
    pub fn lookup(&self, digest: &Digest, size: u64) -> io::Result<Lookup> {
        let path = self.object_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.len() == size => Ok(Lookup::Hit(path)),
            Ok(meta) => {
                let hashed = match self.is_intact(digest, &path, meta.len()) {
                    Ok(Intact::Yes) => return Ok(Lookup::OtherSize(meta.len())),
                    Ok(Intact::No(hashed)) => hashed,
                    // Removed meanwhile (by a lookup like this one).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
                    Err(e) => return Err(e),
                };
                // Quarantine what was hashed, not a good object published
                // under the name while it was (a big object takes a while).
                if self.quarantine(digest, hashed)?.is_none() {
                    return match fs::metadata(&path) {
                        Ok(meta) if meta.len() == size => Ok(Lookup::Hit(path)),
                        _ => Ok(Lookup::Miss),
                    };
                }
                Ok(Lookup::Miss)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lookup::Miss),
            Err(e) => Err(with_path(e, "inspecting", &path)),
        }
    }

    /// Whether the object at `path` has the bytes of `digest`: known for
    /// the objects this run published or checked, else hashed (once). Not
    /// intact: the device and inode of the file that was hashed.
    fn is_intact(&self, digest: &Digest, path: &Path, size: u64) -> io::Result<Intact> {
        if self.intact_lock().get(digest) == Some(&size) {
            return Ok(Intact::Yes);
        }
        let file = File::open(path).map_err(|e| with_path(e, "opening", path))?;
        let hashed = file
            .metadata()
            .map(|m| FileId::of(&m))
            .map_err(|e| with_path(e, "inspecting", path))?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        crate::partial::hash_all(file, &mut hasher).map_err(|e| with_path(e, "reading", path))?;
        if Digest::from_bytes(sha2::Digest::finalize(hasher).into()) != *digest {
            return Ok(Intact::No(hashed));
        }
        self.intact_lock().insert(*digest, size);
        Ok(Intact::Yes)
    }

    /// Whether this run published `digest` (or checked its object): a
    /// lookup that missed it may have raced its publish.
    pub fn published_or_checked(&self, digest: &Digest) -> bool {
        self.intact_lock().contains_key(digest)
    }

    /// Move the object of `digest` to `quarantine/`, found corrupt when it
    /// was the file `object`: unless another file was published under its
    /// name meanwhile (then `None`, and the new one stays). Logged.
    pub fn quarantine(&self, digest: &Digest, object: FileId) -> io::Result<Option<PathBuf>> {
        self.intact_lock().remove(digest);
        let moved = quarantine(&self.root, &self.object_path(digest), object)?;
        if let Some(moved) = &moved {
            tracing::warn!(digest = %digest, quarantined = %moved.display(), "a cached object does not match its sha256: moved to quarantine");
        }
        Ok(moved)
    }

    fn intact_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u64>> {
        self.intact.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partial download of `digest`: held in memory when small, else
    /// opened on disk, resuming from its record (see `partial`).
    pub fn partial(&self, digest: Digest, size: u64) -> io::Result<Partial> {
        Partial::open_or_hold(&self.partials, digest, size)
    }

    /// Publish a complete, verified partial under its digest: a `.part` is
    /// fdatasync'd by `into_complete`, then renamed; bytes held in memory
    /// are written to an unnamed file in the fan-out directory, fsync'd,
    /// then linked under the final name (`durable::write_unnamed`; where the
    /// file system makes no unnamed files, or an object is there already,
    /// a dot-named temporary renamed over it), and handed back for
    /// delivery.
    ///
    /// The rename is made durable by the caller, with the other cache
    /// directories of a round (one fsync per directory for many objects).
    /// Until then a crash may lose the name, never the content under it:
    /// the worst case is downloading the object again.
    pub fn publish(&self, partial: Partial, digest: &Digest) -> io::Result<Published> {
        self.start_publish(partial, digest)?.finish(self)
    }

    /// [`Store::publish`]'s first half: a `.part` is published whole; bytes
    /// held in memory are written to an unnamed file and left on their way
    /// to disk, for [`Publishing::finish`] to flush and name. A batch of
    /// small downloads started this way, then finished, shares its flushes
    /// (see [`crate::durable::Unnamed::link`]).
    pub fn start_publish(&self, partial: Partial, digest: &Digest) -> io::Result<Publishing> {
        let path = self.object_path(digest);
        let dir = path.parent().unwrap_or(&self.objects);
        let size = partial.total();
        let stage = match partial.into_complete()? {
            Complete::File { part, record } => {
                let published = read_only(&part)
                    .and_then(|()| self.in_fanout_dir(digest, dir, || fs::rename(&part, &path)))
                    .map_err(|e| with_path(e, "publishing", &path));
                if published.is_err() {
                    // Verified bytes that cannot be published: on a full
                    // disk they are in everyone's way; the next download
                    // starts over.
                    let _ = fs::remove_file(&part);
                }
                // Published or given up: the record resumes nothing now (a
                // crash before this leaves it to the next start's sweep).
                if let Some(record) = record
                    && let Err(e) = fs::remove_file(&record)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %record.display(), "cannot remove a finished download's progress record: {e}");
                }
                published?;
                Stage::Named
            }
            Complete::Memory(bytes) => {
                let unnamed =
                    self.in_fanout_dir(digest, dir, || write_unnamed(&path, &bytes, OBJECT_MODE))?;
                Stage::Written { bytes, unnamed }
            }
        };
        Ok(Publishing {
            digest: *digest,
            size,
            path,
            stage,
        })
    }

    /// Run `op`, which creates a name in `dir`, the digest's directory of
    /// the 256-way fan-out: made (`mkdir -p`) the first time this run needs
    /// it, and again if `op` finds it gone (removed behind chitd's back).
    fn in_fanout_dir<T>(
        &self,
        digest: &Digest,
        dir: &Path,
        op: impl Fn() -> io::Result<T>,
    ) -> io::Result<T> {
        use std::sync::atomic::Ordering;
        let made = &self.fanout_made[usize::from(digest.as_bytes()[0])];
        let make = || -> io::Result<()> {
            match fs::create_dir(dir) {
                // A new name, made durable: the objects published into it are.
                Ok(()) => crate::durable::sync_dir(&self.objects)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                // `sha256-v1/` itself was removed behind chitd's back.
                Err(_) => crate::durable::create_dir_all(dir)?,
            }
            made.store(true, Ordering::Relaxed);
            Ok(())
        };
        if !made.load(Ordering::Relaxed) {
            make()?;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.is_dir() => {
                make()?;
                op()
            }
            result => result,
        }
    }

    /// Remove dot-named temporaries (torn atomic writes) everywhere in the
    /// cache; and the partial downloads nothing can resume: a `.part`
    /// without its progress record (cut before its first checkpoint), a
    /// record without its `.part` (left by a crash right after a publish),
    /// any of a digest already in the cache (of another size, known wrong:
    /// a download stopped for it). Partials that only look orphaned are
    /// left to [`Store::remove_orphaned_partials`]: a chit in `fetch/` may
    /// be about to resume one.
    fn remove_temporaries(&self) -> io::Result<()> {
        let entries = walk(&self.root)?;
        let partials: HashSet<&Path> = entries
            .iter()
            .filter(|entry| entry.parent() == Some(self.partials.as_path()))
            .map(PathBuf::as_path)
            .collect();
        let has = |path: &Path| partials.contains(path);
        for entry in &entries {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let in_partials = entry.parent() == Some(self.partials.as_path());
            let unresumable = in_partials
                && match entry.extension().and_then(|e| e.to_str()) {
                    Some("part") => !has(&entry.with_extension("progress")),
                    Some("progress") => !has(&entry.with_extension("part")),
                    _ => false,
                };
            let superseded = in_partials
                && name
                    .get(..64)
                    .and_then(|hex| Digest::parse_hex(hex).ok())
                    .is_some_and(|digest| self.object_path(&digest).is_file());
            if (name.starts_with('.') && name != ".") || unresumable || superseded {
                tracing::info!(path = %entry.display(), "removing leftover from an earlier run");
                fs::remove_file(entry).map_err(|e| with_path(e, "removing", entry))?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Remove the partial downloads (`.part` and progress record) that
    /// nothing has written for [`ORPHAN_GRACE`]. The daemon calls this
    /// when no chit is being worked on: every chit left in a `fetch/` has
    /// then had its turn, and one that wanted a partial resumed it (and so
    /// wrote to it). `spared(digest, size)` keeps the partials of
    /// downloads under way or waiting for a slot (for a sweep while busy).
    /// Returns how many partials were removed.
    pub fn remove_orphaned_partials(
        &self,
        spared: impl Fn(Digest, u64) -> bool,
    ) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut newest: std::collections::BTreeMap<PathBuf, SystemTime> = Default::default();
        for entry in
            fs::read_dir(&self.partials).map_err(|e| with_path(e, "reading", &self.partials))?
        {
            let entry = entry.map_err(|e| with_path(e, "reading", &self.partials))?;
            let path = entry.path();
            let is_partial = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("part" | "progress")
            );
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !is_partial
                || !metadata.is_file()
                || entry.file_name().as_encoded_bytes().starts_with(b".")
            {
                continue;
            }
            let written = metadata.modified().unwrap_or(now);
            let stem = path.with_extension("");
            let slot = newest.entry(stem).or_insert(written);
            *slot = (*slot).max(written);
        }
        let mut removed = 0;
        for (stem, written) in newest {
            if now.duration_since(written).unwrap_or_default() <= ORPHAN_GRACE
                || partial_key(&stem).is_some_and(|(digest, size)| spared(digest, size))
            {
                continue;
            }
            for path in [stem.with_extension("progress"), stem.with_extension("part")] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(with_path(e, "removing", &path)),
                }
            }
            tracing::info!(partial = %stem.display(), "removed a partial download no chit has asked for in {} days", ORPHAN_GRACE.as_secs() / 86_400);
            removed += 1;
        }
        Ok(removed)
    }
}

/// Cache objects are read-only: nothing writes one once it is published.
pub const OBJECT_MODE: u32 = 0o444;

/// Where corrupt objects are kept, in the cache directory.
pub const QUARANTINE_DIR: &str = "quarantine";

fn read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(OBJECT_MODE))
}

/// Move the file at `path` (an object of the cache at `root`) to
/// `<root>/quarantine/<name>.<time>`, if it is still the file `object`
/// (else `None`: something else was published under the name since it
/// was found corrupt). Never replaces an earlier quarantined file. Works
/// beside a running daemon: the rename is atomic, and a chit that looks
/// the object up meanwhile either copies it (and finds it corrupt) or
/// misses it.
pub fn quarantine(root: &Path, path: &Path, object: FileId) -> io::Result<Option<PathBuf>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if FileId::of(&meta) == object => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(e, "inspecting", path)),
    }
    let dir = root.join(QUARANTINE_DIR);
    crate::durable::create_dir_all(&dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let time = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut to = dir.join(format!("{name}.{time}"));
    for n in 1.. {
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            path,
            rustix::fs::CWD,
            &to,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(Some(to)),
            Err(rustix::io::Errno::EXIST) => to = dir.join(format!("{name}.{time}.{n}")),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(with_path(e.into(), "quarantining", path)),
        }
    }
    unreachable!("an unbounded range ends")
}

/// The digest and size a partial's path names (`<sha256>-<size>`, any
/// extension removed), if it names them.
fn partial_key(stem: &Path) -> Option<(Digest, u64)> {
    let name = stem.file_name()?.to_str()?;
    let (hex, size) = name.split_once('-')?;
    Some((Digest::parse_hex(hex).ok()?, size.parse().ok()?))
}

/// What [`Store::is_intact`] found.
enum Intact {
    Yes,
    /// Damaged: the file hashed.
    No(FileId),
}

/// What [`Store::lookup`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The object, of the chit's size.
    Hit(PathBuf),
    Miss,
    /// The object is intact and this many bytes: the chit's size is wrong.
    OtherSize(u64),
}

/// A cache object just published.
#[derive(Debug)]
pub struct Published {
    pub path: PathBuf,
    /// Its bytes, when the download was held in memory: its first waiter
    /// is delivered from them instead of reading the object back.
    pub bytes: Option<Vec<u8>>,
}

/// A verified download on its way into the cache ([`Store::start_publish`]).
#[derive(Debug)]
pub struct Publishing {
    digest: Digest,
    size: u64,
    path: PathBuf,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// Under its name already (a `.part` renamed into place).
    Named,
    /// Held in memory, and written to an unnamed file (`None` where the
    /// file system makes none).
    Written {
        bytes: Vec<u8>,
        unnamed: Option<Unnamed>,
    },
}

impl Publishing {
    /// Where the object is published.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its bytes, when they are held in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.stage {
            Stage::Named => None,
            Stage::Written { bytes, .. } => Some(bytes),
        }
    }

    /// [`Store::publish`]'s second half: the unnamed file fsync'd, then
    /// linked under the digest's name (where the file system makes no
    /// unnamed files, or an object is there already, a dot-named temporary
    /// renamed over it); handed back for delivery.
    pub fn finish(self, store: &Store) -> io::Result<Published> {
        let Publishing {
            digest,
            size,
            path,
            stage,
        } = self;
        let bytes = match stage {
            Stage::Named => None,
            Stage::Written { bytes, unnamed } => {
                let linked = match unnamed.map(Unnamed::link) {
                    Some(Ok(linked)) => linked,
                    // Its directory removed meanwhile: made again below.
                    Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => false,
                    Some(Err(e)) => return Err(e),
                    None => false,
                };
                if !linked {
                    // Replacing an object there (a corrupt one) takes a
                    // temporary and a rename.
                    let dir = path.parent().unwrap_or(&store.objects);
                    store.in_fanout_dir(&digest, dir, || {
                        write_then_rename_mode(&path, &bytes, OBJECT_MODE)
                    })?;
                }
                Some(bytes)
            }
        };
        store.intact_lock().insert(digest, size);
        Ok(Published { path, bytes })
    }
}

/// Every regular file under `root` (the cache is chitd's own: no symlinks
/// are expected, and none are followed).
fn walk(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| with_path(e, "reading", &dir))? {
            let entry = entry.map_err(|e| with_path(e, "reading", &dir))?;
            let kind = entry
                .file_type()
                .map_err(|e| with_path(e, "inspecting", &entry.path()))?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn publish_then_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::from_bytes(Sha256::digest(b"hello").into());
        assert_eq!(store.lookup(&digest, 5).unwrap(), Lookup::Miss);
        let mut partial = store.partial(digest, 5).unwrap();
        partial.append(bytes::Bytes::from_static(b"hello")).unwrap();
        assert_eq!(partial.finished_digest(), Some(digest));
        let path = store.publish(partial, &digest).unwrap().path;
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(store.lookup(&digest, 5).unwrap(), Lookup::Hit(path.clone()));
        // A chit of the wrong size does not evict the object.
        assert_eq!(store.lookup(&digest, 6).unwrap(), Lookup::OtherSize(5));
        assert_eq!(fs::read(&path).unwrap(), b"hello");
    }

    /// A small download's publish, begun, is no hit yet; finished, it is.
    #[test]
    fn a_publish_is_a_hit_only_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::from_bytes(Sha256::digest(b"hello").into());
        let mut partial = store.partial(digest, 5).unwrap();
        partial.append(bytes::Bytes::from_static(b"hello")).unwrap();
        let publishing = store.start_publish(partial, &digest).unwrap();
        assert_eq!(publishing.bytes(), Some(&b"hello"[..]));
        assert_eq!(store.lookup(&digest, 5).unwrap(), Lookup::Miss);
        let published = publishing.finish(&store).unwrap();
        assert_eq!(
            store.lookup(&digest, 5).unwrap(),
            Lookup::Hit(published.path)
        );
    }

    #[test]
    fn an_object_damaged_behind_chitds_back_is_checked_once_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::from_bytes(Sha256::digest(b"hello").into());
        let path = {
            let store = Store::open(dir.path()).unwrap();
            let mut partial = store.partial(digest, 5).unwrap();
            partial.append(bytes::Bytes::from_static(b"hello")).unwrap();
            assert_eq!(partial.finished_digest(), Some(digest));
            store.publish(partial, &digest).unwrap().path
        };
        // A new run has not checked it yet: an intact object of another
        // size is hashed, found intact, and kept.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&digest, 4).unwrap(), Lookup::OtherSize(5));
        assert!(path.exists());
        drop(store);
        fs::write(&path, b"hell").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&digest, 5).unwrap(), Lookup::Miss);
        assert!(!path.exists(), "the damaged object left sha256-v1/");
        let kept: Vec<_> = fs::read_dir(dir.path().join(QUARANTINE_DIR))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(kept, [b"hell"], "kept in quarantine/");
    }

    #[test]
    fn publish_from_disk_and_from_memory_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for size in [
            crate::partial::IN_MEMORY_MAX,
            crate::partial::IN_MEMORY_MAX + 1,
        ] {
            let data = vec![size as u8; size as usize];
            let digest = Digest::from_bytes(Sha256::digest(&data).into());
            let mut partial = store.partial(digest, size).unwrap();
            partial.append(bytes::Bytes::from(data.clone())).unwrap();
            assert_eq!(partial.finished_digest(), Some(digest));
            let published = store.publish(partial, &digest).unwrap();
            // Held in memory: the bytes come back for the first delivery.
            let in_memory = size <= crate::partial::IN_MEMORY_MAX;
            assert_eq!(published.bytes.as_ref(), in_memory.then_some(&data));
            let path = published.path;
            assert_eq!(fs::read(&path).unwrap(), data);
            let siblings: Vec<_> = fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(siblings, [path.file_name().unwrap()], "temporary left");
        }
        assert_eq!(
            fs::read_dir(store.partials_dir()).unwrap().count(),
            0,
            "a partial file was left"
        );
    }

    #[test]
    fn publishing_a_checkpointed_download_removes_its_record_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let size = crate::partial::IN_MEMORY_MAX + 1;
        let data = vec![7u8; size as usize];
        let digest = Digest::from_bytes(Sha256::digest(&data).into());
        let mut partial = store.partial(digest, size).unwrap();
        let (head, tail) = data.split_at(1000);
        partial.append(bytes::Bytes::copy_from_slice(head)).unwrap();
        partial.checkpoint().unwrap();
        let record = crate::partial::Partial::record_path(store.partials_dir(), &digest, size);
        assert!(record.exists());
        partial.append(bytes::Bytes::copy_from_slice(tail)).unwrap();
        assert_eq!(partial.finished_digest(), Some(digest));
        let path = store.publish(partial, &digest).unwrap().path;
        assert_eq!(fs::read(path).unwrap(), data);
        assert_eq!(fs::read_dir(store.partials_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_fanout_directory_removed_behind_its_back_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // In memory, and on disk.
        for size in [5, crate::partial::IN_MEMORY_MAX + 1] {
            let data = vec![b'x'; size as usize];
            let digest = Digest::from_bytes(Sha256::digest(&data).into());
            let publish = || {
                let mut partial = store.partial(digest, size).unwrap();
                partial.append(bytes::Bytes::from(data.clone())).unwrap();
                assert_eq!(partial.finished_digest(), Some(digest));
                store.publish(partial, &digest).unwrap().path
            };
            let path = publish();
            fs::remove_dir_all(path.parent().unwrap()).unwrap();
            assert_eq!(fs::read(publish()).unwrap(), data, "size {size}");
        }
    }

    #[test]
    fn second_open_is_refused_and_temporaries_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another chitd"), "{err}");
        drop(store);
        // Today's temporary names, and the `.tmp.` ones of earlier versions.
        let temps = [
            "partial-v1/.x.progress.chitd-1.1",
            "partial-v1/.x.progress.tmp.1.1",
            "sha256-v1/.y.tmp.2.3",
        ]
        .map(|temp| dir.path().join(temp));
        for temp in &temps {
            fs::write(temp, "torn").unwrap();
        }
        let _store = Store::open(dir.path()).unwrap();
        for temp in &temps {
            assert!(!temp.exists(), "{}", temp.display());
        }
    }

    #[test]
    fn partials_untouched_for_the_grace_period_are_removed_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let partials = dir.path().join("partial-v1");
        let old = SystemTime::now() - ORPHAN_GRACE - Duration::from_secs(3600);
        let recent = SystemTime::now() - ORPHAN_GRACE + Duration::from_secs(3600);
        // "a": both files old; "b": an old .part with a record written
        // recently (its last checkpoint); "c": both recent.
        for (name, written) in [
            ("a.part", old),
            ("a.progress", old),
            ("b.part", old),
            ("b.progress", recent),
            ("c.part", recent),
            ("c.progress", recent),
        ] {
            let file = fs::File::create(partials.join(name)).unwrap();
            file.set_modified(written).unwrap();
        }
        assert_eq!(store.remove_orphaned_partials(|_, _| false).unwrap(), 1);
        let mut left: Vec<_> = fs::read_dir(&partials)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b.part", "b.progress", "c.part", "c.progress"]);
        // Opening the cache again (a restart) removes none of them: a chit
        // in fetch/ may be about to resume one.
        drop(store);
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(fs::read_dir(&partials).unwrap().count(), 4);
    }

    #[test]
    fn partials_nothing_can_resume_are_removed_at_open_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let partials = dir.path().join("partial-v1");
        let file = |name: &str| partials.join(name);
        // A pair, resumable; a .part cut before its first checkpoint; a
        // record whose .part was published just before a crash; a pair of
        // a digest already cached (with another size: a download stopped
        // as wrong), and a pair of one that is not.
        let cached = Digest::from_bytes([7; 32]);
        let store = Store::open(dir.path()).unwrap();
        let object = store.object_path(&cached);
        fs::create_dir_all(object.parent().unwrap()).unwrap();
        fs::write(&object, "cached").unwrap();
        drop(store);
        let missing = Digest::from_bytes([8; 32]);
        let wrong = Partial::part_path(&partials, &cached, 99);
        let other = Partial::part_path(&partials, &missing, 99);
        for path in [
            file("a.part"),
            file("a.progress"),
            file("b.part"),
            file("c.progress"),
            wrong.clone(),
            wrong.with_extension("progress"),
            other.clone(),
            other.with_extension("progress"),
        ] {
            fs::write(path, "x").unwrap();
        }
        drop(Store::open(dir.path()).unwrap());
        let mut left: Vec<_> = fs::read_dir(&partials)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let other = format!("{missing}-99");
        assert_eq!(
            left,
            [
                format!("{other}.part"),
                format!("{other}.progress"),
                "a.part".into(),
                "a.progress".into()
            ]
        );
        assert!(object.exists(), "the object stays");
    }
}
