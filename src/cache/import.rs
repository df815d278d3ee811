//! `chitd cache import DIR...`: bring existing files (a distfiles
//! directory, a backup) into the cache.
//!
//! Each DIR is walked recursively (`walkdir`), never following a symlink
//! below it (a DIR named on the command line that is itself a symlink is
//! followed, as `find -H` does). Regular files are imported, hidden ones
//! included; symlinks, FIFOs, sockets and devices are skipped and counted;
//! the cache itself is never walked into. A DIR may also be a single file.
//!
//! The files are read on every core: a worker copies a file into a
//! dot-named temporary in `sha256-v1/` (`.import.chitd-<pid>.<n>`, mode 0444),
//! hashing the bytes as it copies them, so each file is read once and the
//! original is never changed, linked or moved. A publisher thread then makes
//! a batch of temporaries durable with one `syncfs(2)` (one cache flush for
//! hundreds of files, instead of one per file) and renames each to
//! `sha256-v1/ab/<hex>` with `RENAME_NOREPLACE`: an object already there is
//! kept (counted "already cached") and the temporary removed. At the end
//! each fan-out directory that gained a name is fsync'd once, so the import
//! is durable when the command exits.
//!
//! A running daemon finds an imported object by its name at once, as it
//! finds its own. A temporary left by a crash is removed by the daemon's
//! next start (it removes every dot-named file in the cache). A file that
//! cannot be read (or copied) is named, nothing of it is left in the cache,
//! the other files are imported, and the command exits 1.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use indicatif::ProgressBar;
use sha2::Digest as _;
use walkdir::WalkDir;

use super::{BUFFER, CacheDir, fail, open_regular, progress_bar, read_through, workers};
use crate::chit::Digest;
use crate::durable::{start_writeback, unique_suffix, with_path};
use crate::store::OBJECT_MODE;

/// A batch of temporaries is made durable and published once it holds
/// this many bytes or files (or the walk has ended).
const BATCH_BYTES: u64 = 256 << 20;
const BATCH_FILES: usize = 1000;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files added to the cache, and their bytes.
    pub added: u64,
    pub bytes_added: u64,
    /// Files whose object the cache already held (or that another file of
    /// this import added first).
    pub already_cached: u64,
    /// Entries that are not regular files, by kind.
    pub skipped: BTreeMap<Skipped, u64>,
    /// Files that could not be imported (each named on stderr).
    pub failed: u64,
}

/// What is skipped, and why: it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skipped {
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
}

impl Skipped {
    fn of(kind: fs::FileType) -> Option<Skipped> {
        use std::os::unix::fs::FileTypeExt;
        Some(if kind.is_symlink() {
            Skipped::Symlink
        } else if kind.is_fifo() {
            Skipped::Fifo
        } else if kind.is_socket() {
            Skipped::Socket
        } else if kind.is_block_device() {
            Skipped::BlockDevice
        } else if kind.is_char_device() {
            Skipped::CharDevice
        } else {
            return None;
        })
    }

    fn counted(self, n: u64) -> String {
        let (one, many) = match self {
            Skipped::Symlink => ("symlink", "symlinks"),
            Skipped::Fifo => ("FIFO", "FIFOs"),
            Skipped::Socket => ("socket", "sockets"),
            Skipped::BlockDevice => ("block device", "block devices"),
            Skipped::CharDevice => ("character device", "character devices"),
        };
        format!("{n} {}", if n == 1 { one } else { many })
    }
}

impl Report {
    /// The summary printed after every import.
    pub fn render(&self) -> String {
        let files = |n: u64| format!("{n} file{}", if n == 1 { "" } else { "s" });
        let mut text = format!(
            "added:          {} ({} bytes, {})\nalready cached: {}\n",
            files(self.added),
            self.bytes_added,
            indicatif::BinaryBytes(self.bytes_added),
            files(self.already_cached),
        );
        let skipped: u64 = self.skipped.values().sum();
        let why: Vec<String> = self.skipped.iter().map(|(k, &n)| k.counted(n)).collect();
        text += &match skipped {
            0 => "skipped:        0\n".to_string(),
            _ => format!("skipped:        {skipped} ({})\n", why.join(", ")),
        };
        if self.failed > 0 {
            text += &format!("failed:         {} (named above)\n", files(self.failed));
        }
        text
    }
}

