//! Early delivery: while a big file downloads, a thread copies its `.part`
//! into a dot-named temporary beside its first waiter's target, following
//! the writer through the partial's [`Frontier`]. Once the download is
//! verified, the chaser copies what is left and fdatasyncs the temporary,
//! and the waiter's delivery is a rename: the delivery copy overlaps the
//! transfer instead of following it (on two cores, most of its cost
//! disappears; see BENCHMARKS.md).
//!
//! The copied bytes sit under a dot name, which consumers ignore, until
//! the download is verified. A truncation of the `.part` (a restart from
//! 0) starts a new generation of the frontier, and the chaser starts over.
//! Any doubt (the generation changed, fewer bytes than the total, an
//! error) discards the temporary, and the waiter is delivered the usual
//! way, from the cache. A crash leaves the temporary to the start-up sweep
//! of delivery temporaries.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dir::Dir;
use crate::durable::start_writeback;
use crate::partial::Frontier;

/// Downloads at least this big are chased; below it the copy after the
/// download takes well under a millisecond, less than starting a thread.
pub const CHASE_MIN: u64 = 1 << 20;

/// How long the chaser sleeps when it has caught up with the writer.
const CAUGHT_UP_WAIT: Duration = Duration::from_millis(2);

/// Each copy moves at most this much, so a truncation or an abort is
/// noticed soon.
const CHUNK: usize = 4 << 20;

const RUNNING: u8 = 0;
const FINISH: u8 = 1;
const ABORT: u8 = 2;

/// Where the chased copy goes: the target's directory, the temporary's
/// name in it (created by the chaser), and the target's name.
#[derive(Debug)]
pub struct Target {
    pub parent: Dir,
    pub temp: String,
    pub file: File,
    pub name: String,
}

/// A chase under way, for the chit `name` of `consumer`.
#[derive(Debug)]
pub struct Chase {
    pub consumer: usize,
    pub name: String,
    state: Arc<AtomicU8>,
    thread: JoinHandle<Option<Chased>>,
}

/// A complete copy, fdatasync'd under its temporary name.
#[derive(Debug)]
pub struct Chased {
    pub parent: Dir,
    temp: String,
    name: String,
    file: File,
    generation: u64,
    copied: u64,
}

impl Chase {
    /// Follow `part` (the `.part` of a download of `total` bytes, once its
    /// partial follows `frontier`) into the temporary `prepare` creates.
    /// `None` when no thread can be had.
    pub fn start(
        consumer: usize,
        name: String,
        part: PathBuf,
        total: u64,
        frontier: Arc<Frontier>,
        prepare: impl FnOnce() -> std::io::Result<Target> + Send + 'static,
    ) -> Option<Chase> {
        let state = Arc::new(AtomicU8::new(RUNNING));
        let control = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("chase".into())
            .spawn(move || chase(&part, total, &frontier, &control, prepare))
            .ok()?;
        Some(Chase {
            consumer,
            name,
            state,
            thread,
        })
    }

