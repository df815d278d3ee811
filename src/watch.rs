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

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A name appeared in consumer N's `request/`.
    Chit(usize, String),
    /// Consumer N's `request/` may have changed in ways we missed.
    Rescan(usize),
    /// Rescan every consumer.
    RescanAll,
}

/// Keeps the watches alive; dropping it stops them.
#[derive(Debug)]
pub struct Watch {
    watcher: RecommendedWatcher,
}

impl Watch {
    /// Watch `dir`, one of the directories given to [`watch`], again: it
    /// was removed and made anew. Call it while the old directory is still
    /// open: the old watch is removed first, since the old directory's
    /// end (when its last descriptor closes) would otherwise take the new
    /// watch of the same path with it.
    pub fn rewatch(&mut self, dir: &Path) -> notify::Result<()> {
        // Not watched any more is fine: the point is that it is not.
        let _ = self.watcher.unwatch(dir);
        self.watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| with_remedy(e, dir))
    }
}

/// Watch each of `request_dirs` (index = consumer number).
pub fn watch(request_dirs: &[PathBuf], hints: UnboundedSender<Hint>) -> notify::Result<Watch> {
    let consumers: HashMap<PathBuf, usize> = request_dirs
        .iter()
        .enumerate()
        .map(|(index, dir)| (dir.clone(), index))
        .collect();
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
            let consumer = path.parent().and_then(|dir| consumers.get(dir));
            let Some((&consumer, name)) = consumer.zip(path.file_name()) else {
                return;
            };
            if !crate::spool::is_chit_name(name) {
                return; // a dot-file, UTF-8 or not: never a chit
            }
            let _ = hints.send(match name.to_str() {
                Some(name) => Hint::Chit(consumer, name.to_owned()),
                // Not UTF-8: only a scan can fail it (`Spool::fail_names_not_utf8`).
                None => Hint::Rescan(consumer),
            });
        }
    })?;
    for dir in request_dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| with_remedy(e, dir))?;
    }
    Ok(Watch { watcher })
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
        let _watch = watch(std::slice::from_ref(&request), sender).unwrap();
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
        // A name that is not UTF-8 cannot be a hint: only a scan finds it.
        fs::write(not_utf8(b"bad\xff"), "chit").unwrap();
        assert_eq!(next().await, Hint::Rescan(0));
    }
}
