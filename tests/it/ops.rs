//! Operating chitd: JSON logs, and the environment variables checked at
//! start.

use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, TIMEOUT, TestDir, run_cli, run_cli_with_env};

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
