//! "Two chits with the same digest cause at most one upstream download",
//! whether they arrive together, while the download runs, or later.

use std::time::Duration;

use crate::server::{Fault, Server};
use crate::util::{ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, wait_until};

/// 1 MiB: early-delivered to its first chit while it downloads (see
/// `chase`), the others are copied from the cache.
#[test]
fn twenty_chits_for_one_digest_across_five_consumers_make_one_get() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(1 << 20);
    server.add("/big", content.bytes.clone());
    // Slow enough that the second wave arrives while the download runs.
    let drip = Fault::SlowDrip {
        bytes_per_tick: 64 * 1024,
        tick: Duration::from_millis(50),
    };
    server.set_fault("/big", drip);
    let consumers: Vec<_> = (0..5).map(|i| dir.spool(&format!("c{i}"))).collect();
    let chit = |n: usize| content.chit(&format!("copy{n}/big.bin"), &[server.url("/big")]);
    // Early delivery goes only into directories that exist.
    for consumer in &consumers {
        for n in 0..4 {
            std::fs::create_dir_all(consumer.deliver.join(format!("copy{n}"))).unwrap();
        }
    }
    for consumer in &consumers {
        for n in 0..2 {
            consumer.drop_chit(&format!("big{n}"), chit(n));
        }
    }
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(4),
        consumers: consumers.clone(),
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");

    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    wait_until(TIMEOUT, "the download to start", || {
        (server.bytes_served_for("/big") > 0).then_some(())
    });
    for consumer in &consumers {
        for n in 2..4 {
            consumer.drop_chit(&format!("big{n}"), chit(n));
        }
    }
    daemon.expect_success(TIMEOUT);

    for consumer in &consumers {
        for n in 0..4 {
            consumer.assert_delivered(&format!("big{n}"), &format!("copy{n}/big.bin"), &content);
        }
        assert_eq!(
            consumer.delivery_temporaries(),
            Vec::<std::path::PathBuf>::new()
        );
    }
    assert_eq!(server.gets("/big"), 1, "{:?}", server.requests());
    let log = daemon.log();
    assert_eq!(
        log.matches("delivered the copy made while it downloaded")
            .count(),
        1,
        "{log}"
    );
}

/// A small file downloads and is published in a few milliseconds, while
/// hundreds of chits for it are still being claimed and looked up: a chit
/// whose lookup missed the object just before its publish, and that asks
/// for a download just after, must be delivered from the cache, not start a
/// second download. (Seen as two GETs in one run of seven of the
/// open-files test before the fix; the more chits in flight around the
/// publish, the likelier.)
#[test]
fn chits_that_looked_while_the_download_was_published_do_not_download_again() {
    const CHITS: usize = 1000;
    for round in 0..3 {
        let dir = TestDir::new();
        let server = Server::start();
        let content = Content::random(4096);
        server.add("/small.bin", content.bytes.clone());
        let spool = dir.spool("c");
        spool.drop_chits_into_own_dirs(&content, &server.url("/small.bin"), "small.bin", CHITS);
        Daemon::run_until_idle(&dir, &spool);
        assert_eq!(
            spool.chits_in(crate::util::State::Downloaded).len(),
            CHITS,
            "round {round}"
        );
        assert_eq!(
            server.gets("/small.bin"),
            1,
            "round {round}: one download for all"
        );
    }
}

