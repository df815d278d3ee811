//! What the cache holds, as `chitd cache ls` shows it and `chitd cache gc`
//! weighs it: each object of `sha256-v1/` with its size, its last use (its
//! mtime: see `uses`) and the paths it was delivered as (from the
//! last-use record, newest first; none for an object never delivered
//! since it was recorded, such as an imported one).
//!
//! Read-only, and safe beside a running daemon: an object that goes away
//! during the walk is left out. The walk is also what `gc` and the
//! daemon's collection weigh.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{CacheDir, OBJECTS_DIR, fail};
use crate::chit::Digest;
use crate::durable::with_path;
use crate::uses::{self, UsesError};

/// One object of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub digest: Digest,
    pub size: u64,
    /// Its mtime: when it was last delivered, or published or imported if
    /// it has not been delivered since.
    pub last_used: SystemTime,
}

impl Object {
    /// Where the object is in the cache at `cache`.
    pub fn path(&self, cache: &Path) -> PathBuf {
        let hex = self.digest.to_hex();
        cache.join(OBJECTS_DIR).join(&hex[..2]).join(hex)
    }
}

/// Why the cache cannot be listed or collected.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Uses(#[from] UsesError),
}

/// Threads that walk the cache, or remove objects, at once: each waits
/// for the disk on a cold cache (an inode to read, a directory to write),
/// and the disk serves their requests together.
pub const THREADS: usize = 8;

/// Every object of the cache at `cache`: regular files named by their
/// digest in the fan-out directory of its first byte (temporaries and
/// anything else are not objects). The fan-out directories are read by
/// [`THREADS`] threads.
pub fn walk(cache: &Path) -> io::Result<Vec<Object>> {
    let root = cache.join(OBJECTS_DIR);
    let mut fanouts = Vec::new();
    for fanout in fs::read_dir(&root).map_err(|e| with_path(e, "reading", &root))? {
        let fanout = fanout.map_err(|e| with_path(e, "reading", &root))?;
        let is_dir = fanout.file_type().is_ok_and(|kind| kind.is_dir());
        if let Some(prefix) = fanout
            .file_name()
            .to_str()
            .filter(|n| n.len() == 2 && is_dir)
        {
            fanouts.push((fanout.path(), prefix.to_owned()));
        }
    }
    let mut objects = Vec::new();
    for walked in in_parallel(&fanouts, |(dir, prefix)| walk_fanout(dir, prefix)) {
        objects.extend(walked?);
    }
    Ok(objects)
}

/// The objects in one fan-out directory, `dir`, whose names begin with
/// `prefix`.
fn walk_fanout(dir: &Path, prefix: &str) -> io::Result<Vec<Object>> {
    let mut objects = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(objects),
        Err(e) => return Err(with_path(e, "reading", dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, "reading", dir))?;
        let name = entry.file_name();
        let Some(digest) = name
            .to_str()
            .filter(|n| n.starts_with(prefix))
            .and_then(|n| Digest::parse_hex(n).ok())
        else {
            continue;
        };
        match entry.metadata() {
            Ok(meta) if meta.is_file() => objects.push(Object {
                digest,
                size: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, "inspecting", &entry.path())),
        }
    }
    Ok(objects)
}

