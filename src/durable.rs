//! The few durability primitives everyone uses: fsync a directory, write
//! a small file atomically and durably (temp name, write, fsync, rename,
//! fsync the directory), and make a new file that has no name until its
//! bytes are durable (`O_TMPFILE`, then a link). Reviewed once, here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::io::Errno;

/// fsync a directory, so that renames and creations inside it survive a
/// power cut.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| with_path(e, "syncing directory", path))
}

/// `create_dir_all`, then fsync the parent of each directory it made, so
/// their names survive a power cut (what is later made durable inside them
/// counts on them).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.is_dir()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| with_path(e, "creating", path))?;
    for made in missing.iter().rev() {
        match made.parent() {
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
    }
    Ok(())
}

/// A process-unique suffix for temporary names: `<pid>.<n>`.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // The pid, asked once (each `getpid` is a system call).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    format!(
        "{}.{}",
        PID.get_or_init(std::process::id),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Write `bytes` to `path` so that a reader (or the next start after a crash)
/// sees either the old content or the new, never a torn file: write a
/// dot-named temporary beside it, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then_rename(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`write_atomic`] without the directory fsync: the content under `path`
/// is durable once it appears, the name itself only after the caller (or
/// the kernel) writes the directory back.
pub fn write_then_rename(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then_rename_mode(path, bytes, 0o666)
}

/// [`write_then_rename`] of a file created with permissions `mode` (less
/// the umask): 0o444 for cache objects, which nothing writes once they
/// are published.
pub fn write_then_rename_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = temp_beside(path);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(with_path(e, "writing", path));
    }
    Ok(())
}

/// A new temporary name beside `path`, in the one scheme of
/// [`crate::dir::temp_name`]: `.<name>.chitd-<pid>.<n>`.
fn temp_beside(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(crate::dir::temp_name(&name, &unique_suffix()))
}

/// Whether unnamed files ([`create_unnamed`]) work in this run: cleared
/// the first time a file system refuses one, or a link of one cannot be
/// made, so such a system costs one try and chitd then writes named
/// temporaries as before.
static UNNAMED: AtomicBool = AtomicBool::new(true);
/// Whether `linkat(AT_EMPTY_PATH)` works (it needs `CAP_DAC_READ_SEARCH`);
/// cleared at its first refusal, after which links go through
/// `/proc/self/fd`.
static EMPTY_PATH_LINKS: AtomicBool = AtomicBool::new(true);

