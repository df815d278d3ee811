//! Running the real `chitd` binary: the `Daemon` guard for `chitd run`, and
//! `run_cli` for the short-lived `request` and `status` subcommands.
//!
//! Every child gets the test environment: `RUST_LOG=chitd=debug` and
//! `CHITD_RETRY_DELAY_MS=10` (retries in milliseconds, not seconds). Output
//! goes to a file in the test's temp dir and is printed when a test panics.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{TIMEOUT, TestDir, TestSpool};

/// The environment every chitd child gets.
const TEST_ENV: [(&str, &str); 2] = [("RUST_LOG", "chitd=debug"), ("CHITD_RETRY_DELAY_MS", "10")];

/// Numbers log and config files so restarts within one test don't collide.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

fn next_number() -> usize {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

/// `chitd` with the test environment, run in `cwd`.
fn chitd_command(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chitd"));
    command.current_dir(cwd).stdin(Stdio::null());
    for (key, value) in TEST_ENV {
        command.env(key, value);
    }
    command
}

/// What a finished `chitd` invocation produced.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `chitd ARGS` in `dir` to completion; panic if it takes longer than
/// `timeout` (the child is killed first).
pub fn run_cli<I, S>(dir: &TestDir, args: I, timeout: Duration) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_cli_with_env(dir, args, &[], timeout)
}

/// [`run_cli`] with `env` set on top of the test environment.
pub fn run_cli_with_env<I, S>(
    dir: &TestDir,
    args: I,
    env: &[(&str, &str)],
    timeout: Duration,
) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let number = next_number();
    let stdout_path = dir.join(&format!("cli-{number}.stdout"));
    let stderr_path = dir.join(&format!("cli-{number}.stderr"));
    let started = Instant::now();
    let mut child = chitd_command(dir.path())
        .envs(env.iter().copied())
        .args(&args)
        .stdout(fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("spawn chitd");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chitd {args:?} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                read_lossy(&stdout_path),
                read_lossy(&stderr_path)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    CliOutput {
        code: status.code(),
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
        elapsed: started.elapsed(),
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Builds a `chitd run` invocation.
pub struct DaemonBuilder {
    cwd: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    open_files: Option<u64>,
}

impl DaemonBuilder {
    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// `--spool S --deliver D` for one consumer.
    pub fn spool(self, spool: &TestSpool) -> Self {
        let this = self.arg("--spool").arg(&spool.spool);
        this.arg("--deliver").arg(&spool.deliver)
    }

    pub fn cache(self, cache: &Path) -> Self {
        self.arg("--cache").arg(cache)
    }

    pub fn mirror(self, url: &str) -> Self {
        self.arg("--mirror").arg(url)
    }

    pub fn jobs(self, jobs: u32) -> Self {
        self.arg("--jobs").arg(jobs.to_string())
    }

    pub fn config(self, file: &Path) -> Self {
        self.arg("--config").arg(file)
    }

    pub fn exit_when_idle(self) -> Self {
        self.arg("--exit-when-idle")
    }

    /// Give up after `duration` (e.g. `"2s"`) without progress, through a
    /// small config file: there is no flag for it.
    pub fn give_up_after(self, duration: &str) -> Self {
        let file = self.cwd.join(format!("give-up-{}.toml", next_number()));
        let text = format!("give_up_after = {}\n", super::toml_string(duration));
        fs::write(&file, text).expect("write give-up config");
        self.config(&file)
    }

    /// No bytes for this long is a transient error (default 30 s).
    pub fn inactivity_timeout_ms(self, ms: u64) -> Self {
        self.env("CHITD_INACTIVITY_TIMEOUT_MS", &ms.to_string())
    }

    /// Push the safety-net rescan (default every 2 s) out of a test's
    /// reach: chits are then seen only by the start-up scan and the watcher.
    pub fn without_rescan(self) -> Self {
        self.env("CHITD_RESCAN_INTERVAL_MS", "3600000")
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Run under this limit on open files, soft and hard (so chitd cannot
    /// raise it).
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Raw extra arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn start(self) -> Daemon {
        let log = self.cwd.join(format!("daemon-{}.log", next_number()));
        let file = fs::File::create(&log).expect("create daemon log");
        let mut command = chitd_command(&self.cwd);
        command
            .arg("run")
            .args(&self.args)
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            let limit = rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            };
            // SAFETY: between fork and exec the closure only makes one
            // system call, allocating nothing.
            unsafe {
                command.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command.spawn().expect("spawn chitd run");
        Daemon {
            child: Some(child),
            args: self.args,
            log,
        }
    }
}

/// A running `chitd run`. Killed when dropped; its log is printed if the
/// test is panicking.
pub struct Daemon {
    child: Option<Child>,
    args: Vec<OsString>,
    log: PathBuf,
}

impl Daemon {
    /// A `chitd run` in `dir` (its cwd and log location).
    pub fn builder(dir: &TestDir) -> DaemonBuilder {
        DaemonBuilder {
            cwd: dir.path().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            open_files: None,
        }
    }

    /// The common case: one consumer, a cache, waiting for chits.
    pub fn for_spool(dir: &TestDir, spool: &TestSpool) -> DaemonBuilder {
        Daemon::builder(dir).spool(spool).cache(&dir.cache())
    }

    /// Run a daemon for `spool` until idle (`--exit-when-idle`) and expect
    /// exit 0.
    pub fn run_until_idle(dir: &TestDir, spool: &TestSpool) {
        Daemon::for_spool(dir, spool)
            .exit_when_idle()
            .start()
            .expect_success(TIMEOUT);
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon already reaped")
    }

    pub fn pid(&mut self) -> u32 {
        self.child().id()
    }

    /// The exit status if the daemon has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    /// Wait for the daemon to exit on its own (`--exit-when-idle`, SIGTERM).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("chitd run {:?} to exit", self.args);
        super::wait_until(timeout, &what, || self.try_exit())
    }

    /// Wait for exit and assert it was 0.
    pub fn expect_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert!(status.success(), "chitd run exited with {status}");
    }

    fn signal(&mut self, signal: rustix::process::Signal) {
        let raw = i32::try_from(self.pid()).expect("pid fits i32");
        let pid = rustix::process::Pid::from_raw(raw).expect("nonzero pid");
        rustix::process::kill_process(pid, signal).expect("signal daemon");
    }

    pub fn sigterm(&mut self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// SIGHUP: reload the configuration.
    pub fn sighup(&mut self) {
        self.signal(rustix::process::Signal::HUP);
    }

    /// Wait until the log has `count` lines containing `wanted`; returns
    /// the last of them.
    pub fn wait_for_log(&self, wanted: &str, count: usize) -> String {
        let what = format!("{count} log line(s) with {wanted:?}");
        super::wait_until(TIMEOUT, &what, || {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(wanted)).collect();
            (lines.len() >= count).then(|| lines[count - 1].to_owned())
        })
    }

    pub fn sigint(&mut self) {
        self.signal(rustix::process::Signal::INT);
    }

    /// SIGKILL and reap: a crash at an arbitrary instant.
    pub fn kill(&mut self) {
        let child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- chitd run {:?} log ({}) -----\n{}\n----- end of log -----",
                self.args,
                self.log.display(),
                read_lossy(&self.log)
            );
        }
    }
}
