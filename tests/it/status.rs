//! `chitd status --json`: per-consumer chit counts per state, from the
//! spool directories, with or without a running daemon.
//!
//! The shape chitd promises:
//! `{"consumers": [{"name": "..", "request": n, "fetch": n,
//! "downloaded": n, "fail": n, ..}, ..]}`, consumers in configuration order;
//! dot-files are not chits and are not counted.

use std::ffi::OsString;

use crate::server::{Fault, Server};
use crate::util::{
    ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli, sha256_hex,
    wait_until,
};

/// Name and `[request, fetch, downloaded, fail]` counts of consumer `index`.
fn counts(status: &serde_json::Value, index: usize) -> (String, [u64; 4]) {
    let consumer = &status["consumers"][index];
    let count = |key: &str| {
        consumer[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {status}"))
    };
    let name = consumer["name"].as_str().unwrap_or_default().to_string();
    (
        name,
        [
            count("request"),
            count("fetch"),
            count("downloaded"),
            count("fail"),
        ],
    )
}

/// `chitd status --spool <spool>` (with `--json`: parsed), which must
/// succeed.
fn status_of(dir: &TestDir, spool: &TestSpool, json: bool) -> String {
    let mut args: Vec<OsString> = vec![
        "status".into(),
        "--spool".into(),
        spool.spool.clone().into(),
    ];
    if json {
        args.push("--json".into());
    }
    let output = run_cli(dir, args, TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    output.stdout
}

fn status_json(dir: &TestDir, spool: &TestSpool) -> serde_json::Value {
    serde_json::from_str(&status_of(dir, spool, true)).expect("status --json prints JSON")
}

#[test]
fn status_json_counts_chits_per_consumer_and_state() {
    let dir = TestDir::new();
    let alpha = dir.spool("alpha");
    let beta = dir.spool("beta");
    let text = Content::random(10).chit("x", &[]);
    for name in ["r1", "r2"] {
        alpha.put_chit(State::Request, name, &text);
    }
    alpha.put_chit(State::Request, ".being-written", &text);
    for name in ["d1", "d2", "d3"] {
        alpha.put_chit(State::Downloaded, name, &text);
    }
    alpha.put_chit(State::Fail, "x1", &text);
    beta.put_chit(State::Fetch, "f1", &text);
    let config = ConfigFile::for_consumers(&dir, &[&alpha, &beta]);

    let output = run_cli(
        &dir,
        [
            "status".into(),
            "--config".into(),
            config.into_os_string(),
            "--json".into(),
        ],
        TIMEOUT,
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    let status: serde_json::Value =
        serde_json::from_str(&output.stdout).expect("status --json prints JSON");
    assert_eq!(
        status["consumers"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(
        counts(&status, 0),
        ("alpha".to_string(), [2, 0, 3, 1]),
        "{status}"
    );
    assert_eq!(
        counts(&status, 1),
        ("beta".to_string(), [0, 1, 0, 0]),
        "{status}"
    );

    let status = status_json(&dir, &alpha);
    assert_eq!(
        status["consumers"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(counts(&status, 0).1, [2, 0, 3, 1], "{status}");
    assert_eq!(status["consumers"][0]["exists"], true, "{status}");
}

/// Before the first `chitd run`, a configured spool that does not exist
/// yet is reported as such, with zero counts, not an error.
#[test]
fn status_of_a_spool_not_made_yet_says_so() {
    let dir = TestDir::new();
    let made = dir.spool("made");
    let config = dir.write(
        "chitd.toml",
        format!(
            "[[consumer]]\nname = \"made\"\nspool = {:?}\ndeliver = {:?}\n\
             [[consumer]]\nname = \"later\"\nspool = \"later/spool\"\ndeliver = \"later/d\"\n",
            made.spool, made.deliver
        ),
    );
    let status = |json: bool| {
        let mut args: Vec<OsString> =
            vec!["status".into(), "--config".into(), config.clone().into()];
        if json {
            args.push("--json".into());
        }
        let output = run_cli(&dir, args, TIMEOUT);
        assert_eq!(output.code, Some(0), "{output:?}");
        output.stdout
    };
    let json: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(
        counts(&json, 1),
        ("later".to_string(), [0, 0, 0, 0]),
        "{json}"
    );
    assert_eq!(json["consumers"][1]["exists"], false, "{json}");
    assert_eq!(json["consumers"][0]["exists"], true, "{json}");
    let text = status(false);
    assert!(text.contains("later: no spool yet"), "{text}");
    assert!(!dir.join("later").exists(), "status made a directory");
    // Named on the command line, a missing spool is an error (a typo?).
    let typo: Vec<OsString> = vec![
        "status".into(),
        "--spool".into(),
        dir.join("later/spoool").into(),
    ];
    let output = run_cli(&dir, typo, TIMEOUT);
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(
        output.stderr.contains("no spool directory at"),
        "{output:?}"
    );
}

#[test]
fn status_works_while_the_daemon_runs() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    spool.expect_downloaded("f");

    let status = status_json(&dir, &spool);
    assert_eq!(counts(&status, 0).1, [0, 0, 1, 0], "{status}");
}

/// A download under way shows in `status --json` with the daemon's pid,
/// the chit, its digest and path, and bytes done of the total; the text
/// form shows it too. The server sends half the file and stalls, so the
/// download is caught in flight at a known point (it would wait 30 s for
/// more before resuming; the test ends before that).
#[test]
fn status_shows_downloads_in_flight_with_bytes_done_and_total() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(200_000);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::Stall { after: 100_000 });
    let mut daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("sub/f.bin", &[server.url("/f")]));

    let json = wait_until(
        TIMEOUT,
        "the stalled download to show 100,000 bytes done",
        || {
            let json = status_json(&dir, &spool);
            (json["consumers"][0]["in_flight"][0]["done"] == 100_000).then_some(json)
        },
    );
    let in_flight = &json["consumers"][0]["in_flight"];
    assert_eq!(in_flight.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(in_flight[0]["chit"], "f", "{json}");
    assert_eq!(in_flight[0]["digest"], sha256_hex(&content.bytes), "{json}");
    assert_eq!(in_flight[0]["path"], "sub/f.bin", "{json}");
    assert_eq!(in_flight[0]["total"], 200_000, "{json}");
    assert_eq!(json["daemon_pid"], daemon.pid(), "{json}");
    assert_eq!(counts(&json, 0).1, [0, 1, 0, 0], "{json}");
    let text = status_of(&dir, &spool, false);
    assert!(
        text.contains("f  sub/f.bin  100000/200000 bytes (50.0%)"),
        "no progress line in: {text}"
    );
}

/// A chit removed from `fetch/` while its download stalls: the download
/// stops (the server sees its connection closed), its partial stays and
/// leaves `status`; a chit for the same file later resumes from it.
#[test]
fn a_download_whose_chits_were_removed_stops_and_keeps_its_partial() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(200_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Stall { after: 100_000 }, 1);
    let daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("sub/f.bin", &[server.url("/f")]));
    wait_until(TIMEOUT, "100,000 bytes done", || {
        let json = status_json(&dir, &spool);
        (json["consumers"][0]["in_flight"][0]["done"] == 100_000).then_some(())
    });

    std::fs::remove_file(spool.state_dir(State::Fetch).join("f")).expect("remove the chit");
    wait_until(TIMEOUT, "the stalled connection closed", || {
        (server.active() == 0).then_some(())
    });
    let line = daemon.wait_for_log("download stopped: no chit waited for it", 1);
    assert!(line.contains(&sha256_hex(&content.bytes)), "{line}");
    assert!(daemon.log().contains("download stopping"), "logged at info");
    let partial = dir.cache().join("partial-v1").join(format!(
        "{}-{}.part",
        sha256_hex(&content.bytes),
        content.len()
    ));
    assert!(partial.exists(), "{} is kept", partial.display());
    wait_until(TIMEOUT, "no download in flight", || {
        let json = status_json(&dir, &spool);
        (json["consumers"][0]["in_flight"].as_array()?.is_empty()).then_some(())
    });
    assert_eq!(server.gets("/f"), 1, "asked no more");

    spool.drop_chit("again", content.chit("sub/f.bin", &[server.url("/f")]));
    spool.expect_downloaded("again");
    let requests = server.requests_for("/f");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range_start(), Some(100_000), "{requests:?}");
}

/// A state directory a consumer replaced with a symlink (to count someone
/// else's directory, say) is not followed: it counts as empty, and the
/// other states are counted as usual.
#[test]
fn status_does_not_follow_a_symlinked_state_directory() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let text = Content::random(10).chit("x", &[]);
    spool.put_chit(State::Fail, "x1", &text);
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(elsewhere.join(name), "not a chit").unwrap();
    }
    let request = spool.state_dir(State::Request);
    std::fs::remove_dir(&request).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &request).unwrap();

    let status = status_json(&dir, &spool);
    assert_eq!(counts(&status, 0).1, [0, 0, 0, 1], "{status}");
}

