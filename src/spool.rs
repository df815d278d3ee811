//! The four state directories of one consumer and the transitions between
//! them. Each state change is one `rename(2)` of the chit, under the same
//! name, between two of `request/ fetch/ downloaded/ fail/`:
//!
//! - [`Spool::claim`]: `request/X → fetch/X` (never replacing a chit
//!   already in `fetch/`);
//! - [`Spool::complete`]: `fetch/X → downloaded/X`, then fsync `downloaded/`;
//! - [`Spool::fail`]: the failed chit is first rebuilt as a new file (the
//!   original bytes plus `# error: <reason>`) under a dot name in `fetch/`,
//!   fsync'd and renamed over `fetch/X` (so the chit's old inode, which
//!   may be a hard link to something else, is never written), then
//!   `fetch/X → fail/X` and fsync `fail/`. Only a chit too big to copy (a
//!   regular file with one link, over [`MAX_CHIT_BYTES`]) gets the line
//!   appended in place instead, so that it keeps its bytes unread; a chit
//!   that is a directory gets it in a new file inside it,
//!   [`DIR_REASON_FILE`].
//!
//! A chit can still show up in two directories: after a power cut (the
//! rename out of `fetch/` is made durable by an fsync of the target
//! directory only), or when a consumer re-uses a name while the old chit
//! is still terminal. The same chit (the same lines) in `fetch/` and a
//! terminal state: the terminal copy wins ([`Spool::terminal_twin`],
//! [`Spool::drop_fetched`]). Another chit under the name: the newer request
//! wins; once `fetch/X` is read, [`Spool::clear_outcomes`] removes the old
//! `downloaded/X` and `fail/X`, and `X` ends in whichever state the new
//! request reaches. A crash in between is harmless: `fetch/X` is still
//! there and the next start clears them again.
//!
//! All access is confined with [`Dir`]: a chit that is a symlink, FIFO,
//! device or hard link is refused without being read through.
//!
//! Chit names are bytes: every transition takes any `AsRef<OsStr>`, so a
//! chit whose name is not UTF-8 goes through the same renames as any other
//! (the daemon fails it, with a reason that asks for a UTF-8 name).

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::chit::{ERROR_LINE_PREFIX, MAX_CHIT_BYTES, error_line, with_error_line};
use crate::dir::{Dir, DurableDirs, FileId, Holds, Kind};
use crate::durable::{out_of_resources, with_path};

/// The file [`Spool::fail`] writes the reason into, inside a chit that is
/// a directory (which cannot carry an `# error:` line of its own).
pub const DIR_REASON_FILE: &str = ".chitd-error";

/// The state directories, in the order a chit visits them.
pub const STATES: [&str; 4] = ["request", "fetch", "downloaded", "fail"];

#[derive(Debug)]
pub struct Spool {
    pub name: String,
    /// The spool directory itself, as opened at start: state directories
    /// are only ever (re)opened beneath it.
    root: Dir,
    /// `fetch/`'s identity, as opened.
    fetch_id: FileId,
    pub request: Dir,
    pub fetch: Dir,
    pub downloaded: Dir,
    pub failed: Dir,
}

/// How a batch of `fetch/ → downloaded/` renames went.
#[derive(Debug)]
pub struct Completed {
    /// One result per chit: an error leaves the chit in `fetch/`.
    pub renamed: Vec<io::Result<()>>,
    /// The fsync of `downloaded/` that made the renames durable: on error
    /// they are visible, but a power cut may undo them.
    pub synced: io::Result<()>,
}

/// How a claim went.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// Not in `request/` any more (taken, or removed by the consumer).
    Gone,
    /// A chit of that name is still in `fetch/`; try again after it ends.
    Busy,
}

/// Why a chit could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It vanished from `fetch/` (the consumer removed it).
    Gone,
    /// It is not something chitd will read; the reason goes to its `# error:`.
    Refused(String),
    /// chitd cannot read it now: out of descriptors or memory
    /// ([`out_of_resources`]). The chit stays where it is, for a later try.
    Unavailable(String),
}

