//! Cache → `<deliver>/<path>`: missing parent directories are created
//! (never through a symlink), the bytes are copied to an unnamed file (a
//! dot-named temporary beside the target where the file system makes
//! none), fsync'd, linked (or renamed) into place, and the directory is
//! fsync'd. A delivery can be taken in two halves ([`start_delivery`],
//! then [`Delivering::finish`]), so a batch writes all of its copies before
//! it flushes any. A consumer never sees a partial file under the final name, and
//! the file is durably in place before its chit moves to `downloaded/`.
//! At start-up, [`remove_temporaries`] removes the temporaries of
//! deliveries a crash cut short.
//!
//! A cache object is never trusted: its bytes are hashed as they are
//! copied (`verify`), and the temporary is renamed into place only if
//! their sha256 and size are the chit's. An object altered behind chitd's
//! back (bit rot, a person's edit) is reported as [`DeliverError::Corrupt`]
//! and nothing is delivered. Where the filesystem shares extents
//! copy-on-write, the copy is a reflink (`FICLONE`) and the object is
//! hashed after it. A small download's first delivery is written from the
//! bytes still in memory, which were verified as they arrived.
//! Cache files are never hard-linked into a consumer's directory: the
//! consumer could then corrupt the shared cache through its link.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::chit::{DeliveryPath, Digest};
use crate::dir::{Dir, DurableDirs, FileId, Kind};
use crate::durable::with_path;

pub mod verify;

/// What a delivery copies.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A cache object, which must hold the `size` bytes of `digest`:
    /// verified while it is copied.
    Object {
        path: &'a Path,
        digest: &'a Digest,
        size: u64,
    },
    /// The bytes of an object just published from memory (a small
    /// download), verified as they were downloaded, written without
    /// reading the object back.
    Bytes(&'a [u8]),
}

/// Why a delivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The cache object does not hold the bytes of its digest. Nothing was
    /// delivered; `object` is the file that was read, for the caller to
    /// quarantine (if it is still the one under the digest's name).
    #[error("the cached copy {} is corrupt: {found}", path.display())]
    Corrupt {
        path: std::path::PathBuf,
        object: FileId,
        found: verify::Mismatch,
    },
    /// The cache object is gone (collected since it was looked up).
    /// Nothing was delivered: the file is to be fetched again.
    #[error("the cached copy {} was removed", .0.display())]
    Gone(std::path::PathBuf),
}

/// Deliver `source` to `path` beneath `root`, in two halves: this one
/// writes (and verifies) the copy and starts its writeback;
/// [`Delivering::finish`] flushes it and puts it in place. A batch of
/// deliveries started, then finished, shares its flushes (see
/// [`crate::durable::Unnamed::link`]).
///
/// The copy is an unnamed file (`O_TMPFILE`), written and fdatasync'd,
/// then linked under its name: a new name appears whole or not at all. A
/// name already taken (an earlier copy, anything a consumer put there) is
/// replaced by a rename from a temporary name the copy is linked as first.
/// Where the file system makes no unnamed files, the copy is a named
/// temporary from the start ([`Dir::create_temp`]), renamed into place.
pub fn start_delivery(
    root: &Dir,
    path: &DeliveryPath,
    source: Source<'_>,
    durable: &DurableDirs,
) -> Result<Delivering, DeliverError> {
    let parent = root.create_dirs(path.parent_components(), durable)?;
    let name = path.file_name().to_owned();
    let copy = match parent.create_unnamed()? {
        Some(mut copy) => {
            write_copy(source, &mut copy, &|| parent.path().join(&name))?;
            Copy::Unnamed(copy)
        }
        None => {
            let (temp, mut file) = parent.create_temp(&name)?;
            if let Err(e) = write_copy(source, &mut file, &|| parent.path().join(&temp)) {
                let _ = parent.remove_file(&temp);
                return Err(e);
            }
            Copy::Temp(temp, file)
        }
    };
    Ok(Delivering {
        name,
        copy: Some((parent, copy)),
    })
}

/// A delivery of [`start_delivery`]: its copy written, not yet durable,
/// not in place. Dropped unfinished, it leaves nothing behind (a named
/// temporary is removed).
#[derive(Debug)]
pub struct Delivering {
    name: String,
    /// The directory it goes into, and the copy (taken by `finish`).
    copy: Option<(Dir, Copy)>,
}

#[derive(Debug)]
enum Copy {
    Unnamed(File),
    /// A dot-named temporary, where the file system makes no unnamed files.
    Temp(String, File),
}

