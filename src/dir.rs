//! Confined access to directories that consumers can write to.
//!
//! A consumer's spool and delivery directories are writable by a sandbox
//! that may plant symlinks, hard links or FIFOs anywhere, and may swap them
//! in between a check and a use. Every open, create, mkdir and rename chitd
//! performs there goes through a [`Dir`]: a directory file descriptor, with
//! names resolved by `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` or by
//! the `*at` calls on a single component. Since no path is ever resolved
//! from the root again, and no symlink is ever followed, nothing the consumer
//! plants can redirect a write outside the directory it was opened for.
//!
//! The root of each [`Dir`] is opened from a path given by the administrator
//! (configuration or flags) and is trusted.
//!
//! Names are UTF-8 almost everywhere in chitd, but a consumer may create any
//! bytes: [`Dir::names`] lists the UTF-8 ones, [`Dir::names_not_utf8`] the
//! others, and the methods that act on one entry take any `AsRef<OsStr>`,
//! so such an entry can still be moved, inspected and failed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};

use crate::durable::{unique_suffix, with_path};

/// How many names [`Dir::create_temp`] tries before it gives up: the first
/// is predictable, the others random, so a second is almost never needed.
pub const TEMP_NAME_TRIES: usize = 8;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// An open directory; every name is resolved beneath it without following
/// symlinks.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A file's identity: its device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn of_stat(stat: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }
}

/// Directories whose own name is known to be durable in their parent, by
/// [`FileId`]: made by this process, or found and their parent
/// fsync'd once. A directory chitd finds already there may have been made
/// by a run that crashed before fsyncing its parent, or by a consumer that
/// never did: on file systems that do not order a directory's creation
/// before a later fsync inside it (ext2, ext4 without a journal; POSIX does
/// not promise it), a power cut could take the directory's name, and the
/// delivered file with it, after its chit was reported in `downloaded/`.
/// One fsync of each parent per run, the first time a directory is used,
/// rules that out.
#[derive(Debug, Default)]
pub struct DurableDirs(Mutex<HashSet<FileId>>);

impl DurableDirs {
    fn contains(&self, id: FileId) -> bool {
        self.lock().contains(&id)
    }

