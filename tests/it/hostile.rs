//! Hostile input and confinement: one test per attack a consumer or an
//! upstream server can mount. chitd often runs with more privilege than its
//! consumers, so each test checks three things: nothing outside the places
//! chitd owns is touched ([`Outside`]), the attacked chit ends in `fail/`
//! with a reason that names the problem, and the daemon keeps serving (a
//! good chit dropped afterwards is still delivered, [`Setup::still_serving`]).
//!
//! - `files`: symlinks, hard links, FIFOs, devices and directories planted in
//!   spool and delivery directories, including a symlink swapped in during
//!   delivery and things planted under chitd's next temporary names.
//! - `chits`: hostile chit contents (paths, size, garbage, credentials).
//! - `upstream`: hostile servers (encodings, redirects, wrong or extra bytes,
//!   slow drip, oversized headers), with a raw-TCP server (`evil`) for
//!   what the fault server cannot say.
//! - `flood`: 100,000 chits in one spool; another consumer is still served.
//! - `disk_full`: ENOSPC while downloading and while delivering.
//! - `descriptors`: a low limit on open files.
//!
//! The security model these tests check is written down in
//! `spool-layout.md`, section 5 ("Security model"), which cites each test
//! here by its path (`hostile::files::…`).

mod chits;
mod descriptors;
mod disk_full;
mod evil;
mod files;
mod flood;
mod upstream;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::server::Server;
use crate::util::{Content, Daemon, TestDir, TestSpool};

/// A directory beside the consumer's, full of things chitd must never
/// touch: a file, a subdirectory, and a file in it. [`Outside::assert_untouched`]
/// compares every entry (kind, size, content, mtime, inode, link count) with
/// the snapshot taken at creation.
pub struct Outside {
    pub root: PathBuf,
    snapshot: BTreeMap<PathBuf, String>,
}

impl Outside {
    pub fn create(dir: &TestDir) -> Outside {
        let root = dir.join("outside");
        fs::create_dir_all(root.join("subdir")).unwrap();
        fs::write(root.join("precious"), "precious bytes\n").unwrap();
        fs::write(root.join("subdir/also-precious"), "more precious bytes\n").unwrap();
        let snapshot = snapshot(&root);
        Outside { root, snapshot }
    }

    /// Add a file outside (and take it into the snapshot).
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.root.join(name);
        fs::write(&path, bytes).unwrap();
        self.snapshot = snapshot(&self.root);
        path
    }

    pub fn file(&self) -> PathBuf {
        self.root.join("precious")
    }

    pub fn assert_untouched(&self) {
        let now = snapshot(&self.root);
        assert_eq!(
            now, self.snapshot,
            "something outside the consumer's directories changed"
        );
    }
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                crate::util::sha256_hex(&fs::read(&path).unwrap())
            } else {
                String::new()
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let description = format!(
                "{:?} len={} ino={} nlink={} mtime={}.{} mode={:o} {content}",
                meta.file_type(),
                meta.len(),
                meta.ino(),
                meta.nlink(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.mode(),
            );
            entries.insert(path, description);
        }
    }
    entries
}

/// One consumer, the fault server, and an [`Outside`] directory.
pub struct Setup {
    pub dir: TestDir,
    pub spool: TestSpool,
    pub server: Server,
    pub outside: Outside,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = TestDir::new();
        let spool = dir.spool("c");
        let outside = Outside::create(&dir);
        Setup {
            dir,
            spool,
            server: Server::start(),
            outside,
        }
    }

    /// A daemon for the consumer with the test's cache, with default
    /// settings.
    pub fn start(&self) -> Daemon {
        Daemon::for_spool(&self.dir, &self.spool).start()
    }

    /// Content served by the fault server at `path`, with its chit.
    pub fn serve(&self, path: &str, len: usize) -> (Content, String) {
        let content = Content::random(len);
        self.server.add(path, content.bytes.clone());
        let chit = content.chit(
            &format!("good{}.bin", path.replace('/', "-")),
            &[self.server.url(path)],
        );
        (content, chit)
    }

    /// After an attack: nothing outside changed, and a good chit dropped now
    /// is still delivered by the running daemon.
    pub fn still_serving(&self) {
        self.outside.assert_untouched();
        let content = Content::random(2_000);
        let path = format!("/after-{}", crate::util::sha256_hex(&content.bytes));
        self.server.add(&path, content.bytes.clone());
        let name = "good-after-the-attack";
        self.spool.drop_chit(
            name,
            content.chit("after/good.bin", &[self.server.url(&path)]),
        );
        self.spool.expect_downloaded(name);
        self.spool
            .assert_delivered(name, "after/good.bin", &content);
        self.outside.assert_untouched();
    }
}

/// `reason` mentions every one of `words` (case-insensitively).
#[track_caller]
pub fn assert_reason(reason: &str, words: &[&str]) {
    let lower = reason.to_lowercase();
    for word in words {
        assert!(
            lower.contains(&word.to_lowercase()),
            "the reason should mention {word:?}: {reason}"
        );
    }
}

/// The peak resident set size of process `pid` so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