/// `chitd cache import`: the exit code.
pub fn main(cache_root: &Path, dirs: &[PathBuf], cwd: &Path) -> u8 {
    let cache = match CacheDir::open_or_create(cache_root) {
        Ok(cache) => cache,
        Err(e) => return fail(1, format!("{e}")),
    };
    let roots = match roots(&cache, dirs, cwd) {
        Ok(roots) => roots,
        Err(e) => return fail(1, e),
    };
    let bar = progress_bar("importing");
    let result = import(&cache, &roots, &bar);
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            print!("{}", report.render());
            if report.failed > 0 {
                return fail(
                    1,
                    format!("{} could not be imported", plural(report.failed)),
                );
            }
            0
        }
        Err(e) => fail(1, format!("{e}")),
    }
}

fn plural(files: u64) -> String {
    format!("{files} file{}", if files == 1 { "" } else { "s" })
}

/// The DIRs to walk: each must exist, and lie outside the cache (whose
/// own files and temporaries are not to be imported).
fn roots(cache: &CacheDir, dirs: &[PathBuf], cwd: &Path) -> Result<Vec<PathBuf>, String> {
    let cache_root = fs::canonicalize(cache.root())
        .map_err(|e| format!("{}", with_path(e, "resolving", cache.root())))?;
    dirs.iter()
        .map(|dir| {
            let root = fs::canonicalize(cwd.join(dir))
                .map_err(|e| format!("cannot import {}: {e}", dir.display()))?;
            if root.starts_with(&cache_root) {
                return Err(format!(
                    "cannot import {}: it is inside the cache {}",
                    dir.display(),
                    cache.root().display()
                ));
            }
            Ok(root)
        })
        .collect()
}

/// Import every regular file under `roots` (canonical paths outside the
/// cache) into `cache`.
pub fn import(cache: &CacheDir, roots: &[PathBuf], bar: &ProgressBar) -> io::Result<Report> {
    let report = Mutex::new(Report::default());
    let mut publisher = Publisher::new(cache)?;
    let workers = workers();
    let (to_workers, paths) = sync_channel::<PathBuf>(workers * 16);
    // Room for a whole batch: the workers copy the next one while the
    // publisher waits for the last to reach the disk.
    let (to_publisher, copies) = sync_channel::<Copied>(BATCH_FILES);
    let paths = Mutex::new(paths);
    let skip =
        fs::canonicalize(cache.root()).map_err(|e| with_path(e, "resolving", cache.root()))?;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let to_publisher = to_publisher.clone();
            let (paths, report) = (&paths, &report);
            scope.spawn(move || copy_files(cache.objects(), paths, to_publisher, report, bar));
        }
        drop(to_publisher);
        let publishing = scope.spawn(|| publisher.run(copies, &report, bar));
        walk(roots, &skip, to_workers, &report, bar);
        publishing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    Ok(report.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Name a file that could not be imported (above the progress bar).
fn failed(report: &Mutex<Report>, bar: &ProgressBar, error: impl std::fmt::Display) {
    bar.suspend(|| eprintln!("chitd: {error}"));
    lock(report).failed += 1;
}

fn lock(report: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report.lock().unwrap_or_else(|e| e.into_inner())
}

/// Walk `roots`, sending each regular file to the workers and counting the
/// other entries; never into `skip` (the cache).
fn walk(
    roots: &[PathBuf],
    skip: &Path,
    to_workers: SyncSender<PathBuf>,
    report: &Mutex<Report>,
    bar: &ProgressBar,
) {
    for root in roots {
        let entries = WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|entry| entry.path() != skip);
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_path_buf();
                    let error = io::Error::from(e);
                    failed(report, bar, with_path(error, "reading", &path));
                    continue;
                }
            };
            let kind = entry.file_type();
            if kind.is_dir() {
                continue;
            }
            if let Some(skipped) = Skipped::of(kind) {
                *lock(report).skipped.entry(skipped).or_default() += 1;
                continue;
            }
            if !bar.is_hidden() {
                bar.inc_length(entry.metadata().map_or(0, |m| m.len()));
            }
            if to_workers.send(entry.into_path()).is_err() {
                return; // The workers are gone: the publisher failed.
            }
        }
    }
}

