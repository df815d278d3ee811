//! `chitd request`: write a chit (or one per entry of a manifest)
//! atomically into a spool's `request/`, and optionally wait until each is
//! terminal. Needs no running daemon, but the spool must exist: a missing
//! one is a usage error, never made here (its state directories are).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::chit::{Chit, ChitError, ERROR_LINE_PREFIX};
use crate::cli::RequestArgs;
use crate::manifest::{self, Entry};
use crate::spool::Spool;

mod progress;
use progress::Progress;

/// How a waited-for chit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, not waited for.
    Queued,
    Downloaded,
    Failed(String),
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The arguments do not make a valid chit (a usage error): the
    /// argument, and what is wrong with it.
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot watch the spool: {0}")]
    Watch(#[from] notify::Error),
}

/// Write the chit; with `--wait`, wait for it. Returns the chit's name and
/// the outcome.
pub fn request(args: &RequestArgs) -> Result<(String, Outcome), RequestError> {
    let chit = chit_of(args)?;
    let spool = open_spool(&args.spool)?;
    // Watch before the chit exists, so its arrival cannot be missed.
    let waiter = Waiter::new(&spool, args.wait)?;
    let name = chit_name(&chit);
    write_chit(&spool, &name, &chit)?;
    spool.request.sync()?;
    if !args.wait {
        return Ok((name, Outcome::Queued));
    }
    let chits = [(name, chit.size)];
    let mut outcomes = waiter.wait(&spool, &chits, args);
    let [(name, _)] = chits;
    Ok((name, outcomes.remove(0)))
}

/// One entry of a manifest, as requested.
#[derive(Debug)]
pub struct Requested {
    /// The chit's name in the spool.
    pub name: String,
    /// Where the file is delivered.
    pub path: String,
    /// Whether this run wrote the chit (else one of its name was pending
    /// in `request/` or `fetch/` already, and is waited for).
    pub written: bool,
    pub outcome: Outcome,
}

/// `request --manifest FILE`: every entry checked, then one chit each
/// (named as [`manifest`](crate::manifest) says); with `--wait`, waits for
/// all of them.
pub fn request_manifest(args: &RequestArgs, file: &Path) -> Result<Vec<Requested>, RequestError> {
    let entries = read_manifest(file)?;
    let spool = open_spool(&args.spool)?;
    let waiter = Waiter::new(&spool, args.wait)?;
    let mut requested = Vec::with_capacity(entries.len());
    for entry in &entries {
        let name = entry.chit_name();
        let pending = [&spool.request, &spool.fetch]
            .iter()
            .any(|dir| dir.kind(&name).is_ok());
        let written = !pending && write_chit(&spool, &name, &entry.chit)?;
        requested.push(Requested {
            name,
            path: entry.chit.path.to_string(),
            written,
            outcome: Outcome::Queued,
        });
    }
    spool.request.sync()?;
    if args.wait {
        let chits: Vec<(String, u64)> = requested
            .iter()
            .zip(&entries)
            .map(|(requested, entry)| (requested.name.clone(), entry.chit.size))
            .collect();
        let outcomes = waiter.wait(&spool, &chits, args);
        for (requested, outcome) in requested.iter_mut().zip(outcomes) {
            requested.outcome = outcome;
        }
    }
    Ok(requested)
}

/// The largest manifest read, in bytes: a port's distinfo is a few KiB.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// The entries of the manifest `file`; any problem is a usage error that
/// names the file (and the line).
fn read_manifest(file: &Path) -> Result<Vec<Entry>, RequestError> {
    use std::io::Read;
    let invalid = |why: String| RequestError::Invalid("--manifest", why);
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        let why = format!(
            "{} is larger than {MAX_MANIFEST_BYTES} bytes",
            file.display()
        );
        return Err(invalid(why));
    }
    manifest::parse(&bytes).map_err(|e| invalid(format!("{}: {e}", file.display())))
}

/// The spool at `path`, which must exist: a usage error if it does not
/// (a mistyped path would otherwise make a spool that no daemon serves).
fn open_spool(path: &Path) -> Result<Spool, RequestError> {
    Spool::open_existing("request", path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => {
            let why = format!(
                "{}: no such directory (request does not make a spool: create it, \
                 or start the daemon that serves it)",
                path.display()
            );
            RequestError::Invalid("--spool", why)
        }
        std::io::ErrorKind::NotADirectory => {
            RequestError::Invalid("--spool", format!("{} is not a directory", path.display()))
        }
        _ => RequestError::Io(error),
    })
}

/// Write `chit` into `request/` as `name`, atomically (a temporary, fsync,
/// then a rename that never replaces). False if a chit of that name
/// appeared in `request/` meanwhile (it is left as it is).
fn write_chit(spool: &Spool, name: &str, chit: &Chit) -> Result<bool, RequestError> {
    let (temp, mut file) = spool.request.create_temp(name)?;
    let written = file
        .write_all(chit.render().as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| spool.request.rename_noreplace(&temp, &spool.request, name));
    match written {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = spool.request.remove_file(&temp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Ok(false);
            }
            Err(e.into())
        }
    }
}

/// Hints that `downloaded/` or `fail/` changed, when waiting.
struct Waiter {
    events: mpsc::Receiver<()>,
    /// Kept for its watches; dropped when done.
    _watcher: notify::RecommendedWatcher,
}

impl Waiter {
    /// Watches `downloaded/` and `fail/` if `wait`.
    fn new(spool: &Spool, wait: bool) -> Result<Waiter, RequestError> {
        let (sender, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |_| {
            let _ = sender.send(());
        })?;
        if wait {
            for dir in [&spool.downloaded, &spool.failed] {
                watcher.watch(dir.path(), RecursiveMode::NonRecursive)?;
            }
        }
        Ok(Waiter {
            events,
            _watcher: watcher,
        })
    }

