//! Operating chitd: `retry`, `check`, JSON logs and the environment
//! variables that are checked at start.

use std::ffi::OsString;

use crate::server::Server;
use crate::util::{
    ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli, run_cli_with_env,
};

/// A failed chit as chitd leaves it: lines, then the reason.
fn failed_chit(content: &Content, path: &str) -> String {
    content.chit(path, &[]) + "# error: every source failed: HTTP 404 Not Found\n"
}

fn retry_args(spool: &TestSpool, rest: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        vec!["retry".into(), "--spool".into(), spool.spool.clone().into()];
    args.extend(rest.iter().map(OsString::from));
    args
}

#[test]
fn retry_moves_named_chits_then_all_back_to_request() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let content = Content::random(10);
    for name in ["a", "b", "c"] {
        spool.put_chit(State::Fail, name, failed_chit(&content, name));
    }
    spool.put_chit(State::Fail, ".a-temporary", "not a chit");

    let output = run_cli(&dir, retry_args(&spool, &["b"]), TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "retried b\n");
    assert_eq!(spool.states_of("b"), [State::Request]);
    // One rename: the chit keeps its lines, the old reason a comment.
    assert_eq!(
        spool.read_chit(State::Request, "b"),
        failed_chit(&content, "b")
    );

    let output = run_cli(&dir, retry_args(&spool, &["--all"]), TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "retried a\nretried c\n");
    assert_eq!(spool.chits_in(State::Request), ["a", "b", "c"]);
    assert_eq!(spool.entries_in(State::Fail), [".a-temporary"]);

    // The daemon serves them again (from the mirror this time).
    let server = Server::start();
    for name in ["a", "b", "c"] {
        server.add(&format!("/m/{name}"), content.bytes.clone());
    }
    Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/m"))
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    assert_eq!(spool.chits_in(State::Downloaded), ["a", "b", "c"]);
}

#[test]
fn retry_names_a_chit_not_in_fail_and_never_replaces_one_in_request() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let content = Content::random(10);
    spool.put_chit(State::Fail, "ok", failed_chit(&content, "ok"));
    spool.put_chit(State::Fail, "twin", failed_chit(&content, "old"));
    spool.put_chit(State::Request, "twin", content.chit("new", &[]));
    spool.put_chit(State::Fail, "busy", failed_chit(&content, "busy"));
    spool.put_chit(State::Fetch, "busy", content.chit("busy", &[]));

    let args = retry_args(&spool, &["nosuch", "twin", "ok", "busy"]);
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(1), "{output:?}");
    assert_eq!(output.stdout, "retried ok\n", "the others are retried");
    assert!(output.stderr.contains("nosuch: not in fail/"), "{output:?}");
    assert!(
        output
            .stderr
            .contains("twin: a chit of this name is already in request/"),
        "{output:?}"
    );
    assert!(
        output
            .stderr
            .contains("busy: a chit of this name is already in fetch/"),
        "{output:?}"
    );
    assert_eq!(spool.states_of("ok"), [State::Request]);
    assert_eq!(
        spool.read_chit(State::Request, "twin"),
        content.chit("new", &[])
    );
    assert_eq!(
        spool.read_chit(State::Fail, "twin"),
        failed_chit(&content, "old")
    );
    assert_eq!(spool.states_of("busy"), [State::Fetch, State::Fail]);
}

#[test]
fn retry_usage_errors_exit_2() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let missing = dir.join("none");
    let cases: Vec<Vec<OsString>> = vec![
        retry_args(&spool, &[]),
        retry_args(&spool, &["--all", "x"]),
        retry_args(&spool, &["../request/x"]),
        vec![
            "retry".into(),
            "--spool".into(),
            missing.clone().into(),
            "--all".into(),
        ],
    ];
    for args in cases {
        let output = run_cli(&dir, &args, TIMEOUT);
        assert_eq!(output.code, Some(2), "{args:?}: {output:?}");
        assert!(!output.stderr.is_empty(), "{output:?}");
    }
    assert!(!missing.exists());
}

#[test]
fn check_prints_the_layout_and_creates_nothing() {
    let dir = TestDir::new();
    let layout = dir.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let text = "cache = \"cache\"\nlog_format = \"json\"\n\n[[consumer]]\nname = \"b1\"\n\
                spool = \"b1/spool\"\ndeliver = \"b1/distfiles\"\n";
    let config = dir.write("layout/chitd.toml", text);

    let output = run_cli(
        &dir,
        [OsString::from("check"), "--config".into(), config.into()],
        TIMEOUT,
    );

    assert_eq!(output.code, Some(0), "{output:?}");
    for part in [
        "layout/cache",
        "consumer \"b1\"",
        "layout/b1/spool",
        "layout/b1/distfiles",
        "json",
    ] {
        assert!(output.stdout.contains(part), "{part}: {output:?}");
    }
    let left: Vec<_> = std::fs::read_dir(&layout)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["chitd.toml"]);

    // No flags: the default layout in the current directory, not made.
    let output = run_cli(&dir, ["check"], TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("default layout"), "{output:?}");
    for made_by_run in ["cache", "spool", "distfiles"] {
        assert!(!dir.join(made_by_run).exists(), "check made {made_by_run}");
    }
}