/// A file copied into a temporary in `sha256-v1/`, not yet published.
struct Copied {
    /// The temporary's name in `sha256-v1/`.
    temp: String,
    digest: Digest,
    size: u64,
    source: PathBuf,
}

/// A worker: copy each file it is sent into a temporary, hashing it.
fn copy_files(
    objects: &Path,
    paths: &Mutex<Receiver<PathBuf>>,
    to_publisher: SyncSender<Copied>,
    report: &Mutex<Report>,
    bar: &ProgressBar,
) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let next = paths.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(source) = next else {
            return;
        };
        let opened = open_regular(&source).map_err(|e| with_path(e, "opening", &source));
        match opened.and_then(|(file, _)| copy_in(objects, file, source, &mut buffer, bar)) {
            Ok(copied) => {
                if let Err(unsent) = to_publisher.send(copied) {
                    let _ = fs::remove_file(objects.join(&unsent.0.temp));
                    return;
                }
            }
            Err(e) => failed(report, bar, e),
        }
    }
}

/// Copy `file` (opened from `source`) into a new read-only temporary in
/// `objects`, hashing the bytes copied. On error nothing is left behind.
fn copy_in(
    objects: &Path,
    mut file: File,
    source: PathBuf,
    buffer: &mut [u8],
    bar: &ProgressBar,
) -> io::Result<Copied> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = crate::dir::temp_name("import", &unique_suffix());
    let temp_path = objects.join(&temp);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(OBJECT_MODE)
        .open(&temp_path)
        .map_err(|e| with_path(e, "creating", &temp_path))?;
    match copy_hashing(&mut file, &source, &mut out, &temp_path, buffer, bar) {
        Ok((digest, size)) => {
            start_writeback(&out, 0, size);
            Ok(Copied {
                temp,
                digest,
                size,
                source,
            })
        }
        Err(e) => {
            drop(out);
            let _ = fs::remove_file(&temp_path);
            Err(e)
        }
    }
}

/// Copy `file` (at `source`) to `out` (at `temp`), hashing the bytes; make
/// `out` read-only (whatever the umask). Errors name the path at fault.
fn copy_hashing(
    file: &mut File,
    source: &Path,
    out: &mut File,
    temp: &Path,
    buffer: &mut [u8],
    bar: &ProgressBar,
) -> io::Result<(Digest, u64)> {
    use std::os::unix::fs::PermissionsExt;
    let mut hasher = sha2::Sha256::new();
    let size = read_through(file, source, buffer, bar, |bytes| {
        hasher.update(bytes);
        out.write_all(bytes)
            .map_err(|e| with_path(e, "writing", temp))
    })?;
    out.set_permissions(fs::Permissions::from_mode(OBJECT_MODE))
        .map_err(|e| with_path(e, "making read-only", temp))?;
    Ok((Digest::from_bytes(hasher.finalize().into()), size))
}

/// Publishes the workers' temporaries, in durable batches.
struct Publisher<'a> {
    objects: &'a Path,
    /// `sha256-v1/`, open: the batches' `syncfs`, and the renames.
    dir: OwnedFd,
    batch: Vec<Copied>,
    batch_bytes: u64,
    /// The fan-out directories known to exist, and those given a name.
    known: [bool; 256],
    touched: [bool; 256],
    /// Whether `sha256-v1/` itself changed (a fan-out directory made).
    made_fanout: bool,
}

