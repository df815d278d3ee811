//! The fleet tier (contract §11) against a real S3 server (`s3s-fs`, see
//! `s3`): a second host served from the remote, a remote that is down or
//! sends wrong bytes, an upload resumed after `kill -9`, two hosts missing
//! one digest at once.

use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::{get, metrics_address, sample};
use crate::s3::{S3Server, files_under, remote_section, with_credentials};
use crate::server::{Fault, Server};
use crate::util::{
    ConfigFile, Content, Daemon, TIMEOUT, TestDir, TestSpool, refused_url, run_cli, wait_until,
};

/// One host: its directory, consumer and configuration (with `remote`).
struct Host {
    dir: TestDir,
    spool: TestSpool,
    config: PathBuf,
}

impl Host {
    fn new(remote: &str) -> Host {
        let dir = TestDir::new();
        let spool = dir.spool("builder");
        let text = ConfigFile {
            cache: Some(dir.cache()),
            consumers: vec![spool.clone()],
            ..ConfigFile::default()
        }
        .render()
            + remote;
        let config = dir.write("chitd.toml", text);
        Host { dir, spool, config }
    }

    fn daemon(&self) -> crate::util::DaemonBuilder {
        with_credentials(Daemon::builder(&self.dir).config(&self.config))
    }

    /// The pending upload records in this host's cache.
    fn upload_records(&self) -> Vec<PathBuf> {
        files_under(&self.dir.cache().join("upload-v1"))
    }
}

fn wait_for_object(s3: &S3Server, content: &Content) {
    let object = s3.object_file(&content.sha256);
    wait_until(TIMEOUT, "the object in the remote tier", || {
        let bytes = std::fs::read(&object).ok()?;
        (bytes == content.bytes).then_some(())
    });
}

