//! Stopping and crashing: SIGTERM stops cleanly and quickly with the chit
//! still in `fetch/`; after SIGTERM or SIGKILL the next start finishes the
//! chit, resuming from the progress kept, with no temporary file left.

use std::time::{Duration, Instant};

use crate::server::{Fault, Server};
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir, TestSpool, wait_until};

const SIZE: usize = 256 * 1024;

/// A daemon in the middle of a slow download of `/f`: the chit is in
/// `fetch/` and the server has sent at least 32 KiB.
fn mid_download(dir: &TestDir, spool: &TestSpool, server: &Server) -> (Content, Daemon) {
    let content = Content::random(SIZE);
    server.add("/f", content.bytes.clone());
    let drip = Fault::SlowDrip {
        bytes_per_tick: 8 * 1024,
        tick: Duration::from_millis(50),
    };
    server.set_fault("/f", drip);
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let daemon = Daemon::for_spool(dir, spool).start();
    wait_until(TIMEOUT, "32 KiB of the download to be sent", || {
        (server.bytes_served_for("/f") >= 32 * 1024).then_some(())
    });
    assert_eq!(spool.states_of("f"), [State::Fetch], "{}", spool.describe());
    (content, daemon)
}

/// Start again, unthrottled, and expect the chit to complete.
fn restart_and_finish(dir: &TestDir, spool: &TestSpool, server: &Server, content: &Content) {
    server.clear_fault("/f");
    Daemon::for_spool(dir, spool)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    spool.assert_delivered("f", "f.bin", content);
    assert_eq!(
        spool.delivery_temporaries(),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn sigterm_mid_download_exits_0_quickly_leaving_the_chit_in_fetch() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);

    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(TIMEOUT);
    let stopping = signalled.elapsed();

    assert!(status.success(), "exit status {status} after SIGTERM");
    assert!(
        stopping < Duration::from_secs(3),
        "SIGTERM took {stopping:?}"
    );
    assert_eq!(spool.states_of("f"), [State::Fetch], "{}", spool.describe());
    assert!(
        server.bytes_served_for("/f") < SIZE as u64,
        "download should not have finished"
    );
    restart_and_finish(&dir, &spool, &server, &content);
}

#[test]
fn sigterm_keeps_progress_and_the_restart_resumes_with_range() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);
    daemon.sigterm();
    assert!(daemon.wait_exit(TIMEOUT).success());
    let before_restart = server.requests_for("/f").len();

    restart_and_finish(&dir, &spool, &server, &content);

    let requests = server.requests_for("/f");
    let resumed = &requests[before_restart..];
    assert!(
        resumed
            .first()
            .and_then(|r| r.range_start())
            .is_some_and(|s| s > 0),
        "the restart should resume with Range: {resumed:?}"
    );
}

#[test]
fn sigint_stops_cleanly_too() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);
    daemon.sigint();
    assert!(daemon.wait_exit(TIMEOUT).success());
    assert_eq!(spool.states_of("f"), [State::Fetch], "{}", spool.describe());
    restart_and_finish(&dir, &spool, &server, &content);
}

#[test]
fn sigkill_mid_download_then_restart_delivers_with_no_leftovers() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);
    daemon.kill();
    assert_eq!(spool.states_of("f"), [State::Fetch], "{}", spool.describe());

    restart_and_finish(&dir, &spool, &server, &content);
    for state in State::ALL {
        let stray: Vec<_> = spool
            .entries_in(state)
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            stray.is_empty(),
            "temporaries in {}/: {stray:?}",
            state.dir_name()
        );
    }
}

#[test]
fn object_changed_while_stopped_is_fetched_from_scratch() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);
    daemon.sigterm();
    assert!(daemon.wait_exit(TIMEOUT).success());

    // New validators on every request from now on: no partial can be trusted.
    server.set_fault("/f", Fault::ChangeEtag);
    Daemon::run_until_idle(&dir, &spool);
    spool.assert_delivered("f", "f.bin", &content);
}

/// Files in the cache that look like leftovers: dot-files, `*.tmp`, `*.part`.
fn cache_temporaries(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn sigkill_then_completed_restart_leaves_no_temporary_in_the_cache() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (content, mut daemon) = mid_download(&dir, &spool, &server);
    daemon.kill();
    restart_and_finish(&dir, &spool, &server, &content);
    let leftovers = cache_temporaries(&dir.cache());
    assert!(leftovers.is_empty(), "cache leftovers: {leftovers:?}");
}

#[test]
fn stale_copies_left_by_a_crash_are_resolved_to_one_state() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let failed = Content::random(1_000);
    let done = Content::random(1_000);
    server.add("/done", done.bytes.clone());
    // A crash between writing the terminal copy and removing fetch/'s.
    let failed_chit = failed.chit("failed.bin", &[server.url("/missing")]);
    spool.put_chit(State::Fetch, "x", &failed_chit);
    spool.put_chit(
        State::Fail,
        "x",
        format!("{failed_chit}# error: HTTP 404\n"),
    );
    let done_chit = done.chit("done.bin", &[server.url("/done")]);
    spool.put_chit(State::Fetch, "y", &done_chit);
    spool.put_chit(State::Downloaded, "y", &done_chit);
    std::fs::write(spool.delivered_path("done.bin"), &done.bytes).unwrap();

    Daemon::run_until_idle(&dir, &spool);

    for name in ["x", "y"] {
        let states = spool.states_of(name);
        assert!(
            states == [State::Downloaded] || states == [State::Fail],
            "{name} should be in exactly one terminal state: {}",
            spool.describe()
        );
    }
    assert_eq!(
        spool.states_of("y"),
        [State::Downloaded],
        "{}",
        spool.describe()
    );
    spool.assert_delivered("y", "done.bin", &done);
}

/// A chit that lands in `fetch/` while the daemon runs, not through
/// `request/` (put back by hand, restored from a backup): nobody is working
/// on it, and the idle daemon's next rescan picks it up.
#[test]
fn chit_put_into_fetch_while_running_is_finished_by_the_idle_rescan() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(3_000);
    server.add("/f", content.bytes.clone());
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    let warm = Content::random(10);
    server.add("/warm", warm.bytes.clone());
    spool.drop_chit("warm", warm.chit("warm.bin", &[server.url("/warm")]));
    spool.expect_downloaded("warm");

    spool.put_chit(
        State::Fetch,
        "f",
        content.chit("f.bin", &[server.url("/f")]),
    );
    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", &content);
}
