//! The copy of a cache object into a delivery temporary, hashed on the
//! way: a cache hit is delivered only with bytes whose sha256 and size
//! were checked, whatever happened to the object since it was published.
//!
//! The bytes hashed are the bytes written. A small object is read whole,
//! hashed and written on the calling thread. A big one is copied by the
//! kernel (`copy_file_range`, in chunks of [`KERNEL_CHUNK`]) while a scoped
//! thread reads the copy back from the page cache right behind it and
//! hashes it, so hashing (~1.3 GB/s with SHA-NI) overlaps the copy on
//! another core instead of adding to it, and no byte crosses into user
//! space on the copying side. Where the kernel refuses `copy_file_range`
//! (the cache and the delivery directory on different file systems), the
//! copy goes through a few reused buffers instead: this thread reads and
//! writes them while the other hashes them. Writeback of the copy is
//! started every [`WRITEBACK_EVERY`] bytes so the final fsync finds little
//! left, and a big object's pages are dropped behind the copy. Where the
//! filesystem shares extents copy-on-write, the copy is a reflink and the
//! object is hashed after it (the clone shares its extents).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use super::DeliverError;
use crate::chit::Digest;
use crate::deliver::copy_file_range_at;
use crate::dir::FileId;
use crate::durable::{start_writeback, with_path};

/// What a corrupt object holds instead of the chit's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Fewer bytes than the chit's size.
    Short { size: u64, read: u64 },
    /// The right size, another sha256.
    Digest(Digest),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Short { size, read } => {
                write!(f, "it holds {read} bytes, not {size}")
            }
            Mismatch::Digest(found) => write!(f, "its sha256 is {found}"),
        }
    }
}

/// Objects up to this size are read, hashed and written whole on the
/// calling thread (a thread of its own costs more than it saves).
const INLINE_MAX: u64 = 4 << 20;
/// A big object is copied by the kernel this much at a time; the hasher
/// follows one chunk behind.
const KERNEL_CHUNK: u64 = 8 << 20;
/// Copied chunks the hasher may be behind before the copy waits for it.
const KERNEL_AHEAD: usize = 8;
/// A big object is copied in chunks of this size...
const CHUNK: usize = 1 << 20;
/// ...through this many buffers, reused (the hashing thread hands each
/// back when done with it).
const BUFFERS: usize = 8;
/// The copy's writeback is started every this many bytes.
pub const WRITEBACK_EVERY: u64 = 64 << 20;

/// Copy the object at `path` (which must hold the `size` bytes of
/// `digest`) into `target`, checking them. `temp` names the target in
/// errors.
pub fn copy_object(
    path: &Path,
    target: &mut File,
    digest: &Digest,
    size: u64,
    temp: &dyn Fn() -> PathBuf,
) -> Result<(), DeliverError> {
    let source = match File::open(path) {
        Ok(source) => source,
        // Removed since it was looked up (by `chitd cache gc`).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DeliverError::Gone(path.to_path_buf()));
        }
        Err(e) => return Err(with_path(e, "opening", path).into()),
    };
    let object = source
        .metadata()
        .map(|meta| FileId::of(&meta))
        .map_err(|e| with_path(e, "inspecting", path))?;
    let reflinked = rustix::fs::ioctl_ficlone(&*target, &source).is_ok();
    let copied = if reflinked {
        hash_only(&source, size).map_err(|e| with_path(e, "reading", path))
    } else {
        copy_hashing(&source, target, size).map_err(|e| match e {
            Failed::Read(e) => with_path(e, "reading", path),
            Failed::Write(e) => with_path(e, "copying into", &temp()),
        })
    };
    let found = match copied? {
        Hashed::Short(read) => Mismatch::Short { size, read },
        Hashed::Whole(found) if found == *digest => return Ok(()),
        Hashed::Whole(found) => Mismatch::Digest(found),
    };
    Err(DeliverError::Corrupt {
        path: path.to_path_buf(),
        object,
        found,
    })
}

/// What was read of an object.
enum Hashed {
    /// Its first `size` bytes, with this sha256.
    Whole(Digest),
    /// It ended after this many bytes.
    Short(u64),
}

enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// Hash the first `size` bytes of `source` (after a reflink).
fn hash_only(source: &File, size: u64) -> io::Result<Hashed> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < size {
        let want = buffer
            .len()
            .min(usize::try_from(size - done).unwrap_or(usize::MAX));
        let n = read_at(source, &mut buffer[..want], done)?;
        if n < want {
            return Ok(Hashed::Short(done + n as u64));
        }
        hasher.update(&buffer[..want]);
        done += want as u64;
    }
    Ok(Hashed::Whole(finish(hasher)))
}

/// Copy the first `size` bytes of `source` to `target`, hashing them.
fn copy_hashing(source: &File, target: &mut File, size: u64) -> Result<Hashed, Failed> {
    if size <= INLINE_MAX {
        let mut buffer = vec![0u8; size as usize];
        let n = read_at(source, &mut buffer, 0).map_err(Failed::Read)?;
        if (n as u64) < size {
            return Ok(Hashed::Short(n as u64));
        }
        let found = finish(Sha256::new_with_prefix(&buffer));
        target.write_all(&buffer).map_err(Failed::Write)?;
        return Ok(Hashed::Whole(found));
    }
    match copy_in_kernel(source, target, size)? {
        Some(hashed) => Ok(hashed),
        None => copy_through_buffers(source, target, size),
    }
}

/// Copy the first `size` bytes of `source` to `target` with
/// `copy_file_range`, hashing the copy as it is written: `None` if the
/// kernel refuses to copy between these files (nothing was copied).
fn copy_in_kernel(source: &File, target: &File, size: u64) -> Result<Option<Hashed>, Failed> {
    let first = usize::try_from(KERNEL_CHUNK.min(size)).unwrap_or(usize::MAX);
    let copied = copy_file_range_at(source, target, 0, first).map_err(Failed::Write)?;
    let Some(first) = copied else {
        return Ok(None);
    };
    let (to_hasher, written) = sync_channel::<u64>(KERNEL_AHEAD);
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || hash_behind(target, written));
        let _ = to_hasher.send(first as u64);
        let copied = copy_rest(source, target, size, first as u64, &to_hasher);
        drop(to_hasher);
        let hashed = hashing
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let done = copied?;
        let found = hashed.map_err(Failed::Write)?;
        Ok(Some(match done {
            done if done < size => Hashed::Short(done),
            _ => Hashed::Whole(found),
        }))
    })
}

/// The copying side of [`copy_in_kernel`], from `done` on: tells the
/// hasher how far the copy has come after every chunk. Returns the bytes
/// copied (fewer than `size` if the object is short).
fn copy_rest(
    source: &File,
    target: &File,
    size: u64,
    mut done: u64,
    to_hasher: &SyncSender<u64>,
) -> Result<u64, Failed> {
    let mut written_back = 0u64;
    while done < size {
        let want = usize::try_from(KERNEL_CHUNK.min(size - done)).unwrap_or(usize::MAX);
        let n = match copy_file_range_at(source, target, done, want).map_err(Failed::Write)? {
            Some(n) => n,
            None => {
                let refused = io::Error::other("copy_file_range refused in the middle of a copy");
                return Err(Failed::Write(refused));
            }
        };
        if n == 0 {
            break;
        }
        done += n as u64;
        let _ = to_hasher.send(done);
        if done - written_back >= WRITEBACK_EVERY {
            start_writeback(target, written_back, done - written_back);
            drop_behind(source, written_back, done - written_back);
            written_back = done;
        }
    }
    Ok(done)
}

/// The hashing side of [`copy_in_kernel`]: reads `target` back up to each
/// length it is told was written, and hashes it.
fn hash_behind(target: &File, written: Receiver<u64>) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut hashed = 0u64;
    for upto in written {
        while hashed < upto {
            let want = buffer
                .len()
                .min(usize::try_from(upto - hashed).unwrap_or(usize::MAX));
            let n = read_at(target, &mut buffer[..want], hashed)?;
            if n < want {
                let short = "the copy ended before what was written to it";
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, short));
            }
            hasher.update(&buffer[..n]);
            hashed += n as u64;
        }
    }
    Ok(finish(hasher))
}

