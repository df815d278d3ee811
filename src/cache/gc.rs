//! Collection: keep the cache within its limits (`cache_max_size`,
//! `cache_max_age`, or `chitd cache gc --max-size --max-age`) by removing
//! least-recently-used objects.
//!
//! The rules, the same for `chitd cache gc` and the daemon's own
//! collection:
//!
//! - Objects are taken oldest last use first (their mtime: see `uses`).
//!   One is removed if it is unused for longer than the age limit, or while
//!   the cache holds more than the size limit.
//! - Never an object that a chit in a consumer's `request/` or `fetch/`
//!   names (it is *pinned*): the consumers of the configuration, and those
//!   of the last daemon that ran on the cache, which it lists in
//!   its lock file, `<cache>/lock` ([`publish_spools`]). A chit the daemon is
//!   downloading or delivering is in `fetch/`, so its object is pinned too.
//!   A spool that exists but cannot be read stops the collection: its
//!   chits could name any object.
//! - A chit that arrives after the spools were read may find its object
//!   removed: its lookup misses, or its delivery finds the object gone and
//!   waits for a download (`daemon::work`). Never a wrong or missing file.
//!
//! Removal is an `unlink` of the object, then the record of its names is
//! forgotten. The fan-out directories are not fsync'd: a crash may bring
//! an object back, never lose one that was kept.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::ls::{self, CacheError, Object};
use super::{CacheDir, fail};
use crate::chit::Digest;
use crate::cli::GcArgs;
use crate::config::{CacheLimits, Config};
use crate::dir::Dir;
use crate::spool::is_chit_name;
use crate::uses;

/// Where a daemon lists its consumers' spools, in the cache directory: the
/// file it locks (see [`publish_spools`]).
pub const SPOOLS_FILE: &str = "lock";

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub removed: usize,
    pub removed_bytes: u64,
    /// What the cache holds after it.
    pub objects: usize,
    pub bytes: u64,
    /// Objects kept because a chit names them.
    pub pinned: usize,
    /// The spools whose chits were read (those that exist).
    pub spools: usize,
}

/// Collect the cache at `cache` within `limits`, sparing the objects the
/// chits of `spools` (and of the spools the last daemon listed) name.
/// `removed` is told each object removed (or, with `dry_run`, each that
/// would be) as it goes. An object that cannot be removed is an error,
/// after the others were.
pub fn collect(
    cache: &Path,
    spools: &[PathBuf],
    limits: &CacheLimits,
    dry_run: bool,
    mut removed: impl FnMut(&Object),
) -> Result<Summary, CacheError> {
    let objects = ls::walk(cache)?;
    let mut spools = spools.to_vec();
    for spool in published_spools(cache)? {
        if !spools.contains(&spool) {
            spools.push(spool);
        }
    }
    // Read after the walk: a chit that arrived meanwhile is counted.
    let (pinned, spools_read) = pinned(&spools)?;
    let plan = plan(&objects, &pinned, limits, SystemTime::now());
    let outcomes = if dry_run {
        Vec::new()
    } else {
        remove_all(cache, &plan.remove)
    };
    let mut gone = Vec::new();
    let mut removed_bytes = 0;
    let mut failed = None;
    for (index, object) in plan.remove.iter().enumerate() {
        match outcomes.get(index) {
            None | Some(Ok(true)) => {}
            // Removed meanwhile (quarantined, or by another gc).
            Some(Ok(false)) => continue,
            Some(Err(e)) => {
                tracing::error!("{e}");
                failed.get_or_insert(io::Error::new(e.kind(), e.to_string()));
                continue;
            }
        }
        gone.push(object.digest);
        removed_bytes += object.size;
        removed(object);
    }
    if !dry_run
        && !gone.is_empty()
        && let Some(mut db) = uses::Db::open(cache, false)?
    {
        db.forget(&gone)?;
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(Summary {
        removed: gone.len(),
        removed_bytes,
        objects: objects.len() - plan.remove.len(),
        bytes: plan.kept_bytes,
        pinned: plan.pinned,
        spools: spools_read,
    })
}

/// `chitd cache gc`: collect the cache of `config` within the limits of
/// `args` (else the configured ones), sparing the objects of its
/// consumers' chits; prints each object removed (or that would be) and a
/// summary. The exit code: 2 without any limit.
pub fn main(config: &Config, args: &GcArgs) -> u8 {
    let limits = CacheLimits {
        max_size: args.max_size.or(config.cache_limits.max_size),
        max_age: args.max_age.or(config.cache_limits.max_age),
    };
    if !limits.is_set() {
        let message = "no limit to collect the cache to: give --max-size or --max-age, or set \
                       cache_max_size or cache_max_age in the --config file";
        return fail(2, message.to_string());
    }
    let cache = match CacheDir::open(&config.cache) {
        Ok(cache) => cache,
        Err(e) => return fail(1, format!("{e}")),
    };
    let spools: Vec<PathBuf> = config.consumers.iter().map(|c| c.spool.clone()).collect();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut written = Ok(());
    let collected = collect(cache.root(), &spools, &limits, args.dry_run, |o| {
        if written.is_ok() {
            let last_used = humantime::format_rfc3339_seconds(o.last_used);
            let (digest, size) = (o.digest, o.size);
            written = writeln!(out, "{verb} {digest} ({size} bytes, last used {last_used})");
        }
    });
    let summary = match collected {
        Ok(summary) => summary,
        Err(e) => return fail(1, format!("cannot collect the cache: {e}")),
    };
    let written = written
        .and_then(|()| writeln!(out, "{}", render_summary(&summary, verb)))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => 0,
        Err(e) => fail(1, format!("cannot write the list of objects removed: {e}")),
    }
}