    /// Waits until every chit of `chits` (name and size) is terminal, or
    /// `--timeout` has passed; the outcome of each, in order (`TimedOut` for
    /// those still pending). Shows a progress line on a terminal.
    fn wait(&self, spool: &Spool, chits: &[(String, u64)], args: &RequestArgs) -> Vec<Outcome> {
        let deadline = args
            .timeout
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        let total = chits.iter().map(|(_, size)| size).sum();
        let progress = Progress::start(&args.spool, total);
        let mut outcomes: Vec<Option<Outcome>> = chits.iter().map(|_| None).collect();
        loop {
            for ((name, _), outcome) in chits.iter().zip(outcomes.iter_mut()) {
                if outcome.is_none() {
                    *outcome = terminal(spool, name);
                }
            }
            if let Some(progress) = &progress {
                progress.update(chits, &outcomes);
            }
            if outcomes.iter().all(Option::is_some) {
                break;
            }
            // Events are hints; look again at least every second regardless.
            let mut wait = Duration::from_secs(1);
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                wait = wait.min(left);
            }
            let _ = self.events.recv_timeout(wait);
        }
        if let Some(progress) = progress {
            progress.finish();
        }
        let timed_out = |outcome: Option<Outcome>| outcome.unwrap_or(Outcome::TimedOut);
        outcomes.into_iter().map(timed_out).collect()
    }
}

/// The chit the arguments make, or what is wrong with which argument.
fn chit_of(args: &RequestArgs) -> Result<Chit, RequestError> {
    let arguments = [
        // Clap requires all three without --manifest; an absent one would
        // be an empty line.
        ("SHA256", args.sha256.as_deref().unwrap_or_default()),
        ("SIZE", args.size.as_deref().unwrap_or_default()),
        ("PATH", args.path.as_deref().unwrap_or_default()),
    ];
    let urls = args.urls.iter().map(|url| ("URL", url.as_str()));
    let arguments: Vec<(&'static str, &str)> = arguments.into_iter().chain(urls).collect();
    // One argument, one line of the chit: a line break would shift the rest.
    if let Some((name, _)) = arguments.iter().find(|(_, a)| a.contains(['\n', '\r'])) {
        return Err(RequestError::Invalid(
            name,
            "it contains a line break".into(),
        ));
    }
    // In a chit these lines would be comments, silently dropped.
    for url in &args.urls {
        let url = url.trim();
        if url.is_empty() || url.starts_with('#') {
            let what = if url.is_empty() {
                "it is empty"
            } else {
                "it begins with \"#\""
            };
            return Err(RequestError::Invalid("URL", what.into()));
        }
    }
    let mut text = String::new();
    for (_, argument) in &arguments {
        text.push_str(argument);
        text.push('\n');
    }
    Chit::parse(text.as_bytes()).map_err(|e| {
        let message = e.to_string();
        let Some((name, line)) = e.line().and_then(|n| Some((arguments.get(n - 1)?.0, n))) else {
            return RequestError::Invalid("request", message);
        };
        let message = match &e {
            ChitError::EmptyLine { .. } => "it is empty".to_owned(),
            ChitError::CommentInHeader { .. } => "it begins with \"#\"".to_owned(),
            _ => message
                .strip_prefix(&format!("line {line}: "))
                .map_or(message.clone(), str::to_owned),
        };
        RequestError::Invalid(name, message)
    })
}

/// The outcome of chit `name` if it is terminal. The state directories are
/// looked at in the order a chit moves through them, so that an outcome
/// left by an earlier chit of the same name (which the daemon removes when
/// it claims the new one) is not taken for the new chit's.
fn terminal(spool: &Spool, name: &str) -> Option<Outcome> {
    if [&spool.request, &spool.fetch]
        .iter()
        .any(|dir| dir.kind(name).is_ok())
    {
        return None;
    }
    if spool.downloaded.kind(name).is_ok() {
        return Some(Outcome::Downloaded);
    }
    // The reason is the last line: only the file's tail is read (a chit
    // too big to process keeps all its bytes in `fail/`), as bytes (a
    // chit of binary garbage has a readable reason too).
    let text = spool.failed.open_regular(name).ok().map(|mut file| {
        use std::io::{Read, Seek, SeekFrom};
        const TAIL: u64 = 16 * 1024;
        let length = file.metadata().map_or(0, |m| m.len());
        let mut bytes = Vec::new();
        let _ = file
            .seek(SeekFrom::Start(length.saturating_sub(TAIL)))
            .and_then(|_| file.take(TAIL).read_to_end(&mut bytes));
        String::from_utf8_lossy(&bytes).into_owned()
    });
    if let Some(text) = text {
        return Some(Outcome::Failed(last_error(&text)));
    }
    spool
        .failed
        .kind(name)
        .ok()
        .map(|_| Outcome::Failed("(no reason recorded)".into()))
}

/// The reason in the last `# error:` line of a failed chit.
pub fn last_error(text: &str) -> String {
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(ERROR_LINE_PREFIX))
        .map(|reason| reason.trim().to_owned())
        .unwrap_or_else(|| "(no reason recorded)".into())
}

/// A readable, unique chit name: `<file name>.<digest prefix>.<pid>.<time>`.
fn chit_name(chit: &Chit) -> String {
    let stem: String = chit
        .path
        .file_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_+.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let stem = stem.trim_start_matches('.');
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{stem}.{}.{}.{nanos}",
        &chit.digest.to_hex()[..12],
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_takes_the_last_reason() {
        let text = "abc\n1\np\n# error: old\n# error: new reason\n";
        assert_eq!(last_error(text), "new reason");
        assert_eq!(last_error("abc\n"), "(no reason recorded)");
    }
}