#[test]
fn check_refuses_what_run_refuses_with_exit_2() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let mut text = ConfigFile {
        cache: Some(spool.spool.join("cache")),
        consumers: vec![spool.clone()],
        ..ConfigFile::default()
    }
    .render();
    let overlapping = dir.write("overlap.toml", &text);
    text.insert_str(0, "jobs = 2\ncolour = \"blue\"\n");
    let unknown_key = dir.write("unknown.toml", &text);

    for (file, says) in [
        (&overlapping, "contains the cache"),
        (&unknown_key, "line 2"),
    ] {
        let args = [OsString::from("check"), "--config".into(), file.into()];
        let output = run_cli(&dir, &args, TIMEOUT);
        assert_eq!(output.code, Some(2), "{output:?}");
        assert!(output.stderr.contains(says), "{says}: {output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        // What `run` says about the same file.
        let mut run_args = args.clone();
        run_args[0] = "run".into();
        let run = run_cli(&dir, &run_args, TIMEOUT);
        assert_eq!((run.code, &run.stderr), (Some(2), &output.stderr));
    }
    assert!(!spool.spool.join("cache").exists());
}

#[test]
fn json_log_lines_are_objects_and_the_finished_download_has_size_duration_rate() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    // The format from the flag; the file's log_format is the same switch.
    let config = dir.write(
        "json.toml",
        format!("log_format = \"json\"\n{}", ConfigFile::default().render()),
    );
    for how in [
        vec!["--log-format", "json"],
        vec!["--config", config.to_str().unwrap()],
    ] {
        // A new file for each run.
        let content = Content::random(200_000);
        let name = how[0].trim_start_matches('-');
        server.add(&format!("/{name}"), content.bytes.clone());
        let url = server.url(&format!("/{name}"));
        spool.drop_chit(name, content.chit(name, &[url]));
        let mut daemon = Daemon::for_spool(&dir, &spool)
            .args(&how)
            .exit_when_idle()
            .start();
        daemon.expect_success(TIMEOUT);
        let log = daemon.log();
        let events: Vec<serde_json::Value> = log
            .lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(event @ serde_json::Value::Object(_)) => event,
                other => panic!("{how:?}: not a JSON object: {line:?} ({other:?})"),
            })
            .collect();
        assert!(events.len() > 2, "{log}");
        assert!(
            events
                .iter()
                .all(|e| e["level"].is_string() && e["fields"].is_object()),
            "{log}"
        );
        let finished = events
            .iter()
            .map(|event| &event["fields"])
            .find(|fields| fields["message"] == "download finished, verified and cached")
            .unwrap_or_else(|| panic!("no finished download in {log}"));
        assert_eq!(finished["size"], content.len() as u64, "{finished}");
        assert!(finished["duration_ms"].is_u64(), "{finished}");
        let rate = finished["rate"]
            .as_u64()
            .unwrap_or_else(|| panic!("{finished}"));
        assert!(rate > 0, "{finished}");
    }
}

#[test]
fn bad_environment_values_exit_2_naming_the_variable() {
    let dir = TestDir::new();
    let spool = dir.join("s");
    let deliver = dir.join("d");
    let cases = [
        ("CHITD_RETRY_DELAY_MS", "fast"),
        ("CHITD_INACTIVITY_TIMEOUT_MS", "0"),
        ("CHITD_RESCAN_INTERVAL_MS", "2s"),
        ("RUST_LOG", "chitd=loud"),
    ];
    for (name, value) in cases {
        let args = [
            "run",
            "--spool",
            spool.to_str().unwrap(),
            "--deliver",
            deliver.to_str().unwrap(),
            "--exit-when-idle",
        ];
        let output = run_cli_with_env(&dir, args, &[(name, value)], TIMEOUT);
        assert_eq!(output.code, Some(2), "{name}={value}: {output:?}");
        assert!(
            output.stderr.contains(&format!("{name}=\"{value}\"")),
            "{output:?}"
        );
        let status = run_cli_with_env(&dir, ["status"], &[(name, value)], TIMEOUT);
        assert_eq!(status.code, Some(2), "{name}={value}: {status:?}");
    }
    assert!(!spool.exists() && !deliver.exists(), "nothing is made");
    // Good values are taken.
    let good = [("CHITD_RESCAN_INTERVAL_MS", "50"), ("RUST_LOG", "")];
    let args = [
        "run",
        "--spool",
        spool.to_str().unwrap(),
        "--deliver",
        deliver.to_str().unwrap(),
    ];
    let output = run_cli_with_env(
        &dir,
        args.iter().chain(&["--exit-when-idle"]),
        &good,
        TIMEOUT,
    );
    assert_eq!(output.code, Some(0), "{output:?}");
}

#[test]
fn help_lists_the_environment_variables() {
    let dir = TestDir::new();
    let output = run_cli(&dir, ["--help"], TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    for name in [
        "RUST_LOG",
        "CHITD_RETRY_DELAY_MS",
        "CHITD_INACTIVITY_TIMEOUT_MS",
        "CHITD_RESCAN_INTERVAL_MS",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
    ] {
        assert!(output.stdout.contains(name), "{name}: {output:?}");
    }
}