impl ReadError {
    /// What `doing` met: unavailable if chitd was short of descriptors or
    /// memory, else refused.
    fn of(doing: &str, error: &io::Error) -> ReadError {
        let reason = format!("{doing}: {error}");
        if out_of_resources(error) {
            ReadError::Unavailable(reason)
        } else {
            ReadError::Refused(reason)
        }
    }
}

impl Spool {
    /// Open a consumer's spool, creating the state directories if missing
    /// (refusing any that is a symlink).
    pub fn open(name: &str, path: &Path) -> io::Result<Spool> {
        Spool::beneath(name, Dir::open_root(path)?)
    }

    /// Open a consumer's spool that must exist already (for `chitd request`
    /// and `chitd retry`: a mistyped path must not make a spool that no
    /// daemon serves), creating the state directories if missing.
    pub fn open_existing(name: &str, path: &Path) -> io::Result<Spool> {
        Spool::beneath(name, Dir::open_existing(path)?)
    }

    fn beneath(name: &str, root: Dir) -> io::Result<Spool> {
        let durable = DurableDirs::default();
        let state = |dir: &str| root.create_dirs([dir], &durable);
        let request = state("request")?;
        let fetch = state("fetch")?;
        Ok(Spool {
            name: name.to_owned(),
            fetch_id: fetch.id()?,
            request,
            fetch,
            downloaded: state("downloaded")?,
            failed: state("fail")?,
            root,
        })
    }

    /// Whether the consumer made any state directory anew (removed or
    /// renamed the one chitd opened, then made a new one of that name):
    /// then [`Spool::reopen`] serves the new ones. A state directory only
    /// removed so far is not (the consumer may be clearing its spool).
    pub fn remade(&self) -> bool {
        self.states()
            .any(|(name, dir)| matches!(self.root.holds_dir(name, dir), Ok(Holds::OtherDir)))
    }

    /// The state directories opened anew beneath the spool directory
    /// opened at start (never by path: a symlink planted in place of the
    /// spool redirects nothing), making the missing ones.
    pub fn reopen(&self) -> io::Result<Spool> {
        Spool::beneath(&self.name, self.root.try_clone()?)
    }

    /// The `fetch/` directory's identity, as opened: a chit claimed into
    /// another one is not in this spool.
    pub fn fetch_id(&self) -> FileId {
        self.fetch_id
    }

    /// Whether the spool directory itself was removed since it was opened:
    /// nothing can be made in it any more.
    pub fn root_removed(&self) -> bool {
        self.root.is_removed()
    }

    fn states(&self) -> impl Iterator<Item = (&'static str, &Dir)> {
        STATES
            .into_iter()
            .zip([&self.request, &self.fetch, &self.downloaded, &self.failed])
    }