#[test]
fn same_digest_under_different_urls_is_fetched_once() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(16 * 1024);
    server.add("/one", content.bytes.clone());
    server.add("/two", content.bytes.clone());
    let spool = dir.spool("c");
    spool.drop_chit("a", content.chit("a.bin", &[server.url("/one")]));
    spool.drop_chit("b", content.chit("b.bin", &[server.url("/two")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("a", "a.bin", &content);
    spool.assert_delivered("b", "b.bin", &content);
    assert_eq!(server.gets("/one") + server.gets("/two"), 1);
}

/// A chit for `content` that names one byte too many.
fn wrong_size_chit(content: &Content, path: &str, urls: &[String]) -> String {
    chit_of_size(content, content.len() + 1, path, urls)
}

/// A chit for `content` that says it is `size` bytes.
fn chit_of_size(content: &Content, size: usize, path: &str, urls: &[String]) -> String {
    let right = format!("{}\n{}\n", content.sha256, content.len());
    let said = format!("{}\n{size}\n", content.sha256);
    content.chit(path, urls).replacen(&right, &said, 1)
}

/// The reason a chit saying `said` bytes fails once the file of its sha256
/// was downloaded and verified as `size` bytes.
fn verified_elsewhere(said: usize, size: usize) -> String {
    format!(
        "the chit says {said} bytes, but the file with this sha256 is {size} bytes \
         (downloaded and verified for another chit)"
    )
}

/// Two chits name one digest but different sizes: at most one is right, so
/// they never share a download. The later one waits for the download under
/// way (one upstream download per digest, as long as it goes well), but
/// not for long: a wrong size from a slow server cannot hold up the right
/// one. Once one is verified, the other is failed (its download stopped,
/// if it has one); and a wrong size never evicts the cached object.
#[test]
fn a_chit_with_the_wrong_size_never_shares_a_download_nor_evicts_the_object() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(16 * 1024);
    let size = content.len();
    server.add("/slow", content.bytes.clone());
    server.set_fault(
        "/slow",
        Fault::SlowDrip {
            bytes_per_tick: 512,
            tick: Duration::from_millis(50),
        },
    );
    server.add("/good", content.bytes.clone());
    let spool = dir.spool("c");

    // The right chit first: the wrong one comes while it downloads, waits
    // for it, and fails against the verified size with no request of its
    // own.
    let mut daemon = Daemon::for_spool(&dir, &spool).exit_when_idle().start();
    spool.drop_chit("right1", content.chit("right1.bin", &[server.url("/slow")]));
    wait_until(TIMEOUT, "the download to start", || {
        (server.bytes_served_for("/slow") > 0).then_some(())
    });
    spool.drop_chit(
        "wrong1",
        wrong_size_chit(&content, "wrong1.bin", &[server.url("/slow")]),
    );
    daemon.expect_success(TIMEOUT);
    spool.assert_delivered("right1", "right1.bin", &content);
    let reason = spool.expect_failed("wrong1");
    assert_eq!(reason, verified_elsewhere(size + 1, size));
    assert!(!spool.delivered_path("wrong1.bin").exists());
    assert_eq!(server.gets("/slow"), 1, "one upstream download");

    // The wrong chit first, from a server that announces its size and
    // sends at a slow but steady pace (the whole would take an hour): the
    // right one waits for it one inactivity window (500 ms here), then
    // downloads beside it. Once it is verified, the wrong chit's download
    // is stopped and the chit failed.
    std::fs::remove_dir_all(dir.cache()).unwrap();
    let hostile_size = 64 * 1024 * 1024;
    server.add("/hostile", vec![0u8; hostile_size]);
    server.set_fault(
        "/hostile",
        Fault::SlowDrip {
            bytes_per_tick: 1024,
            tick: Duration::from_millis(50),
        },
    );
    let mut daemon = Daemon::for_spool(&dir, &spool)
        .inactivity_timeout_ms(500)
        .exit_when_idle()
        .start();
    let hostile = chit_of_size(
        &content,
        hostile_size,
        "wrong2.bin",
        &[server.url("/hostile")],
    );
    spool.drop_chit("wrong2", hostile);
    wait_until(TIMEOUT, "the wrong chit's download to start", || {
        (server.bytes_served_for("/hostile") > 0).then_some(())
    });
    spool.drop_chit("right2", content.chit("right2.bin", &[server.url("/good")]));
    daemon.expect_success(TIMEOUT);
    spool.assert_delivered("right2", "right2.bin", &content);
    let reason = spool.expect_failed("wrong2");
    assert_eq!(reason, verified_elsewhere(hostile_size, size));
    assert_eq!(server.gets("/good"), 1, "{:?}", server.requests());
    assert!(!spool.delivered_path("wrong2.bin").exists());
    let dripped = server.bytes_served_for("/hostile");
    assert!(
        dripped < 1024 * 1024,
        "{dripped} bytes: the download went on"
    );

    // Cached now: a wrong size fails without any request, and the object
    // stays for the right one.
    let requests = server.requests().len();
    spool.drop_chit("wrong3", wrong_size_chit(&content, "wrong3.bin", &[]));
    Daemon::run_until_idle(&dir, &spool);
    spool.drop_chit("right3", content.chit("right3.bin", &[]));
    Daemon::run_until_idle(&dir, &spool);
    let reason = spool.expect_failed("wrong3");
    assert_eq!(
        reason,
        format!(
            "the chit says {} bytes, but the file with this sha256 is {size} bytes \
             (verified, in the cache)",
            size + 1
        )
    );
    spool.assert_delivered("right3", "right3.bin", &content);
    assert_eq!(
        server.requests().len(),
        requests,
        "no request for cached files"
    );
}

/// Two chits for one path with different files (in one consumer, or in two
/// consumers sharing a delivery directory) are delivered one at a time: a
/// chit reaches `downloaded/` only while its own file is at the path, so
/// the file left there is the one of the chit that got there last.
#[test]
fn chits_for_one_path_are_delivered_one_at_a_time() {
    let dir = TestDir::new();
    let server = Server::start();
    let a = dir.spool("a");
    let mut b = dir.spool("b");
    b.deliver = a.deliver.clone();
    let mut pairs = Vec::new();
    for n in 0..6 {
        let (one, two) = (Content::random(64 * 1024), Content::random(64 * 1024));
        server.add(&format!("/one{n}"), one.bytes.clone());
        server.add(&format!("/two{n}"), two.bytes.clone());
        let path = format!("same{n}.bin");
        a.drop_chit(
            &format!("x{n}"),
            one.chit(&path, &[server.url(&format!("/one{n}"))]),
        );
        // Every other pair collides across the two consumers.
        let second = if n % 2 == 0 { &a } else { &b };
        second.drop_chit(
            &format!("y{n}"),
            two.chit(&path, &[server.url(&format!("/two{n}"))]),
        );
        pairs.push((path, one, two, second));
    }
    let config = ConfigFile::for_consumers(&dir, &[&a, &b]);
    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);
    // The order of the moves to downloaded/: the log's, one line per move,
    // written by one group commit at a time (file times are too coarse).
    let log = daemon.log();
    let moved = |spool: &crate::util::TestSpool, name: &str| {
        let line = format!("consumer={} chit={name} ", spool.name);
        log.lines()
            .position(|l| l.contains("downloaded: fetch/ → downloaded/") && l.contains(&line))
            .unwrap_or_else(|| panic!("no move of {line} in the log:\n{log}"))
    };
    for (n, (path, one, two, second)) in pairs.iter().enumerate() {
        let (x, y) = (moved(&a, &format!("x{n}")), moved(second, &format!("y{n}")));
        let last = if x > y { one } else { two };
        assert_eq!(
            std::fs::read(a.delivered_path(path)).unwrap(),
            last.bytes,
            "{path}: the file is not the one of the chit that reached downloaded/ last"
        );
    }
}