/// `map` of each of `items` on [`THREADS`] scoped threads (each takes
/// every THREADS-th item); the results in the order of the items.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], map: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = THREADS.min(items.len()).max(1);
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let map = &map;
        let handles: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    let mine = items.iter().enumerate().skip(first).step_by(threads);
                    mine.map(|(index, item)| (index, map(item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            let done = handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            for (index, result) in done {
                results[index] = Some(result);
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// One line of `chitd cache ls`, one element of its `--json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub sha256: String,
    pub size: u64,
    /// RFC 3339, UTC, in seconds.
    pub last_used: String,
    /// The paths it was delivered as, newest first.
    pub paths: Vec<String>,
}

/// The objects of the cache at `cache` with their names, most recently
/// used first.
pub fn list(cache: &Path) -> Result<Vec<Listed>, CacheError> {
    let mut objects = walk(cache)?;
    let mut names = match uses::Db::open(cache, false)? {
        Some(db) => db.names()?,
        None => Default::default(),
    };
    objects.sort_by(|a, b| (b.last_used, a.digest).cmp(&(a.last_used, b.digest)));
    Ok(objects
        .into_iter()
        .map(|object| Listed {
            sha256: object.digest.to_hex(),
            size: object.size,
            last_used: humantime::format_rfc3339_seconds(object.last_used).to_string(),
            paths: names
                .remove(&object.digest)
                .map(|names| names.paths)
                .unwrap_or_default(),
        })
        .collect())
}

/// `chitd cache ls`: the objects of the cache at `cache_root` on stdout,
/// as text ([`render`]) or a JSON array of [`Listed`]; the exit code.
pub fn main(cache_root: &Path, json: bool) -> u8 {
    let listed = match CacheDir::open(cache_root) {
        Ok(cache) => list(cache.root()),
        Err(e) => return fail(1, format!("{e}")),
    };
    let listed = match listed {
        Ok(listed) => listed,
        Err(e) => return fail(1, format!("cannot list the cache: {e}")),
    };
    let text = if json {
        match serde_json::to_string_pretty(&listed) {
            Ok(json) => json + "\n",
            Err(e) => return fail(1, format!("cannot render the list: {e}")),
        }
    } else {
        render(&listed)
    };
    let mut out = io::stdout().lock();
    match io::Write::write_all(&mut out, text.as_bytes()).and_then(|()| io::Write::flush(&mut out))
    {
        Ok(()) => 0,
        Err(e) => fail(1, format!("cannot write the list: {e}")),
    }
}

/// `chitd cache ls` for a person: `sha256  size  last use  paths`, one
/// object a line (`-` for an object with no path recorded).
pub fn render(listed: &[Listed]) -> String {
    let mut text = String::new();
    for object in listed {
        let paths = if object.paths.is_empty() {
            "-".to_string()
        } else {
            object.paths.join(", ")
        };
        text += &format!(
            "{}  {:>12}  {}  {paths}\n",
            object.sha256, object.size, object.last_used
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn walk_finds_objects_only_and_list_orders_them_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds);
        let make = |byte: u8, size: usize, seconds: u64| {
            let object = Object {
                digest: Digest::from_bytes([byte; 32]),
                size: size as u64,
                last_used: at(seconds),
            };
            let path = object.path(cache);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, vec![0; size]).unwrap();
            fs::File::open(&path)
                .unwrap()
                .set_modified(at(seconds))
                .unwrap();
            object
        };
        let (old, new) = (make(0x11, 3, 10), make(0xab, 5, 20));
        // Not objects: a temporary, a name in the wrong fan-out directory,
        // a directory named like an object, a stray file.
        let fanout = cache.join(OBJECTS_DIR).join("ab");
        fs::write(fanout.join(format!(".{}.tmp.1.1", new.digest)), "t").unwrap();
        fs::write(fanout.join(Digest::from_bytes([0x12; 32]).to_hex()), "w").unwrap();
        fs::create_dir(fanout.join(format!("ab{}", "0".repeat(62)))).unwrap();
        fs::write(cache.join(OBJECTS_DIR).join("README"), "r").unwrap();
        let mut walked = walk(cache).unwrap();
        walked.sort_by_key(|o| o.digest);
        assert_eq!(walked, [old.clone(), new.clone()]);
        let listed = list(cache).unwrap();
        assert_eq!(listed[0].sha256, new.digest.to_hex());
        assert_eq!(listed[0].last_used, "2027-01-15T08:00:20Z");
        assert!(listed.iter().all(|l| l.paths.is_empty()));
        let text = render(&listed);
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with(&format!(
            "{}             5  2027-01-15T08:00:20Z  -\n",
            new.digest
        )));
    }
}