    /// `request/X → fetch/X`.
    pub fn claim(&self, chit: impl AsRef<OsStr>) -> io::Result<Claim> {
        let chit = chit.as_ref();
        match self.request.rename_noreplace(chit, &self.fetch, chit) {
            Ok(()) => Ok(Claim::Claimed),
            // Not the chit that is missing, but the directory it goes to.
            Err(_) if self.fetch.is_removed() => Err(removed(&self.fetch)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Gone),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Claim::Busy),
            Err(e) => Err(e),
        }
    }

    /// Read the claimed chit `fetch/X`: a regular file with one link, at
    /// most [`MAX_CHIT_BYTES`] (read no further than one byte past it).
    pub fn read(&self, chit: impl AsRef<OsStr>) -> Result<Vec<u8>, ReadError> {
        read_chit_in(&self.fetch, chit.as_ref())
    }

    /// The terminal state, `downloaded` or `fail`, that holds the same
    /// chit as `fetch/X` (`bytes`, as read from there): the lines alike,
    /// but for the `# error:` line a chit in `fail/` ends with. A chit
    /// found in `fetch/` and in a terminal state with the same lines is
    /// one chit in two places (a crash of some other writer, or a copy
    /// made by hand): the terminal copy wins ([`Spool::drop_fetched`]). A
    /// terminal copy with other lines is the outcome of an earlier request
    /// of the name, and the newer one in `fetch/` wins
    /// ([`Spool::clear_outcomes`]).
    pub fn terminal_twin(&self, chit: impl AsRef<OsStr>, bytes: &[u8]) -> Option<&'static str> {
        let chit = chit.as_ref();
        [("downloaded", &self.downloaded), ("fail", &self.failed)]
            .into_iter()
            .find(|(state, dir)| {
                read_chit_in(dir, chit).is_ok_and(|copy| {
                    copy == bytes || (*state == "fail" && is_failed_copy_of(&copy, bytes))
                })
            })
            .map(|(state, _)| state)
    }

    /// Remove `fetch/X`, a twin of a terminal chit ([`Spool::terminal_twin`]).
    pub fn drop_fetched(&self, chit: impl AsRef<OsStr>) -> io::Result<()> {
        self.fetch.remove_file(chit)?;
        self.fetch.sync()
    }

    /// `fetch/X → downloaded/X`, durably.
    pub fn complete(&self, chit: &str) -> io::Result<()> {
        let completed = self.complete_all(&[chit]);
        completed.renamed.into_iter().next().unwrap_or(Ok(()))?;
        completed.synced
    }

    /// [`Spool::complete`] for a batch of chits (group commit): every
    /// rename, then one fsync of `downloaded/` for all.
    pub fn complete_all(&self, chits: &[&str]) -> Completed {
        let renamed: Vec<io::Result<()>> = chits
            .iter()
            .map(|chit| {
                self.fetch
                    .rename(chit, &self.downloaded, chit)
                    .map_err(|e| {
                        if self.downloaded.is_removed() {
                            removed(&self.downloaded)
                        } else {
                            e
                        }
                    })
            })
            .collect();
        // Counted as soon as they are there to be seen.
        let moved = renamed.iter().filter(|renamed| renamed.is_ok()).count();
        crate::metrics::METRICS.chits_downloaded(&self.name, moved as u64);
        let synced = if moved > 0 {
            self.downloaded.sync()
        } else {
            Ok(())
        };
        Completed { renamed, synced }
    }

    /// Append `# error: <reason>` to the chit's `original` bytes (none when
    /// they could not or must not be read) and move it `fetch/X → fail/X`,
    /// durably. The reason is in place before the chit appears in `fail/`.
    ///
    /// Without `original`, a chit too big to copy (a regular file with one
    /// link, over [`MAX_CHIT_BYTES`]) gets the line appended in place, so it
    /// keeps its bytes; anything else (symlink, FIFO, device, hard link, a
    /// chit that could not be read) is replaced by a new file holding only
    /// the line, never read nor written through. A directory is moved as
    /// it is, with the line in a new file inside it, [`DIR_REASON_FILE`]
    /// (when that file can be made: see [`Spool::leave_reason_in_dir`]).
    pub fn fail(
        &self,
        chit: impl AsRef<OsStr>,
        original: Option<&[u8]>,
        reason: &str,
    ) -> io::Result<()> {
        let chit = chit.as_ref();
        if self.fetch.kind(chit)? == Kind::Dir {
            // A directory cannot carry a reason line: a file inside it does.
            self.leave_reason_in_dir(chit, reason)?;
        } else if original.is_none() && self.append_to_oversized(chit, reason)? {
            // The reason is on disk in the chit itself.
        } else {
            // A UTF-8 stem, so the startup sweep knows the temporary.
            let (temp, mut file) = self.fetch.create_temp(&chit.to_string_lossy())?;
            let failed = with_error_line(original.unwrap_or_default(), reason);
            let written = file.write_all(&failed).and_then(|()| file.sync_all());
            if let Err(e) = written.and_then(|()| self.fetch.rename(&temp, &self.fetch, chit)) {
                let _ = self.fetch.remove_file(&temp);
                return Err(e);
            }
        }
        self.fetch.rename(chit, &self.failed, chit)?;
        crate::metrics::METRICS.chit_failed(&self.name);
        self.failed.sync()
    }

    /// Remove `fail/X/` if it is an earlier directory chit holding only the
    /// reason file chitd made (or nothing): opened beneath `fail/` without
    /// following symlinks; the reason file must be a regular file with one
    /// link, owned by chitd's user, holding an `# error:` line (a consumer's
    /// own file of that name is left alone, and so is the directory); it is
    /// unlinked, then the directory.
    fn remove_failed_dir_chit(&self, chit: &OsStr) -> io::Result<()> {
        let failed = self.failed.open_dir(chit)?;
        let names = failed.names()?;
        let ours_only = failed.names_not_utf8()?.is_empty()
            && names.iter().all(|name| name == DIR_REASON_FILE)
            && (names.is_empty() || is_our_reason_file(&failed)?);
        if !ours_only {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!(
                    "{} is a directory with the consumer's files in it; left alone",
                    failed.path().display()
                ),
            ));
        }
        if !names.is_empty() {
            failed.remove_file(DIR_REASON_FILE)?;
        }
        self.failed.remove_dir(chit)
    }

    /// For a chit that is a directory, `fetch/X/`: write [`error_line`] into
    /// a new file [`DIR_REASON_FILE`] inside it, and fsync the file and the
    /// directory. The directory is opened beneath `fetch/` and the file
    /// created in it exclusively, neither through a symlink, so nothing the
    /// consumer put there (a file or a symlink of that name included) is
    /// opened or overwritten. When that cannot be done, the directory still
    /// goes to `fail/` as it is, and why is logged.
    ///
    /// Short of descriptors or memory ([`out_of_resources`]), it fails
    /// instead, and the chit stays in `fetch/` for a later try.
    fn leave_reason_in_dir(&self, chit: &OsStr, reason: &str) -> io::Result<()> {
        match self.write_reason_file(chit, reason) {
            Err(e) if out_of_resources(&e) => Err(e),
            Err(e) => {
                tracing::warn!(consumer = %self.name, chit = %lossy(chit), "chit is a directory; moving it to fail/ without a {DIR_REASON_FILE} file: {e}; the reason: {reason}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn write_reason_file(&self, chit: &OsStr, reason: &str) -> io::Result<()> {
        let dir = self.fetch.open_dir(chit)?;
        let mut file = dir.create_new(DIR_REASON_FILE)?;
        let path = || dir.path().join(DIR_REASON_FILE);
        file.write_all(error_line(reason).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| with_path(e, "writing", &path()))?;
        dir.sync()
    }

    /// Append [`error_line`] to `fetch/X` itself, and fsync it, if it is a
    /// regular file with one link (checked on the open descriptor) larger
    /// than [`MAX_CHIT_BYTES`]: too big to copy, and written by no one but
    /// the consumer. Only its last byte is read (to start the line on a line
    /// of its own). `Ok(false)`, untouched, when it is not such a file or
    /// cannot be opened for writing: then [`Spool::fail`] rebuilds it.
    ///
    /// A failed write may leave part of the line; it is a comment (or an
    /// empty line), and the next attempt starts a new line after it.
    fn append_to_oversized(&self, chit: &OsStr, reason: &str) -> io::Result<bool> {
        let mut file = match self.fetch.open_regular_to_append(chit) {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(consumer = %self.name, chit = %lossy(chit), "not appending the reason in place: {e}");
                return Ok(false);
            }
        };
        let metadata = file.metadata()?;
        let length = metadata.len();
        if metadata.nlink() != 1 || length <= MAX_CHIT_BYTES as u64 {
            return Ok(false);
        }
        let mut last = [0; 1];
        file.read_exact_at(&mut last, length - 1)?;
        let mut line = Vec::new();
        if last != *b"\n" {
            line.push(b'\n');
        }
        line.extend_from_slice(error_line(reason).as_bytes());
        file.write_all(&line)?;
        file.sync_all()?;
        Ok(true)
    }

    /// Remove `downloaded/X` and `fail/X` left by an earlier request of the
    /// same name: the chit in `fetch/` is newer and its outcome replaces
    /// theirs. A directory chit failed earlier (`fail/X/`) is removed when
    /// it holds nothing but chitd's [`DIR_REASON_FILE`]; one holding more is
    /// the consumer's and is left alone (the new outcome's rename then
    /// reports it).
    pub fn clear_outcomes(&self, chit: impl AsRef<OsStr>) {
        let chit = chit.as_ref();
        for dir in [&self.downloaded, &self.failed] {
            let removed = match dir.remove_file(chit) {
                Err(e)
                    if e.kind() == io::ErrorKind::IsADirectory
                        && std::ptr::eq(dir, &self.failed) =>
                {
                    self.remove_failed_dir_chit(chit)
                }
                removed => removed,
            };
            match removed {
                Ok(()) => {
                    tracing::info!(consumer = %self.name, chit = %lossy(chit), "removed the outcome of an earlier request of this name from {}", dir.path().display())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(consumer = %self.name, chit = %lossy(chit), "cannot remove an earlier outcome: {e}")
                }
            }
        }
    }

    /// The state directories removed or renamed away since they were
    /// opened: their names hold nothing, or another directory.
    pub fn lost_states(&self) -> Vec<&Dir> {
        self.states()
            .filter(|(name, dir)| {
                dir.is_removed()
                    || matches!(
                        self.root.holds_dir(name, dir),
                        Ok(Holds::Other | Holds::OtherDir)
                    )
            })
            .map(|(_, dir)| dir)
            .collect()
    }

    /// Chit names in a state directory, UTF-8 or not (dot-files are not
    /// chits).
    pub fn chits(&self, state: &Dir) -> io::Result<Vec<OsString>> {
        let mut names = state.all_names()?;
        names.retain(|name| is_chit_name(name));
        Ok(names)
    }

    /// Remove the dot-named temporaries chitd itself left in `fetch/` (a
    /// failed chit being rebuilt when the daemon died).
    pub fn remove_temporaries(&self) -> io::Result<()> {
        for name in self.fetch.names()? {
            if name.starts_with('.')
                && name.contains(".chitd-")
                && self.fetch.kind(&name)? == Kind::File
            {
                tracing::info!(consumer = %self.name, name, "removing a temporary left by an earlier run");
                self.fetch.remove_file(&name)?;
            }
        }
        Ok(())
    }
}

/// A chit's name for messages: as it is when UTF-8.
fn lossy(chit: &OsStr) -> Cow<'_, str> {
    chit.to_string_lossy()
}

