//! The main path: a chit comes in, the file is fetched once, verified,
//! delivered, and the chit moves to `downloaded/`.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::server::{Fault, Server};
use crate::util::{ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, TestSpool, wait_until};

#[test]
fn miss_is_downloaded_and_delivered_into_a_subdirectory() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(10_000);
    server.add("/dist/make-4.4.tar.gz", content.bytes.clone());
    let chit = content.chit(
        "gnu/make-4.4.tar.gz",
        &[server.url("/dist/make-4.4.tar.gz")],
    );
    spool.drop_chit("make", &chit);

    let mut daemon = Daemon::for_spool(&dir, &spool).exit_when_idle().start();
    daemon.expect_success(TIMEOUT);

    spool.assert_delivered("make", "gnu/make-4.4.tar.gz", &content);
    assert_eq!(server.gets("/dist/make-4.4.tar.gz"), 1);
    assert_eq!(
        spool.delivery_temporaries(),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        spool.entries_in(State::Request).is_empty(),
        "{}",
        spool.describe()
    );
    assert!(
        spool.entries_in(State::Fetch).is_empty(),
        "{}",
        spool.describe()
    );
}

#[test]
fn mirror_serves_when_the_chit_url_is_404() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(4_000);
    server.add("/mirror/pkg/foo-1.0.tar.gz", content.bytes.clone());
    let chit = content.chit(
        "pkg/foo-1.0.tar.gz",
        &[server.url("/upstream/foo-1.0.tar.gz")],
    );
    spool.drop_chit("foo", &chit);

    let mut daemon = Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/mirror"))
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);

    spool.assert_delivered("foo", "pkg/foo-1.0.tar.gz", &content);
    assert_eq!(server.gets("/upstream/foo-1.0.tar.gz"), 1);
    assert_eq!(server.gets("/mirror/pkg/foo-1.0.tar.gz"), 1);
}

#[test]
fn mirror_url_percent_encodes_each_path_component() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    let path = "odd dir/a b#c?d%e+f.txt";
    server.add(&format!("/mirror/{path}"), content.bytes.clone());
    spool.drop_chit("odd", content.chit(path, &[]));

    let mut daemon = Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/mirror"))
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);

    spool.assert_delivered("odd", path, &content);
    let requests = server.requests_for(&format!("/mirror/{path}"));
    assert_eq!(requests.len(), 1, "{:?}", server.requests());
    let target = &requests[0].target;
    assert!(target.starts_with("/mirror/odd%20dir/"), "{target}");
    for raw in [" ", "#", "?"] {
        assert!(!target.contains(raw), "{raw:?} unencoded in {target}");
    }
    assert!(target.contains("%25e"), "% must be encoded: {target}");
}

#[test]
fn cache_hit_is_delivered_without_any_request() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(8_000);
    server.add("/f", content.bytes.clone());
    let chit = content.chit("f.bin", &[server.url("/f")]);

    let first = dir.spool("first");
    first.drop_chit("f", &chit);
    Daemon::run_until_idle(&dir, &first);
    first.assert_delivered("f", "f.bin", &content);
    let requests_after_first = server.total_requests();

    let second = dir.spool("second");
    second.drop_chit("f", &chit);
    Daemon::run_until_idle(&dir, &second);
    second.assert_delivered("f", "f.bin", &content);
    assert_eq!(
        server.total_requests(),
        requests_after_first,
        "cache hit must not touch the network: {:?}",
        server.requests()
    );
}

#[test]
fn existing_different_file_at_delivery_path_is_replaced() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(3_000);
    server.add("/f", content.bytes.clone());
    fs::create_dir_all(spool.deliver.join("sub")).unwrap();
    fs::write(spool.deliver.join("sub/f.bin"), b"stale contents").unwrap();
    spool.drop_chit("f", content.chit("sub/f.bin", &[server.url("/f")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("f", "sub/f.bin", &content);
}

#[test]
fn chit_renamed_into_request_is_picked_up_within_a_second() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let warm_up = Content::random(1_000);
    let content = Content::random(1_000);
    server.add("/warm", warm_up.bytes.clone());
    server.add("/f", content.bytes.clone());
    // With no rescan to fall back on, only the watcher can see the chits.
    let _daemon = Daemon::for_spool(&dir, &spool).without_rescan().start();

    // The daemon is surely watching once it has finished a first chit.
    spool.drop_chit("warm", warm_up.chit("warm.bin", &[server.url("/warm")]));
    spool.expect_downloaded("warm");

    let dropped = Instant::now();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let request = spool.state_dir(State::Request).join("f");
    wait_until(TIMEOUT, "chit f to leave request/", || {
        (!request.exists()).then_some(())
    });
    let picked_up = dropped.elapsed();
    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", &content);
    assert!(
        picked_up < Duration::from_secs(1),
        "chit sat in request/ for {picked_up:?}: the watcher should see it, not the rescan"
    );
}

/// A consumer that clears its spool while the daemon runs (a CI job
/// resetting its workspace: `rm -rf spool/* deliver/*`) and makes only
/// `request/` again is served again: the other state directories are made
/// anew beneath the spool directory, and `request/` is watched again.
#[test]
fn a_consumer_that_clears_and_remakes_its_spool_is_served_again() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let files: Vec<Content> = (0..4).map(|_| Content::random(1_000)).collect();
    for (n, content) in files.iter().enumerate() {
        server.add(&format!("/{n}"), content.bytes.clone());
    }
    let chit = |n: usize| files[n].chit(&format!("{n}.bin"), &[server.url(&format!("/{n}"))]);
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("0", chit(0));
    spool.expect_downloaded("0");

    spool.clear_and_make_request();
    fs::remove_file(spool.delivered_path("0.bin")).unwrap();
    spool.drop_chit("1", chit(1));
    spool.expect_downloaded("1");
    spool.assert_delivered("1", "1.bin", &files[1]);

    // Watched again: each chit leaves request/ at once, not at a rescan.
    for n in [2, 3] {
        let dropped = Instant::now();
        spool.drop_chit(&n.to_string(), chit(n));
        let request = spool.state_dir(State::Request).join(n.to_string());
        wait_until(TIMEOUT, "the chit to leave request/", || {
            (!request.exists()).then_some(())
        });
        let picked_up = dropped.elapsed();
        assert!(
            picked_up < Duration::from_millis(500),
            "chit {n} sat in request/ for {picked_up:?}: request/ is not watched again"
        );
        spool.expect_downloaded(&n.to_string());
    }
}

