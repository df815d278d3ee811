//! Per-host manners shared by every download (contract §10): `per_host`,
//! `Retry-After` in seconds and as an HTTP date, and one backoff per host,
//! so a failing host is probed, not asked once per chit.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::server::{Fault, Request, Server};
use crate::util::{ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, wait_until};

/// A configuration file of network keys (`per_host = 2`, ...), beside
/// the consumer given by flags.
fn network_config(dir: &TestDir, text: &str) -> PathBuf {
    dir.write("network.toml", text)
}

/// The requests that arrived after `after` (the answer that set the wait).
fn later_than(requests: &[Request], after: &Request) -> Vec<Request> {
    let position = requests
        .iter()
        .position(|r| r.arrived == after.arrived && r.path == after.path)
        .expect("the answer is among the requests");
    requests[position + 1..].to_vec()
}

/// Chit `a` meets a 503 with `Retry-After: value` on `/a`; chit `b`, for
/// another file on the same host, is dropped after it. Neither asks the
/// host again before `not_before(answer)`; both are delivered.
fn retry_after_holds_off_every_download(value: &str, not_before: impl Fn(&Request) -> SystemTime) {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let (a, b) = (Content::random(40_000), Content::random(50_000));
    server.add("/a", a.bytes.clone());
    server.add("/b", b.bytes.clone());
    let fault = Fault::RetryAfter {
        status: 503,
        value: value.to_string(),
    };
    server.set_fault_times("/a", fault, 1);
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("a", a.chit("a.bin", &[server.url("/a")]));
    let busy = wait_until(TIMEOUT, "the 503 on /a", || {
        server.requests().into_iter().find(|r| r.status == 503)
    });
    spool.drop_chit("b", b.chit("b.bin", &[server.url("/b")]));
    spool.expect_downloaded("a");
    spool.expect_downloaded("b");
    spool.assert_delivered("b", "b.bin", &b);
    let until = not_before(&busy);
    let later = later_than(&server.requests(), &busy);
    assert!(later.iter().any(|r| r.path == "/b"), "{later:#?}");
    for request in &later {
        assert!(
            request.arrived >= until,
            "{} asked {:?} before the Retry-After ended",
            request.path,
            until.duration_since(request.arrived).unwrap_or_default()
        );
    }
}

#[test]
fn retry_after_in_seconds_holds_off_every_download_from_the_host() {
    retry_after_holds_off_every_download("2", |busy| busy.arrived + Duration::from_secs(2));
}

#[test]
fn retry_after_as_an_http_date_holds_off_every_download_from_the_host() {
    // Three seconds on, in whole seconds: at least two from now.
    let date = SystemTime::now() + Duration::from_secs(3);
    let value = httpdate::fmt_http_date(date);
    let until = httpdate::parse_http_date(&value).expect("a date");
    retry_after_holds_off_every_download(&value, |_| until);
}

/// A host that says "come back in an hour" is not asked again, by any
/// download, and chits are served by their other sources meanwhile.
#[test]
fn other_sources_are_used_while_a_host_must_not_be_asked() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let (busy, good) = (Server::start(), Server::start());
    let (a, b) = (Content::random(30_000), Content::random(70_000));
    for (path, content) in [("/a", &a), ("/b", &b)] {
        busy.add(path, content.bytes.clone());
        good.add(path, content.bytes.clone());
        let fault = Fault::RetryAfter {
            status: 429,
            value: "3600".into(),
        };
        busy.set_fault(path, fault);
    }
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    let started = Instant::now();
    spool.drop_chit("a", a.chit("a.bin", &[busy.url("/a"), good.url("/a")]));
    spool.expect_downloaded("a");
    spool.drop_chit("b", b.chit("b.bin", &[busy.url("/b"), good.url("/b")]));
    spool.expect_downloaded("b");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(busy.total_requests(), 1, "{:#?}", busy.requests());
    spool.assert_delivered("b", "b.bin", &b);
}

