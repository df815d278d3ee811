//! systemd's service notifications: a datagram socket bound as
//! `NOTIFY_SOCKET` receives what `chitd run` tells the service manager.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::server::Server;
use crate::util::{Content, Daemon, TIMEOUT, TestDir};

/// The service manager's end: every message received, line by line.
struct Manager {
    socket: UnixDatagram,
    lines: Vec<String>,
}

impl Manager {
    fn bind(dir: &TestDir) -> (Manager, String) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let manager = Manager {
            socket,
            lines: Vec::new(),
        };
        (manager, path.to_str().expect("UTF-8 path").to_owned())
    }

    /// Receive until `count` lines equal to `wanted` (or starting with it,
    /// when it ends with '=') have arrived in all; panics after [`TIMEOUT`].
    fn wait_for(&mut self, wanted: &str, count: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.count(wanted) < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{count} × {wanted:?} not received; got {:?}",
                self.lines
            );
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            let mut buffer = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                self.lines.extend(text.lines().map(str::to_owned));
            }
        }
    }

    fn count(&self, wanted: &str) -> usize {
        let matches = |line: &&String| match wanted.strip_suffix('=') {
            Some(_) => line.starts_with(wanted),
            None => *line == wanted,
        };
        self.lines.iter().filter(matches).count()
    }

    fn position(&self, wanted: &str) -> Option<usize> {
        self.lines.iter().position(|line| line == wanted)
    }
}

#[test]
fn ready_after_the_start_up_scan_status_then_stopping_on_sigterm() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(5_000);
    server.add("/f", content.bytes.clone());
    spool.drop_chit("early", content.chit("f", &[server.url("/f")]));
    let (mut manager, socket) = Manager::bind(&dir);

    let mut daemon = Daemon::for_spool(&dir, &spool)
        .env("NOTIFY_SOCKET", &socket)
        .start();
    manager.wait_for("READY=1", 1);
    // The chit left before start was found by the start-up scan.
    spool.expect_downloaded("early");
    manager.wait_for("STATUS=", 1);
    let status = manager.lines.iter().find(|l| l.starts_with("STATUS="));
    assert!(
        status.is_some_and(|line| line.contains("in flight") && line.contains("in work")),
        "{:?}",
        manager.lines
    );
    assert_eq!(manager.count("WATCHDOG=1"), 0, "no watchdog was asked for");

    daemon.sigterm();
    manager.wait_for("STOPPING=1", 1);
    assert!(daemon.wait_exit(TIMEOUT).success());
    assert_eq!(manager.count("READY=1"), 1, "{:?}", manager.lines);
    assert!(manager.position("READY=1") < manager.position("STOPPING=1"));
}

#[test]
fn watchdog_pings_at_half_of_watchdog_usec() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let (mut manager, socket) = Manager::bind(&dir);

    let started = Instant::now();
    let mut daemon = Daemon::for_spool(&dir, &spool)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .start();
    manager.wait_for("READY=1", 1);
    manager.wait_for("WATCHDOG=1", 5);
    // Five pings at least 100 ms apart (the first at once): 400 ms at least.
    assert!(started.elapsed() >= Duration::from_millis(400));
    daemon.sigterm();
    manager.wait_for("STOPPING=1", 1);
    assert!(daemon.wait_exit(TIMEOUT).success());
}

#[test]
fn watchdog_pings_when_watchdog_pid_is_the_daemon() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let (mut manager, socket) = Manager::bind(&dir);
    // The pid is known only once spawned: a shell execs chitd as itself.
    let chitd = env!("CARGO_BIN_EXE_chitd");
    let script = format!(
        "WATCHDOG_PID=$$ exec {chitd} run --spool {} --deliver {} --cache {}",
        spool.spool.display(),
        spool.deliver.display(),
        dir.cache().display()
    );
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "200000")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn sh");
    manager.wait_for("READY=1", 1);
    manager.wait_for("WATCHDOG=1", 3);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    manager.wait_for("STOPPING=1", 1);
    assert!(child.wait().expect("wait").success());
}

/// CLOCK_MONOTONIC now, in µs, as `MONOTONIC_USEC=` counts.
fn monotonic_usec() -> i128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(now.tv_sec) * 1_000_000 + i128::from(now.tv_nsec) / 1_000
}

/// SIGHUP: `RELOADING=1` with `MONOTONIC_USEC=` (the monotonic clock when
/// the reload began), then `READY=1` once it is over; a reload that is
/// refused (a broken file) is wrapped the same way.
#[test]
fn a_reload_is_announced_with_reloading_then_ready() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let config = crate::util::ConfigFile::for_consumers(&dir, &[&spool]);
    let (mut manager, socket) = Manager::bind(&dir);
    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .env("NOTIFY_SOCKET", &socket)
        .start();
    manager.wait_for("READY=1", 1);

    let before = monotonic_usec();
    daemon.sighup();
    manager.wait_for("READY=1", 2);
    let after = monotonic_usec();
    let reloading = manager.position("RELOADING=1").expect("RELOADING=1");
    let ready = manager.lines.iter().rposition(|l| l == "READY=1");
    assert!(Some(reloading) < ready, "{:?}", manager.lines);
    let usec = manager.lines[reloading + 1]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|value| value.parse::<i128>().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC after RELOADING=1: {:?}", manager.lines));
    assert!(
        (before..=after).contains(&usec),
        "{before} <= {usec} <= {after}"
    );

    std::fs::write(&config, "[[consumer]\n").expect("break the file");
    daemon.sighup();
    manager.wait_for("RELOADING=1", 2);
    manager.wait_for("READY=1", 3);
    daemon.wait_for_log("reload failed", 1);
    daemon.sigterm();
    manager.wait_for("STOPPING=1", 1);
    assert!(daemon.wait_exit(TIMEOUT).success());
}
