//! `chitd cache verify [--json]`: re-hash every object, as `git fsck` or a
//! ZFS scrub would, and move the corrupt ones out of the way.
//!
//! Every file `sha256-v1/ab/<hex>` is hashed, on every core; one whose
//! bytes do not hash to its name is moved to `quarantine/<hex>.<time>`
//! (`store::quarantine`: kept for a person to look at, never deleted) and
//! its digest printed. Dot-named temporaries (a publish or an import under
//! way) are not objects and are not read; nor is anything else whose name
//! is not an object's (it is reported as foreign, on stderr, and left).
//!
//! Next to a running daemon: an object removed while it is checked (by a
//! quarantine or a collection) is simply not counted, and one replaced by
//! a good copy meanwhile is not quarantined (the quarantine moves only the
//! file that was hashed). Exit 1 if any object was corrupt or unreadable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use indicatif::ProgressBar;
use serde::Serialize;
use sha2::Digest as _;

use super::{BUFFER, CacheDir, fail, open_regular, progress_bar, read_through, workers};
use crate::chit::Digest;
use crate::dir::FileId;
use crate::durable::with_path;

/// What a verification found (also the `--json` output).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Objects hashed, and their bytes.
    pub checked: u64,
    pub bytes: u64,
    /// Objects whose bytes do not hash to their name, now in quarantine.
    pub corrupt: Vec<Corrupt>,
    /// Objects that could not be read.
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Corrupt {
    pub sha256: String,
    /// Where it was moved.
    pub quarantined_as: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: String,
}

impl Report {
    /// Whether every object checked was intact.
    pub fn clean(&self) -> bool {
        self.corrupt.is_empty() && self.unreadable.is_empty()
    }

    /// The text output: each corrupt object, then a summary line.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for corrupt in &self.corrupt {
            text += &format!(
                "corrupt: {} (moved to {})\n",
                corrupt.sha256,
                corrupt.quarantined_as.display()
            );
        }
        text += &format!(
            "checked {} object{} ({} bytes, {}): {} corrupt, {} unreadable\n",
            self.checked,
            if self.checked == 1 { "" } else { "s" },
            self.bytes,
            indicatif::BinaryBytes(self.bytes),
            self.corrupt.len(),
            self.unreadable.len()
        );
        text
    }
}

/// `chitd cache verify`: the exit code.
pub fn main(cache_root: &Path, json: bool) -> u8 {
    let cache = match CacheDir::open(cache_root) {
        Ok(cache) => cache,
        Err(e) => return fail(1, format!("{e}")),
    };
    let bar = progress_bar("verifying");
    let result = verify(&cache, &bar);
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => return fail(1, format!("{e}")),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(1, format!("cannot render the report: {e}")),
        }
    } else {
        print!("{}", report.render());
    }
    for unreadable in &report.unreadable {
        eprintln!("chitd: cannot verify {}", unreadable.error);
    }
    if !report.corrupt.is_empty() {
        let digests: Vec<&str> = report.corrupt.iter().map(|c| c.sha256.as_str()).collect();
        eprintln!(
            "chitd: {} corrupt object(s) moved to quarantine: {}",
            digests.len(),
            digests.join(", ")
        );
    }
    u8::from(!report.clean())
}

