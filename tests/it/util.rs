//! Shared fixtures: temp dirs, consumer spools, chits, content, config files,
//! and bounded waits. The daemon guard and CLI runner live in `util/process.rs`.
//!
//! Waiting is always "poll a condition every few milliseconds until a
//! deadline", never a fixed sleep: on a loaded machine a test takes as long as
//! chitd needs and fails only when chitd is really stuck.

mod process;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use process::{Daemon, DaemonBuilder, run_cli};

/// Deadline for anything that should happen "soon" on a loaded 2-core box.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(5);

/// Poll `probe` until it returns `Some`, or panic after `timeout` saying what
/// we were waiting for.
pub fn wait_until<T>(timeout: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    match try_wait_until(timeout, probe) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Poll `probe` until it returns `Some`; `None` once `timeout` has passed.
pub fn try_wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// File content with its digest.
#[derive(Clone, Debug)]
pub struct Content {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl Content {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Content {
        let bytes = bytes.into();
        let sha256 = sha256_hex(&bytes);
        Content { bytes, sha256 }
    }

    /// `len` pseudo-random bytes, different for every call in this process.
    pub fn random(len: usize) -> Content {
        static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let mut state = SEED.fetch_add(0x2545_f491_4f6c_dd1d, Ordering::Relaxed)
            ^ u64::from(std::process::id());
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        bytes.truncate(len);
        Content::new(bytes)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The chit for this content: digest, size, path, then one URL a line.
    pub fn chit(&self, path: &str, urls: &[String]) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.sha256, self.len(), path);
        for url in urls {
            text.push_str(url);
            text.push('\n');
        }
        text
    }
}

/// The reason in a chit's last `# error:` line.
pub fn error_reason(chit_text: &str) -> Option<String> {
    let last = chit_text.lines().rev().find(|l| !l.trim().is_empty())?;
    let reason = last.strip_prefix("# error:")?;
    Some(reason.trim().to_string())
}

/// A fresh temporary directory per test, removed when dropped.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("chitd-it-")
            .tempdir()
            .expect("create temp dir");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The cache directory tests share between daemon runs.
    pub fn cache(&self) -> PathBuf {
        self.join("cache")
    }

    /// A consumer `name` with its spool at `<dir>/<name>/spool` and delivery
    /// dir at `<dir>/<name>/deliver`.
    pub fn spool(&self, name: &str) -> TestSpool {
        TestSpool::create(name, &self.join(name))
    }

    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&path, contents).expect("write file");
        path
    }
}

/// The four state directories of a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Request,
    Fetch,
    Downloaded,
    Fail,
}

impl State {
    pub const ALL: [State; 4] = [State::Request, State::Fetch, State::Downloaded, State::Fail];

    pub fn dir_name(self) -> &'static str {
        match self {
            State::Request => "request",
            State::Fetch => "fetch",
            State::Downloaded => "downloaded",
            State::Fail => "fail",
        }
    }
}

/// How a chit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Terminal {
    Downloaded,
    /// The reason from the last `# error:` line.
    Failed(String),
}

/// One consumer: its spool (with the four state dirs) and delivery dir.
#[derive(Clone, Debug)]
pub struct TestSpool {
    pub name: String,
    pub spool: PathBuf,
    pub deliver: PathBuf,
}

impl TestSpool {
    pub fn create(name: &str, root: &Path) -> TestSpool {
        let spool = root.join("spool");
        let deliver = root.join("deliver");
        for state in State::ALL {
            fs::create_dir_all(spool.join(state.dir_name())).expect("create state dir");
        }
        fs::create_dir_all(&deliver).expect("create deliver dir");
        TestSpool {
            name: name.to_string(),
            spool,
            deliver,
        }
    }

    pub fn state_dir(&self, state: State) -> PathBuf {
        self.spool.join(state.dir_name())
    }

    /// Clear the spool as a CI job resetting its workspace would
    /// (`rm -rf spool/*`), then make only `request/` again.
    pub fn clear_and_make_request(&self) {
        for state in State::ALL {
            fs::remove_dir_all(self.state_dir(state)).expect("remove state dir");
        }
        fs::create_dir(self.state_dir(State::Request)).expect("make request/");
    }

    /// Drop a chit the contract's way: write `request/.name.tmp`, rename it
    /// to `request/name`.
    pub fn drop_chit(&self, name: &str, text: impl AsRef<[u8]>) {
        let request = self.state_dir(State::Request);
        let temporary = request.join(format!(".{name}.tmp"));
        fs::write(&temporary, text).expect("write chit");
        fs::rename(&temporary, request.join(name)).expect("rename chit into request/");
    }

    /// Drop `count` chits for `content` from `url`, `c0000`, `c0001`…,
    /// each delivered into a directory of its own: `d0000/<file>`,
    /// `d0001/<file>`… (the most descriptors per chit for chitd).
    pub fn drop_chits_into_own_dirs(&self, content: &Content, url: &str, file: &str, count: usize) {
        for i in 0..count {
            let chit = content.chit(&format!("d{i:04}/{file}"), &[url.to_string()]);
            self.drop_chit(&format!("c{i:04}"), chit);
        }
    }

    /// Put a chit straight into a state directory (for start-up and status
    /// scenarios).
    pub fn put_chit(&self, state: State, name: &str, text: impl AsRef<[u8]>) {
        fs::write(self.state_dir(state).join(name), text).expect("write chit");
    }

