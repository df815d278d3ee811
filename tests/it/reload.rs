//! SIGHUP: the configuration file read anew while chits and downloads go
//! on; a file that does not load, or a different cache, leaves the running
//! configuration as it is.

use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, State, TestDir, TestSpool};

/// A configuration file of `dir`'s cache and `consumers`, written over
/// `<dir>/chitd.toml`.
fn configure(dir: &TestDir, consumers: &[&TestSpool]) -> std::path::PathBuf {
    ConfigFile::for_consumers(dir, consumers)
}

/// A file on `server` at `path`, and a chit for it.
fn served(server: &Server, path: &str, len: usize) -> String {
    let content = Content::random(len);
    server.add(path, content.bytes.clone());
    content.chit(&path[1..], &[server.url(path)])
}

/// Send SIGHUP and wait for the reload's `count`th outcome in the log.
fn reload(daemon: &mut Daemon, count: usize) -> String {
    daemon.sighup();
    let applied = "reloaded the configuration";
    let failed = "reload failed";
    crate::util::wait_until(crate::util::TIMEOUT, "the reload's outcome", || {
        let log = daemon.log();
        let outcomes: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(applied) || l.contains(failed))
            .collect();
        outcomes.get(count - 1).map(|line| (*line).to_owned())
    })
}