/// Not a dot-file (those are the consumer's, or chitd's temporaries).
pub fn is_chit_name(name: &OsStr) -> bool {
    name.as_bytes().first().is_some_and(|&b| b != b'.')
}

/// The error for a state directory removed while chitd runs.
fn removed(dir: &Dir) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{} was removed or replaced while chitd runs; chitd serves a new one made in its place \
             (after a restart, if the spool directory itself was removed)",
            dir.path().display()
        ),
    )
}

/// Read the chit `name` in `dir`: a regular file with one link, at most
/// [`MAX_CHIT_BYTES`], never read through a symlink.
fn read_chit_in(dir: &Dir, chit: &OsStr) -> Result<Vec<u8>, ReadError> {
    let file = match dir.open_regular(chit) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Gone),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            return Err(ReadError::Refused(format!(
                "the chit is not a regular file: {e}"
            )));
        }
        Err(e) => return Err(ReadError::of("cannot open the chit", &e)),
    };
    let (links, length) = file
        .metadata()
        .map(|metadata| (metadata.nlink(), metadata.len()))
        .map_err(|e| ReadError::of("cannot inspect the chit", &e))?;
    if links != 1 {
        return Err(ReadError::Refused(format!(
            "the chit has {links} hard links; chitd neither reads nor rewrites a file linked elsewhere"
        )));
    }
    if length > MAX_CHIT_BYTES as u64 {
        // Not read at all (nor copied into fail/): it could be gigabytes.
        return Err(ReadError::Refused(format!(
            "the chit is {length} bytes; the limit is {MAX_CHIT_BYTES}"
        )));
    }
    // Room for all of it and one byte more: one read, and one that
    // finds the end (it may have grown meanwhile: `take` still bounds it).
    let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0) + 1);
    file.take(MAX_CHIT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::of("cannot read the chit", &e))?;
    Ok(bytes)
}