#[test]
fn status_lists_failed_chits_with_their_reasons_newest_first() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    // Twelve chits that fail (404), one a second apart in fail/'s times.
    for i in 0..12 {
        let content = Content::random(100 + i);
        let chit = content.chit(&format!("f{i}"), &[server.url(&format!("/gone{i}"))]);
        spool.drop_chit(&format!("c{i:02}"), chit);
    }
    Daemon::run_until_idle(&dir, &spool);
    for i in 0..12u64 {
        let path = spool.spool.join(format!("fail/c{i:02}"));
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i);
        file.set_modified(when).unwrap();
    }

    let text = status_of(&dir, &spool, false);
    assert!(text.contains("failed  c11: every source failed"), "{text}");
    assert!(text.contains("/gone11: HTTP 404"), "{text}");
    assert!(!text.contains("c01:"), "only the newest 10: {text}");
    assert!(text.contains("2 more failed; --all"), "{text}");

    let json = status_json(&dir, &spool);
    let failed = json["consumers"][0]["failed"].as_array().unwrap();
    let names: Vec<&str> = failed.iter().map(|f| f["chit"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "c11", "c10", "c09", "c08", "c07", "c06", "c05", "c04", "c03", "c02"
        ]
    );
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("404"),
        "{json}"
    );

    let args: Vec<OsString> = vec![
        "status".into(),
        "--all".into(),
        "--spool".into(),
        spool.spool.clone().into(),
    ];
    let all = run_cli(&dir, args, TIMEOUT);
    assert!(all.stdout.contains("failed  c00:"), "{all:?}");
    assert!(!all.stdout.contains("more failed"), "{all:?}");
}

