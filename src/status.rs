//! `chitd status`: what each consumer's spool holds, read from the
//! directories themselves (so it works with or without a daemon), plus the
//! running daemon's in-flight progress when it has published one.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

use crate::daemon::StatusFile;
use crate::dir::Dir;
use crate::durable::with_path;
use crate::spool::STATES;

mod failed;

pub use self::failed::{FailedChit, NEWEST};
pub use crate::daemon::status_file::InFlightChit;

#[derive(Debug, Serialize)]
pub struct Report {
    /// Pid of the running daemon, when one has published its progress.
    pub daemon_pid: Option<u32>,
    pub consumers: Vec<ConsumerStatus>,
    /// With a configured fleet tier (`[remote]`): the uploads to it not
    /// done yet (the records in the cache's `upload-v1/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads_pending: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub spool: PathBuf,
    /// Whether the spool directory exists (`chitd run` makes it; until
    /// then every count is 0).
    pub exists: bool,
    pub request: usize,
    pub fetch: usize,
    pub downloaded: usize,
    pub fail: usize,
    /// The chits in `fail/` with their reasons, newest first (the newest
    /// [`NEWEST`], or every one).
    pub failed: Vec<FailedChit>,
    pub in_flight: Vec<InFlightChit>,
}

/// How many failed chits a report lists per consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Newest,
    All,
}

/// Look at each `(consumer name, spool)`.
pub fn status(spools: &[(String, PathBuf)], listed: Failed) -> io::Result<Report> {
    let mut report = Report {
        daemon_pid: None,
        consumers: Vec::new(),
        uploads_pending: None,
    };
    for (name, spool) in spools {
        let exists = match std::fs::metadata(spool) {
            Ok(meta) if meta.is_dir() => true,
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
                return Err(with_path(e, "reading spool", spool));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(with_path(e, "reading spool", spool)),
        };
        let mut counts = [0usize; 4];
        // The state directories are opened beneath the spool, never
        // through a symlink a consumer put in their place.
        let root = if exists {
            Some(Dir::open_existing(spool)?)
        } else {
            None
        };
        if let Some(root) = &root {
            for (count, state) in counts.iter_mut().zip(STATES) {
                *count = count_chits(root, state)?;
            }
        }
        let fetch = root.as_ref().and_then(|root| root.open_dir("fetch").ok());
        let limit = (listed == Failed::Newest).then_some(NEWEST);
        let failed = match root.as_ref().map(|root| root.open_dir("fail")) {
            Some(Ok(fail)) => failed::failed_chits(&fail, limit)?,
            _ => Vec::new(),
        };
        let published = exists.then(|| StatusFile::read(spool)).flatten();
        if let Some(published) = &published {
            report.daemon_pid = Some(published.pid);
        }
        report.consumers.push(ConsumerStatus {
            name: name.clone(),
            spool: spool.clone(),
            exists,
            request: counts[0],
            fetch: counts[1],
            downloaded: counts[2],
            fail: counts[3],
            failed,
            // Published up to a second ago: only chits still in fetch/,
            // and downloads being stopped because their chits left it.
            in_flight: published
                .map(|p| p.downloads)
                .unwrap_or_default()
                .into_iter()
                .filter(|d| {
                    d.stopping
                        || fetch
                            .as_ref()
                            .is_some_and(|fetch| is_chit_in(fetch, &d.chit))
                })
                .collect(),
        });
    }
    Ok(report)
}

/// Whether `dir` holds a chit named `name` (a plain name, never followed:
/// the published file is in a directory the consumer can write).
fn is_chit_in(dir: &Dir, name: &str) -> bool {
    let plain = crate::spool::is_chit_name(name.as_ref()) && !name.contains('/');
    plain && dir.kind(name).is_ok()
}

/// The chits (names but dot-files) in the state directory `state`.
pub fn count_chits(root: &Dir, state: &str) -> io::Result<usize> {
    let dir = match root.open_dir(state) {
        Ok(dir) => dir,
        // Not made yet (`chitd run` makes it); or not a directory, or a
        // symlink a consumer put there, which chitd does not serve either.
        // (`Dir::open_dir` refuses a symlink as invalid input.)
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    dir.count(|name| !name.as_encoded_bytes().starts_with(b"."))
}

/// The report for a person.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    match report.daemon_pid {
        Some(pid) => _ = writeln!(out, "daemon: running (pid {pid})"),
        None => {
            _ = writeln!(
                out,
                "daemon: no progress published (not running, or idle since start)"
            )
        }
    }
    if let Some(pending) = report.uploads_pending {
        _ = writeln!(out, "remote tier: {pending} uploads pending");
    }
    for c in &report.consumers {
        if !c.exists {
            _ = writeln!(
                out,
                "{}: no spool yet ({} does not exist; `chitd run` makes it)",
                c.name,
                c.spool.display()
            );
            continue;
        }
        _ = writeln!(
            out,
            "{}: request {}  fetch {}  downloaded {}  fail {}   ({})",
            c.name,
            c.request,
            c.fetch,
            c.downloaded,
            c.fail,
            c.spool.display()
        );
        for f in &c.failed {
            _ = writeln!(out, "  failed  {}: {}", f.chit, f.reason);
        }
        if c.failed.len() < c.fail {
            _ = writeln!(
                out,
                "  ({} more failed; --all lists every one)",
                c.fail - c.failed.len()
            );
        }
        for d in &c.in_flight {
            _ = writeln!(out, "  {}", in_flight_line(d));
        }
    }
    out
}

