//! A distinfo manifest (`chitd request --manifest FILE`): the files a port
//! needs, as one chit per entry. Pure: bytes in, chits or the line at fault
//! out; `request` does the I/O.
//!
//! Two forms are read, told apart by the first line that is not blank or a
//! `#` comment (those are skipped anywhere):
//!
//! ```text
//! <sha256> <size> <path>                  Ravenports distinfo: one line per file
//!
//! TIMESTAMP = 1700000000                  FreeBSD distinfo: ignored
//! SHA256 (gnu/make-4.4.tar.gz) = <sha256> one of each per file, in any order
//! SIZE (gnu/make-4.4.tar.gz) = <size>
//! ```
//!
//! Each entry is checked by the chit parser (digest, size and path rules of
//! contract §2); a path named twice, a FreeBSD path without both its lines,
//! or any other line is an error naming its line. A file with no entry is
//! an error too. The chits have no URLs: the daemon's mirrors serve them.
//!
//! Chit names are deterministic, so that requesting a manifest again finds
//! the chits still pending instead of doubling them: `<path>.<id>`, the path
//! with every character but `A-Z a-z 0-9 - _ + .` (`/` among them) written as
//! `_` and cut to 100 characters, and `<id>` the first 12 hex digits of the
//! sha256 of the chit's first three lines (digest, size, path). Two entries
//! of one manifest never share a name (their paths differ).

use std::collections::HashMap;
use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use crate::chit::{Chit, ChitError};

/// How many characters of the path a chit name keeps.
const NAME_PATH_CHARS: usize = 100;
/// How many hex digits of the entry's hash a chit name ends with.
const NAME_ID_DIGITS: usize = 12;

/// One file the manifest asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The line the entry begins on (for FreeBSD, its first line).
    pub line: usize,
    pub chit: Chit,
}

impl Entry {
    /// The name of this entry's chit (see the module doc).
    pub fn chit_name(&self) -> String {
        let header = format!(
            "{}\n{}\n{}\n",
            self.chit.digest, self.chit.size, self.chit.path
        );
        let id = hex::encode(Sha256::digest(header.as_bytes()));
        let path: String = self
            .chit
            .path
            .as_str()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_+.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(NAME_PATH_CHARS)
            .collect();
        // A dot name would be ignored as a consumer's temporary file.
        let path = path.trim_start_matches('.');
        format!("{path}.{}", &id[..NAME_ID_DIGITS])
    }
}

/// Why a manifest cannot be requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(
        "it lists no file (expected \"<sha256> <size> <path>\" lines, or FreeBSD's \
         \"SHA256 (path) = ...\" and \"SIZE (path) = ...\")"
    )]
    Empty,
}

fn at(line: usize, message: impl Into<String>) -> ManifestError {
    ManifestError::Line {
        line,
        message: message.into(),
    }
}

/// The entries of a manifest, in the order of the file, or the first
/// problem.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let before = &bytes[..error.valid_up_to()];
        at(
            before.iter().filter(|&&b| b == b'\n').count() + 1,
            "not valid UTF-8",
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let Some((_, first)) = lines.first() else {
        return Err(ManifestError::Empty);
    };
    let freebsd = ["TIMESTAMP", "SHA256 (", "SIZE ("]
        .iter()
        .any(|start| first.starts_with(start));
    let entries = if freebsd {
        parse_freebsd(&lines)?
    } else {
        lines
            .iter()
            .map(|&(line, text)| parse_ravenports(line, text))
            .collect::<Result<Vec<_>, _>>()?
    };
    if entries.is_empty() {
        return Err(ManifestError::Empty);
    }
    refuse_repeated_paths(&entries)?;
    Ok(entries)
}

/// `<sha256> <size> <path>`, separated by spaces or tabs; the path is the
/// rest of the line.
fn parse_ravenports(line: usize, text: &str) -> Result<Entry, ManifestError> {
    let (digest, rest) = split_word(text);
    let (size, path) = split_word(rest);
    if size.is_empty() || path.is_empty() {
        let expected = "expected \"<sha256> <size> <path>\" (a Ravenports distinfo line, \
                        as the first is one)";
        return Err(at(line, expected));
    }
    let chit = chit(digest, size, path).map_err(|message| at(line, message))?;
    Ok(Entry { line, chit })
}