/// The last line of `chitd cache gc`.
fn render_summary(summary: &Summary, verb: &str) -> String {
    let pinned = match summary.spools {
        0 => "no consumer's spool was found (give --config), so no chit's objects were spared"
            .to_string(),
        spools => format!(
            "{} kept for chits in request/ or fetch/ of {spools} spool(s)",
            summary.pinned
        ),
    };
    format!(
        "{verb} {} object(s), {} bytes; the cache holds {} object(s), {} bytes; {pinned}",
        summary.removed, summary.removed_bytes, summary.objects, summary.bytes
    )
}

/// Remove `objects` from the cache at `cache`, on [`ls::THREADS`]
/// threads, each taking whole fan-out directories (threads removing names
/// from one directory would wait for each other's lock on it). The
/// outcome of each object, in their order: false for one already gone.
fn remove_all(cache: &Path, objects: &[&Object]) -> Vec<io::Result<bool>> {
    let mut by_fanout: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (index, object) in objects.iter().enumerate() {
        by_fanout[usize::from(object.digest.as_bytes()[0])].push(index);
    }
    let removed = ls::in_parallel(&by_fanout, |indices| {
        let outcomes = indices.iter().map(|&index| remove(cache, objects[index]));
        indices
            .iter()
            .copied()
            .zip(outcomes.collect::<Vec<_>>())
            .collect::<Vec<_>>()
    });
    let mut outcomes: Vec<Option<io::Result<bool>>> = (0..objects.len()).map(|_| None).collect();
    for (index, outcome) in removed.into_iter().flatten() {
        outcomes[index] = Some(outcome);
    }
    outcomes.into_iter().flatten().collect()
}

/// Remove `object` from the cache at `cache`: false if it was gone.
fn remove(cache: &Path, object: &Object) -> io::Result<bool> {
    let path = object.path(cache);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(crate::durable::with_path(e, "removing", &path)),
    }
}

/// Which objects to remove: see the module doc.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Oldest last use first.
    pub remove: Vec<&'a Object>,
    pub kept_bytes: u64,
    pub pinned: usize,
}

