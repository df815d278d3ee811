//! `chitd request`: write a chit atomically into a spool's `request/`, and
//! optionally wait until it is terminal. Needs no running daemon, but the
//! spool must exist: a missing one is a usage error, never made here (its
//! state directories are).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::chit::{Chit, ChitError, ERROR_LINE_PREFIX};
use crate::cli::RequestArgs;
use crate::spool::Spool;

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
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |_| {
        let _ = sender.send(());
    })?;
    if args.wait {
        for dir in [&spool.downloaded, &spool.failed] {
            watcher.watch(dir.path(), RecursiveMode::NonRecursive)?;
        }
    }
    let name = chit_name(&chit);
    let (temp, mut file) = spool.request.create_temp(&name)?;
    let written = file
        .write_all(chit.render().as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| spool.request.rename_noreplace(&temp, &spool.request, &name));
    if let Err(e) = written {
        let _ = spool.request.remove_file(&temp);
        return Err(e.into());
    }
    spool.request.sync()?;
    if !args.wait {
        return Ok((name, Outcome::Queued));
    }
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    loop {
        if let Some(outcome) = terminal(&spool, &name) {
            return Ok((name, outcome));
        }
        // Events are hints; look again at least every second regardless.
        let mut wait = Duration::from_secs(1);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((name, Outcome::TimedOut));
            }
            wait = wait.min(left);
        }
        let _ = events.recv_timeout(wait);
    }
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

/// The chit the arguments make, or what is wrong with which argument.
fn chit_of(args: &RequestArgs) -> Result<Chit, RequestError> {
    let arguments = [
        ("SHA256", args.sha256.as_str()),
        ("SIZE", args.size.as_str()),
        ("PATH", args.path.as_str()),
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

fn terminal(spool: &Spool, name: &str) -> Option<Outcome> {
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
