//! Filesystem events → hints for the scheduler.
//!
//! The directory is the truth; events are hints. An inotify watch on each
//! consumer's `request/` turns a chit renamed in (which arrives as a
//! name-to event, not a create) into [`Hint::Chit`] within a millisecond or
//! so; anything the watcher cannot vouch for (queue overflow, an error)
//! becomes [`Hint::Rescan`]. The daemon also rescans at start and on a
//! timer, so a lost event costs latency, never a chit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::dir::Dir;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A name appeared in consumer N's `request/`.
    Chit(usize, std::ffi::OsString),
    /// Consumer N's `request/` may have changed in ways we missed.
    Rescan(usize),
    /// Rescan every consumer.
    RescanAll,
}

/// Keeps the watches alive; dropping it stops them.
#[derive(Debug)]
pub struct Watch {
    watcher: RecommendedWatcher,
    /// The path each `request/` is watched by, to its consumer's number.
    consumers: Arc<Mutex<HashMap<PathBuf, usize>>>,
}

impl Watch {
    /// Watch `dir`, the `request/` of consumer number `consumer` (added by
    /// a reload).
    pub fn add(&mut self, consumer: usize, dir: &Dir) -> notify::Result<()> {
        let path = watch_path(dir);
        lock(&self.consumers).insert(path.clone(), consumer);
        self.watcher
            .watch(&path, RecursiveMode::NonRecursive)
            .map_err(|e| with_remedy(e, dir.path()))
    }

    /// Stop watching `dir` (its consumer was taken out by a reload).
    pub fn remove(&mut self, dir: &Dir) {
        let path = watch_path(dir);
        lock(&self.consumers).remove(&path);
        // Not watched any more is fine: the point is that it is not.
        let _ = self.watcher.unwatch(&path);
    }

    /// Watch `new`, the `request/` made anew in place of `old` (watched
    /// now). Call it while `old` is still open: its watch is removed first,
    /// since its end (when its last descriptor closes) would otherwise take
    /// the new watch of the same path with it.
    pub fn rewatch(&mut self, old: &Dir, new: &Dir) -> notify::Result<()> {
        let (old_path, new_path) = (watch_path(old), watch_path(new));
        let consumer = lock(&self.consumers).remove(&old_path);
        // Not watched any more is fine: the point is that it is not.
        let _ = self.watcher.unwatch(&old_path);
        let Some(consumer) = consumer else {
            return Ok(());
        };
        lock(&self.consumers).insert(new_path.clone(), consumer);
        self.watcher
            .watch(&new_path, RecursiveMode::NonRecursive)
            .map_err(|e| with_remedy(e, new.path()))
    }
}

/// The path `dir` is watched by: `/proc/self/fd/<fd>`, which names the
/// very directory chitd opened, whatever its name holds now (a symlink
/// swapped in cannot redirect the watch), or its path where `/proc` is not
/// mounted.
fn watch_path(dir: &Dir) -> PathBuf {
    use std::os::fd::{AsFd, AsRawFd};
    let proc = Path::new("/proc/self/fd");
    if proc.is_dir() {
        proc.join(dir.as_fd().as_raw_fd().to_string())
    } else {
        dir.path().to_path_buf()
    }
}