    pub fn read_chit(&self, state: State, name: &str) -> String {
        let path = self.state_dir(state).join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The states whose directory holds `name` right now.
    pub fn states_of(&self, name: &str) -> Vec<State> {
        let holds = |state: &State| self.state_dir(*state).join(name).exists();
        State::ALL.into_iter().filter(holds).collect()
    }

    /// Names of the chits in a state dir (dot-files excluded), sorted.
    pub fn chits_in(&self, state: State) -> Vec<String> {
        let mut names = self.entries_in(state);
        names.retain(|n| !n.starts_with('.'));
        names
    }

    /// Every entry of a state dir, dot-files included, sorted.
    pub fn entries_in(&self, state: State) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.state_dir(state))
            .expect("read state dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Wait until `name` is in `downloaded/` or `fail/`.
    pub fn wait_terminal(&self, name: &str, timeout: Duration) -> Terminal {
        let downloaded = self.state_dir(State::Downloaded).join(name);
        let fail = self.state_dir(State::Fail).join(name);
        let terminal = try_wait_until(timeout, || {
            if downloaded.exists() {
                return Some(Terminal::Downloaded);
            }
            // The error line must be in place before the rename into fail/.
            let text = fs::read(&fail).ok()?;
            let text = String::from_utf8_lossy(&text);
            match error_reason(&text) {
                Some(reason) => Some(Terminal::Failed(reason)),
                None => panic!("chit {name} is in fail/ without a last `# error:` line: {text:?}"),
            }
        });
        terminal.unwrap_or_else(|| {
            panic!(
                "chit {name} not terminal after {timeout:?}; {}",
                self.describe()
            )
        })
    }

    /// Wait for `name` to be downloaded; panic with the reason if it failed.
    pub fn expect_downloaded(&self, name: &str) {
        match self.wait_terminal(name, TIMEOUT) {
            Terminal::Downloaded => {}
            Terminal::Failed(reason) => panic!("chit {name} failed: {reason}"),
        }
    }

    /// Wait for `name` to fail; return its reason.
    pub fn expect_failed(&self, name: &str) -> String {
        match self.wait_terminal(name, TIMEOUT) {
            Terminal::Failed(reason) => reason,
            Terminal::Downloaded => panic!("chit {name} was downloaded but should have failed"),
        }
    }

    pub fn delivered_path(&self, path: &str) -> PathBuf {
        self.deliver.join(path)
    }

    /// Assert that `content` is at `<deliver>/<path>` and chit `name` is in
    /// `downloaded/` and nowhere else.
    pub fn assert_delivered(&self, name: &str, path: &str, content: &Content) {
        let file = self.delivered_path(path);
        let got = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        assert!(
            got == content.bytes,
            "{} has {} bytes with sha256 {}, expected {} bytes with sha256 {}",
            file.display(),
            got.len(),
            sha256_hex(&got),
            content.len(),
            content.sha256
        );
        assert_eq!(self.states_of(name), [State::Downloaded], "chit {name}");
    }

    /// Entries under the delivery dir (recursively) whose name starts with
    /// `.`: leftovers of unfinished deliveries.
    pub fn delivery_temporaries(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.deliver.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("read delivery dir") {
                let entry = entry.expect("dir entry");
                if entry.file_name().to_string_lossy().starts_with('.') {
                    found.push(entry.path());
                }
                if entry.file_type().expect("file type").is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        found
    }

    /// What is in each state dir, for failure messages.
    pub fn describe(&self) -> String {
        let list = |state: State| match fs::read_dir(self.state_dir(state)) {
            Ok(entries) => {
                let names = entries.map(|e| e.map(|e| e.file_name()));
                format!("{:?}", names.collect::<Result<Vec<_>, _>>())
            }
            Err(e) => format!("<{e}>"),
        };
        let parts: Vec<String> = State::ALL
            .iter()
            .map(|s| format!("{}/: {}", s.dir_name(), list(*s)))
            .collect();
        format!("spool {}: {}", self.spool.display(), parts.join(", "))
    }
}

/// A TOML value for a string (quoted and escaped).
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A chitd configuration file, rendered to TOML.
#[derive(Default)]
pub struct ConfigFile {
    pub cache: Option<PathBuf>,
    pub mirrors: Vec<String>,
    pub jobs: Option<u32>,
    pub give_up_after: Option<String>,
    pub consumers: Vec<TestSpool>,
}

impl ConfigFile {
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(cache) = &self.cache {
            text += &format!("cache = {}\n", toml_string(&cache.to_string_lossy()));
        }
        if !self.mirrors.is_empty() {
            let mirrors: Vec<String> = self.mirrors.iter().map(|m| toml_string(m)).collect();
            text += &format!("mirrors = [{}]\n", mirrors.join(", "));
        }
        if let Some(jobs) = self.jobs {
            text += &format!("jobs = {jobs}\n");
        }
        if let Some(give_up_after) = &self.give_up_after {
            text += &format!("give_up_after = {}\n", toml_string(give_up_after));
        }
        for consumer in &self.consumers {
            text += &format!(
                "\n[[consumer]]\nname = {}\nspool = {}\ndeliver = {}\n",
                toml_string(&consumer.name),
                toml_string(&consumer.spool.to_string_lossy()),
                toml_string(&consumer.deliver.to_string_lossy()),
            );
        }
        text
    }

    /// Write the file at `<dir>/<relative>` and return its path.
    pub fn write(&self, dir: &TestDir, relative: &str) -> PathBuf {
        dir.write(relative, self.render())
    }

    /// The common multi-consumer configuration: `dir`'s cache and
    /// `consumers`, written to `<dir>/chitd.toml`; its path.
    pub fn for_consumers(dir: &TestDir, consumers: &[&TestSpool]) -> PathBuf {
        ConfigFile {
            cache: Some(dir.cache()),
            consumers: consumers.iter().map(|&spool| spool.clone()).collect(),
            ..ConfigFile::default()
        }
        .write(dir, "chitd.toml")
    }
}

/// A URL on 127.0.0.1 where nothing listens: connections are refused.
pub fn refused_url(path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}{path}")
}