#[test]
fn a_second_host_is_served_from_the_remote_and_upstream_is_asked_once() {
    let work = TestDir::new();
    let s3 = S3Server::start(&work);
    let upstream = Server::start();
    let content = Content::random(300 << 10);
    upstream.add("/f.tar.gz", content.bytes.clone());
    let chit = content.chit("f.tar.gz", &[upstream.url("/f.tar.gz")]);

    let first = Host::new(&s3.remote_section());
    let mut daemon = first.daemon().args(["--metrics", "127.0.0.1:0"]).start();
    let metrics = metrics_address(&daemon);
    first.spool.drop_chit("a", &chit);
    first.spool.wait_terminal("a", TIMEOUT);
    first.spool.assert_delivered("a", "f.tar.gz", &content);
    wait_for_object(&s3, &content);
    wait_until(TIMEOUT, "the upload record to go", || {
        first.upload_records().is_empty().then_some(())
    });
    // The metrics count the upload once it has ended.
    let text = wait_until(TIMEOUT, "the upload counted", || {
        let (_, text) = get(&metrics, "/metrics");
        let uploaded = sample(&text, r#"chitd_uploads_total{outcome="uploaded"}"#);
        (uploaded == Some(1.0)).then_some(text)
    });
    let size = content.len() as f64;
    assert_eq!(
        sample(&text, "chitd_uploaded_bytes_total"),
        Some(size),
        "{text}"
    );
    assert_eq!(
        sample(&text, "chitd_uploads_in_flight"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "chitd_uploads_pending"), Some(0.0), "{text}");
    daemon.sigterm();
    daemon.expect_success(TIMEOUT);

    let second = Host::new(&s3.remote_section());
    second.spool.drop_chit("b", &chit);
    let mut daemon = second.daemon().exit_when_idle().start();
    daemon.expect_success(TIMEOUT);
    second.spool.assert_delivered("b", "f.tar.gz", &content);
    assert_eq!(upstream.gets("/f.tar.gz"), 1, "{:?}", upstream.requests());
    assert!(
        second.upload_records().is_empty(),
        "an object from the remote is not uploaded back"
    );
}

#[test]
fn a_remote_that_is_down_never_fails_a_chit_nor_shows_in_its_error() {
    let upstream = Server::start();
    let content = Content::random(100 << 10);
    upstream.add("/ok.bin", content.bytes.clone());
    let down = refused_url("");
    let host = Host::new(&remote_section(down.trim_end_matches('/')));
    host.spool
        .drop_chit("ok", content.chit("ok.bin", &[upstream.url("/ok.bin")]));
    let missing = Content::random(1000);
    host.spool.drop_chit(
        "gone",
        missing.chit("gone.bin", &[upstream.url("/gone.bin")]),
    );
    let mut daemon = host.daemon().args(["--metrics", "127.0.0.1:0"]).start();
    let metrics = metrics_address(&daemon);
    host.spool.wait_terminal("ok", TIMEOUT);
    host.spool.wait_terminal("gone", TIMEOUT);
    // The upload that could not be made stays pending for later.
    wait_until(TIMEOUT, "the upload to be given up for now", || {
        let log = daemon.log();
        log.contains("upload to the remote tier not done")
            .then_some(())
    });
    let text = wait_until(TIMEOUT, "the failed upload counted", || {
        let (_, text) = get(&metrics, "/metrics");
        let failed = sample(&text, r#"chitd_uploads_total{outcome="failed"}"#)?;
        (failed >= 1.0).then_some(text)
    });
    assert_eq!(sample(&text, "chitd_uploads_pending"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "chitd_uploaded_bytes_total"),
        Some(0.0),
        "{text}"
    );
    daemon.sigterm();
    daemon.expect_success(TIMEOUT);

    host.spool.assert_delivered("ok", "ok.bin", &content);
    let reason = host.spool.expect_failed("gone");
    let port = down.rsplit(':').next().unwrap_or_default();
    assert!(
        !reason.contains(port) && !reason.contains("remote"),
        "{reason}"
    );
    assert!(reason.contains("404"), "{reason}");
    let log = daemon.log();
    assert!(log.contains("the remote tier ruled out"), "{log}");
    assert_eq!(host.upload_records().len(), 1, "{log}");
    // `status` shows the upload still to be made.
    let config = host.config.to_str().expect("a UTF-8 path");
    let shown = run_cli(&host.dir, ["status", "--config", config], TIMEOUT);
    assert_eq!(shown.code, Some(0), "{shown:?}");
    assert!(
        shown.stdout.contains("remote tier: 1 uploads pending"),
        "{shown:?}"
    );
    let json = run_cli(&host.dir, ["status", "--config", config, "--json"], TIMEOUT);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(report["uploads_pending"], 1, "{report}");
}

#[test]
fn wrong_bytes_in_the_remote_are_ruled_out_and_upstream_is_used() {
    let work = TestDir::new();
    let s3 = S3Server::start(&work);
    let upstream = Server::start();
    let content = Content::random(200 << 10);
    upstream.add("/f.bin", content.bytes.clone());
    let planted = s3.object_file(&content.sha256);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    let mut wrong = content.bytes.clone();
    wrong[1000] ^= 0xff;
    std::fs::write(&planted, &wrong).unwrap();

    let host = Host::new(&s3.remote_section());
    host.spool
        .drop_chit("f", content.chit("f.bin", &[upstream.url("/f.bin")]));
    let mut daemon = host.daemon().exit_when_idle().start();
    daemon.expect_success(TIMEOUT);
    host.spool.assert_delivered("f", "f.bin", &content);
    assert_eq!(upstream.gets("/f.bin"), 1);
    let log = daemon.log();
    assert!(
        log.contains("the remote tier ruled out") && log.contains("sha256 mismatch"),
        "{log}"
    );
    // The wrong object is the store's business: never overwritten.
    assert_eq!(std::fs::read(&planted).unwrap(), wrong);
}

/// 6 parts of 5 MiB (S3's smallest) at 10 MiB/s: `kill -9` after two are
/// recorded; the next start sends the rest, at most one part again.
#[test]
fn an_upload_cut_by_kill_resumes_without_sending_finished_parts_again() {
    let work = TestDir::new();
    let s3 = S3Server::start(&work);
    let upstream = Server::start();
    let part = 5 << 20;
    let content = Content::random(6 * part);
    upstream.add("/big.bin", content.bytes.clone());
    let host = Host::new(&s3.remote_section());
    let knobs = |builder: crate::util::DaemonBuilder| {
        builder
            .env("CHITD_REMOTE_MULTIPART_THRESHOLD", &part.to_string())
            .env("CHITD_REMOTE_PART_SIZE", &part.to_string())
            .env("CHITD_REMOTE_UPLOAD_RATE", &(10 << 20).to_string())
    };
    host.spool
        .drop_chit("big", content.chit("big.bin", &[upstream.url("/big.bin")]));
    let mut daemon = knobs(host.daemon()).start();
    host.spool.wait_terminal("big", TIMEOUT);
    let record = host
        .dir
        .cache()
        .join(format!("upload-v1/{}.json", content.sha256));
    wait_until(TIMEOUT, "two parts recorded", || {
        let text = std::fs::read_to_string(&record).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        (json["multipart"]["parts"].as_array()?.len() >= 2).then_some(())
    });
    daemon.kill();
    let before = s3.parts_received();
    assert!((2..6).contains(&before), "{before} parts before the kill");

    let mut daemon = knobs(host.daemon()).start();
    wait_for_object(&s3, &content);
    daemon.sigterm();
    daemon.expect_success(TIMEOUT);
    let sent = s3.parts_received();
    assert!(
        (6..=7).contains(&sent),
        "{sent} parts sent for 6\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("resuming the multipart upload"),
        "{}",
        daemon.log()
    );
    assert!(host.upload_records().is_empty());
    assert_eq!(upstream.gets("/big.bin"), 1);
}

#[test]
fn two_hosts_missing_one_file_at_once_download_it_upstream_once() {
    let work = TestDir::new();
    let s3 = S3Server::start(&work);
    let upstream = Server::start();
    let content = Content::random(1 << 20);
    upstream.add("/shared.bin", content.bytes.clone());
    let drip = Fault::SlowDrip {
        bytes_per_tick: 128 * 1024,
        tick: Duration::from_millis(50),
    };
    upstream.set_fault("/shared.bin", drip);
    let chit = content.chit("shared.bin", &[upstream.url("/shared.bin")]);
    let hosts = [
        Host::new(&s3.remote_section()),
        Host::new(&s3.remote_section()),
    ];
    let mut daemons: Vec<Daemon> = hosts.iter().map(|host| host.daemon().start()).collect();
    for host in &hosts {
        host.spool.drop_chit("s", &chit);
    }
    for host in &hosts {
        host.spool.wait_terminal("s", TIMEOUT);
        host.spool.assert_delivered("s", "shared.bin", &content);
    }
    for daemon in &mut daemons {
        daemon.sigterm();
        daemon.expect_success(TIMEOUT);
    }
    let logs: Vec<String> = daemons.iter().map(Daemon::log).collect();
    assert_eq!(upstream.gets("/shared.bin"), 1, "{logs:#?}");
    assert!(
        logs.iter().any(|log| log.contains("took the lease")),
        "{logs:#?}"
    );
    assert!(
        !s3.bucket_dir()
            .join("chitd/lease")
            .join(&content.sha256)
            .exists()
    );
}

/// A remote that drips (played by the test server, which ignores the
/// signature): cut after one window, ruled out, and its bytes kept for
/// upstream to resume from.
#[test]
fn a_slow_remote_is_ruled_out_and_upstream_resumes_its_bytes() {
    let fake_remote = Server::start();
    let upstream = Server::start();
    let content = Content::random(4 << 20);
    let key = format!("/distfiles/chitd/sha256/{}", content.sha256);
    fake_remote.add(&key, content.bytes.clone());
    let drip = Fault::SlowDrip {
        bytes_per_tick: 16 * 1024,
        tick: Duration::from_millis(50),
    };
    fake_remote.set_fault(&key, drip);
    upstream.add("/f.bin", content.bytes.clone());

    let endpoint = fake_remote.url("");
    let host = Host::new(&remote_section(endpoint.trim_end_matches('/')));
    host.spool
        .drop_chit("f", content.chit("f.bin", &[upstream.url("/f.bin")]));
    let daemon = host.daemon().env("CHITD_REMOTE_STALL_MS", "1000");
    let mut daemon = daemon.exit_when_idle().start();
    daemon.expect_success(TIMEOUT);

    host.spool.assert_delivered("f", "f.bin", &content);
    let log = daemon.log();
    assert!(
        log.contains("the remote tier ruled out") && log.contains("too slow"),
        "{log}"
    );
    let asked = upstream.requests_for("/f.bin");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].range_start().is_some_and(|start| start > 0),
        "{asked:?}"
    );
}