/// A download at 4 KB/s ([`Fault::slow_but_steady`]): the daemon samples
/// its rate, and `status` shows it with an ETA and the source's host.
#[test]
fn status_shows_rate_eta_and_source_of_downloads_in_flight() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(400_000);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::slow_but_steady());
    let mut daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));

    let json = wait_until(TIMEOUT, "a rate for the download", || {
        let json = status_json(&dir, &spool);
        (json["consumers"][0]["in_flight"][0]["rate"].as_u64()? > 0).then_some(json)
    });
    let entry = &json["consumers"][0]["in_flight"][0];
    assert_eq!(entry["source"], "127.0.0.1", "{json}");
    // 200 bytes every 50 ms at most; less when the machine is busy.
    let rate = entry["rate"].as_u64().unwrap_or_default();
    assert!(rate <= 8_000, "{json}");
    let text = status_of(&dir, &spool, false);
    let line = text
        .lines()
        .find(|line| line.contains("f.bin"))
        .unwrap_or_else(|| panic!("no line for f.bin in: {text}"));
    assert!(line.contains("/s  ETA "), "{line}");
    assert!(!line.contains("ETA unknown"), "{line}");
    assert!(line.ends_with("  from 127.0.0.1"), "{line}");
    daemon.sigterm();
    assert!(daemon.wait_exit(TIMEOUT).success());
}