/// 16 chits for 16 files on a host that answers 503 to everything: the
/// host is asked about once per file and then once per backoff step, not
/// once per chit per step. Each of the 16 downloads backing off on its
/// own would ask it about ten times in its 3 s (the tests' backoff starts
/// at 10 ms): some 160 requests. (The host holds at most `per_host` of
/// the slots, so the downloads run six at a time, each for its 3 s.)
#[test]
fn a_failing_host_is_probed_not_asked_once_per_chit() {
    const CHITS: usize = 16;
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    for n in 0..CHITS {
        let content = Content::random(1000 + n);
        let path = format!("/f{n}");
        server.add(&path, content.bytes.clone());
        server.set_fault(&path, Fault::Status(503));
        spool.drop_chit(
            &format!("c{n}"),
            content.chit("f.bin", &[server.url(&path)]),
        );
    }
    let config = network_config(&dir, "give_up_after = \"3s\"\njobs = 16\n");
    Daemon::for_spool(&dir, &spool)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    for n in 0..CHITS {
        let reason = spool.expect_failed(&format!("c{n}"));
        assert!(reason.contains("503"), "{reason}");
    }
    let asked = server.total_requests();
    eprintln!("{asked} requests for {CHITS} chits");
    // Each file once (the first request for a path not asked since the
    // trouble began), then about one probe per backoff step (10 ms
    // doubling: ten steps fill 3 s), and the steps of later downloads
    // overlap those of earlier ones.
    assert!(
        asked <= CHITS + 12,
        "{asked} requests: {:#?}",
        server.requests()
    );
}

/// `per_host = 2`: eight downloads from one host, never more than two
/// requests at the server at once (counted there, held until two came).
#[test]
fn per_host_limits_the_requests_in_flight_to_one_host() {
    const CHITS: usize = 8;
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let contents: Vec<Content> = (0..CHITS).map(|_| Content::random(256 << 10)).collect();
    for (n, content) in contents.iter().enumerate() {
        let path = format!("/f{n}");
        server.add(&path, content.bytes.clone());
        server.hold(&path);
    }
    let config = network_config(&dir, "per_host = 2\njobs = 8\n");
    let _daemon = Daemon::for_spool(&dir, &spool).config(&config).start();
    for (n, content) in contents.iter().enumerate() {
        let url = server.url(&format!("/f{n}"));
        spool.drop_chit(&format!("c{n}"), content.chit(&format!("f{n}.bin"), &[url]));
    }
    wait_until(TIMEOUT, "two requests held at the server", || {
        (server.most_concurrent() >= 2).then_some(())
    });
    for n in 0..CHITS {
        server.release(&format!("/f{n}"));
    }
    for (n, content) in contents.iter().enumerate() {
        spool.expect_downloaded(&format!("c{n}"));
        spool.assert_delivered(&format!("c{n}"), &format!("f{n}.bin"), content);
    }
    assert_eq!(server.most_concurrent(), 2, "{:#?}", server.requests());
}

/// Flood fairness (issue 18): consumer `a` drops 200 chits for a host
/// that never answers (every request held), then consumer `b` drops one
/// for a working host. The dead host holds at most its share of the
/// `jobs` slots, so `b`'s file is delivered at once, not after one of
/// `a`'s downloads gives up (`give_up_after`, 120 s here).
#[test]
fn a_flood_for_a_dead_host_does_not_hold_up_another_consumer() {
    const FLOOD: usize = 200;
    const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
    let dir = TestDir::new();
    let (a, b) = (dir.spool("a"), dir.spool("b"));
    let (dead, good) = (Server::start(), Server::start());
    for n in 0..FLOOD {
        let content = Content::random(1000 + n);
        let path = format!("/d{n}");
        dead.add(&path, content.bytes.clone());
        dead.hold(&path);
        a.drop_chit(
            &format!("a{n}"),
            content.chit(&format!("d{n}.bin"), &[dead.url(&path)]),
        );
    }
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(4),
        give_up_after: Some(format!("{}s", GIVE_UP_AFTER.as_secs())),
        consumers: vec![a.clone(), b.clone()],
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let _daemon = Daemon::builder(&dir).config(&config).start();
    wait_until(
        TIMEOUT,
        "the flood's requests held at the dead host",
        || (dead.most_concurrent() >= 2).then_some(()),
    );

    let content = Content::random(100_000);
    good.add("/b", content.bytes.clone());
    let started = Instant::now();
    b.drop_chit("b", content.chit("b.bin", &[good.url("/b")]));
    let terminal = b.wait_terminal("b", GIVE_UP_AFTER);
    let waited = started.elapsed();
    eprintln!("b's chit was {terminal:?} after {waited:?}");
    b.assert_delivered("b", "b.bin", &content);
    assert!(
        waited < GIVE_UP_AFTER / 2,
        "b waited {waited:?} behind a's flood for a dead host"
    );
    let pending = a.chits_in(State::Request).len() + a.chits_in(State::Fetch).len();
    assert_eq!(
        pending, FLOOD,
        "a's flood is still waiting for the dead host"
    );
    assert!(
        dead.most_concurrent() <= 2,
        "the dead host holds half of the 4 slots at most: {} requests",
        dead.most_concurrent()
    );
}