impl<'a> Publisher<'a> {
    fn new(cache: &'a CacheDir) -> io::Result<Publisher<'a>> {
        let objects = cache.objects();
        let dir = File::open(objects).map_err(|e| with_path(e, "opening", objects))?;
        Ok(Publisher {
            objects,
            dir: dir.into(),
            batch: Vec::new(),
            batch_bytes: 0,
            known: [false; 256],
            touched: [false; 256],
            made_fanout: false,
        })
    }

    /// Publish what the workers copy, until they are done; then make the
    /// new names durable.
    fn run(
        &mut self,
        copies: Receiver<Copied>,
        report: &Mutex<Report>,
        bar: &ProgressBar,
    ) -> io::Result<()> {
        for copied in copies {
            self.batch_bytes += copied.size;
            self.batch.push(copied);
            if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
                self.publish_batch(report, bar);
            }
        }
        self.publish_batch(report, bar);
        self.sync_dirs()
    }

    /// Make the batch's temporaries durable (one `syncfs`), then rename
    /// each into place unless its object is there already.
    fn publish_batch(&mut self, report: &Mutex<Report>, bar: &ProgressBar) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if batch.is_empty() {
            return;
        }
        if let Err(e) = rustix::fs::syncfs(&self.dir) {
            let error = with_path(e.into(), "syncing the file system of", self.objects);
            for copied in batch {
                self.remove(&copied.temp);
                failed(report, bar, format!("{}: {error}", copied.source.display()));
            }
            return;
        }
        for copied in batch {
            match self.rename_into_place(&copied) {
                Ok(true) => {
                    let mut report = lock(report);
                    report.added += 1;
                    report.bytes_added += copied.size;
                }
                Ok(false) => lock(report).already_cached += 1,
                Err(e) => {
                    self.remove(&copied.temp);
                    let object = self.objects.join(copied.digest.to_hex());
                    let error = with_path(e, "publishing", &object);
                    failed(report, bar, format!("{}: {error}", copied.source.display()));
                }
            }
        }
    }

    /// Rename the temporary to its object's name: `Ok(false)` (and the
    /// temporary removed) if the object is there already.
    fn rename_into_place(&mut self, copied: &Copied) -> io::Result<bool> {
        use rustix::fs::{RenameFlags, renameat_with};
        let fanout = usize::from(copied.digest.as_bytes()[0]);
        let hex = copied.digest.to_hex();
        self.make_fanout(fanout, &hex[..2])?;
        let target = format!("{}/{hex}", &hex[..2]);
        match renameat_with(
            &self.dir,
            copied.temp.as_str(),
            &self.dir,
            target.as_str(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                self.touched[fanout] = true;
                Ok(true)
            }
            Err(rustix::io::Errno::EXIST) => {
                self.remove(&copied.temp);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn make_fanout(&mut self, fanout: usize, name: &str) -> io::Result<()> {
        if self.known[fanout] {
            return Ok(());
        }
        let mode = rustix::fs::Mode::from_raw_mode(0o755);
        match rustix::fs::mkdirat(&self.dir, name, mode) {
            Ok(()) => self.made_fanout = true,
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(with_path(e.into(), "creating", &self.objects.join(name))),
        }
        self.known[fanout] = true;
        Ok(())
    }

    fn remove(&self, temp: &str) {
        let _ = rustix::fs::unlinkat(&self.dir, temp, rustix::fs::AtFlags::empty());
    }

    /// fsync each fan-out directory that gained a name, then `sha256-v1/`
    /// (its temporaries gone, its new fan-out directories).
    fn sync_dirs(&self) -> io::Result<()> {
        for (fanout, _) in self.touched.iter().enumerate().filter(|(_, t)| **t) {
            crate::durable::sync_dir(&self.objects.join(format!("{fanout:02x}")))?;
        }
        if self.made_fanout || self.touched.contains(&true) {
            rustix::fs::fsync(&self.dir)
                .map_err(|e| with_path(e.into(), "syncing directory", self.objects))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