    fn insert(&self, id: FileId) {
        self.lock().insert(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<FileId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What kind of file a directory entry is (without following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What a name holds, compared with a directory (see [`Dir::holds_dir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Same,
    OtherDir,
    Other,
}

impl Dir {
    /// Open a trusted root directory, creating it (and its parents) if
    /// missing; the parent of each directory made is fsync'd, so a root
    /// made on first start keeps its name through a power cut.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        crate::durable::create_dir_all(path)?;
        Dir::open_existing(path)
    }

    /// Open a trusted root directory that exists (for a reader such as
    /// `chitd status`, which must not make one).
    pub fn open_existing(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_path(e.into(), "opening directory", path))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was opened as (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the subdirectory `name` (one component, or a `/`-separated
    /// relative path) beneath this one, refusing symlinks anywhere on it.
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = name.as_ref();
        let fd = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| {
            // O_NOFOLLOW makes a symlink itself ENOTDIR, RESOLVE_NO_SYMLINKS
            // makes one on the way ELOOP: say which, for the `# error:` line.
            let symlink = e == rustix::io::Errno::LOOP
                || (e == rustix::io::Errno::NOTDIR && matches!(self.kind(name), Ok(Kind::Symlink)));
            if symlink {
                let why = "it (or a directory on the way to it) is a symbolic link, \
                           which chitd never follows in a consumer's directories";
                let error = io::Error::new(io::ErrorKind::InvalidInput, why);
                self.error(error, "refusing to open directory", name)
            } else {
                self.error(e.into(), "opening directory", name)
            }
        })?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Open (creating as needed) the chain of subdirectories `components`,
    /// one component at a time, never following a symlink. Each directory
    /// on the way has a durable name on return (see [`DurableDirs`]), so a
    /// file later made durable inside it cannot be lost with a directory's
    /// own name.
    pub fn create_dirs<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
        durable: &DurableDirs,
    ) -> io::Result<Dir> {
        Ok(self.walk(components, true, durable)?.0)
    }

    /// [`Dir::create_dirs`] for a chain that must exist already: nothing is
    /// created (a missing directory is an error of kind `NotFound`).
    pub fn open_dirs<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
        durable: &DurableDirs,
    ) -> io::Result<Dir> {
        Ok(self.walk(components, false, durable)?.0)
    }

    /// The walk of [`Dir::create_dirs`] and [`Dir::open_dirs`]; also
    /// returns how many parents it fsync'd.
    fn walk<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
        create: bool,
        durable: &DurableDirs,
    ) -> io::Result<(Dir, usize)> {
        let mut current = self.open_dir(".")?;
        current.path = self.path.clone(); // not "<path>/.", in messages
        let mut syncs = 0;
        for component in components {
            let child = match current.open_dir(component) {
                Ok(dir) => dir,
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&current.fd, component, Mode::from_raw_mode(0o755)) {
                        // EXIST: made meanwhile by another delivery, whose
                        // fsync of the parent may not have happened yet:
                        // the check below syncs it unless that one did.
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(current.error(e.into(), "creating directory", component));
                        }
                    }
                    current.open_dir(component)?
                }
                Err(e) => return Err(e),
            };
            let id = child.id()?;
            if !durable.contains(id) {
                current.sync()?;
                durable.insert(id);
                syncs += 1;
            }
            current = child;
        }
        Ok((current, syncs))
    }

    /// This directory's identity, from its descriptor.
    pub fn id(&self) -> io::Result<FileId> {
        let stat = rustix::fs::fstat(&self.fd)
            .map_err(|e| with_path(e.into(), "inspecting directory", &self.path))?;
        Ok(FileId::of_stat(&stat))
    }

    /// Open the regular file `name` for reading, without following a
    /// symlink; anything but a regular file is an error of kind
    /// `InvalidInput` that says what it is.
    ///
    /// The name is first resolved to an `O_PATH` descriptor, which pins the
    /// inode without opening the file itself: a FIFO, socket or device a
    /// consumer planted is inspected and refused, never opened (no driver
    /// `open()`, no FIFO rendezvous). Only a regular file is then opened for
    /// reading, through that descriptor, so a name swapped meanwhile cannot
    /// substitute another file.
    pub fn open_regular(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        self.open_regular_as(name.as_ref(), OFlags::RDONLY)
    }

    /// [`Dir::open_regular`], but opened for reading and appending
    /// (`O_RDWR | O_APPEND`, never `O_TRUNC`): the same refusals (symlink,
    /// FIFO, socket, device: inspected through `O_PATH`, never opened).
    /// Whether writing through the file is safe (its link count) is the
    /// caller's to check, on the returned descriptor.
    pub fn open_regular_to_append(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        self.open_regular_as(name.as_ref(), OFlags::RDWR | OFlags::APPEND)
    }

    fn open_regular_as(&self, name: &OsStr, access: OFlags) -> io::Result<File> {
        let pinned = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                self.error(
                    io::Error::new(io::ErrorKind::InvalidInput, "it is a symbolic link"),
                    "refusing to open",
                    name,
                )
            } else {
                self.error(e.into(), "opening", name)
            }
        })?;
        let stat =
            rustix::fs::fstat(&pinned).map_err(|e| self.error(e.into(), "inspecting", name))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(self.error(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("it is a {}", describe(kind)),
                ),
                "refusing to open",
                name,
            ));
        }
        let fd = self
            .reopen(&pinned, name, &stat, access)
            .map_err(|e| self.error(e, "opening", name))?;
        Ok(File::from(fd))
    }

    /// Open the regular file behind the `O_PATH` descriptor `pinned` with
    /// `access` (`O_RDONLY`, or `O_RDWR | O_APPEND`): through `/proc/self/fd` (the very inode, whatever the name
    /// holds now); without `/proc`, by name again, refusing a different
    /// inode (a device swapped in at that instant would then be opened
    /// before it is refused: `/proc` closes that gap).
    fn reopen(
        &self,
        pinned: &OwnedFd,
        name: &OsStr,
        expected: &rustix::fs::Stat,
        access: OFlags,
    ) -> io::Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        let flags = access | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let magic = format!("/proc/self/fd/{}", pinned.as_raw_fd());
        match rustix::fs::open(magic.as_str(), flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) => {}
            opened => return opened.map_err(io::Error::from),
        }
        let fd = rustix::fs::openat2(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
            RESOLVE,
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if (stat.st_dev, stat.st_ino) != (expected.st_dev, expected.st_ino) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it was replaced while being opened",
            ));
        }
        Ok(fd)
    }

    /// The kind of the entry `name`, without following symlinks.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> io::Result<Kind> {
        let name = name.as_ref();
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.error(e.into(), "inspecting", name))?;
        Ok(match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        })
    }

    /// When the entry `name` (not followed if a symlink) was last modified.
    pub fn modified(&self, name: impl AsRef<OsStr>) -> io::Result<std::time::SystemTime> {
        let name = name.as_ref();
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.error(e.into(), "inspecting", name))?;
        let since_epoch = std::time::Duration::new(
            u64::try_from(stat.st_mtime).unwrap_or(0),
            u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
        );
        Ok(std::time::UNIX_EPOCH + since_epoch)
    }

    /// What the entry `name` (not followed if a symlink) holds, compared
    /// with `dir`: `dir` itself, another directory, or something else
    /// (nothing, or not a directory). An error is one of looking.
    pub fn holds_dir(&self, name: &str, dir: &Dir) -> io::Result<Holds> {
        let entry = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(entry) => entry,
            Err(rustix::io::Errno::NOENT) => return Ok(Holds::Other),
            Err(e) => return Err(self.error(e.into(), "inspecting", name)),
        };
        if FileType::from_raw_mode(entry.st_mode) != FileType::Directory {
            return Ok(Holds::Other);
        }
        Ok(if dir.id()? == FileId::of_stat(&entry) {
            Holds::Same
        } else {
            Holds::OtherDir
        })
    }

    /// Another handle on this directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| with_path(e.into(), "duplicating the handle of", &self.path))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// Whether the entry `name` (not followed if a symlink) is `file`.
    pub fn holds(&self, name: &str, file: &File) -> io::Result<bool> {
        let entry = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.error(e.into(), "inspecting", name))?;
        let open = rustix::fs::fstat(file).map_err(io::Error::from)?;
        Ok((entry.st_dev, entry.st_ino) == (open.st_dev, open.st_ino))
    }

    /// Create a new, exclusive, dot-named temporary file in this directory
    /// ([`Dir::create_new`]). Returns its name and the open file.
    ///
    /// The first name tried is `.<stem>.chitd-<pid>.<n>` with the process's
    /// next counter value, which a consumer can predict. A name already
    /// taken (by anything: a file, a symlink, a directory a consumer
    /// planted there) is never opened through: another name is tried, with
    /// a random `<n>` that cannot be predicted, up to [`TEMP_NAME_TRIES`]
    /// names in all.
    pub fn create_temp(&self, stem: &str) -> io::Result<(String, File)> {
        self.at_temp_name(stem, |name| self.create_new(name))
    }

    /// Run `make` on temporary names for `stem` (see [`Dir::create_temp`])
    /// until one is not taken: the name and what `make` made there.
    fn at_temp_name<T>(
        &self,
        stem: &str,
        make: impl Fn(&str) -> io::Result<T>,
    ) -> io::Result<(String, T)> {
        let mut suffix = unique_suffix();
        for _ in 1..TEMP_NAME_TRIES {
            let name = temp_name(stem, &suffix);
            match make(&name) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::debug!("{e}; trying another temporary name");
                    suffix = random_suffix();
                }
                made => return made.map(|made| (name, made)),
            }
        }
        let name = temp_name(stem, &suffix);
        make(&name).map(|made| (name, made))
    }

    /// A new regular file without a name in this directory, open for
    /// reading and writing (see [`crate::durable::create_unnamed`]); `None`
    /// where the file system cannot make one.
    pub fn create_unnamed(&self) -> io::Result<Option<File>> {
        crate::durable::create_unnamed(&self.fd, Path::new("."), 0o644, true)
            .map_err(|e| with_path(e, "creating a file in", &self.path))
    }

    /// Name `file`, made by [`Dir::create_unnamed`] here, `name` (one path
    /// component); a name already taken is an error of kind
    /// `AlreadyExists`, never replaced or followed. `Ok(false)`: links of
    /// unnamed files cannot be made in this process.
    pub fn link_unnamed(&self, file: &File, name: impl AsRef<OsStr>) -> io::Result<bool> {
        let name = name.as_ref();
        crate::durable::link_unnamed(file, &self.fd, Path::new(name))
            .map_err(|e| self.error(e, "naming", name))
    }

    /// [`Dir::link_unnamed`] under a temporary name of [`Dir::create_temp`]'s
    /// scheme for `stem`, tried the same way; the name, or `None` if links
    /// of unnamed files cannot be made in this process.
    pub fn link_unnamed_temp(&self, file: &File, stem: &str) -> io::Result<Option<String>> {
        let (name, linked) = self.at_temp_name(stem, |name| self.link_unnamed(file, name))?;
        Ok(linked.then_some(name))
    }

    /// Create the regular file `name` in this directory, which must not
    /// exist (`O_CREAT | O_EXCL | O_NOFOLLOW`: anything already there, a
    /// symlink included, is an error of kind `AlreadyExists`, never opened).
    /// Open for reading too: a delivery reads its copy back to hash it.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
            RESOLVE,
        )
        .map_err(|e| self.error(e.into(), "creating", name))?;
        Ok(File::from(fd))
    }

    /// Whether `name` has the shape of [`Dir::create_temp`]'s names,
    /// `.<stem>.chitd-<pid>.<n>`. Consumers' own dot-files never match
    /// unless they imitate chitd on purpose.
    pub fn is_temp_name(name: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let Some((stem, suffix)) = name
            .strip_prefix('.')
            .and_then(|rest| rest.rsplit_once(".chitd-"))
        else {
            return false;
        };
        !stem.is_empty()
            && suffix
                .split_once('.')
                .is_some_and(|(pid, n)| digits(pid) && digits(n))
    }

    /// `rename(2)` `from` in this directory to `to` in `target`, replacing
    /// whatever `to` names (a symlink there is replaced, not followed).
    pub fn rename(
        &self,
        from: impl AsRef<OsStr>,
        target: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        self.rename_with(from.as_ref(), target, to.as_ref(), RenameFlags::empty())
    }

    /// Like [`Dir::rename`], but fails with `AlreadyExists` instead of
    /// replacing an existing `to`.
    pub fn rename_noreplace(
        &self,
        from: impl AsRef<OsStr>,
        target: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        self.rename_with(from.as_ref(), target, to.as_ref(), RenameFlags::NOREPLACE)
    }

    fn rename_with(
        &self,
        from: &OsStr,
        target: &Dir,
        to: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, from, &target.fd, to, flags)
            .map_err(|e| self.error(e.into(), "renaming", from))
    }

    /// Remove the file `name` (not a directory).
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| self.error(e.into(), "removing", name))
    }

    /// Remove the empty directory `name`.
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
            .map_err(|e| self.error(e.into(), "removing", name))
    }

    /// Whether this directory was removed (its last name unlinked) since
    /// it was opened. chitd keeps working on the open directory: a new one
    /// made under the old name goes unseen.
    pub fn is_removed(&self) -> bool {
        rustix::fs::fstat(&self.fd).is_ok_and(|stat| stat.st_nlink == 0)
    }

    /// fsync the directory itself.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd)
            .map_err(|e| with_path(e.into(), "syncing directory", &self.path))
    }

    /// The names in this directory (without `.` and `..`) that are UTF-8.
    /// The others are skipped silently: see [`Dir::names_not_utf8`].
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        self.each_name(|bytes| {
            if let Ok(name) = std::str::from_utf8(bytes) {
                names.push(name.to_owned());
            }
        })?;
        Ok(names)
    }

    /// Every name in this directory (without `.` and `..`), UTF-8 or not.
    pub fn all_names(&self) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        self.each_name(|bytes| names.push(OsString::from_vec(bytes.to_vec())))?;
        Ok(names)
    }

    /// The names in this directory that are not UTF-8, which
    /// [`Dir::names`] leaves out.
    pub fn names_not_utf8(&self) -> io::Result<Vec<OsString>> {
        // Only those are copied: a directory of 100,000 chits with UTF-8
        // names costs no memory here.
        let mut others = Vec::new();
        self.each_name(|bytes| {
            if std::str::from_utf8(bytes).is_err() {
                others.push(OsString::from_vec(bytes.to_vec()));
            }
        })?;
        Ok(others)
    }

    /// How many names in this directory but `.` and `..` (UTF-8 or not)
    /// `keep` accepts.
    pub fn count(&self, keep: impl Fn(&OsStr) -> bool) -> io::Result<usize> {
        let mut count = 0;
        self.each_name(|bytes| {
            count += usize::from(keep(std::os::unix::ffi::OsStrExt::from_bytes(bytes)))
        })?;
        Ok(count)
    }

    /// Call `f` with every name in this directory but `.` and `..`.
    fn each_name(&self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| with_path(e.into(), "reading directory", &self.path))?;
        let mut dir = rustix::fs::Dir::new(dup)
            .map_err(|e| with_path(e.into(), "reading directory", &self.path))?;
        dir.rewind();
        for entry in dir {
            let entry = entry.map_err(|e| with_path(e.into(), "reading directory", &self.path))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            f(bytes);
        }
        Ok(())
    }

    fn error(&self, error: io::Error, doing: &str, name: impl AsRef<OsStr>) -> io::Error {
        with_path(error, doing, &self.path.join(name.as_ref()))
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// A `<pid>.<n>` suffix whose `<n>` is random: for a temporary name whose
/// predictable first choice was taken.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    // Each `RandomState` is keyed afresh (from the OS's randomness, once
    // per thread, then advanced): its hash of the counter is unpredictable
    // to a consumer.
    let n = RandomState::new().hash_one(unique_suffix());
    format!("{}.{n}", std::process::id())
}