/// "f  sub/f.bin  100000/200000 bytes (50.0%)  3.91 KiB/s  ETA 26s  from
/// example.org".
fn in_flight_line(d: &InFlightChit) -> String {
    if d.stopping {
        return format!(
            "{}  {}  {}/{} bytes  stopping: no chit waits for it (the partial is kept)",
            d.chit, d.path, d.done, d.total
        );
    }
    let percent = if d.total == 0 {
        100.0
    } else {
        d.done as f64 * 100.0 / d.total as f64
    };
    let mut line = format!(
        "{}  {}  {}/{} bytes ({percent:.1}%)  {}/s",
        d.chit,
        d.path,
        d.done,
        d.total,
        indicatif::HumanBytes(d.rate)
    );
    match d.eta_seconds() {
        Some(eta) => {
            let eta = humantime::format_duration(std::time::Duration::from_secs(eta));
            _ = write!(line, "  ETA {eta}");
        }
        None => line.push_str("  ETA unknown"),
    }
    if let Some(source) = &d.source {
        _ = write!(line, "  from {source}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool with its four state directories.
    fn spool() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for state in STATES {
            std::fs::create_dir(dir.path().join(state)).unwrap();
        }
        dir
    }

    #[test]
    fn counts_chits_not_dot_files() {
        let dir = spool();
        std::fs::write(dir.path().join("request/a"), "").unwrap();
        std::fs::write(dir.path().join("request/.a"), "").unwrap();
        std::fs::write(dir.path().join("fail/b"), "").unwrap();
        let report = status(&[("c".into(), dir.path().to_path_buf())], Failed::Newest).unwrap();
        let c = &report.consumers[0];
        assert_eq!((c.request, c.fetch, c.downloaded, c.fail), (1, 0, 0, 1));
        assert!(render(&report).contains("request 1"));
        // A spool not made yet is reported, not an error; a file is one.
        let missing = status(&[("x".into(), dir.path().join("missing"))], Failed::Newest).unwrap();
        let x = &missing.consumers[0];
        assert!(!x.exists);
        assert_eq!((x.request, x.fetch, x.downloaded, x.fail), (0, 0, 0, 0));
        assert!(
            render(&missing).contains("x: no spool yet"),
            "{}",
            render(&missing)
        );
        assert!(
            status(
                &[("f".into(), dir.path().join("request/a"))],
                Failed::Newest
            )
            .is_err()
        );
    }

    /// The daemon publishes its downloads once a second: a chit that left
    /// fetch/ since (or a name that is not a chit's) is not shown in flight.
    #[test]
    fn in_flight_shows_only_chits_still_in_fetch() {
        let dir = spool();
        std::fs::write(dir.path().join("fetch/here"), "").unwrap();
        std::fs::write(dir.path().join("downloaded/done"), "").unwrap();
        let chit = |name: &str| InFlightChit {
            chit: name.into(),
            digest: "d".into(),
            path: "p".into(),
            done: 1,
            total: 2,
            rate: 0,
            source: None,
            stopping: false,
        };
        let stopping = InFlightChit {
            stopping: true,
            ..chit("removed")
        };
        StatusFile::new(dir.path()).write(vec![
            chit("here"),
            chit("done"),
            chit("../fetch/here"),
            stopping,
        ]);
        let report = status(&[("c".into(), dir.path().to_path_buf())], Failed::Newest).unwrap();
        assert_eq!(report.daemon_pid, Some(std::process::id()));
        let shown: Vec<&str> = report.consumers[0]
            .in_flight
            .iter()
            .map(|d| d.chit.as_str())
            .collect();
        assert_eq!(shown, ["here", "removed"]);
        let rendered = render(&report);
        assert!(
            rendered.contains("removed  p  1/2 bytes  stopping: no chit waits for it"),
            "{rendered}"
        );
    }

    #[test]
    fn an_in_flight_line_has_rate_eta_and_source() {
        let mut d = InFlightChit {
            chit: "f".into(),
            digest: "d".into(),
            path: "sub/f.bin".into(),
            done: 100_000,
            total: 200_000,
            rate: 4000,
            source: Some("example.org".into()),
            stopping: false,
        };
        assert_eq!(
            in_flight_line(&d),
            "f  sub/f.bin  100000/200000 bytes (50.0%)  3.91 KiB/s  ETA 25s  from example.org"
        );
        d.rate = 0;
        d.source = None;
        assert_eq!(
            in_flight_line(&d),
            "f  sub/f.bin  100000/200000 bytes (50.0%)  0 B/s  ETA unknown"
        );
    }
}