/// Hash every object of `cache`, quarantining the corrupt ones.
pub fn verify(cache: &CacheDir, bar: &ProgressBar) -> io::Result<Report> {
    let report = Mutex::new(Report::default());
    let workers = workers();
    let (to_workers, objects) = sync_channel::<(PathBuf, Digest)>(workers * 16);
    let objects = Mutex::new(objects);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (objects, report) = (&objects, &report);
            scope.spawn(move || check_objects(cache.root(), objects, report, bar));
        }
        list_objects(cache.objects(), to_workers, bar)
    })?;
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.corrupt.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    report.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// Send every object of `objects` (`sha256-v1/`) to the workers.
fn list_objects(
    objects: &Path,
    to_workers: SyncSender<(PathBuf, Digest)>,
    bar: &ProgressBar,
) -> io::Result<()> {
    let mut fanouts: Vec<_> = read_dir(objects)?;
    fanouts.sort_by_key(fs::DirEntry::file_name);
    for fanout in fanouts {
        let name = fanout.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let is_dir = fanout.file_type().is_ok_and(|kind| kind.is_dir());
        let prefix = name.to_str().filter(|n| n.len() == 2 && is_dir);
        let Some(prefix) = prefix else {
            bar.suspend(|| foreign(&fanout.path()));
            continue;
        };
        for entry in read_dir(&fanout.path())? {
            if let Some(digest) = object_digest(&entry, prefix, bar) {
                if !bar.is_hidden() {
                    bar.inc_length(entry.metadata().map_or(0, |m| m.len()));
                }
                if to_workers.send((entry.path(), digest)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect())
        .map_err(|e| with_path(e, "reading", dir))
}

/// The digest `entry` (in the fan-out directory `prefix`) is the object
/// of; `None` for a temporary, or for something that is no object (named).
fn object_digest(entry: &fs::DirEntry, prefix: &str, bar: &ProgressBar) -> Option<Digest> {
    let name = entry.file_name();
    if name.as_encoded_bytes().starts_with(b".") {
        return None;
    }
    let digest = name
        .to_str()
        .filter(|hex| hex.starts_with(prefix))
        .and_then(|hex| Digest::parse_hex(hex).ok().filter(|d| d.to_hex() == hex))
        .filter(|_| entry.file_type().is_ok_and(|kind| kind.is_file()));
    if digest.is_none() {
        bar.suspend(|| foreign(&entry.path()));
    }
    digest
}

fn foreign(path: &Path) {
    eprintln!(
        "chitd: {} is not a cache object (not checked, left as it is)",
        path.display()
    );
}

/// A worker: hash each object it is sent; quarantine the corrupt ones.
fn check_objects(
    root: &Path,
    objects: &Mutex<Receiver<(PathBuf, Digest)>>,
    report: &Mutex<Report>,
    bar: &ProgressBar,
) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let next = objects.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((path, digest)) = next else {
            return;
        };
        let outcome = check(root, &path, &digest, &mut buffer, bar);
        let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(Checked::Intact(size)) => {
                report.checked += 1;
                report.bytes += size;
            }
            Ok(Checked::Quarantined(size, to)) => {
                report.checked += 1;
                report.bytes += size;
                report.corrupt.push(Corrupt {
                    sha256: digest.to_hex(),
                    quarantined_as: to,
                });
            }
            Ok(Checked::Gone) => {}
            Err(e) => report.unreadable.push(Unreadable {
                path,
                error: e.to_string(),
            }),
        }
    }
}

/// What [`check`] found.
enum Checked {
    Intact(u64),
    /// Corrupt, and moved there.
    Quarantined(u64, PathBuf),
    /// Removed, or replaced by another file, while it was checked.
    Gone,
}

fn check(
    root: &Path,
    path: &Path,
    digest: &Digest,
    buffer: &mut [u8],
    bar: &ProgressBar,
) -> io::Result<Checked> {
    let (mut file, meta) = match open_regular(path) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checked::Gone),
        Err(e) => return Err(with_path(e, "opening", path)),
    };
    let mut hasher = sha2::Sha256::new();
    let size = read_through(&mut file, path, buffer, bar, |bytes| {
        hasher.update(bytes);
        Ok(())
    })?;
    if Digest::from_bytes(hasher.finalize().into()) == *digest {
        return Ok(Checked::Intact(size));
    }
    Ok(
        match crate::store::quarantine(root, path, FileId::of(&meta))? {
            Some(to) => {
                tracing::warn!(%digest, quarantined = %to.display(), "a cached object does not match its sha256: moved to quarantine");
                Checked::Quarantined(size, to)
            }
            None => Checked::Gone,
        },
    )
}