/// A chit being downloaded when its consumer clears the spool went with
/// it: a new chit of the same name, for another file, is served at once
/// (not after that download), and the old chit's download, which no chit
/// waits for any more, is stopped (its partial kept) without delivering
/// into the cleared workspace.
#[test]
fn a_chit_in_flight_when_its_spool_is_cleared_goes_with_it() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let old = Content::random(64 * 1024);
    let new = Content::random(1_000);
    server.add("/old", old.bytes.clone());
    server.add("/new", new.bytes.clone());
    server.hold("/old");
    let daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("x", old.chit("old.bin", &[server.url("/old")]));
    wait_until(TIMEOUT, "the download of old.bin to start", || {
        (server.count("/old") > 0).then_some(())
    });

    spool.clear_and_make_request();
    spool.drop_chit("x", new.chit("new.bin", &[server.url("/new")]));
    // Made anew (and so the old chit gone with its fetch/) before the old
    // download ends.
    wait_until(TIMEOUT, "the state directories to be made again", || {
        spool.state_dir(State::Fail).is_dir().then_some(())
    });

    spool.expect_downloaded("x");
    spool.assert_delivered("x", "new.bin", &new);
    // No chit waits for the old download: it is stopped.
    let stopped = daemon.wait_for_log("download stopped: no chit waited for it", 1);
    assert!(stopped.contains(&old.sha256), "{stopped}");
    server.release("/old");
    assert!(
        !spool.delivered_path("old.bin").exists(),
        "the chit of the cleared spool was delivered"
    );
    assert_eq!(spool.chits_in(State::Fail), Vec::<String>::new());
}

/// Clearing only `downloaded/` (`rm -rf downloaded; mkdir downloaded`)
/// while a chit downloads leaves that chit alone: it is still in the same
/// `fetch/`, and ends in the new `downloaded/`.
#[test]
fn remaking_downloaded_while_a_chit_downloads_does_not_drop_it() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(64 * 1024);
    server.add("/f", content.bytes.clone());
    server.hold("/f");
    let daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    wait_until(TIMEOUT, "the download to start", || {
        (server.count("/f") > 0).then_some(())
    });

    fs::remove_dir(spool.state_dir(State::Downloaded)).unwrap();
    fs::create_dir(spool.state_dir(State::Downloaded)).unwrap();
    wait_until(TIMEOUT, "the new downloaded/ to be opened", || {
        daemon
            .log()
            .contains("state directories made anew")
            .then_some(())
    });
    server.release("/f");

    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", &content);
}

/// Chit `q` in `request/` and chit `c` in `fetch/`, as a daemon finds
/// them at start: their contents (delivered to `q.bin` and `c.bin`).
fn chits_left_in_request_and_fetch(spool: &TestSpool, server: &Server) -> (Content, Content) {
    let queued = Content::random(2_000);
    let claimed = Content::random(2_000);
    server.add("/q", queued.bytes.clone());
    server.add("/c", claimed.bytes.clone());
    spool.put_chit(
        State::Request,
        "q",
        queued.chit("q.bin", &[server.url("/q")]),
    );
    spool.put_chit(
        State::Fetch,
        "c",
        claimed.chit("c.bin", &[server.url("/c")]),
    );
    (queued, claimed)
}

#[test]
fn chits_present_at_start_in_request_and_fetch_are_processed() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (queued, claimed) = chits_left_in_request_and_fetch(&spool, &server);

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("q", "q.bin", &queued);
    spool.assert_delivered("c", "c.bin", &claimed);
}

