//! The `chitd cache` commands (contract §8): work on a cache directory with
//! or without a daemon running on it.
//!
//! They never take the cache's `lock` (a running daemon holds it): what
//! they change, they change as the daemon itself does, by `rename(2)`. An
//! object appears under its name complete and durable (import), and leaves
//! it for `quarantine/` in one rename (verify), so the daemon's lookup (a
//! `stat` of the name) sees the object or no object, never part of one.
//! `gc` removes objects with `unlink(2)`: a delivery whose object goes
//! away between its lookup and its copy waits for a download, as on a
//! miss (see `gc`).
//!
//! Which directory is a cache: one that holds `sha256-v1/`. `import` also
//! takes a directory that does not exist yet or is empty, and makes it a
//! cache (as `chitd run` would); every other directory is refused, so a
//! mistyped `--cache` never has chitd's files written into someone else's
//! directory, or a report of "0 objects" for a directory that is no cache.

pub mod gc;
pub mod import;
pub mod ls;
pub mod verify;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{CacheArgs, CacheCommand};
use crate::durable::with_path;

/// The objects' directory in a cache (see `store`).
pub const OBJECTS_DIR: &str = "sha256-v1";

/// Run a `chitd cache` command; the process's exit code (0 ok, 1 a failure
/// that was named on stderr, 2 a configuration error).
pub fn run(args: &CacheArgs) -> u8 {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => return fail(1, format!("cannot read the current directory: {e}")),
    };
    let config = match crate::config::resolve_cache(&args.location, &cwd) {
        Ok(config) => config,
        Err(e) => return fail(2, format!("{e}")),
    };
    match &args.command {
        CacheCommand::Import(import) => import::main(&config.cache, &import.dirs, &cwd),
        CacheCommand::Verify(verify) => verify::main(&config.cache, verify.json),
        CacheCommand::Ls(ls) => ls::main(&config.cache, ls.json),
        CacheCommand::Gc(gc) => gc::main(&config, gc),
    }
}

/// Print `chitd: MESSAGE` on stderr; `code`.
fn fail(code: u8, message: String) -> u8 {
    eprintln!("chitd: {message}");
    code
}

/// A cache directory, opened without its lock.
#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    objects: PathBuf,
}

impl CacheDir {
    /// The cache at `root`, which must be one (hold `sha256-v1/`).
    pub fn open(root: &Path) -> io::Result<CacheDir> {
        let objects = root.join(OBJECTS_DIR);
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(not_a_cache(root, "it is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("there is no cache at {}", root.display()),
                ));
            }
            Err(e) => return Err(with_path(e, "inspecting", root)),
        }
        if !objects.is_dir() {
            return Err(not_a_cache(root, "it has no sha256-v1/ directory"));
        }
        Ok(CacheDir {
            root: root.to_path_buf(),
            objects,
        })
    }

    /// The cache at `root`; made (its `sha256-v1/`, durably) if `root` does
    /// not exist or is an empty directory.
    pub fn open_or_create(root: &Path) -> io::Result<CacheDir> {
        let empty = match fs::read_dir(root) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            // Not a directory, or unreadable: `open` says which.
            Err(_) => false,
        };
        if empty {
            crate::durable::create_dir_all(&root.join(OBJECTS_DIR))?;
        }
        CacheDir::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<cache>/sha256-v1`.
    pub fn objects(&self) -> &Path {
        &self.objects
    }
}

fn not_a_cache(root: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is not a chitd cache: {why} (refusing to work on it)",
            root.display()
        ),
    )
}

/// How many files are hashed at once: one per core.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The size of each worker's read buffer: big enough that a system call
/// is a small part of hashing it, small enough to stay in the core's cache.
const BUFFER: usize = 256 * 1024;

/// Open `path` for reading if it is (still) a regular file: never through a
/// symlink, never blocking on a FIFO put in its place.
fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no longer a regular file",
        ));
    }
    Ok((file, meta))
}

/// A byte-counting progress bar on stderr, drawn only when stderr is a
/// terminal (indicatif draws nothing otherwise). Its length grows as files
/// are found.
fn progress_bar(verb: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(verb);
    bar
}

/// Read `file` (at `path`) to its end through `buffer`, handing each piece
/// to `each` (and counting it on `bar`); returns the bytes read. A read
/// error names `path`; the errors of `each` are its own.
fn read_through(
    file: &mut File,
    path: &Path,
    buffer: &mut [u8],
    bar: &ProgressBar,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    use std::io::Read;
    let mut total = 0u64;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(with_path(e, "reading", path)),
        };
        each(&buffer[..n])?;
        total += n as u64;
        bar.inc(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_directory_with_sha256_v1_is_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = CacheDir::open(&missing).unwrap_err();
        assert!(error.to_string().contains("no cache at"), "{error}");
        let foreign = dir.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), "mine").unwrap();
        for error in [
            CacheDir::open(&foreign).unwrap_err(),
            CacheDir::open_or_create(&foreign).unwrap_err(),
        ] {
            assert!(error.to_string().contains("not a chitd cache"), "{error}");
            assert!(error.to_string().contains("foreign"), "{error}");
        }
        assert!(!foreign.join(OBJECTS_DIR).exists(), "nothing written");
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let error = CacheDir::open_or_create(&file).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    #[test]
    fn import_makes_a_new_or_empty_directory_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        for root in [dir.path().join("new/cache"), empty] {
            let cache = CacheDir::open_or_create(&root).unwrap();
            assert!(cache.objects().is_dir());
            CacheDir::open(&root).unwrap();
        }
    }
}