/// Pure: the objects to remove from `objects` so that none of them is
/// unused for longer than `limits.max_age` at `now`, and they hold at most
/// `limits.max_size` bytes, least recently used first, never one in
/// `pinned`.
pub fn plan<'a>(
    objects: &'a [Object],
    pinned: &HashSet<Digest>,
    limits: &CacheLimits,
    now: SystemTime,
) -> Plan<'a> {
    let mut order: Vec<&Object> = objects.iter().collect();
    order.sort_unstable_by_key(|object| (object.last_used, object.digest));
    let mut kept_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let mut remove = Vec::new();
    let mut pinned_count = 0;
    for object in order {
        if pinned.contains(&object.digest) {
            pinned_count += 1;
            continue;
        }
        let unused = now.duration_since(object.last_used).unwrap_or_default();
        let too_old = limits.max_age.is_some_and(|age| unused > age);
        let too_big = limits.max_size.is_some_and(|size| kept_bytes > size);
        if too_old || too_big {
            kept_bytes -= object.size;
            remove.push(object);
        }
    }
    Plan {
        remove,
        kept_bytes,
        pinned: pinned_count,
    }
}

/// The digests named by the chits in `request/` and `fetch/` of each of
/// `spools`, and how many of the spools exist. A spool (or state
/// directory) that does not exist names none; one that cannot be read is
/// an error.
pub fn pinned(spools: &[PathBuf]) -> io::Result<(HashSet<Digest>, usize)> {
    let mut pinned = HashSet::new();
    let mut read = 0;
    for spool in spools {
        let root = match Dir::open_existing(spool) {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        read += 1;
        for state in ["request", "fetch"] {
            let dir = match root.open_dir(state) {
                Ok(dir) => dir,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for name in dir.names()? {
                if is_chit_name(name.as_ref())
                    && let Some(digest) = chit_digest(&dir, &name)
                {
                    pinned.insert(digest);
                }
            }
        }
    }
    Ok((pinned, read))
}

/// The digest on the first line of the chit `name` in `dir`, if it has
/// one. Only a regular file is opened (never a FIFO or a device a consumer
/// planted), and only its first line read.
fn chit_digest(dir: &Dir, name: &str) -> Option<Digest> {
    let file = dir.open_regular(name).ok()?;
    let mut head = Vec::with_capacity(128);
    file.take(4096).read_to_end(&mut head).ok()?;
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    Digest::parse_hex(line.trim_ascii()).ok()
}

/// List `spools` in the cache at `cache` for collections run beside this
/// daemon (or after it): they spare the objects its chits name. The list
/// is the content of the cache's lock file, which exists in every cache a
/// daemon ran on, and which nothing else reads or writes (the daemon only
/// holds an `flock` on it). It is written over in place, then cut to its
/// length: a reader sees the old list, the new one, or (while it is being
/// written) text that is no list, never a shorter valid one.
pub fn publish_spools(cache: &Path, spools: &[PathBuf]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let listed = ListedSpools {
        spools: spools.to_vec(),
    };
    let json = serde_json::to_vec(&listed).map_err(io::Error::other)?;
    let path = cache.join(SPOOLS_FILE);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|file| file.write_all_at(&json, 0).map(|()| file))
        .and_then(|file| file.set_len(json.len() as u64));
    file.map_err(|e| crate::durable::with_path(e, "writing", &path))
}

/// The content of [`SPOOLS_FILE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct ListedSpools {
    spools: Vec<PathBuf>,
}