/// A new regular file without a name in the directory `dir` (`dirfd`
/// and a path relative to it, `O_TMPFILE`), with permissions `mode` less
/// the umask, open for writing (and reading, with `read`); `None` where
/// the file system cannot make one. Named by [`link_unnamed`] once its
/// bytes are durable, it appears whole or not at all; a crash before that
/// leaves nothing to clean up. Two directory operations fewer than a
/// named temporary and its rename (the entry made, then moved).
pub fn create_unnamed(
    dirfd: impl AsFd,
    dir: &Path,
    mode: u32,
    read: bool,
) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    if !UNNAMED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let access = if read { OFlags::RDWR } else { OFlags::WRONLY };
    let flags = OFlags::TMPFILE | access | OFlags::CLOEXEC;
    match rustix::fs::openat(dirfd, dir, flags, Mode::from_raw_mode(mode)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        // Not on this file system (or kernel: `EISDIR`).
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
            UNNAMED.store(false, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Give `file`, made by [`create_unnamed`] in `dirfd`, the name `name`
/// there (a path relative to `dirfd`). A name already taken, by anything,
/// is an error of kind `AlreadyExists`: nothing is replaced or followed.
/// `Ok(false)` when links of unnamed files cannot be made in this process
/// (no `CAP_DAC_READ_SEARCH` and no `/proc`): then write a named temporary.
pub fn link_unnamed(file: &File, dirfd: impl AsFd, name: &Path) -> io::Result<bool> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::fd::AsRawFd;
    if EMPTY_PATH_LINKS.load(Ordering::Relaxed) {
        match linkat(file, "", &dirfd, name, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(true),
            // Refused without the capability.
            Err(Errno::NOENT | Errno::PERM) => EMPTY_PATH_LINKS.store(false, Ordering::Relaxed),
            Err(e) => return Err(e.into()),
        }
    }
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    match linkat(CWD, proc.as_str(), &dirfd, name, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").is_dir() => {
            UNNAMED.store(false, Ordering::Relaxed);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Write `bytes` as the new file `path` (permissions `mode` less the
/// umask), durably before it has its name, in two halves: this one writes
/// an unnamed file in `path`'s directory and starts its writeback
/// ([`start_writeback`]); [`Unnamed::link`] fsyncs it, then links it.
/// `None` where unnamed files do not work here (nothing was made): use
/// [`write_then_rename_mode`] then. Like it, the caller syncs the
/// directory. Many files written this way before any is flushed share
/// their flushes (see [`Unnamed::link`]).
pub fn write_unnamed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Option<Unnamed>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let created = create_unnamed(rustix::fs::CWD, dir, mode, false);
    let Some(mut file) = created.map_err(|e| with_path(e, "creating a file in", dir))? else {
        return Ok(None);
    };
    file.write_all(bytes)
        .map_err(|e| with_path(e, "writing", path))?;
    start_writeback(&file, 0, 0);
    Ok(Some(Unnamed {
        file,
        path: path.to_path_buf(),
    }))
}

/// A new file of [`write_unnamed`]: written, not yet durable, no name yet.
/// Dropped, it leaves nothing behind.
#[derive(Debug)]
pub struct Unnamed {
    file: File,
    path: PathBuf,
}

impl Unnamed {
    /// [`write_unnamed`]'s second half: fsync, then link under its path.
    /// `Ok(false)` if the path exists already or links of unnamed files
    /// cannot be made here (nothing was named).
    ///
    /// The writeback of every file of a batch was started before the first
    /// of them is flushed, so the first flush's journal commit takes all
    /// of their new blocks, and the others find little left to do: one
    /// thread flushes a batch about as fast as a thread per file would,
    /// at about half the CPU.
    pub fn link(self) -> io::Result<bool> {
        let linked = self
            .file
            .sync_all()
            .and_then(|()| link_unnamed(&self.file, rustix::fs::CWD, &self.path));
        match linked {
            Ok(linked) => Ok(linked),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(with_path(e, "writing", &self.path)),
        }
    }
}

/// Ask the kernel to start writing `[start, start + length)` of `file`
/// (a `length` of 0: to its end) to disk now, without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so
/// the disk works while we go on and a later fsync finds little left to do.
/// Only a hint: durability still comes from that fsync, so a failure here
/// is ignored.
pub fn start_writeback(file: &File, start: u64, length: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(length)) = (
        libc::off64_t::try_from(start),
        libc::off64_t::try_from(length),
    ) else {
        return;
    };
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let result = unsafe {
        libc::sync_file_range(file.as_raw_fd(), start, length, libc::SYNC_FILE_RANGE_WRITE)
    };
    if result != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// Whether `error` means this process ran out of descriptors or memory
/// (`EMFILE`, `ENFILE`, `ENOMEM`): a passing state of chitd or the system,
/// never a fault of the chit at hand, which is tried again later instead
/// of being failed for it. Sees through [`with_path`].
pub fn out_of_resources(error: &io::Error) -> bool {
    match error.raw_os_error() {
        Some(os) => matches!(os, libc::EMFILE | libc::ENFILE | libc::ENOMEM),
        None => error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<PathError>())
            .is_some_and(|inner| out_of_resources(&inner.error)),
    }
}

/// Attach what was being done and to which path to an I/O error, keeping
/// its kind so callers can still match on it (and the error itself, for
/// [`out_of_resources`]).
pub fn with_path(error: io::Error, doing: &str, path: &Path) -> io::Error {
    let message = format!("{doing} {}: {error}", path.display());
    io::Error::new(error.kind(), PathError { message, error })
}

/// An I/O error with what was being done and where ([`with_path`]).
#[derive(Debug)]
struct PathError {
    message: String,
    error: io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PathError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    /// Both halves of a new file in a row.
    fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
        match write_unnamed(path, bytes, mode)? {
            Some(unnamed) => unnamed.link(),
            None => Ok(false),
        }
    }

    /// A new file is written whole under its name, with its mode, and
    /// leaves nothing else behind; a name taken is left alone.
    #[test]
    fn an_unnamed_file_has_no_name_until_it_is_linked() {
        let dir = tempfile::tempdir().unwrap();
        let count = || fs::read_dir(dir.path()).unwrap().count();
        let path = dir.path().join("object");
        let Some(first) = write_unnamed(&path, b"one", 0o444).unwrap() else {
            // Only where the file system makes no unnamed files.
            assert!(!UNNAMED.load(Ordering::Relaxed));
            return;
        };
        let second = write_unnamed(&path, b"two", 0o444).unwrap().unwrap();
        assert_eq!(count(), 0, "written, not named");
        drop(second);
        assert_eq!(count(), 0, "dropped, nothing left");
        assert!(first.link().unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(count(), 1);
    }

    #[test]
    fn write_new_makes_a_new_file_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        if !write_new(&path, b"one", 0o444).unwrap() {
            // Only where the file system makes no unnamed files.
            assert!(!UNNAMED.load(Ordering::Relaxed));
            return;
        }
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "read-only: {mode:o}");
        assert!(!write_new(&path, b"two", 0o444).unwrap(), "a name taken");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let missing = write_new(&dir.path().join("no/such/dir/x"), b"x", 0o444).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing.to_string().contains("no/such/dir"), "{missing}");
    }

    /// Without `CAP_DAC_READ_SEARCH` (or once refused it), links go
    /// through `/proc/self/fd` (other tests may take that way meanwhile:
    /// it works for them too).
    #[test]
    fn unnamed_files_are_linked_through_proc_without_the_capability() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut file) = create_unnamed(rustix::fs::CWD, dir.path(), 0o644, false).unwrap()
        else {
            return; // This file system makes no unnamed files.
        };
        file.write_all(b"by proc").unwrap();
        EMPTY_PATH_LINKS.store(false, Ordering::Relaxed);
        let path = dir.path().join("linked");
        assert!(link_unnamed(&file, rustix::fs::CWD, &path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"by proc");
    }

    #[test]
    fn temporaries_are_named_in_the_one_scheme() {
        let temp = temp_beside(Path::new("/cache/partial-v1/d-5.progress"));
        assert_eq!(temp.parent(), Some(Path::new("/cache/partial-v1")));
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".d-5.progress.chitd-") && crate::dir::Dir::is_temp_name(name),
            "{name}"
        );
        assert_ne!(
            temp,
            temp_beside(Path::new("/cache/partial-v1/d-5.progress"))
        );
    }

    #[test]
    fn out_of_resources_is_seen_through_paths() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let wrapped = with_path(emfile, "opening", Path::new("/spool/fetch/x"));
        let twice = with_path(wrapped, "delivering", Path::new("/deliver/x"));
        assert!(out_of_resources(&twice));
        assert_eq!(
            twice.to_string(),
            format!(
                "delivering /deliver/x: opening /spool/fetch/x: {}",
                io::Error::from_raw_os_error(libc::EMFILE)
            )
        );
        let missing = with_path(
            io::Error::from_raw_os_error(libc::ENOENT),
            "opening",
            Path::new("/x"),
        );
        assert!(!out_of_resources(&missing));
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(!out_of_resources(&io::Error::other("no OS error")));
    }

    #[test]
    fn errors_name_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x"), "{err}");
    }
}
