//! The few durability primitives everyone uses: fsync a directory, and write
//! a small file atomically and durably (temp name, write, fsync, rename,
//! fsync the directory). Reviewed once, here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Ask the kernel to start writing `[start, start + length)` of `file` to
/// disk now, without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so
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