/// `per_host = 3`: twelve downloads from one host whose bodies come
/// slowly, so they overlap: never more than three bodies (or requests
/// waiting for an answer) at the server at once, and three at some point.
#[test]
fn per_host_limits_the_bodies_in_flight_to_one_host() {
    const CHITS: usize = 12;
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let drip = Fault::SlowDrip {
        bytes_per_tick: 16 << 10,
        tick: Duration::from_millis(20),
    };
    let contents: Vec<Content> = (0..CHITS).map(|_| Content::random(160 << 10)).collect();
    for (n, content) in contents.iter().enumerate() {
        let path = format!("/f{n}");
        server.add(&path, content.bytes.clone());
        server.set_fault(&path, drip.clone());
        let url = server.url(&path);
        spool.drop_chit(&format!("c{n}"), content.chit(&format!("f{n}.bin"), &[url]));
    }
    let config = network_config(&dir, "per_host = 3\njobs = 12\n");
    Daemon::for_spool(&dir, &spool)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    for (n, content) in contents.iter().enumerate() {
        spool.assert_delivered(&format!("c{n}"), &format!("f{n}.bin"), content);
    }
    let bodies = server.requests();
    assert!(bodies.iter().all(|r| r.status == 200), "{bodies:#?}");
    assert_eq!(server.most_concurrent(), 3, "{bodies:#?}");
}

/// Small files over HTTP/1.1 at `jobs = 4`, `per_host = 6` (the
/// defaults): once the host has verified a download, its small downloads
/// share slots, so six requests are held at the server at once (not
/// four, one a slot), and never more than six.
#[test]
fn small_downloads_keep_all_of_per_host_busy_at_four_jobs() {
    const CHITS: usize = 24;
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let first = Content::random(20_000);
    server.add("/first", first.bytes.clone());
    let contents: Vec<Content> = (0..CHITS).map(|n| Content::random(30_000 + n)).collect();
    for (n, content) in contents.iter().enumerate() {
        let path = format!("/f{n}");
        server.add(&path, content.bytes.clone());
        server.hold(&path);
    }
    let config = network_config(&dir, "jobs = 4\nper_host = 6\n");
    let _daemon = Daemon::for_spool(&dir, &spool).config(&config).start();
    spool.drop_chit("first", first.chit("first.bin", &[server.url("/first")]));
    spool.expect_downloaded("first");
    for (n, content) in contents.iter().enumerate() {
        let url = server.url(&format!("/f{n}"));
        spool.drop_chit(&format!("c{n}"), content.chit(&format!("f{n}.bin"), &[url]));
    }
    wait_until(TIMEOUT, "six requests held at the server", || {
        (server.active() >= 6).then_some(())
    });
    for n in 0..CHITS {
        server.release(&format!("/f{n}"));
    }
    for (n, content) in contents.iter().enumerate() {
        spool.expect_downloaded(&format!("c{n}"));
        spool.assert_delivered(&format!("c{n}"), &format!("f{n}.bin"), content);
    }
    assert_eq!(server.most_concurrent(), 6, "{:#?}", server.requests());
}