/// The spools the last daemon listed ([`publish_spools`]); none if there
/// is no list (no daemon ran, or one is starting). Text that is no list is
/// an error: a list being written, or damaged; either way, which objects
/// its chits name is not known.
pub fn published_spools(cache: &Path) -> io::Result<Vec<PathBuf>> {
    let path = cache.join(SPOOLS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::durable::with_path(e, "reading", &path)),
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_slice::<ListedSpools>(&bytes) {
        Ok(listed) => Ok(listed.spools),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold the list of spools a daemon writes there ({e}); \
                 if a daemon is starting, run gc again",
                path.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(byte: u8, size: u64, age_days: u64, now: SystemTime) -> Object {
        Object {
            digest: Digest::from_bytes([byte; 32]),
            size,
            last_used: now - Duration::from_secs(age_days * 86_400),
        }
    }

    fn removed(plan: &Plan<'_>) -> Vec<u8> {
        plan.remove.iter().map(|o| o.digest.as_bytes()[0]).collect()
    }

    #[test]
    fn plans_remove_least_recently_used_first_and_spare_pinned() {
        let now = SystemTime::now();
        // Sizes 10 each; ages 1, 5, 3, 100, 40 days.
        let objects = [
            object(1, 10, 1, now),
            object(2, 10, 5, now),
            object(3, 10, 3, now),
            object(4, 10, 100, now),
            object(5, 10, 40, now),
        ];
        let none = HashSet::new();
        let limits = |size: Option<u64>, days: Option<u64>| CacheLimits {
            max_size: size,
            max_age: days.map(|d| Duration::from_secs(d * 86_400)),
        };
        let table: [(CacheLimits, &HashSet<Digest>, &[u8]); 6] = [
            (limits(None, None), &none, &[]),
            (limits(Some(50), None), &none, &[]),
            (limits(Some(30), None), &none, &[4, 5]),
            (limits(None, Some(30)), &none, &[4, 5]),
            (limits(Some(15), Some(4)), &none, &[4, 5, 2, 3]),
            (limits(Some(0), None), &none, &[4, 5, 2, 3, 1]),
        ];
        for (limits, pinned, expected) in table {
            let plan = plan(&objects, pinned, &limits, now);
            assert_eq!(removed(&plan), expected, "{limits:?}");
            assert_eq!(plan.kept_bytes, 50 - 10 * expected.len() as u64);
        }
        // Pinned: 4 (the oldest) and 2 stay; newer ones go instead.
        let pinned: HashSet<Digest> = [4, 2].map(|b| Digest::from_bytes([b; 32])).into();
        let plan = plan(&objects, &pinned, &limits(Some(30), None), now);
        assert_eq!(removed(&plan), [5, 3]);
        assert_eq!((plan.kept_bytes, plan.pinned), (30, 2));
    }

    #[test]
    fn the_daemons_spools_are_listed_in_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(SPOOLS_FILE);
        assert!(published_spools(dir.path()).unwrap().is_empty(), "no file");
        fs::write(&lock, "").unwrap();
        assert!(published_spools(dir.path()).unwrap().is_empty(), "empty");
        let long = [PathBuf::from("/srv/a/spool"), PathBuf::from("/srv/b/spool")];
        publish_spools(dir.path(), &long).unwrap();
        assert_eq!(published_spools(dir.path()).unwrap(), long);
        // A shorter list over a longer one: cut to its length.
        publish_spools(dir.path(), &long[..1]).unwrap();
        assert_eq!(published_spools(dir.path()).unwrap(), &long[..1]);
        fs::write(&lock, "{\"spools\": [\"/a\"]}garbage").unwrap();
        let error = published_spools(dir.path()).unwrap_err();
        assert!(error.to_string().contains("run gc again"), "{error}");
    }

    #[test]
    fn chits_in_request_and_fetch_pin_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let digest = |byte: u8| Digest::from_bytes([byte; 32]);
        for state in ["request", "fetch", "downloaded", "fail"] {
            fs::create_dir_all(spool.join(state)).unwrap();
        }
        let chit = |byte: u8| format!("  {}\r\n5\nf\n", digest(byte).to_hex().to_uppercase());
        fs::write(spool.join("request/a"), chit(1)).unwrap();
        fs::write(spool.join("fetch/b"), chit(2)).unwrap();
        fs::write(spool.join("downloaded/c"), chit(3)).unwrap();
        fs::write(spool.join("fail/d"), chit(4)).unwrap();
        // A dot-file, a bad chit, a FIFO (never opened): none pin.
        fs::write(spool.join("request/.e"), chit(5)).unwrap();
        fs::write(spool.join("request/f"), "not a chit\n").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            spool.join("request/g"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let missing = dir.path().join("missing");
        let pinned = pinned(&[spool, missing]).unwrap();
        assert_eq!(pinned, ([digest(1), digest(2)].into(), 1));
    }
}