/// A chit with no URL (and no mirror) is served by the remote tier when
/// it has the file, and fails as having no source when it does not.
#[test]
fn a_chit_without_sources_is_served_by_the_remote_alone() {
    let work = TestDir::new();
    let s3 = S3Server::start(&work);
    let content = Content::random(2 << 20);
    let planted = s3.object_file(&content.sha256);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, &content.bytes).unwrap();
    let absent = Content::random(5000);

    let host = Host::new(&s3.remote_section());
    host.spool
        .drop_chit("there", content.chit("there.bin", &[]));
    host.spool
        .drop_chit("absent", absent.chit("absent.bin", &[]));
    let mut daemon = host.daemon().exit_when_idle().start();
    daemon.expect_success(TIMEOUT);
    host.spool.assert_delivered("there", "there.bin", &content);
    let reason = host.spool.expect_failed("absent");
    assert!(
        !reason.contains("remote") && !reason.contains("127.0.0.1"),
        "{reason}"
    );
    assert!(host.upload_records().is_empty(), "{}", daemon.log());
}

/// The fake remote of `read_in_ranges` tests: the object under its key.
/// A host whose remote tier is `fake_remote` (an HTTP server playing the
/// store).
fn host_reading_from(fake_remote: &Server) -> Host {
    Host::new(&remote_section(fake_remote.url("").trim_end_matches('/')))
}