impl Delivering {
    /// Flush the copy and put it in place (see [`start_delivery`]), but
    /// without the final fsync of the directory, which it returns: the
    /// caller fsyncs it (once for a batch of deliveries into the same
    /// directory) before it reports the file as durably delivered.
    pub fn finish(mut self) -> Result<Dir, DeliverError> {
        let Some((parent, copy)) = self.copy.take() else {
            unreachable!("a delivery is finished once");
        };
        let name = self.name.as_str();
        match copy {
            Copy::Unnamed(copy) => {
                sync_copy(&copy, &|| parent.path().join(name))?;
                match parent.link_unnamed(&copy, name) {
                    Ok(true) => {}
                    Ok(false) => copy_to_temp(&parent, &copy, name)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        replace_with(&parent, &copy, name)?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Copy::Temp(temp, file) => {
                let placed = sync_copy(&file, &|| parent.path().join(&temp))
                    .and_then(|()| Ok(parent.rename(&temp, &parent, name)?));
                if let Err(e) = placed {
                    let _ = parent.remove_file(&temp);
                    return Err(e);
                }
            }
        }
        Ok(parent)
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        if let Some((parent, Copy::Temp(temp, _))) = &self.copy {
            let _ = parent.remove_file(temp);
        }
    }
}

/// No links of unnamed files here after all (found out at the first
/// one): the durable `copy` is copied to a named temporary, which is
/// renamed into place.
fn copy_to_temp(parent: &Dir, copy: &File, name: &str) -> Result<(), DeliverError> {
    let (temp, mut file) = parent.create_temp(name)?;
    let at = || parent.path().join(&temp);
    let placed = io::copy(&mut &*copy, &mut file)
        .map_err(|e| DeliverError::from(with_path(e, "writing", &at())))
        .and_then(|_| sync_copy(&file, &at))
        .and_then(|()| Ok(parent.rename(&temp, parent, name)?));
    if let Err(e) = placed {
        let _ = parent.remove_file(&temp);
        return Err(e);
    }
    Ok(())
}

/// Write `source` to `target` (at `at`, for errors) and start its
/// writeback; [`sync_copy`] makes it durable.
fn write_copy(
    source: Source<'_>,
    target: &mut std::fs::File,
    at: &dyn Fn() -> std::path::PathBuf,
) -> Result<(), DeliverError> {
    match source {
        Source::Object { path, digest, size } => {
            verify::copy_object(path, target, digest, size, at)?;
        }
        Source::Bytes(bytes) => target
            .write_all(bytes)
            .map_err(|e| with_path(e, "writing", &at()))?,
    }
    crate::durable::start_writeback(target, 0, 0);
    Ok(())
}

/// fdatasync the copy `target` (at `at`, for errors).
fn sync_copy(target: &File, at: &dyn Fn() -> std::path::PathBuf) -> Result<(), DeliverError> {
    target
        .sync_data()
        .map_err(|e| with_path(e, "syncing", &at()).into())
}

/// Put the unnamed, durable `copy` in place of what `name` in `parent`
/// is: linked under a temporary name, then renamed over it.
fn replace_with(parent: &Dir, copy: &std::fs::File, name: &str) -> Result<(), DeliverError> {
    let Some(temp) = parent.link_unnamed_temp(copy, name)? else {
        // Linked a moment ago; not now: nothing was delivered.
        let error = std::io::Error::other("links of unnamed files stopped working");
        return Err(with_path(error, "delivering", &parent.path().join(name)).into());
    };
    parent.rename(&temp, parent, name).map_err(|e| {
        let _ = parent.remove_file(&temp);
        e.into()
    })
}

/// Remove the temporaries of deliveries a crash cut short: regular files
/// named like [`Dir::create_temp`]'s (`.<name>.chitd-<pid>.<n>`) anywhere
/// beneath `root`. The walk opens one directory at a time through the
/// confined [`Dir`] API and never follows a symlink; the consumer's own
/// dot-files, symlinks and directories are left alone. A subdirectory that
/// cannot be read is skipped with a warning. Returns how many files were
/// removed.
pub fn remove_temporaries(root: &Dir) -> io::Result<usize> {
    let mut pending = Vec::new();
    let mut removed = sweep(root, ".", &mut pending)?;
    while let Some(relative) = pending.pop() {
        match root
            .open_dir(&relative)
            .and_then(|dir| sweep(&dir, &relative, &mut pending))
        {
            Ok(n) => removed += n,
            Err(e) => tracing::warn!("not looking for leftover temporaries there: {e}"),
        }
    }
    Ok(removed)
}

/// Remove the temporaries directly in `dir` (at `relative` beneath the
/// root) and queue its subdirectories.
fn sweep(dir: &Dir, relative: &str, pending: &mut Vec<String>) -> io::Result<usize> {
    let mut removed = 0;
    for name in dir.names()? {
        match dir.kind(&name) {
            Ok(Kind::Dir) if relative == "." => pending.push(name),
            Ok(Kind::Dir) => pending.push(format!("{relative}/{name}")),
            Ok(Kind::File) if Dir::is_temp_name(&name) => {
                tracing::info!(path = %dir.path().join(&name).display(), "removing a delivery temporary left by an earlier run");
                dir.remove_file(&name)?;
                removed += 1;
            }
            // Gone meanwhile, or not ours.
            _ => {}
        }
    }
    Ok(removed)
}

/// `copy_file_range` of up to `want` bytes at `at` in `source` to the same
/// offset in `target` (explicit offsets: the kernel advances these, not the
/// files' positions): the bytes copied, or `None` when the kernel refuses it
/// for these files (across file systems, or not supported), and the caller
/// copies by read and write.
pub fn copy_file_range_at(
    source: &File,
    target: &File,
    at: u64,
    want: usize,
) -> io::Result<Option<usize>> {
    let (mut read_at, mut write_at) = (at, at);
    match rustix::fs::copy_file_range(
        source,
        Some(&mut read_at),
        target,
        Some(&mut write_at),
        want,
    ) {
        Ok(n) => Ok(Some(n)),
        Err(
            rustix::io::Errno::XDEV
            | rustix::io::Errno::INVAL
            | rustix::io::Errno::NOSYS
            | rustix::io::Errno::OPNOTSUPP,
        ) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// One delivery, made durable (the daemon syncs directories per batch).
    fn deliver(root: &Dir, path: &DeliveryPath, source: Source<'_>) -> Result<(), DeliverError> {
        let delivering = start_delivery(root, path, source, &DurableDirs::default())?;
        Ok(delivering.finish()?.sync()?)
    }

    /// The digest of `bytes`.
    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::from_bytes(<sha2::Sha256 as sha2::Digest>::digest(bytes).into())
    }

    /// A cache object at `path` that must hold `bytes`.
    fn cached<'a>(path: &'a Path, digest: &'a Digest, bytes: &[u8]) -> Source<'a> {
        Source::Object {
            path,
            digest,
            size: bytes.len() as u64,
        }
    }

    /// A delivery begun puts nothing in place; dropped, it leaves nothing
    /// behind; finished, its file is in place.
    #[test]
    fn a_delivery_is_in_place_only_once_finished() {
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let names = || fs::read_dir(target.path()).unwrap().count();
        let path = DeliveryPath::parse("file.tar.gz").unwrap();
        let durable = DurableDirs::default();
        let dropped = start_delivery(&root, &path, Source::Bytes(b"dropped"), &durable).unwrap();
        let kept = start_delivery(&root, &path, Source::Bytes(b"kept"), &durable).unwrap();
        drop(dropped);
        assert_eq!(names(), 0, "nothing in place, nothing left");
        kept.finish().unwrap();
        assert_eq!(
            fs::read(target.path().join("file.tar.gz")).unwrap(),
            b"kept"
        );
        assert_eq!(names(), 1);
    }

    #[test]
    fn delivers_into_new_subdirectories_and_replaces_existing() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        fs::write(&object, &bytes).unwrap();
        let digest = digest_of(&bytes);
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("gnu/make/make-4.4.tar.gz").unwrap();
        fs::create_dir_all(target.path().join("gnu/make")).unwrap();
        fs::write(target.path().join("gnu/make/make-4.4.tar.gz"), "old").unwrap();
        deliver(&root, &path, cached(&object, &digest, &bytes)).unwrap();
        assert_eq!(
            fs::read(target.path().join("gnu/make/make-4.4.tar.gz")).unwrap(),
            bytes
        );
        assert_eq!(
            fs::read_dir(target.path().join("gnu/make"))
                .unwrap()
                .count(),
            1,
            "temporary left"
        );
    }

    #[test]
    fn copies_an_object_of_several_chunks() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        let size = verify::WRITEBACK_EVERY as usize + 4099;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        fs::write(&object, &bytes).unwrap();
        let digest = digest_of(&bytes);
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("big.iso").unwrap();
        deliver(&root, &path, cached(&object, &digest, &bytes)).unwrap();
        assert!(fs::read(target.path().join("big.iso")).unwrap() == bytes);
        // Its pages may be gone from memory, never its bytes.
        assert!(fs::read(&object).unwrap() == bytes);
    }