fn lock(
    map: &Mutex<HashMap<PathBuf, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<PathBuf, usize>> {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Watch each of `request_dirs` (index = consumer number).
pub fn watch(request_dirs: &[&Dir], hints: UnboundedSender<Hint>) -> notify::Result<Watch> {
    let consumers: HashMap<PathBuf, usize> = request_dirs
        .iter()
        .enumerate()
        .map(|(index, dir)| (watch_path(dir), index))
        .collect();
    let consumers = Arc::new(Mutex::new(consumers));
    let known = Arc::clone(&consumers);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!("filesystem watcher error, rescanning every spool: {error}");
                let _ = hints.send(Hint::RescanAll);
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!("filesystem watcher overflowed; rescanning every spool");
            let _ = hints.send(Hint::RescanAll);
            return;
        }
        let arrival = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(
                    RenameMode::To | RenameMode::Both | RenameMode::Any
                ))
        );
        if !arrival {
            return;
        }
        // For a rename within the directory the last path is the new name.
        if let Some(path) = event.paths.last() {
            let consumer = path.parent().and_then(|dir| lock(&known).get(dir).copied());
            let Some((consumer, name)) = consumer.zip(path.file_name()) else {
                return;
            };
            if !crate::spool::is_chit_name(name) {
                return; // a dot-file, UTF-8 or not: never a chit
            }
            // UTF-8 or not: a name that is not is failed like any bad chit.
            let _ = hints.send(Hint::Chit(consumer, name.to_owned()));
        }
    })?;
    for dir in request_dirs {
        watcher
            .watch(&watch_path(dir), RecursiveMode::NonRecursive)
            .map_err(|e| with_remedy(e, dir.path()))?;
    }
    Ok(Watch { watcher, consumers })
}

fn with_remedy(error: notify::Error, dir: &Path) -> notify::Error {
    let remedy = match error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "; too many inotify watches: raise fs.inotify.max_user_watches (sysctl)"
        }
        _ => "",
    };
    notify::Error::generic(&format!("watching {}: {error}{remedy}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    #[tokio::test]
    async fn a_chit_renamed_in_is_a_hint() {
        let root = tempfile::tempdir().unwrap();
        let request = root.path().join("request");
        fs::create_dir(&request).unwrap();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let opened = Dir::open_root(&request).unwrap();
        let _watch = watch(&[&opened], sender).unwrap();
        fs::write(root.path().join("x"), "chit").unwrap();
        fs::write(request.join(".hidden"), "temp").unwrap();
        let not_utf8 = |name: &[u8]| request.join(std::ffi::OsStr::from_bytes(name));
        fs::write(not_utf8(b".hidden\xff"), "temp").unwrap();
        fs::rename(root.path().join("x"), request.join("x")).unwrap();
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), receiver.recv())
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(next().await, Hint::Chit(0, "x".into()));
        // A name that is not UTF-8 is a hint too, by its bytes.
        fs::write(not_utf8(b"bad\xff"), "chit").unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"bad\xff").to_owned();
        assert_eq!(next().await, Hint::Chit(0, bad));
    }

    /// The watch is on the directory chitd opened, not on whatever its
    /// name holds when the watch is made: a symlink swapped in (to another
    /// consumer's `request/`, say) redirects nothing, at start or at a
    /// rewatch.
    #[tokio::test]
    async fn the_opened_directory_is_watched_not_its_name() {
        let root = tempfile::tempdir().unwrap();
        let (request, moved, other) = (
            root.path().join("request"),
            root.path().join("moved"),
            root.path().join("other"),
        );
        for dir in [&request, &other] {
            fs::create_dir(dir).unwrap();
        }
        let opened = Dir::open_root(&request).unwrap();
        fs::rename(&request, &moved).unwrap();
        std::os::unix::fs::symlink(&other, &request).unwrap();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut watch = watch(&[&opened], sender).unwrap();
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), receiver.recv())
                .await
                .unwrap()
                .unwrap()
        };
        fs::write(other.join("theirs"), "chit").unwrap();
        fs::write(moved.join("ours"), "chit").unwrap();
        assert_eq!(next().await, Hint::Chit(0, "ours".into()));

        // Made anew: the new directory is watched, then its name swapped.
        let remade = root.path().join("remade");
        fs::create_dir(&remade).unwrap();
        let fresh = Dir::open_root(&remade).unwrap();
        fs::rename(&remade, root.path().join("remade-moved")).unwrap();
        std::os::unix::fs::symlink(&other, &remade).unwrap();
        watch.rewatch(&opened, &fresh).unwrap();
        fs::write(other.join("theirs-again"), "chit").unwrap();
        fs::write(moved.join("old"), "chit").unwrap();
        fs::write(root.path().join("remade-moved/new"), "chit").unwrap();
        assert_eq!(next().await, Hint::Chit(0, "new".into()));
    }
}