/// Each state change is one info line naming the consumer, the chit and
/// the digest; the download's line names the source that served it.
#[test]
fn each_state_change_is_logged_with_consumer_chit_digest_and_source() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let good = Content::random(1_000);
    let bad = Content::random(1_000);
    server.add("/good", good.bytes.clone());
    server.add("/bad", bad.bytes.clone());
    server.set_fault("/bad", Fault::NotFound);
    spool.drop_chit("good", good.chit("good.bin", &[server.url("/good")]));
    spool.drop_chit("bad", bad.chit("bad.bin", &[server.url("/bad")]));

    let mut daemon = Daemon::for_spool(&dir, &spool).exit_when_idle().start();
    daemon.expect_success(TIMEOUT);

    let log = daemon.log();
    let line = |needles: &[&str]| {
        let found: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" INFO ") && needles.iter().all(|n| l.contains(n)))
            .collect();
        assert_eq!(found.len(), 1, "want one line with {needles:?} in:\n{log}");
    };
    let consumer = "consumer=default";
    for (chit, content) in [("chit=good", &good), ("chit=bad", &bad)] {
        let digest = format!("digest={}", content.sha256);
        line(&["claimed: request/ → fetch/", consumer, chit, &digest]);
    }
    let good_digest = format!("digest={}", good.sha256);
    let source = format!("source={}", server.url("/good"));
    line(&[
        "download finished, verified and cached",
        &good_digest,
        &source,
    ]);
    line(&[
        "downloaded: fetch/ → downloaded/",
        consumer,
        "chit=good",
        &good_digest,
    ]);
    let bad_digest = format!("digest={}", bad.sha256);
    line(&["failed: fetch/ → fail/", consumer, "chit=bad", &bad_digest]);
}

/// Chits already in `request/` and `fetch/` when a long-running daemon
/// starts are found by its start-up scan: no watcher event announces them,
/// and the safety-net rescan is pushed out of reach.
#[test]
fn start_up_scan_finds_chits_left_in_request_and_fetch() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (queued, claimed) = chits_left_in_request_and_fetch(&spool, &server);

    let _daemon = Daemon::for_spool(&dir, &spool).without_rescan().start();

    spool.expect_downloaded("q");
    spool.expect_downloaded("c");
    spool.assert_delivered("q", "q.bin", &queued);
    spool.assert_delivered("c", "c.bin", &claimed);
}

#[test]
fn dot_files_in_request_are_left_alone() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    let chit = content.chit("f.bin", &[server.url("/f")]);
    spool.put_chit(State::Request, ".half-written", &chit);
    spool.drop_chit("f", &chit);

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("f", "f.bin", &content);
    assert_eq!(spool.states_of(".half-written"), [State::Request]);
    assert_eq!(spool.read_chit(State::Request, ".half-written"), chit);
}

#[test]
fn exit_when_idle_with_nothing_to_do_exits_zero() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    Daemon::run_until_idle(&dir, &spool);
}

#[test]
fn fifty_files_for_three_consumers_are_all_delivered() {
    let dir = TestDir::new();
    let server = Server::start();
    let consumers: Vec<_> = ["a", "b", "c"].iter().map(|n| dir.spool(n)).collect();
    let mut expected = Vec::new();
    for i in 0..50 {
        let content = Content::random(1_000 + 97 * i);
        let url_path = format!("/files/f{i}");
        server.add(&url_path, content.bytes.clone());
        let consumer = &consumers[i % consumers.len()];
        let path = format!("dir{}/f{i}.bin", i % 4);
        consumer.drop_chit(
            &format!("f{i}"),
            content.chit(&path, &[server.url(&url_path)]),
        );
        expected.push((
            i % consumers.len(),
            format!("f{i}"),
            path,
            content,
            url_path,
        ));
    }
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(4),
        consumers: consumers.clone(),
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");

    Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);

    for (consumer, name, path, content, url_path) in &expected {
        consumers[*consumer].assert_delivered(name, path, content);
        assert_eq!(server.gets(url_path), 1, "{url_path}");
    }
}

/// The path printed after `label` in the daemon's start-up description.
fn printed_path(log: &str, label: &str) -> Option<PathBuf> {
    let line = log.lines().find(|l| l.trim_start().starts_with(label))?;
    Some(PathBuf::from(line.trim_start()[label.len()..].trim()))
}

#[test]
fn run_without_flags_serves_a_default_layout_in_the_current_directory() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    let mut daemon = Daemon::builder(&dir).start();
    let (spool, deliver) = wait_until(TIMEOUT, "the default layout to be printed", || {
        let log = daemon.log();
        Some((
            printed_path(&log, "spool:")?,
            printed_path(&log, "deliver:")?,
        ))
    });
    assert!(spool.starts_with(dir.path()), "{}", spool.display());
    assert!(deliver.starts_with(dir.path()), "{}", deliver.display());
    let spool = TestSpool {
        name: "default".into(),
        spool,
        deliver,
    };
    wait_until(TIMEOUT, "the default spool to be created", || {
        spool.state_dir(State::Request).is_dir().then_some(())
    });

    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", &content);

    daemon.sigterm();
    let status = daemon.wait_exit(TIMEOUT);
    assert!(status.success(), "exit {status} after SIGTERM");
}