    #[test]
    fn delivers_bytes_held_in_memory_and_cleans_up_a_failed_copy() {
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("x/small.tar").unwrap();
        deliver(
            &root,
            &path,
            cached(Path::new("/nonexistent/object"), &digest_of(b""), b""),
        )
        .unwrap_err();
        deliver(&root, &path, Source::Bytes(b"held in memory")).unwrap();
        assert_eq!(
            fs::read(target.path().join("x/small.tar")).unwrap(),
            b"held in memory"
        );
        let names: Vec<_> = fs::read_dir(target.path().join("x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["small.tar"], "temporary left");
    }

    #[test]
    fn removes_only_its_own_temporaries_and_follows_no_symlink() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let t = target.path();
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::create_dir_all(t.join(".d.chitd-1.2")).unwrap();
        for ours in [".x.chitd-1.2", "a/b/.y.tar.gz.chitd-33.0"] {
            fs::write(t.join(ours), "torn").unwrap();
        }
        for theirs in [".hidden", "a/.y.chitd-", "a/b/keep", ".z.chitd-1.2.bak"] {
            fs::write(t.join(theirs), "mine").unwrap();
        }
        fs::write(outside.path().join(".o.chitd-1.1"), "outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join(".o.chitd-1.1"), t.join(".s.chitd-1.1"))
            .unwrap();

        let root = Dir::open_root(t).unwrap();
        assert_eq!(remove_temporaries(&root).unwrap(), 2);
        assert!(!t.join(".x.chitd-1.2").exists());
        assert!(!t.join("a/b/.y.tar.gz.chitd-33.0").exists());
        for kept in [
            ".hidden",
            "a/.y.chitd-",
            "a/b/keep",
            ".z.chitd-1.2.bak",
            ".d.chitd-1.2",
        ] {
            assert!(t.join(kept).exists(), "{kept}");
        }
        assert!(fs::symlink_metadata(t.join(".s.chitd-1.1")).is_ok());
        assert!(outside.path().join(".o.chitd-1.1").exists());
    }

    #[test]
    fn refuses_a_symlinked_parent() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        fs::write(&object, "x").unwrap();
        let digest = digest_of(b"x");
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("gnu")).unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let err = deliver(
            &root,
            &DeliveryPath::parse("gnu/x").unwrap(),
            cached(&object, &digest, b"x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gnu"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// An object altered behind chitd's back (same size, other bytes;
    /// shorter; small or big) is never delivered, and leaves nothing.
    #[test]
    fn a_corrupt_object_is_refused_and_nothing_is_delivered() {
        let cache = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("d/file").unwrap();
        for size in [13usize, 5 << 20] {
            let good: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            let digest = digest_of(&good);
            let file = cache.path().join(format!("object-{size}"));
            let mut bad = good.clone();
            bad[size / 2] ^= 1;
            for (altered, expect) in [
                (bad.clone(), "its sha256 is"),
                (good[..size - 1].to_vec(), "bytes, not"),
            ] {
                fs::write(&file, &altered).unwrap();
                let err = deliver(&root, &path, cached(&file, &digest, &good)).unwrap_err();
                let DeliverError::Corrupt { object: id, .. } = &err else {
                    panic!("size {size}: {err}");
                };
                assert_eq!(*id, FileId::of(&fs::metadata(&file).unwrap()));
                assert!(err.to_string().contains(expect), "{err}");
                assert!(!target.path().join("d/file").exists());
                assert_eq!(fs::read_dir(target.path().join("d")).unwrap().count(), 0);
            }
            fs::write(&file, &good).unwrap();
            deliver(&root, &path, cached(&file, &digest, &good)).unwrap();
            assert!(fs::read(target.path().join("d/file")).unwrap() == good);
            fs::remove_file(target.path().join("d/file")).unwrap();
        }
    }

    /// An object removed since its lookup (collected by `chitd cache gc`)
    /// is `Gone`, not an I/O failure: the chit waits for a download. An
    /// existing file at the target is left as it was, and no temporary.
    #[test]
    fn an_object_removed_since_its_lookup_is_gone_and_nothing_is_delivered() {
        let cache = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("d/file").unwrap();
        fs::create_dir(target.path().join("d")).unwrap();
        fs::write(target.path().join("d/file"), "old").unwrap();
        let good = b"good bytes".to_vec();
        let digest = digest_of(&good);
        let file = cache.path().join("collected");
        let err = deliver(&root, &path, cached(&file, &digest, &good)).unwrap_err();
        assert!(
            matches!(&err, DeliverError::Gone(gone) if *gone == file),
            "{err}"
        );
        assert_eq!(fs::read(target.path().join("d/file")).unwrap(), b"old");
        assert_eq!(fs::read_dir(target.path().join("d")).unwrap().count(), 1);
    }
}