fn fake_remote_with(content: &Content) -> (Server, String) {
    let fake_remote = Server::start();
    let key = format!("/distfiles/chitd/sha256/{}", content.sha256);
    fake_remote.add(&key, content.bytes.clone());
    (fake_remote, key)
}

/// Run a host that reads from the remote in ranges of 256 KiB, three at
/// once, on the chit `chit` named `name`, dropped once the host's
/// conditional-create probe is over (so the probe's requests do not count
/// as the read's); returns its log.
fn read_in_ranges(host: &Host, name: &str, chit: String) -> String {
    let mut daemon = host
        .daemon()
        .env("CHITD_REMOTE_RANGE_SIZE", &(256 << 10).to_string())
        .env("CHITD_REMOTE_RANGES_AT_ONCE", "3")
        .start();
    wait_until(TIMEOUT, "the conditional-create probe", || {
        let log = daemon.log();
        (log.contains("conditional") || log.contains("If-None-Match")).then_some(())
    });
    host.spool.drop_chit(name, &chit);
    host.spool.wait_terminal(name, TIMEOUT);
    daemon.sigterm();
    daemon.expect_success(TIMEOUT);
    daemon.log()
}

/// A big object is read as ranged GETs, several under way at once (each
/// range streams slowly here, so the next ones are asked meanwhile), each
/// byte asked once, and the file arrives whole.
#[test]
fn a_big_object_is_read_in_ranges_several_at_once() {
    let content = Content::random(2 << 20);
    let (fake_remote, key) = fake_remote_with(&content);
    let drip = Fault::SlowDrip {
        bytes_per_tick: 64 << 10,
        tick: Duration::from_millis(20),
    };
    fake_remote.set_fault(&key, drip);
    let host = host_reading_from(&fake_remote);
    read_in_ranges(&host, "f", content.chit("f.bin", &[]));

    host.spool.assert_delivered("f", "f.bin", &content);
    let mut asked: Vec<String> = fake_remote
        .requests_for(&key)
        .into_iter()
        .map(|request| request.range.unwrap_or_default())
        .collect();
    asked.sort_by_key(|range| {
        let start = range.trim_start_matches("bytes=").split('-').next();
        start.and_then(|n| n.parse::<u64>().ok())
    });
    let expected: Vec<String> = (0..8u64)
        .map(|i| format!("bytes={}-{}", i << 18, ((i + 1) << 18) - 1))
        .collect();
    assert_eq!(asked, expected);
    let concurrent = fake_remote.most_concurrent();
    assert!((2..=3).contains(&concurrent), "{concurrent} at once");
}

/// A later range that breaks ends the read: the bytes before it are kept
/// (written in order), the remote is ruled out, and upstream resumes from
/// them.
#[test]
fn a_range_that_breaks_leaves_the_bytes_before_it_to_upstream() {
    let content = Content::random(1 << 20);
    let (fake_remote, key) = fake_remote_with(&content);
    let steady = Fault::SlowDrip {
        bytes_per_tick: 64 << 10,
        tick: Duration::from_millis(5),
    };
    fake_remote.set_fault_times(&key, steady, 1);
    fake_remote.then_fault(&key, Fault::Reset { after: 1000 });
    let upstream = Server::start();
    upstream.add("/f.bin", content.bytes.clone());
    let host = host_reading_from(&fake_remote);
    let log = read_in_ranges(&host, "f", content.chit("f.bin", &[upstream.url("/f.bin")]));

    host.spool.assert_delivered("f", "f.bin", &content);
    assert!(log.contains("the remote tier ruled out"), "{log}");
    let asked = upstream.requests_for("/f.bin");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0]
            .range_start()
            .is_some_and(|start| start >= 256 << 10),
        "{asked:?}"
    );
}

/// A store that ignores `Range` (every S3 store honours it) cannot serve
/// a read in ranges: ruled out, and upstream gives the file.
#[test]
fn a_store_that_ignores_ranges_is_ruled_out_for_a_big_object() {
    let content = Content::random(1 << 20);
    let (fake_remote, key) = fake_remote_with(&content);
    fake_remote.set_fault(&key, Fault::IgnoreRange);
    let upstream = Server::start();
    upstream.add("/f.bin", content.bytes.clone());
    let host = host_reading_from(&fake_remote);
    let log = read_in_ranges(&host, "f", content.chit("f.bin", &[upstream.url("/f.bin")]));

    host.spool.assert_delivered("f", "f.bin", &content);
    assert!(log.contains("the remote tier ruled out"), "{log}");
    assert_eq!(upstream.gets("/f.bin"), 1);
}