/// Whether [`DIR_REASON_FILE`] in `dir` is one chitd made: a regular file
/// (not followed if a symlink) with one link, owned by chitd's user,
/// starting with an `# error:` line.
fn is_our_reason_file(dir: &Dir) -> io::Result<bool> {
    let file = match dir.open_regular(DIR_REASON_FILE) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Ok(false),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    let euid = rustix::process::geteuid().as_raw();
    if metadata.nlink() != 1 || metadata.uid() != euid {
        return Ok(false);
    }
    let mut start = [0u8; ERROR_LINE_PREFIX.len()];
    let read = file.take(start.len() as u64).read(&mut start)?;
    Ok(start[..read] == *ERROR_LINE_PREFIX.as_bytes())
}

/// Whether `copy`, from `fail/`, is the chit `bytes` with a reason line
/// appended ([`with_error_line`]).
fn is_failed_copy_of(copy: &[u8], bytes: &[u8]) -> bool {
    let Some(rest) = copy.strip_prefix(bytes) else {
        return false;
    };
    let rest = if bytes.is_empty() || bytes.ends_with(b"\n") {
        rest
    } else {
        rest.strip_prefix(b"\n").unwrap_or(b"")
    };
    let line = rest.strip_suffix(b"\n").unwrap_or(rest);
    line.starts_with(b"# error: ") && !line.contains(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open("test", dir.path()).unwrap();
        (dir, spool)
    }

    #[test]
    fn claim_complete_and_fail_are_renames() {
        let (dir, spool) = spool();
        let root = dir.path();
        fs::write(root.join("request/a"), "chit a\n").unwrap();
        fs::write(root.join("request/b"), "chit b").unwrap();
        assert_eq!(spool.claim("a").unwrap(), Claim::Claimed);
        assert_eq!(spool.claim("a").unwrap(), Claim::Gone);
        assert_eq!(spool.read("a").unwrap(), b"chit a\n");
        spool.complete("a").unwrap();
        assert!(root.join("downloaded/a").exists() && !root.join("fetch/a").exists());

        assert_eq!(spool.claim("b").unwrap(), Claim::Claimed);
        spool.fail("b", Some(b"chit b"), "it broke\nbadly").unwrap();
        assert_eq!(
            fs::read_to_string(root.join("fail/b")).unwrap(),
            "chit b\n# error: it broke badly\n"
        );
        assert!(spool.chits(&spool.fetch).unwrap().is_empty());
        assert_eq!(
            fs::read_dir(root.join("fetch")).unwrap().count(),
            0,
            "no temporary left"
        );
    }

    #[test]
    fn clear_outcomes_removes_old_terminal_copies_only() {
        let (dir, spool) = spool();
        let root = dir.path();
        fs::write(root.join("fetch/a"), "new").unwrap();
        fs::write(root.join("downloaded/a"), "old").unwrap();
        fs::write(root.join("fail/a"), "older").unwrap();
        // Earlier directory chits: empty, with only chitd's reason file,
        // and with a file of the consumer's.
        fs::create_dir(root.join("fail/d")).unwrap();
        fs::create_dir(root.join("fail/e")).unwrap();
        fs::write(root.join("fail/e").join(DIR_REASON_FILE), "# error: x\n").unwrap();
        fs::create_dir(root.join("fail/f")).unwrap();
        fs::write(root.join("fail/f").join(DIR_REASON_FILE), "# error: x\n").unwrap();
        fs::write(root.join("fail/f/theirs"), "kept").unwrap();
        // The consumer's own file of the reason file's name; and an empty
        // directory in downloaded/ (never chitd's: a directory chit fails).
        fs::create_dir(root.join("fail/g")).unwrap();
        fs::write(root.join("fail/g").join(DIR_REASON_FILE), "mine\n").unwrap();
        fs::create_dir(root.join("downloaded/h")).unwrap();
        for chit in ["a", "d", "e", "f", "g", "h"] {
            spool.clear_outcomes(chit);
        }
        assert_eq!(
            fs::read_to_string(root.join("fail/g").join(DIR_REASON_FILE)).unwrap(),
            "mine\n"
        );
        assert!(root.join("downloaded/h").is_dir());
        assert!(!root.join("downloaded/a").exists());
        assert!(!root.join("fail/a").exists());
        assert!(root.join("fetch/a").exists());
        assert!(!root.join("fail/d").exists());
        assert!(!root.join("fail/e").exists());
        assert_eq!(
            fs::read_to_string(root.join("fail/f/theirs")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn oversized_chit_is_refused_unread_with_its_size() {
        let (dir, spool) = spool();
        let file = fs::File::create(dir.path().join("fetch/big")).unwrap();
        file.set_len(10 << 30).unwrap(); // sparse: 10 GiB of nothing
        let inode = file.metadata().unwrap().ino();
        let ReadError::Refused(reason) = spool.read("big").unwrap_err() else {
            panic!("not refused")
        };
        assert_eq!(reason, "the chit is 10737418240 bytes; the limit is 65536");
        spool.fail("big", None, &reason).unwrap();
        // The same file, its bytes kept, the reason appended on a new line.
        let failed = fs::File::open(dir.path().join("fail/big")).unwrap();
        let metadata = failed.metadata().unwrap();
        assert_eq!(metadata.ino(), inode, "the chit was copied");
        assert!(metadata.blocks() < 1024, "the chit was filled in");
        let line = format!("\n# error: {reason}\n");
        assert_eq!(metadata.len(), (10 << 30) + line.len() as u64);
        let mut tail = vec![0; line.len() + 1];
        failed.read_exact_at(&mut tail, (10 << 30) - 1).unwrap();
        assert_eq!(tail, [b"\0", line.as_bytes()].concat());
        assert_eq!(fs::read_dir(dir.path().join("fetch")).unwrap().count(), 0);
    }

    #[test]
    fn oversized_chit_ending_in_a_line_end_gets_no_empty_line() {
        let (dir, spool) = spool();
        let mut original = vec![b'#'; MAX_CHIT_BYTES];
        original.push(b'\n');
        fs::write(dir.path().join("fetch/big"), &original).unwrap();
        spool.fail("big", None, "too big\nreally").unwrap();
        assert_eq!(
            fs::read(dir.path().join("fail/big")).unwrap(),
            [&original[..], b"# error: too big really\n"].concat()
        );
    }

    #[test]
    fn small_or_hard_linked_chits_without_bytes_are_not_appended_to() {
        let (dir, spool) = spool();
        // At most the limit: the read failed for another reason; rebuilt.
        fs::write(dir.path().join("fetch/small"), "chit\n").unwrap();
        spool.fail("small", None, "cannot read").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("fail/small")).unwrap(),
            "# error: cannot read\n"
        );
        // Oversized but linked elsewhere: the other name keeps its bytes.
        let outside = dir.path().join("outside");
        let big = vec![b'x'; MAX_CHIT_BYTES + 1];
        fs::write(&outside, &big).unwrap();
        fs::hard_link(&outside, dir.path().join("fetch/linked")).unwrap();
        spool.fail("linked", None, "linked").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), big);
        assert_eq!(
            fs::read_to_string(dir.path().join("fail/linked")).unwrap(),
            "# error: linked\n"
        );
    }

    #[test]
    fn directory_chit_gets_the_reason_in_a_file_of_its_own() {
        let (dir, spool) = spool();
        let root = dir.path();
        fs::create_dir(root.join("fetch/d")).unwrap();
        fs::write(root.join("fetch/d/inner"), "the consumer's\n").unwrap();
        spool.fail("d", None, "it is a directory\nreally").unwrap();
        assert_eq!(
            fs::read_to_string(root.join("fail/d").join(DIR_REASON_FILE)).unwrap(),
            "# error: it is a directory really\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("fail/d/inner")).unwrap(),
            "the consumer's\n"
        );
        assert!(entries(&root.join("fetch")).is_empty());
    }

    #[test]
    fn directory_chit_with_a_reason_file_of_its_own_keeps_it_and_still_fails() {
        let (dir, spool) = spool();
        let root = dir.path();
        let outside = root.join("outside");
        fs::write(&outside, "secret\n").unwrap();
        // A symlink planted under the reason file's name: never followed.
        fs::create_dir(root.join("fetch/s")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("fetch/s").join(DIR_REASON_FILE)).unwrap();
        // A file of the consumer's own under that name: never overwritten.
        fs::create_dir(root.join("fetch/f")).unwrap();
        fs::write(root.join("fetch/f").join(DIR_REASON_FILE), "mine\n").unwrap();
        spool.fail("s", None, "it is a directory").unwrap();
        spool.fail("f", None, "it is a directory").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
        let link = root.join("fail/s").join(DIR_REASON_FILE);
        assert_eq!(fs::read_link(&link).unwrap(), outside);
        assert_eq!(
            fs::read_to_string(root.join("fail/f").join(DIR_REASON_FILE)).unwrap(),
            "mine\n"
        );
        assert!(entries(&root.join("fetch")).is_empty());
    }

    #[test]
    fn claim_never_replaces_a_chit_in_fetch() {
        let (dir, spool) = spool();
        fs::write(dir.path().join("request/a"), "new").unwrap();
        fs::write(dir.path().join("fetch/a"), "old").unwrap();
        assert_eq!(spool.claim("a").unwrap(), Claim::Busy);
        assert_eq!(
            fs::read_to_string(dir.path().join("fetch/a")).unwrap(),
            "old"
        );
    }

    #[test]
    fn hard_linked_chit_is_refused_and_its_other_name_untouched() {
        let (dir, spool) = spool();
        let outside = dir.path().join("outside");
        fs::write(&outside, "secret\n").unwrap();
        fs::hard_link(&outside, dir.path().join("fetch/h")).unwrap();
        let ReadError::Refused(reason) = spool.read("h").unwrap_err() else {
            panic!("not refused")
        };
        assert!(reason.contains("hard links"), "{reason}");
        spool.fail("h", None, &reason).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
        assert!(
            fs::read_to_string(dir.path().join("fail/h"))
                .unwrap()
                .starts_with("# error: the chit has 2 hard links")
        );
    }

    #[test]
    fn symlinked_chit_is_replaced_not_followed() {
        let (dir, spool) = spool();
        let outside = dir.path().join("outside");
        fs::write(&outside, "secret\n").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("fetch/s")).unwrap();
        let ReadError::Refused(reason) = spool.read("s").unwrap_err() else {
            panic!("not refused")
        };
        assert!(reason.contains("symbolic link"), "{reason}");
        spool.fail("s", None, &reason).unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
        assert!(
            !fs::symlink_metadata(dir.path().join("fail/s"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    /// `<dir>/<bytes>`, for names that are not UTF-8.
    fn raw(dir: &Path, name: &[u8]) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        dir.join(OsStr::from_bytes(name))
    }

    fn entries(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    /// Names are bytes: a chit whose name is not UTF-8 is listed, claimed,
    /// read and failed by its raw name, like any other; a dot-named one is
    /// no chit.
    #[test]
    fn chits_with_names_that_are_not_utf8_take_the_same_transitions() {
        let (dir, spool) = spool();
        let root = dir.path();
        let name = OsStr::from_bytes(b"bad\xff");
        fs::write(raw(&root.join("request"), b"bad\xff"), "chit\n").unwrap();
        fs::write(raw(&root.join("request"), b".tmp\xff"), "x").unwrap();
        fs::write(root.join("request/good"), "ok\n").unwrap();
        let mut listed = spool.chits(&spool.request).unwrap();
        listed.sort();
        assert_eq!(listed, [name, OsStr::new("good")]);
        assert_eq!(spool.claim(name).unwrap(), Claim::Claimed);
        assert_eq!(spool.read(name).unwrap(), b"chit\n");
        spool.fail(name, Some(b"chit\n"), "its name").unwrap();
        assert_eq!(
            fs::read_to_string(raw(&root.join("fail"), b"bad\xff")).unwrap(),
            "chit\n# error: its name\n"
        );
        assert!(entries(&root.join("fetch")).is_empty());
    }
}
