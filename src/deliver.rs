//! Cache → `<deliver>/<path>`: missing parent directories are created
//! (never through a symlink), the bytes are copied to a dot-named temporary
//! beside the target, fsync'd, renamed over the target, and the directory
//! is fsync'd. A consumer never sees a partial file under the final name, and
//! the file is durably in place before its chit moves to `downloaded/`.
//! At start-up, [`remove_temporaries`] removes the temporaries of
//! deliveries a crash cut short.
//!
//! The copy uses the kernel's fastest safe path: a reflink (`FICLONE`) where
//! the filesystem shares extents copy-on-write, else `copy_file_range`, and
//! drops a big object's pages behind it. A small download's first delivery
//! is written from the bytes still in memory.
//! Cache files are never hard-linked into a consumer's directory: the
//! consumer could then corrupt the shared cache through its link.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::chit::DeliveryPath;
use crate::dir::{Dir, DurableDirs, Kind};
use crate::durable::{start_writeback, with_path};

/// What a delivery copies.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A cache object, copied by the kernel (reflink or `copy_file_range`).
    Object(&'a Path),
    /// The bytes of an object just published from memory (a small
    /// download), written without reading the object back.
    Bytes(&'a [u8]),
}

/// Deliver `source` to `path` beneath `root`, up to and including the
/// rename, but without the final fsync of the directory, which it returns:
/// the caller fsyncs it (once for a batch of deliveries into the same
/// directory) before it reports the file as durably delivered.
pub fn deliver_unsynced(
    root: &Dir,
    path: &DeliveryPath,
    source: Source<'_>,
    durable: &DurableDirs,
) -> io::Result<Dir> {
    let parent = root.create_dirs(path.parent_components(), durable)?;
    let name = path.file_name();
    let (temp, mut target) = parent.create_temp(name)?;
    let temp_path = || parent.path().join(&temp);
    let result = match source {
        Source::Object(object) => File::open(object)
            .map_err(|e| with_path(e, "opening", object))
            .and_then(|object| {
                copy(&object, &mut target).map_err(|e| with_path(e, "copying into", &temp_path()))
            }),
        Source::Bytes(bytes) => target
            .write_all(bytes)
            .map_err(|e| with_path(e, "writing", &temp_path())),
    };
    let result = result
        .and_then(|()| {
            target
                .sync_data()
                .map_err(|e| with_path(e, "syncing", &temp_path()))
        })
        .and_then(|()| parent.rename(&temp, &parent, name));
    if let Err(e) = result {
        let _ = parent.remove_file(&temp);
        return Err(e);
    }
    Ok(parent)
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

/// Copies go in chunks of this size, each one's writeback started at once,
/// so the final fsync overlaps the copy instead of following it.
const COPY_CHUNK: usize = 64 << 20;

/// Reflink, else `copy_file_range`, else read/write.
fn copy(source: &File, target: &mut File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(&*target, source).is_ok() {
        return Ok(());
    }
    let length = source.metadata()?.len();
    let mut done = 0u64;
    while done < length {
        let want = usize::try_from(length - done)
            .unwrap_or(usize::MAX)
            .min(COPY_CHUNK);
        // `done` moves by what was copied.
        match copy_file_range_at(source, target, done, want)? {
            Some(0) => break,
            Some(n) => {
                let n = n as u64;
                // The fsync right after the copy writes the last chunk back
                // (a small file is one chunk: no writeback call at all).
                if done + n < length {
                    start_writeback(target, done, n);
                }
                if length > COPY_CHUNK as u64 {
                    drop_behind(source, done, n);
                }
                done += n;
            }
            None => return copy_plain(source, target, done),
        }
    }
    if done != length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {done} of {length} bytes"),
        ));
    }
    Ok(())
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

/// Drop a big object's pages behind the copy (objects of more than one
/// [`COPY_CHUNK`]; small ones stay cached for the next hit). A cache object
/// is durable (fdatasync'd before it was published) and read again only by
/// a later cache hit, while the consumer reads its delivered copy next.
/// Keeping both would push every big file through the page cache twice,
/// evicting what the builders work on; and the copy's new pages reuse the
/// ones dropped (on a VM whose free memory goes back to the host, fresh
/// pages are slow to fault in: see BENCHMARKS.md). A hint: failure is
/// ignored.
fn drop_behind(source: &File, start: u64, length: u64) {
    let _ = rustix::fs::fadvise(
        source,
        start,
        std::num::NonZeroU64::new(length),
        rustix::fs::Advice::DontNeed,
    );
}

fn copy_plain(source: &File, target: &mut File, from: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut source = source;
    source.seek(SeekFrom::Start(from))?;
    target.seek(SeekFrom::Start(from))?;
    io::copy(&mut source, target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// One delivery, made durable (the daemon syncs directories per batch).
    fn deliver(root: &Dir, path: &DeliveryPath, source: Source<'_>) -> io::Result<()> {
        deliver_unsynced(root, path, source, &DurableDirs::default())?.sync()
    }

    #[test]
    fn delivers_into_new_subdirectories_and_replaces_existing() {
        let cache = tempfile::tempdir().unwrap();
        let object = cache.path().join("object");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        fs::write(&object, &bytes).unwrap();
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("gnu/make/make-4.4.tar.gz").unwrap();
        fs::create_dir_all(target.path().join("gnu/make")).unwrap();
        fs::write(target.path().join("gnu/make/make-4.4.tar.gz"), "old").unwrap();
        deliver(&root, &path, Source::Object(&object)).unwrap();
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
        let bytes: Vec<u8> = (0..COPY_CHUNK + 4099).map(|i| (i % 251) as u8).collect();
        fs::write(&object, &bytes).unwrap();
        let target = tempfile::tempdir().unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let path = DeliveryPath::parse("big.iso").unwrap();
        deliver(&root, &path, Source::Object(&object)).unwrap();
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
            Source::Object(Path::new("/nonexistent/object")),
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
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("gnu")).unwrap();
        let root = Dir::open_root(target.path()).unwrap();
        let err = deliver(
            &root,
            &DeliveryPath::parse("gnu/x").unwrap(),
            Source::Object(&object),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gnu"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