/// A consumer added to the file is served after SIGHUP; one taken out is
/// not watched any more, its chit left in `request/` (served again once
/// a later reload brings it back), while its chit already waiting for a
/// download finishes.
#[test]
fn consumers_added_and_taken_out_by_a_reload() {
    let dir = TestDir::new();
    let (a, b) = (dir.spool("a"), dir.spool("b"));
    let server = Server::start();
    let config = configure(&dir, &[&a]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();

    // A download of a's under way, held by the server.
    server.hold("/held");
    a.drop_chit("waiting", served(&server, "/held", 3_000));
    crate::util::wait_until(crate::util::TIMEOUT, "the held request", || {
        (server.count("/held") > 0).then_some(())
    });

    configure(&dir, &[&b]);
    let line = reload(&mut daemon, 1);
    assert!(
        line.contains("consumers added: b; consumers taken out: a"),
        "{line}"
    );
    a.drop_chit("left", served(&server, "/left", 1_000));
    b.drop_chit("new", served(&server, "/new", 1_000));
    b.expect_downloaded("new");
    server.release("/held");
    a.expect_downloaded("waiting");
    assert_eq!(a.states_of("left"), [State::Request], "not served");
    assert!(!a.spool.join(chitd::daemon::STATUS_FILE).exists());

    configure(&dir, &[&a, &b]);
    let line = reload(&mut daemon, 2);
    assert!(line.contains("consumers added: a"), "{line}");
    a.expect_downloaded("left");
    assert!(daemon.try_exit().is_none(), "still running");
}

/// A file that does not load is logged with its error (file and line), and
/// the running configuration goes on serving; so does one with another
/// cache, refused naming it.
#[test]
fn a_broken_file_or_another_cache_keeps_the_running_configuration() {
    let dir = TestDir::new();
    let a = dir.spool("a");
    let server = Server::start();
    let config = configure(&dir, &[&a]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    a.drop_chit("first", served(&server, "/first", 1_000));
    a.expect_downloaded("first");

    std::fs::write(&config, "jobs = \"many\"\n").expect("break the file");
    let line = reload(&mut daemon, 1);
    assert!(line.contains("reload failed"), "{line}");
    assert!(line.contains(&format!("{}", config.display())), "{line}");
    assert!(line.contains("line 1") && line.contains("jobs"), "{line}");
    assert!(line.contains("the running configuration is kept"), "{line}");
    a.drop_chit("second", served(&server, "/second", 1_000));
    a.expect_downloaded("second");

    let elsewhere = dir.join("elsewhere");
    ConfigFile {
        cache: Some(elsewhere.clone()),
        consumers: vec![a.clone()],
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let line = reload(&mut daemon, 2);
    assert!(line.contains("refused: cache changed from"), "{line}");
    assert!(line.contains("elsewhere"), "{line}");
    a.drop_chit("third", served(&server, "/third", 1_000));
    a.expect_downloaded("third");
    assert!(!elsewhere.exists(), "the refused cache was not made");
    assert!(daemon.try_exit().is_none(), "still running");
}

/// Mirrors and jobs from the file take effect: a chit without URLs is
/// fetched from the mirror the reload added.
#[test]
fn a_mirror_added_by_a_reload_is_asked() {
    let dir = TestDir::new();
    let a = dir.spool("a");
    let server = Server::start();
    let config = configure(&dir, &[&a]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    daemon.wait_for_log("chitd: configuration", 1);

    ConfigFile {
        cache: Some(dir.cache()),
        mirrors: vec![server.url("/mirror")],
        jobs: Some(2),
        consumers: vec![a.clone()],
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let line = reload(&mut daemon, 1);
    assert!(line.contains("mirrors; jobs"), "{line}");
    let content = Content::random(2_000);
    server.add("/mirror/dist/m.tar", content.bytes.clone());
    a.drop_chit("m", content.chit("dist/m.tar", &[]));
    a.expect_downloaded("m");
    a.assert_delivered("m", "dist/m.tar", &content);
}

/// Without --config there is nothing to re-read: SIGHUP is logged and the
/// daemon serves on (it used to die of it).
#[test]
fn sighup_without_a_configuration_file_changes_nothing() {
    let dir = TestDir::new();
    let a = dir.spool("a");
    let server = Server::start();
    let mut daemon = Daemon::for_spool(&dir, &a).start();
    daemon.wait_for_log("chitd: layout from flags", 1);
    daemon.sighup();
    daemon.wait_for_log("no configuration file to re-read", 1);
    a.drop_chit("after", served(&server, "/after", 1_000));
    a.expect_downloaded("after");
    assert!(daemon.try_exit().is_none(), "still running");
}

/// The address of the `count`th "serving metrics at" line.
fn metrics_address(daemon: &Daemon, count: usize) -> String {
    let line = daemon.wait_for_log("serving metrics at http://", count);
    let rest = line
        .split("serving metrics at http://")
        .nth(1)
        .expect("address");
    rest.split('/').next().expect("address").to_owned()
}

/// `metrics` added by a reload serves (with the consumers a reload
/// added); an address that cannot be bound is refused and the endpoint
/// stays; `metrics` removed stops it.
#[test]
fn metrics_follow_the_file() {
    let dir = TestDir::new();
    let (a, b) = (dir.spool("a"), dir.spool("b"));
    let config = configure(&dir, &[&a]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    daemon.wait_for_log("chitd: configuration", 1);
    let with_metrics = |address: &str, consumers: &[&TestSpool]| {
        let layout = ConfigFile {
            cache: Some(dir.cache()),
            consumers: consumers.iter().map(|&c| c.clone()).collect(),
            ..ConfigFile::default()
        };
        let address = crate::util::toml_string(address);
        dir.write(
            "chitd.toml",
            format!("metrics = {address}\n{}", layout.render()),
        );
    };

    with_metrics("127.0.0.1:0", &[&a, &b]);
    let line = reload(&mut daemon, 1);
    assert!(line.contains("consumers added: b; metrics"), "{line}");
    let address = metrics_address(&daemon, 1);
    let (status, text) = crate::metrics::get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        text.contains(r#"chitd_chits{consumer="b",state="request"}"#),
        "{text}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("address").to_string();
    with_metrics(&busy, &[&a, &b]);
    let line = reload(&mut daemon, 2);
    assert!(
        line.contains(&format!("cannot serve metrics on {busy}")),
        "{line}"
    );
    assert_eq!(
        crate::metrics::get(&address, "/metrics").0,
        "HTTP/1.0 200 OK"
    );

    configure(&dir, &[&a, &b]);
    let line = reload(&mut daemon, 3);
    assert!(
        line.contains("reloaded the configuration: metrics"),
        "{line}"
    );
    let refused = std::net::TcpStream::connect(&address);
    assert!(refused.is_err(), "metrics still served on {address}");
}

/// `per_host` raised by a reload applies to the host at once: a download
/// queued behind the one request allowed (fair slots give a host no more
/// downloads than it takes requests) starts and asks beside it.
#[test]
fn a_raised_per_host_lets_a_waiting_download_ask_at_once() {
    let dir = TestDir::new();
    let a = dir.spool("a");
    let server = Server::start();
    server.hold("/x");
    server.hold("/y");
    let config = dir.write("network.toml", "per_host = 1\n");
    let mut daemon = Daemon::for_spool(&dir, &a).config(&config).start();
    a.drop_chit("x", served(&server, "/x", 1_000));
    a.drop_chit("y", served(&server, "/y", 1_000));
    daemon.wait_for_log("download started", 1);
    crate::util::wait_until(crate::util::TIMEOUT, "the first request", || {
        (server.total_requests() == 1).then_some(())
    });

    dir.write("network.toml", "per_host = 2\n");
    let line = reload(&mut daemon, 1);
    assert!(
        line.contains("reloaded the configuration: per_host"),
        "{line}"
    );
    crate::util::wait_until(crate::util::TIMEOUT, "the second request", || {
        (server.total_requests() == 2).then_some(())
    });
    server.release("/x");
    server.release("/y");
    a.expect_downloaded("x");
    a.expect_downloaded("y");
}

/// A consumer added whose directories cannot be opened is logged and left
/// out, the others served; once they can be, the next reload of the same
/// file serves it.
#[test]
fn a_consumer_that_cannot_be_opened_is_tried_again_by_the_next_reload() {
    let dir = TestDir::new();
    let (a, b) = (dir.spool("a"), dir.spool("b"));
    let server = Server::start();
    let config = configure(&dir, &[&a]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    daemon.wait_for_log("chitd: configuration", 1);
    std::fs::remove_dir_all(&b.deliver).expect("remove deliver");
    std::fs::write(&b.deliver, "a file where a directory should be").expect("plant");

    configure(&dir, &[&a, &b]);
    let line = reload(&mut daemon, 1);
    assert!(line.contains("consumers added: b"), "{line}");
    let refused = daemon.wait_for_log("not serving this consumer", 1);
    assert!(
        refused.contains("consumer=b") || refused.contains("\"b\""),
        "{refused}"
    );
    b.drop_chit("waits", served(&server, "/waits", 1_000));
    a.drop_chit("served", served(&server, "/served", 1_000));
    a.expect_downloaded("served");
    assert_eq!(b.states_of("waits"), [State::Request]);

    std::fs::remove_file(&b.deliver).expect("unplant");
    std::fs::create_dir(&b.deliver).expect("deliver");
    let line = reload(&mut daemon, 2);
    assert!(line.contains("consumers added: b"), "{line}");
    b.expect_downloaded("waits");
}
