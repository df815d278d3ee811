//! The command line: `request` (with and without `--wait`) and usage errors
//! with their exit codes.

use std::ffi::OsString;
use std::time::Duration;

use crate::server::Server;
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli};

/// `chitd request --spool S [extra...] SHA SIZE PATH URL...` as arguments.
fn request_args(
    spool: &TestSpool,
    extra: &[&str],
    content: &Content,
    path: &str,
    urls: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "request".into(),
        "--spool".into(),
        spool.spool.clone().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.extend(
        [
            content.sha256.clone(),
            content.len().to_string(),
            path.to_string(),
        ]
        .map(OsString::from),
    );
    args.extend(urls.iter().map(OsString::from));
    args
}

#[test]
fn request_wait_exits_0_once_downloaded() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(3_000);
    server.add("/f", content.bytes.clone());
    let _daemon = Daemon::for_spool(&dir, &spool).start();

    let args = request_args(
        &spool,
        &["--wait", "--timeout", "30"],
        &content,
        "sub/f.bin",
        &[server.url("/f")],
    );
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(
        std::fs::read(spool.delivered_path("sub/f.bin")).unwrap(),
        content.bytes
    );
    assert_eq!(
        spool.chits_in(State::Downloaded).len(),
        1,
        "{}",
        spool.describe()
    );
}

#[test]
fn request_wait_exits_1_on_failure_and_prints_the_reason() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    let _daemon = Daemon::for_spool(&dir, &spool).start();

    let args = request_args(
        &spool,
        &["--wait", "--timeout", "30"],
        &content,
        "f.bin",
        &[server.url("/missing")],
    );
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(output.all_output().contains("404"), "{output:?}");
    assert_eq!(spool.chits_in(State::Fail).len(), 1, "{}", spool.describe());
}

#[test]
fn request_wait_without_a_daemon_times_out_with_124() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let content = Content::random(100);

    let args = request_args(
        &spool,
        &["--wait", "--timeout", "1"],
        &content,
        "f.bin",
        &[],
    );
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(124), "{output:?}");
    assert!(output.elapsed >= Duration::from_millis(900), "{output:?}");
    assert_eq!(
        spool.chits_in(State::Request).len(),
        1,
        "{}",
        spool.describe()
    );
}

#[test]
fn request_usage_errors_exit_2_and_write_nothing() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let content = Content::random(100);
    let mut bad_digest = content.clone();
    bad_digest.sha256.truncate(63);
    let spool_arg = spool.spool.to_string_lossy().into_owned();
    let size = content.len().to_string();
    let a_file = dir.write("a-file", "not a spool");
    let args = |list: &[&str]| -> Vec<OsString> {
        std::iter::once("request")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    };
    // What was run, and what stderr must say (the argument at fault).
    let cases: Vec<(&str, Vec<OsString>, &str)> = vec![
        (
            "bad digest",
            request_args(&spool, &[], &bad_digest, "f.bin", &[]),
            "invalid SHA256: digest must be 64 hex digits",
        ),
        (
            "bad path",
            request_args(&spool, &[], &content, "../f.bin", &[]),
            "invalid PATH: path \"../f.bin\" has a \"..\" component",
        ),
        (
            "path with a line break",
            request_args(&spool, &[], &content, "f\nbin", &[]),
            "invalid PATH: it contains a line break",
        ),
        (
            "ftp url",
            request_args(&spool, &[], &content, "f.bin", &["ftp://h/f".into()]),
            "invalid URL: URL \"ftp://h/f\" has scheme \"ftp\"",
        ),
        (
            "empty url",
            request_args(&spool, &[], &content, "f.bin", &["".into()]),
            "invalid URL: it is empty",
        ),
        (
            "missing path",
            args(&["--spool", &spool_arg, &content.sha256, &size]),
            "",
        ),
        (
            "missing spool",
            args(&[&content.sha256, &size, "f.bin"]),
            "",
        ),
        (
            "bad size",
            args(&["--spool", &spool_arg, &content.sha256, "-1", "f.bin"]),
            "unexpected argument '-1'",
        ),
        (
            "signed size",
            args(&["--spool", &spool_arg, &content.sha256, "+1", "f.bin"]),
            "invalid SIZE: size \"+1\" is not a decimal byte count",
        ),
        (
            "spool that is a file",
            args(&[
                "--spool",
                a_file.to_str().unwrap(),
                &content.sha256,
                &size,
                "f.bin",
            ]),
            "is not a directory",
        ),
        ("unknown subcommand", vec!["frobnicate".into()], ""),
        (
            "run with a bad flag value",
            vec!["run".into(), "--jobs".into(), "many".into()],
            "",
        ),
    ];
    for (what, args, says) in cases {
        let output = run_cli(&dir, &args, TIMEOUT);
        assert_eq!(output.code, Some(2), "{what}: {output:?}");
        assert!(
            !output.stderr.trim().is_empty(),
            "{what}: no message on stderr"
        );
        assert!(output.stderr.contains(says), "{what}: {output:?}");
    }
    for state in State::ALL {
        assert!(spool.entries_in(state).is_empty(), "{}", spool.describe());
    }
}

#[test]
fn request_without_wait_drops_a_chit_that_the_daemon_picks_up() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(2_000);
    server.add("/f", content.bytes.clone());

    let args = request_args(&spool, &[], &content, "f.bin", &[server.url("/f")]);
    let output = run_cli(&dir, args, TIMEOUT);
    assert_eq!(output.code, Some(0), "{output:?}");
    // Written atomically: one visible chit, no leftover temporary.
    assert_eq!(
        spool.entries_in(State::Request).len(),
        1,
        "{}",
        spool.describe()
    );
    let name = spool
        .chits_in(State::Request)
        .pop()
        .expect("a chit in request/");
    let text = spool.read_chit(State::Request, &name);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..3],
        [content.sha256.as_str(), &content.len().to_string(), "f.bin"]
    );
    assert!(lines.contains(&server.url("/f").as_str()), "{text}");

    Daemon::run_until_idle(&dir, &spool);
    spool.assert_delivered(&name, "f.bin", &content);
}
