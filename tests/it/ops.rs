//! Operating chitd: the environment variables checked at start, and
//! their list in `--help`.

use crate::util::{TIMEOUT, TestDir, run_cli, run_cli_with_env};

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
