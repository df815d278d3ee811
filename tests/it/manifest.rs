//! `chitd request --manifest` in both distinfo forms, and `request`
//! refusing a spool that does not exist.

use std::ffi::OsString;

use crate::server::Server;
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli};

/// `chitd request --spool S --manifest FILE [extra...]`.
fn manifest_args(spool: &TestSpool, manifest: &std::path::Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "request".into(),
        "--spool".into(),
        spool.spool.clone().into(),
        "--manifest".into(),
        manifest.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

#[test]
fn request_refuses_a_spool_that_does_not_exist() {
    let dir = TestDir::new();
    let missing = dir.join("nowhere/spool");
    let content = Content::random(10);
    let manifest = dir.write("distinfo", format!("{} 10 f.bin\n", content.sha256));
    let size = content.len().to_string();
    let spool_arg = missing.to_string_lossy().into_owned();
    let manifest_arg = manifest.to_string_lossy().into_owned();
    let cases: [Vec<&str>; 2] = [
        vec![
            "request",
            "--spool",
            &spool_arg,
            &content.sha256,
            &size,
            "f.bin",
        ],
        vec![
            "request",
            "--spool",
            &spool_arg,
            "--manifest",
            &manifest_arg,
        ],
    ];
    for args in cases {
        let output = run_cli(&dir, &args, TIMEOUT);
        assert_eq!(output.code, Some(2), "{args:?}: {output:?}");
        assert!(output.stderr.contains("--spool"), "{output:?}");
        assert!(output.stderr.contains(&spool_arg), "{output:?}");
        assert!(output.stderr.contains("no such directory"), "{output:?}");
        assert!(!dir.join("nowhere").exists(), "request made the spool");
    }
}

#[test]
fn manifest_ravenports_form_waits_until_all_are_downloaded() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let first = Content::random(5_000);
    let second = Content::random(700);
    server.add("/m/make-4.4.tar.gz", first.bytes.clone());
    server.add("/m/gnu/sub/x.tgz", second.bytes.clone());
    let manifest = dir.write(
        "distinfo",
        format!(
            "{}  {} make-4.4.tar.gz\n\n{} {} gnu/sub/x.tgz\n",
            first.sha256,
            first.len(),
            second.sha256.to_uppercase(),
            second.len()
        ),
    );
    let _daemon = Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/m"))
        .start();

    let args = manifest_args(&spool, &manifest, &["--wait", "--timeout", "60"]);
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains("2 downloaded, 0 failed"),
        "{output:?}"
    );
    let downloaded = spool.chits_in(State::Downloaded);
    assert_eq!(downloaded.len(), 2, "{}", spool.describe());
    for name in &downloaded {
        assert!(
            output.stdout.contains(&format!("{name}: downloaded")),
            "{output:?}"
        );
    }
    assert_eq!(
        std::fs::read(spool.delivered_path("make-4.4.tar.gz")).unwrap(),
        first.bytes
    );
    assert_eq!(
        std::fs::read(spool.delivered_path("gnu/sub/x.tgz")).unwrap(),
        second.bytes
    );
}

#[test]
fn manifest_freebsd_form_names_the_entry_that_failed() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let there = Content::random(3_000);
    let missing = Content::random(100);
    server.add("/m/xorg/there.tar.xz", there.bytes.clone());
    let manifest = dir.write(
        "distinfo",
        format!(
            "TIMESTAMP = 1700000000\n\
             SHA256 (xorg/there.tar.xz) = {}\nSIZE (xorg/there.tar.xz) = {}\n\
             SHA256 (xorg/missing.tar.xz) = {}\nSIZE (xorg/missing.tar.xz) = {}\n",
            there.sha256,
            there.len(),
            missing.sha256,
            missing.len()
        ),
    );
    let _daemon = Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/m"))
        .start();

    let args = manifest_args(&spool, &manifest, &["--timeout", "60"]);
    let output = run_cli(&dir, args, TIMEOUT);

    assert_eq!(output.code, Some(1), "{output:?}");
    let failure = output
        .stderr
        .lines()
        .find(|line| line.contains("xorg/missing.tar.xz"))
        .unwrap_or_else(|| panic!("no line names the failed entry: {output:?}"));
    assert!(
        failure.contains("failed") && failure.contains("404"),
        "{failure}"
    );
    assert!(
        output.stderr.contains("1 downloaded, 1 failed"),
        "{output:?}"
    );
    assert_eq!(
        spool.chits_in(State::Downloaded).len(),
        1,
        "{}",
        spool.describe()
    );
    assert_eq!(spool.chits_in(State::Fail).len(), 1, "{}", spool.describe());
    assert_eq!(
        std::fs::read(spool.delivered_path("xorg/there.tar.xz")).unwrap(),
        there.bytes
    );
}

#[test]
fn manifest_with_a_malformed_line_exits_2_naming_it_and_writes_no_chit() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let good = Content::random(10);
    let cases = [
        (
            format!(
                "{} 10 a.tgz\n# fine\n{} ten b.tgz\n",
                good.sha256, good.sha256
            ),
            "line 3",
        ),
        (
            format!("{} 10 a.tgz\n{} 10 ../b.tgz\n", good.sha256, good.sha256),
            "line 2",
        ),
        (
            format!(
                "SHA256 (a.tgz) = {}\nSIZE (a.tgz) = 10\nSIZE a.tgz 10\n",
                good.sha256
            ),
            "line 3",
        ),
    ];
    for (text, line) in cases {
        let manifest = dir.write("distinfo", &text);
        let output = run_cli(&dir, manifest_args(&spool, &manifest, &[]), TIMEOUT);
        assert_eq!(output.code, Some(2), "{text:?}: {output:?}");
        assert!(output.stderr.contains(line), "{text:?}: {output:?}");
        assert!(output.stderr.contains("distinfo"), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        assert!(
            spool.entries_in(State::Request).is_empty(),
            "{}",
            spool.describe()
        );
    }
}

#[test]
fn manifest_requested_again_finds_its_pending_chits() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let (a, b) = (Content::random(10), Content::random(20));
    let manifest = dir.write(
        "distinfo",
        format!("{} 10 a.tgz\n{} 20 b/b.tgz\n", a.sha256, b.sha256),
    );

    let first = run_cli(&dir, manifest_args(&spool, &manifest, &[]), TIMEOUT);
    assert_eq!(first.code, Some(0), "{first:?}");
    let names = spool.chits_in(State::Request);
    assert_eq!(names.len(), 2, "{}", spool.describe());
    let printed: Vec<&str> = first.stdout.lines().collect();
    assert!(
        names.iter().all(|name| printed.contains(&name.as_str())),
        "{first:?}"
    );
    assert!(
        names.iter().any(|name| name.starts_with("b_b.tgz.")),
        "{names:?}"
    );
    let text = spool.read_chit(State::Request, &names[0]);
    assert!(text.lines().count() == 3, "{text}");

    // Nothing has served them: a second run writes no second chit.
    let second = run_cli(&dir, manifest_args(&spool, &manifest, &[]), TIMEOUT);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(
        spool.entries_in(State::Request),
        names,
        "{}",
        spool.describe()
    );
}