/// `.<stem>.chitd-<suffix>`, with the stem cut short (at a character
/// boundary) so the name fits in a file name of 255 bytes: a chit or a path
/// component may use all 255 itself. The one temporary-name scheme: of
/// [`Dir::create_temp`] and of `durable::write_then_rename` alike.
pub fn temp_name(stem: &str, suffix: &str) -> String {
    const NAME_MAX: usize = 255;
    let room = NAME_MAX.saturating_sub(".".len() + ".chitd-".len() + suffix.len());
    let mut end = stem.len().min(room);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.chitd-{suffix}", &stem[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    #[test]
    fn temp_names_fit_in_255_bytes() {
        for stem in [
            "a".repeat(255),
            "é".repeat(127),
            "make-4.4.tar.gz".to_owned(),
            // A non-UTF-8 chit name, rendered lossily.
            String::from_utf8_lossy(&[b'x', 0xff].repeat(127)).into_owned(),
        ] {
            let name = temp_name(&stem, "4294967295.18446744073709551615");
            assert!(name.len() <= 255, "{} bytes", name.len());
            assert!(Dir::is_temp_name(&name), "{name}");
            assert!(stem.starts_with(&name[1..name.rfind(".chitd-").unwrap()]));
        }
    }

    #[test]
    fn temp_names_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let root = Dir::open_root(dir.path()).unwrap();
        let (made, _file) = root.create_temp("make-4.4.tar.gz").unwrap();
        assert!(Dir::is_temp_name(&made), "{made}");
        for (name, temp) in [
            (".a.chitd-12.0", true),
            (".x.chitd-1.2.chitd-3.4", true),
            ("a.chitd-12.0", false),
            (".chitd-12.0", false),
            (".a.chitd-12", false),
            (".a.chitd-12.0.bak", false),
            (".a.chitd-x.0", false),
            (".hidden", false),
        ] {
            assert_eq!(Dir::is_temp_name(name), temp, "{name}");
        }
    }

    /// The names after one made are predictable: things planted there are
    /// neither opened nor replaced, and another name is made.
    #[test]
    fn create_temp_takes_another_name_where_one_is_planted() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, "secret\n").unwrap();
        let dir = Dir::open_root(&root.path().join("d")).unwrap();
        let (first, _file) = dir.create_temp("x").unwrap();
        let (prefix, n) = first.rsplit_once('.').unwrap();
        let n: u64 = n.parse().unwrap();
        // Other tests take numbers too: plant plenty.
        let planted: Vec<String> = (n + 1..n + 65).map(|n| format!("{prefix}.{n}")).collect();
        for name in &planted {
            symlink(&outside, root.path().join("d").join(name)).unwrap();
        }
        let (made, mut file) = dir.create_temp("x").unwrap();
        assert!(Dir::is_temp_name(&made), "{made}");
        assert!(!planted.contains(&made), "{made}");
        std::io::Write::write_all(&mut file, b"chitd's").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret\n");
        for name in &planted {
            assert_eq!(
                std::fs::read_link(root.path().join("d").join(name)).unwrap(),
                outside
            );
        }
        assert_eq!(
            std::fs::read(root.path().join("d").join(&made)).unwrap(),
            b"chitd's"
        );
    }

    /// An unnamed file has no name until it is linked; a name taken by
    /// a symlink is refused, neither followed nor replaced; a temporary
    /// name is found beside it.
    #[test]
    fn unnamed_files_are_named_only_where_nothing_is() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, "secret\n").unwrap();
        let dir = Dir::open_root(&root.path().join("d")).unwrap();
        let Some(mut file) = dir.create_unnamed().unwrap() else {
            return; // This file system makes no unnamed files.
        };
        std::io::Write::write_all(&mut file, b"chitd's").unwrap();
        assert!(dir.names().unwrap().is_empty(), "named before its link");
        symlink(&outside, root.path().join("d/taken")).unwrap();
        let refused = dir.link_unnamed(&file, "taken").unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists, "{refused}");
        assert!(refused.to_string().contains("taken"), "{refused}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret\n");
        assert!(dir.link_unnamed(&file, "new").unwrap());
        assert_eq!(
            std::fs::read(root.path().join("d/new")).unwrap(),
            b"chitd's"
        );
        let temp = dir.link_unnamed_temp(&file, "taken").unwrap().unwrap();
        assert!(Dir::is_temp_name(&temp), "{temp}");
        assert_eq!(
            std::fs::read(root.path().join("d").join(&temp)).unwrap(),
            b"chitd's"
        );
    }

    #[test]
    fn create_dirs_refuses_a_symlinked_component() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("evil")).unwrap();
        let dir = Dir::open_root(root.path()).unwrap();
        let durable = DurableDirs::default();
        let err = dir.create_dirs(["evil", "sub"], &durable).unwrap_err();
        assert!(err.to_string().contains("evil"), "{err}");
        assert!(!outside.path().join("sub").exists());
        let made = dir.create_dirs(["a", "b"], &durable).unwrap();
        assert!(made.path().ends_with("a/b"));
        assert!(root.path().join("a/b").is_dir());
    }

    /// Directories found (made by a consumer, or by a run that crashed
    /// before syncing their parent) get their parent fsync'd the first time
    /// they are used, and only then; made ones are synced as they are made.
    #[test]
    fn directories_on_the_way_are_made_durable_once() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("found/deeper")).unwrap();
        let dir = Dir::open_root(root.path()).unwrap();
        let durable = DurableDirs::default();
        let walk = |components: &[&str], create| {
            let (made, syncs) = dir
                .walk(components.iter().copied(), create, &durable)
                .unwrap();
            assert!(made.path().ends_with(components.join("/")));
            syncs
        };
        assert_eq!(
            walk(&["found", "deeper"], false),
            2,
            "both found: both synced"
        );
        assert_eq!(walk(&["found", "deeper"], false), 0, "known durable now");
        assert_eq!(walk(&["found", "new"], true), 1, "only the new one");
        assert_eq!(walk(&["found", "new"], true), 0);
        assert!(root.path().join("found/new").is_dir());
        // Replaced by another directory (another inode): synced again.
        let inode =
            |p: &str| std::os::unix::fs::MetadataExt::ino(&root.path().join(p).metadata().unwrap());
        let before = inode("found/new");
        std::fs::remove_dir(root.path().join("found/new")).unwrap();
        std::fs::create_dir(root.path().join("found/new")).unwrap();
        if inode("found/new") != before {
            assert_eq!(walk(&["found", "new"], false), 1);
        }
        // open_dirs creates nothing.
        let err = dir.open_dirs(["found", "missing"], &durable).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(!root.path().join("found/missing").exists());
    }

    #[test]
    fn open_regular_refuses_symlinks_and_fifos() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("secret"), "x").unwrap();
        symlink(root.path().join("secret"), root.path().join("link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.path().join("fifo"),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let dir = Dir::open_root(root.path()).unwrap();
        let err = dir.open_regular("link").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = dir.open_regular("fifo").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(dir.open_regular("secret").is_ok());
        assert!(dir.open_regular("../etc/passwd").is_err());
        // Opening to append refuses the same, and never truncates.
        let err = dir.open_regular_to_append("link").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = dir.open_regular_to_append("fifo").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(dir.open_regular_to_append("../etc/passwd").is_err());
        let mut file = dir.open_regular_to_append("secret").unwrap();
        std::io::Write::write_all(&mut file, b"y").unwrap();
        assert_eq!(std::fs::read(root.path().join("secret")).unwrap(), b"xy");
    }

    /// Names in `dir` that were opened (inotify `IN_OPEN`) since `watch`.
    fn opened_names(inotify: &OwnedFd) -> Vec<String> {
        use rustix::fs::inotify::Reader;
        let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = Reader::new(inotify, &mut buffer);
        let mut names = Vec::new();
        while let Ok(event) = reader.next() {
            if let Some(name) = event.file_name() {
                names.push(name.to_string_lossy().into_owned());
            }
        }
        names
    }

    #[test]
    fn open_regular_never_opens_a_fifo_socket_or_device() {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.path().join("socket")).unwrap();
        // A device needs CAP_MKNOD; without it the FIFO and socket still count.
        let device = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("device"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o644),
            rustix::fs::makedev(1, 3),
        )
        .is_ok();
        std::fs::write(root.path().join("file"), "x").unwrap();
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(&inotify, root.path(), WatchFlags::OPEN).unwrap();

        let dir = Dir::open_root(root.path()).unwrap();
        let err = dir.open_regular("fifo").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = dir.open_regular("socket").unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
        if device {
            let err = dir.open_regular("device").unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
        }
        assert_eq!(opened_names(&inotify), Vec::<String>::new());
        // A regular file is opened (once), and reads.
        let mut text = String::new();
        std::io::Read::read_to_string(&mut dir.open_regular("file").unwrap(), &mut text).unwrap();
        assert_eq!(text, "x");
        assert_eq!(opened_names(&inotify), ["file"]);
    }

    #[test]
    fn open_dir_says_a_symlink_is_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        symlink("/", root.path().join("evil")).unwrap();
        let dir = Dir::open_root(root.path()).unwrap();
        let err = dir.open_dir("evil").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains("evil"), "{err}");
    }

    #[test]
    fn names_lists_entries() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), "").unwrap();
        std::fs::write(root.path().join(".b"), "").unwrap();
        let bad = OsStr::from_bytes(b"bad\xff");
        std::fs::write(root.path().join(bad), "").unwrap();
        let dir = Dir::open_root(root.path()).unwrap();
        let mut names = dir.names().unwrap();
        names.sort();
        assert_eq!(names, [".b", "a"]);
        assert_eq!(dir.names_not_utf8().unwrap(), [bad]);
        // A second listing sees the same (the descriptor is rewound).
        assert_eq!(dir.names().unwrap().len(), 2);
        // An entry whose name is not UTF-8 can be acted on.
        assert_eq!(dir.kind(bad).unwrap(), Kind::File);
        dir.rename(bad, &dir, "good").unwrap();
        assert!(dir.names_not_utf8().unwrap().is_empty());
    }
}