/// Two consumers share one failing download, each naming a URL of its
/// own (A's with a secret in its query): each `# error:` line names its
/// own chit's URL and the mirror, never the other chit's URL, and A's
/// secret is nowhere in B's failed chit.
#[test]
fn a_shared_failure_names_to_each_consumer_only_its_own_sources() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(3_000);
    // A's source fails transiently, so the download lives until
    // `give_up_after` and B's chit joins it; B's answers 404.
    server.add("/a", content.bytes.clone());
    server.set_fault("/a", Fault::Status(500));
    server.add("/b", content.bytes.clone());
    server.set_fault("/b", Fault::NotFound);
    let (a, b) = (dir.spool("a"), dir.spool("b"));
    let private = format!("{}?x=secret", server.url("/a"));
    let mirror = server.url("/mirror");
    let config = ConfigFile {
        cache: Some(dir.cache()),
        mirrors: vec![mirror.clone()],
        give_up_after: Some("4s".into()),
        consumers: vec![a.clone(), b.clone()],
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    a.drop_chit("f", content.chit("f.bin", std::slice::from_ref(&private)));
    wait_until(TIMEOUT, "A's source to be asked", || {
        (server.count("/a") > 0).then_some(())
    });
    b.drop_chit("f", content.chit("f.bin", &[server.url("/b")]));
    daemon.expect_success(TIMEOUT);

    let mirrored = format!("{mirror}/f.bin");
    let reason_a = a.expect_failed("f");
    assert!(
        reason_a.contains(&format!("{private}: HTTP 500"))
            && reason_a.contains(&format!("{mirrored}: HTTP 404"))
            && reason_a.contains("and 1 source of another chit for the same file"),
        "A: {reason_a}"
    );
    assert!(!reason_a.contains(&server.url("/b")), "A: {reason_a}");
    let reason_b = b.expect_failed("f");
    assert!(
        reason_b.contains(&format!("{}: HTTP 404", server.url("/b")))
            && reason_b.contains(&format!("{mirrored}: HTTP 404"))
            && reason_b.contains("and 1 source of another chit for the same file"),
        "B: {reason_b}"
    );
    assert!(!reason_b.contains(&server.url("/a")), "B: {reason_b}");
    let failed_b = b.read_chit(State::Fail, "f");
    assert!(!failed_b.contains("secret"), "B's failed chit: {failed_b}");
    assert_eq!(server.count("/b"), 1, "{:?}", server.requests());
}