/// [`copy_hashing`] where the kernel will not copy: through a few reused
/// buffers, hashed on another thread.
fn copy_through_buffers(source: &File, target: &File, size: u64) -> Result<Hashed, Failed> {
    let (to_hasher, chunks) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (to_reader, free) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = to_reader.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || hash_chunks(chunks, to_reader));
        let copied = copy_chunks(source, target, size, &free, to_hasher);
        let found = hashing
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        match copied? {
            done if done < size => Ok(Hashed::Short(done)),
            _ => Ok(Hashed::Whole(found)),
        }
    })
}

/// The reading and writing side of [`copy_hashing`]: each chunk goes to
/// the hasher before it is written (the two overlap). Returns the bytes
/// copied (fewer than `size` if the object is short).
fn copy_chunks(
    source: &File,
    target: &File,
    size: u64,
    free: &Receiver<Vec<u8>>,
    to_hasher: SyncSender<(Vec<u8>, usize)>,
) -> Result<u64, Failed> {
    let mut done = 0u64;
    let mut written_back = 0u64;
    while done < size {
        // The hasher gives every buffer back until it stops.
        let Ok(mut buffer) = free.recv() else { break };
        let want = CHUNK.min(usize::try_from(size - done).unwrap_or(usize::MAX));
        let n = read_at(source, &mut buffer[..want], done).map_err(Failed::Read)?;
        target
            .write_all_at(&buffer[..n], done)
            .map_err(Failed::Write)?;
        let _ = to_hasher.send((buffer, n));
        done += n as u64;
        if n < want {
            break;
        }
        if done - written_back >= WRITEBACK_EVERY {
            start_writeback(target, written_back, done - written_back);
            drop_behind(source, written_back, done - written_back);
            written_back = done;
        }
    }
    Ok(done)
}

fn hash_chunks(chunks: Receiver<(Vec<u8>, usize)>, free: SyncSender<Vec<u8>>) -> Digest {
    let mut hasher = Sha256::new();
    for (buffer, n) in chunks {
        hasher.update(&buffer[..n]);
        let _ = free.send(buffer);
    }
    finish(hasher)
}

fn finish(hasher: Sha256) -> Digest {
    Digest::from_bytes(hasher.finalize().into())
}

/// Read into `buffer` at `offset` until it is full or the file ends;
/// returns the bytes read.
fn read_at(source: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match source.read_at(&mut buffer[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// Drop a big object's pages behind the copy (small ones stay cached for
/// the next hit). A cache object is durable (fdatasync'd before it was
/// published) and read again only by a later cache hit, while the
/// consumer reads its delivered copy next. Keeping both would push every
/// big file through the page cache twice, evicting what the builders work
/// on. A hint: failure is ignored.
fn drop_behind(source: &File, start: u64, length: u64) {
    let _ = rustix::fs::fadvise(
        source,
        start,
        std::num::NonZeroU64::new(length),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    type Copy = fn(&File, &File, u64) -> Result<Hashed, Failed>;

    /// Both big-object copies (the kernel's, and the buffers' used where
    /// the kernel refuses) write every byte and hash what they wrote, and
    /// see a short object as short.
    #[test]
    fn both_big_copies_hash_what_they_write() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * KERNEL_CHUNK + 12345;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 239) as u8).collect();
        let expected = finish(Sha256::new_with_prefix(&bytes));
        let object = dir.path().join("object");
        std::fs::write(&object, &bytes).unwrap();
        let source = File::open(&object).unwrap();
        let copies: [(&str, Copy); 2] = [
            ("kernel", |s, t, n| {
                Ok(copy_in_kernel(s, t, n)?.expect("same fs"))
            }),
            ("buffers", copy_through_buffers),
        ];
        for (name, copy) in copies {
            for (asked, whole) in [(size, true), (size + 1, false)] {
                let copy_path = dir.path().join(format!("{name}-{asked}"));
                let target = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&copy_path)
                    .unwrap();
                let hashed = copy(&source, &target, asked).unwrap_or_else(|_| panic!("{name}"));
                match hashed {
                    Hashed::Whole(found) => {
                        assert!(whole, "{name}: {asked} bytes asked of {size}");
                        assert_eq!(found, expected, "{name}");
                    }
                    Hashed::Short(read) => {
                        assert!(!whole, "{name}: short at {read}");
                        assert_eq!(read, size, "{name}");
                    }
                }
                assert!(std::fs::read(&copy_path).unwrap() == bytes, "{name}");
            }
        }
    }
}