/// The first word of `text`, and the rest without its leading blanks.
fn split_word(text: &str) -> (&str, &str) {
    let (word, rest) = text
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((text, ""));
    (word, rest.trim_ascii_start())
}

/// One path's lines in a FreeBSD distinfo: each value with its line.
#[derive(Default)]
struct Pair<'a> {
    first_line: usize,
    sha256: Option<(usize, &'a str)>,
    size: Option<(usize, &'a str)>,
}

fn parse_freebsd(lines: &[(usize, &str)]) -> Result<Vec<Entry>, ManifestError> {
    let mut order: Vec<&str> = Vec::new();
    let mut pairs: HashMap<&str, Pair> = HashMap::new();
    for &(line, text) in lines {
        if is_timestamp(text) {
            continue;
        }
        let (key, path, value) = freebsd_line(text).ok_or_else(|| {
            let expected = "expected \"SHA256 (path) = <sha256>\", \"SIZE (path) = <size>\" \
                            or \"TIMESTAMP = <n>\" (a FreeBSD distinfo line, as the first is one)";
            at(line, expected)
        })?;
        let pair = pairs.entry(path).or_insert_with(|| {
            order.push(path);
            Pair {
                first_line: line,
                ..Pair::default()
            }
        });
        let slot = if key == "SHA256" {
            &mut pair.sha256
        } else {
            &mut pair.size
        };
        if let Some((earlier, _)) = slot {
            let message = format!("a second {key} line for {path:?} (the first is line {earlier})");
            return Err(at(line, message));
        }
        *slot = Some((line, value));
    }
    order
        .into_iter()
        .map(|path| freebsd_entry(path, &pairs[path]))
        .collect()
}

fn freebsd_entry(path: &str, pair: &Pair) -> Result<Entry, ManifestError> {
    let line = pair.first_line;
    let ((sha256_line, digest), (size_line, size)) = match (pair.sha256, pair.size) {
        (Some(sha256), Some(size)) => (sha256, size),
        (None, _) => return Err(at(line, format!("no SHA256 line for {path:?}"))),
        (_, None) => return Err(at(line, format!("no SIZE line for {path:?}"))),
    };
    let chit = chit(digest, size, path).map_err(|message| {
        // Which of the two lines holds the field at fault.
        let line = if message.starts_with("size") {
            size_line
        } else if message.starts_with("digest") {
            sha256_line
        } else {
            line
        };
        at(line, message)
    })?;
    Ok(Entry { line, chit })
}

fn is_timestamp(text: &str) -> bool {
    text.strip_prefix("TIMESTAMP")
        .is_some_and(|rest| rest.trim_ascii_start().starts_with('='))
}

/// `KEY (path) = value` with KEY `SHA256` or `SIZE`.
fn freebsd_line(text: &str) -> Option<(&'static str, &str, &str)> {
    let (key, rest) = if let Some(rest) = text.strip_prefix("SHA256 (") {
        ("SHA256", rest)
    } else {
        ("SIZE", text.strip_prefix("SIZE (")?)
    };
    let (path, value) = rest.rsplit_once(')')?;
    let value = value.trim_ascii_start().strip_prefix('=')?.trim_ascii();
    Some((key, path, value))
}

/// The chit of one entry, or what is wrong with it (without a line number).
fn chit(digest: &str, size: &str, path: &str) -> Result<Chit, String> {
    let mut text = String::new();
    let _ = write!(text, "{digest}\n{size}\n{path}\n");
    Chit::parse(text.as_bytes()).map_err(|error| match error {
        ChitError::Digest(error) => error.to_string(),
        ChitError::Path(error) => error.to_string(),
        ChitError::SizeSigned { .. }
        | ChitError::SizeNotDecimal { .. }
        | ChitError::SizeOverflow { .. } => {
            let message = error.to_string();
            message
                .strip_prefix("line 2: ")
                .unwrap_or(&message)
                .to_owned()
        }
        ChitError::ErrorLineInHeader { field } => format!("the {field} begins with \"# error:\""),
        ChitError::CommentInHeader { field } => format!("the {field} begins with \"#\""),
        other => other.to_string(),
    })
}

fn refuse_repeated_paths(entries: &[Entry]) -> Result<(), ManifestError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        let path = entry.chit.path.as_str();
        let first = *seen.entry(path).or_insert(entry.line);
        if first != entry.line {
            let message = format!("the path {path:?} is already on line {first}");
            return Err(at(entry.line, message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