    /// The download is complete: copy what is left, without waiting.
    pub fn wrap_up(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, FINISH, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The download is complete and verified, in generation `generation`
    /// of its frontier, with `total` bytes: wait for the copy to finish.
    /// `None` (the temporary removed) unless the copy is of exactly those
    /// bytes.
    pub fn finish(self, generation: u64, total: u64) -> Option<Chased> {
        self.wrap_up();
        let chased = self.thread.join().ok().flatten()?;
        if chased.generation == generation && chased.copied == total {
            Some(chased)
        } else {
            tracing::debug!(
                chased.generation,
                generation,
                chased.copied,
                total,
                "early delivery does not match the download; delivering from the cache"
            );
            chased.discard();
            None
        }
    }

    /// The download failed or stops: remove the temporary and wait for
    /// the thread (a few milliseconds).
    pub fn abort(self) {
        self.state.store(ABORT, Ordering::Release);
        // Told to finish before, it may have completed the copy.
        if let Ok(Some(chased)) = self.thread.join() {
            chased.discard();
        }
    }
}

impl Chased {
    /// Rename the copy over the target, if its temporary name still holds
    /// the file chitd wrote (the consumer owns the directory: it could
    /// have put something else there during the download). Else, or on
    /// error, remove the temporary.
    pub fn rename_into_place(&self) -> std::io::Result<()> {
        let result = match self.parent.holds(&self.temp, &self.file) {
            Ok(true) => self.parent.rename(&self.temp, &self.parent, &self.name),
            Ok(false) => Err(std::io::Error::other(format!(
                "{} was replaced during the download",
                self.parent.path().join(&self.temp).display()
            ))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self.parent.remove_file(&self.temp);
        }
        result
    }

    /// Remove the temporary.
    pub fn discard(self) {
        let _ = self.parent.remove_file(&self.temp);
    }
}

/// The chaser: wait for the partial to be followed, open the `.part`,
/// copy what the writer has written, again and again, until told to
/// finish (then copy the rest) or to stop.
fn chase(
    part: &std::path::Path,
    total: u64,
    frontier: &Frontier,
    state: &AtomicU8,
    prepare: impl FnOnce() -> std::io::Result<Target>,
) -> Option<Chased> {
    if !wait_for_open(frontier, state) {
        return None;
    }
    let source = File::open(part).ok()?;
    let target = match prepare() {
        Ok(target) => target,
        Err(e) => {
            tracing::debug!("no early delivery: {e}");
            return None;
        }
    };
    let Target {
        parent,
        temp,
        file,
        name,
    } = target;
    let followed = follow(&source, &file, total, frontier, state);
    match followed {
        Some((generation, copied)) if file.sync_data().is_ok() => Some(Chased {
            parent,
            temp,
            name,
            file,
            generation,
            copied,
        }),
        _ => {
            let _ = parent.remove_file(&temp);
            None
        }
    }
}

/// Until the download opens (and follows) its partial, there is nothing
/// to read: wait for that, `false` if the download ended first.
fn wait_for_open(frontier: &Frontier, state: &AtomicU8) -> bool {
    while frontier.generation() == 0 {
        if state.load(Ordering::Acquire) != RUNNING {
            return false;
        }
        std::thread::sleep(CAUGHT_UP_WAIT);
    }
    true
}

/// Copy the `.part` into `file` as the download writes it, until told to
/// finish and caught up: the generation copied and the bytes copied, or
/// `None` if told to abort or the copy failed (the caller discards it).
fn follow(
    source: &File,
    file: &File,
    total: u64,
    frontier: &Frontier,
    state: &AtomicU8,
) -> Option<(u64, u64)> {
    let (mut generation, mut copied) = (frontier.generation(), 0u64);
    // The buffer of a read/write copy, once `copy_file_range` is refused
    // (the cache and the delivery directory on different file systems).
    let mut plain: Option<Vec<u8>> = None;
    loop {
        let finishing = match state.load(Ordering::Acquire) {
            ABORT => return None,
            FINISH => true,
            _ => false,
        };
        let (now, written) = frontier.now();
        if now != generation {
            // The `.part` was truncated: start over.
            file.set_len(0).ok()?;
            (generation, copied) = (now, 0);
            continue;
        }
        let want = written.min(total).saturating_sub(copied);
        if want == 0 {
            // Told to finish, the writer is done: this is all there is.
            if finishing {
                return Some((generation, copied));
            }
            std::thread::sleep(CAUGHT_UP_WAIT);
            continue;
        }
        let want = usize::try_from(want).unwrap_or(CHUNK).min(CHUNK);
        match copy_range(source, file, copied, want, &mut plain) {
            // Once the download is over, the `.part` holds what the
            // frontier says: a short file ends the copy (incomplete, so
            // discarded). Before, a truncation raced the copy: the next
            // round sees it.
            Ok(0) if finishing => return Some((generation, copied)),
            Ok(0) => std::thread::sleep(CAUGHT_UP_WAIT),
            Ok(n) => {
                if frontier.generation() == generation {
                    start_writeback(file, copied, n as u64);
                    copied += n as u64;
                }
                // Else the bytes may be stale: the next round starts over.
            }
            Err(e) => {
                tracing::debug!("early delivery stopped: {e}");
                return None;
            }
        }
    }
}

/// Copy up to `want` bytes at `at` from `source` to the same offset of
/// `target`: `copy_file_range`, or, once it has been refused across file
/// systems (or is unsupported), a read and a write through `plain`.
fn copy_range(
    source: &File,
    target: &File,
    at: u64,
    want: usize,
    plain: &mut Option<Vec<u8>>,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    if plain.is_none() {
        match crate::deliver::copy_file_range_at(source, target, at, want)? {
            Some(copied) => return Ok(copied),
            None => *plain = Some(vec![0; CHUNK]),
        }
    }
    let buffer = plain.get_or_insert_with(|| vec![0; CHUNK]);
    let n = source.read_at(&mut buffer[..want.min(CHUNK)], at)?;
    target.write_all_at(&buffer[..n], at)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chit::Digest;
    use crate::partial::Partial;
    use sha2::{Digest as _, Sha256};
    use std::fs;

    /// Across file systems (`/tmp` and the tmpfs `/dev/shm`, where both
    /// exist and differ) `copy_file_range` may be refused, and the copy goes
    /// on by read and write; on one file system it copies by itself. Either
    /// way the bytes arrive at their offset.
    #[test]
    fn copy_range_copies_across_file_systems_by_read_and_write() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let here = tempfile::tempdir().unwrap();
        let source_path = here.path().join("source");
        fs::write(&source_path, &bytes).unwrap();
        let source = File::open(&source_path).unwrap();
        let shm = std::path::Path::new("/dev/shm");
        let elsewhere = tempfile::tempdir_in(shm).ok();
        let device = |path: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(path).unwrap().dev()
        };
        let cross = elsewhere
            .as_ref()
            .is_some_and(|dir| device(dir.path()) != device(here.path()));
        for dir in [Some(&here), elsewhere.as_ref()].into_iter().flatten() {
            let target_path = dir.path().join("target");
            let target = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&target_path)
                .unwrap();
            let mut plain = None;
            // Two ranges, the second first: each lands at its offset.
            assert_eq!(
                copy_range(&source, &target, 100_000, 200_000, &mut plain).unwrap(),
                200_000
            );
            assert_eq!(
                copy_range(&source, &target, 0, 100_000, &mut plain).unwrap(),
                100_000
            );
            // (Without the fallback, a kernel that refuses the copy across
            // file systems, as 5.19 and later do, fails the unwraps above.)
            assert_eq!(fs::read(&target_path).unwrap(), bytes);
            assert!(plain.is_none() || cross, "fell back on one file system");
        }
        if !cross {
            eprintln!("SKIPPED the cross-file-system half: no separate /dev/shm here");
        }
    }

    fn target(root: &Dir, name: &str) -> std::io::Result<Target> {
        let (temp, file) = root.create_temp(name)?;
        Ok(Target {
            parent: root.open_dir(".")?,
            temp,
            file,
            name: name.to_owned(),
        })
    }

    /// A partial download of `total` bytes of `digest` in `cache`, and a
    /// chase following it into `file.bin` in `deliver`.
    fn chasing(
        cache: &std::path::Path,
        deliver: &std::path::Path,
        digest: Digest,
        total: u64,
    ) -> (Partial, Chase) {
        let mut partial = Partial::open(cache, digest, total).unwrap();
        let frontier = Arc::new(Frontier::default());
        let root = Dir::open_root(deliver).unwrap();
        let chase = Chase::start(
            0,
            "chit".into(),
            Partial::part_path(cache, &digest, total),
            total,
            Arc::clone(&frontier),
            move || target(&root, "file.bin"),
        )
        .unwrap();
        partial.follow(frontier);
        (partial, chase)
    }

    /// Wait until the files in `dir` (the chaser's temporary) hold at least
    /// `bytes` bytes.
    fn wait_for_copy(dir: &std::path::Path, bytes: u64) {
        let copied = || {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while copied() < bytes {
            assert!(
                std::time::Instant::now() < deadline,
                "the chaser copies nothing"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bytes written before a restart from 0 (here: what a changed object
    /// sent first) never end up in the copy.
    #[test]
    fn follows_the_writer_and_starts_over_after_a_truncation() {
        let cache = tempfile::tempdir().unwrap();
        let deliver = tempfile::tempdir().unwrap();
        let total = 3 * CHUNK as u64 + 123;
        let old: Vec<u8> = (0..total).map(|i| (i % 7) as u8).collect();
        let new: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let digest = Digest::from_bytes(Sha256::digest(&new).into());
        let (mut partial, chase) = chasing(cache.path(), deliver.path(), digest, total);
        for piece in old[..2 * CHUNK].chunks(1 << 20) {
            partial
                .append(bytes::Bytes::copy_from_slice(piece))
                .unwrap();
        }
        // The chaser has copied some of the old bytes...
        wait_for_copy(deliver.path(), CHUNK as u64);
        // ...when the download starts over.
        partial.reset().unwrap();
        for piece in new.chunks(1 << 20) {
            partial
                .append(bytes::Bytes::copy_from_slice(piece))
                .unwrap();
        }
        assert_eq!(partial.finished_digest(), Some(digest));
        let generation = partial.followed_generation().unwrap();
        let chased = chase.finish(generation, total).expect("a complete copy");
        assert!(fs::read(deliver.path().join(&chased.temp)).unwrap() == new);
        chased.rename_into_place().unwrap();
        assert!(fs::read(deliver.path().join("file.bin")).unwrap() == new);
    }

    /// The consumer owns the directory: a file it puts under the
    /// temporary's name during the download is never renamed into place.
    #[test]
    fn a_temporary_replaced_during_the_download_is_not_delivered() {
        let cache = tempfile::tempdir().unwrap();
        let deliver = tempfile::tempdir().unwrap();
        let total = 2 << 20;
        let bytes = vec![9u8; total as usize];
        let digest = Digest::from_bytes(Sha256::digest(&bytes).into());
        let (mut partial, chase) = chasing(cache.path(), deliver.path(), digest, total);
        partial.append(bytes::Bytes::from(bytes)).unwrap();
        let generation = partial.followed_generation().unwrap();
        let chased = chase.finish(generation, total).unwrap();
        let temp = deliver.path().join(&chased.temp);
        fs::remove_file(&temp).unwrap();
        fs::write(&temp, "the consumer's").unwrap();
        let err = chased.rename_into_place().unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert!(!deliver.path().join("file.bin").exists());
        assert_eq!(fs::read_dir(deliver.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_generation_or_an_abort_leaves_no_temporary() {
        let cache = tempfile::tempdir().unwrap();
        let deliver = tempfile::tempdir().unwrap();
        let total = 2 << 20;
        let bytes = vec![7u8; total as usize];
        let digest = Digest::from_bytes(Sha256::digest(&bytes).into());
        for mode in ["stale generation", "abort", "finished, then abort"] {
            let (mut partial, chase) = chasing(cache.path(), deliver.path(), digest, total);
            partial.append(bytes::Bytes::from(bytes.clone())).unwrap();
            match mode {
                "stale generation" => {
                    // Told of a later generation than the one it copied.
                    let generation = partial.followed_generation().unwrap();
                    assert!(chase.finish(generation + 1, total).is_none());
                }
                "abort" => chase.abort(),
                _ => {
                    // As `publish` does for a download with several waiters:
                    // the copy may be complete when the abort comes.
                    chase.wrap_up();
                    wait_for_copy(deliver.path(), total);
                    chase.abort();
                }
            }
            assert_eq!(
                fs::read_dir(deliver.path()).unwrap().count(),
                0,
                "temporary left ({mode})"
            );
            partial.reset().unwrap();
        }
    }
}
