//! The daemon's in-flight progress, published for `chitd status`.
//!
//! While downloads run, the daemon rewrites `<spool>/.chitd-status.json`
//! (dot name: not a chit, not a state) every second with its pid and the
//! consumer's chits being downloaded (bytes done / total, the rate sampled
//! by the daemon's `rates`, the host of the source asked last). It is replaced by
//! rename, never written in place (so a symlink planted there is replaced,
//! not followed), and removed at a clean exit; a temporary a crash left
//! behind is removed at the next start. `status` trusts it only while
//! the pid it names is alive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::dir::{Dir, Kind};

pub const STATUS_FILE: &str = ".chitd-status.json";
/// A status file larger than this is not the daemon's and is ignored.
pub const MAX_STATUS_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightChit {
    pub chit: String,
    pub digest: String,
    pub path: String,
    pub done: u64,
    pub total: u64,
    /// Bytes per second, sampled by the daemon (0: not known yet, or not
    /// progressing).
    #[serde(default)]
    pub rate: u64,
    /// The host of the source the download asked last.
    #[serde(default)]
    pub source: Option<String>,
    /// The chit was removed from `fetch/`, and with it the last chit
    /// waiting for this download: it is being stopped (its partial kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

impl InFlightChit {
    /// Seconds until done at the current rate; `None` without one.
    pub fn eta_seconds(&self) -> Option<u64> {
        let left = self.total.saturating_sub(self.done);
        (self.rate > 0).then(|| left.div_ceil(self.rate))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub pid: u32,
    pub downloads: Vec<InFlightChit>,
}

#[derive(Debug)]
pub struct StatusFile {
    spool: PathBuf,
    /// The spool root, opened once at start like the state directories: a
    /// consumer that can later replace its spool directory (with a symlink
    /// to `/etc`, say) cannot redirect the status writes.
    root: Option<Dir>,
    /// What was last written, to skip identical rewrites.
    last: Mutex<Option<Vec<InFlightChit>>>,
    /// Whether a failure to publish was logged as a warning already (one
    /// is enough; the rest go to debug).
    warned: std::sync::atomic::AtomicBool,
}

impl StatusFile {
    pub fn new(spool: &Path) -> StatusFile {
        let root = Dir::open_root(spool)
            .map_err(|e| tracing::warn!("cannot publish in-flight progress: {e}"))
            .ok();
        StatusFile {
            spool: spool.to_path_buf(),
            root,
            last: Mutex::new(None),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Publish the consumer's in-flight downloads (best effort: a failure
    /// only costs `status` its progress column).
    pub fn write(&self, downloads: Vec<InFlightChit>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() == Some(&downloads) {
            return;
        }
        let published = Published {
            pid: std::process::id(),
            downloads,
        };
        let Some(root) = &self.root else {
            return;
        };
        let result = (|| {
            let (temp, mut file) = root.create_temp("status")?;
            let json = serde_json::to_vec(&published).map_err(std::io::Error::other)?;
            let written = file
                .write_all(&json)
                .and_then(|()| root.rename(&temp, root, STATUS_FILE));
            if written.is_err() {
                let _ = root.remove_file(&temp);
            }
            written
        })();
        match result {
            Ok(()) => *last = Some(published.downloads),
            Err(e) if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                tracing::warn!(spool = %self.spool.display(), "cannot publish in-flight progress for `chitd status` (is {STATUS_FILE} something else?): {e}");
            }
            Err(e) => tracing::debug!(spool = %self.spool.display(), "cannot publish status: {e}"),
        }
    }

    /// Remove the temporaries of status writes a crash cut short
    /// (`.status.chitd-<pid>.<n>` in the spool root). Best effort.
    pub fn remove_temporaries(&self) {
        let Some(root) = &self.root else {
            return;
        };
        for name in root.names().unwrap_or_default() {
            if name.starts_with(".status.chitd-")
                && Dir::is_temp_name(&name)
                && root.kind(&name).is_ok_and(|kind| kind == Kind::File)
                && root.remove_file(&name).is_ok()
            {
                tracing::info!(spool = %self.spool.display(), name, "removed a status temporary left by an earlier run");
            }
        }
    }

    pub fn remove(&self) {
        if let Some(root) = &self.root {
            let _ = root.remove_file(STATUS_FILE);
        }
    }

    /// Read what a running daemon published for the spool, if that daemon
    /// is still alive. The consumer can write there, so the file is opened
    /// like a chit (a symlink, FIFO or device planted there is refused, not
    /// followed, opened or waited on) and read up to [`MAX_STATUS_BYTES`].
    pub fn read(spool: &Path) -> Option<Published> {
        use std::io::Read;
        if !spool.is_dir() {
            return None;
        }
        let file = Dir::open_existing(spool)
            .ok()?
            .open_regular(STATUS_FILE)
            .ok()?;
        let mut text = Vec::new();
        file.take(MAX_STATUS_BYTES + 1)
            .read_to_end(&mut text)
            .ok()?;
        if text.len() as u64 > MAX_STATUS_BYTES {
            return None;
        }
        let published: Published = serde_json::from_slice(&text).ok()?;
        let pid = rustix::process::Pid::from_raw(i32::try_from(published.pid).ok()?)?;
        rustix::process::test_kill_process(pid).ok()?;
        Some(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn chit() -> InFlightChit {
        InFlightChit {
            chit: "c".into(),
            digest: "d".into(),
            path: "p".into(),
            done: 1,
            total: 2,
            rate: 0,
            source: None,
            stopping: false,
        }
    }

    #[test]
    fn publishes_by_rename_and_reads_back_while_the_pid_lives() {
        let dir = tempfile::tempdir().unwrap();
        let status = StatusFile::new(dir.path());
        status.write(vec![chit()]);
        let read = StatusFile::read(dir.path()).unwrap();
        assert_eq!(
            (read.pid, read.downloads),
            (std::process::id(), vec![chit()])
        );
        status.remove();
        assert!(StatusFile::read(dir.path()).is_none());
    }

    #[test]
    fn a_directory_planted_in_its_place_is_left_alone_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join(STATUS_FILE);
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join("keep"), "consumer's").unwrap();
        let status = StatusFile::new(dir.path());
        status.write(vec![chit()]);
        assert!(status.warned.load(Ordering::Relaxed));
        assert_eq!(std::fs::read(planted.join("keep")).unwrap(), b"consumer's");
        assert!(StatusFile::read(dir.path()).is_none());
        // No temporary is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
