//! `chitd retry`: move failed chits from `fail/` back to `request/`, the
//! contract's `mv fail/X request/X`, for the daemon to try again.
//!
//! Policy: one `rename(2)` per chit, with `RENAME_NOREPLACE`, so a chit of
//! the same name that a consumer dropped into `request/` meanwhile is never
//! replaced; a chit of that name in `fetch/` (being worked on) is not
//! joined by a second one either. Either is a conflict, named, and the
//! failed chit stays in `fail/`. The chit keeps its name and lines (its old
//! `# error:` lines are comments). Needs no running daemon.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;

use crate::cli::RetryArgs;
use crate::spool::Spool;

/// What became of one chit.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Moved from `fail/` to `request/`.
    Retried,
    /// There is no chit of that name in `fail/`.
    NotFailed,
    /// A chit of the same name is in this state directory; nothing moved.
    Conflict(&'static str),
    /// Moving it failed.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// A usage error: the argument, and what is wrong with it.
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Retry the chits `args` names (or all of `fail/`); each with its outcome,
/// in the order given (`--all`: sorted by name).
pub fn retry(args: &RetryArgs) -> Result<Vec<(OsString, Outcome)>, RetryError> {
    for name in &args.names {
        check_name(name).map_err(|why| RetryError::Invalid("NAME", why))?;
    }
    let spool = open_spool(&args.spool)?;
    let names = if args.all {
        failed_names(&spool)?
    } else {
        args.names.clone()
    };
    let outcomes: Vec<(OsString, Outcome)> = names
        .into_iter()
        .map(|name| {
            let outcome = retry_one(&spool, &name);
            (name, outcome)
        })
        .collect();
    if outcomes
        .iter()
        .any(|(_, outcome)| *outcome == Outcome::Retried)
    {
        spool.request.sync()?;
        spool.failed.sync()?;
    }
    Ok(outcomes)
}

/// The spool at `path`, which must exist (a usage error if not).
pub fn open_spool(path: &Path) -> Result<Spool, RetryError> {
    Spool::open_existing("retry", path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => {
            let why = format!("{}: no such directory", path.display());
            RetryError::Invalid("--spool", why)
        }
        io::ErrorKind::NotADirectory => {
            let why = format!("{} is not a directory", path.display());
            RetryError::Invalid("--spool", why)
        }
        _ => RetryError::Io(error),
    })
}

/// A chit name as the command line gives it: one entry of `fail/`.
fn check_name(name: &OsStr) -> Result<(), String> {
    let bytes = name.as_encoded_bytes();
    let why = if bytes.is_empty() {
        "it is empty"
    } else if bytes.contains(&b'/') {
        "a chit name is a file name in fail/, without \"/\""
    } else if bytes.starts_with(b".") {
        "names beginning with \".\" are temporary files, not chits"
    } else {
        return Ok(());
    };
    Err(format!("{:?}: {why}", name.to_string_lossy()))
}

/// Every chit in `fail/` (dot names are temporaries), sorted.
fn failed_names(spool: &Spool) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = spool
        .failed
        .names()?
        .into_iter()
        .map(OsString::from)
        .chain(spool.failed.names_not_utf8()?)
        .filter(|name| !name.as_encoded_bytes().starts_with(b"."))
        .collect();
    names.sort();
    Ok(names)
}

fn retry_one(spool: &Spool, name: &OsStr) -> Outcome {
    match spool.failed.kind(name) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Outcome::NotFailed,
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    match spool.fetch.kind(name) {
        Ok(_) => return Outcome::Conflict("fetch/"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    match spool.failed.rename_noreplace(name, &spool.request, name) {
        Ok(()) => Outcome::Retried,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Outcome::Conflict("request/"),
        // Gone meanwhile: the consumer removed or retried it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::NotFailed,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names_in_fail() {
        assert_eq!(check_name(OsStr::new("make-4.4.tar.gz.1")), Ok(()));
        for bad in ["", "a/b", "../x", ".hidden", ".", ".."] {
            assert!(check_name(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }
}
