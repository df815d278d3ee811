//! The consumer examples in `scripts/examples/` (shell and Python) against
//! the real daemon, so they cannot rot.

use std::path::PathBuf;
use std::process::Command;

use crate::server::{Fault, Server};
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/examples")
        .join(name)
}

/// Run an example consumer while a daemon serves the spool; returns
/// (exit code, stdout, stderr).
fn run_example(program: &str, args: &[String]) -> (i32, String, String) {
    let output = Command::new(program)
        .args(args)
        .env("TIMEOUT", TIMEOUT.as_secs().to_string())
        .output()
        .expect("run the example");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn check_consumer(interpreter: &str, script: &str) {
    let dir = TestDir::new();
    let spool = dir.spool("spool");
    let server = Server::start();
    let good = Content::random(10_000);
    server.add("/good.tar.gz", good.bytes.clone());
    server.add("/missing", b"x".to_vec());
    server.set_fault("/missing", Fault::NotFound);
    let _daemon = Daemon::for_spool(&dir, &spool).start();

    let script = example(script).display().to_string();
    let args = |content: &Content, path: &str, url: String| {
        vec![
            script.clone(),
            spool.spool.display().to_string(),
            content.sha256.clone(),
            content.len().to_string(),
            path.to_owned(),
            url,
        ]
    };
    let (code, stdout, stderr) = run_example(
        interpreter,
        &args(&good, "sub/good.tar.gz", server.url("/good.tar.gz")),
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("sub/good.tar.gz"), "{stdout}");
    let delivered = std::fs::read(spool.delivered_path("sub/good.tar.gz")).expect("delivered file");
    assert!(delivered == good.bytes, "delivered bytes differ");
    assert_eq!(spool.chits_in(State::Downloaded).len(), 1);
    assert!(spool.chits_in(State::Request).is_empty());

    let missing = Content::random(100);
    let (code, stdout, stderr) = run_example(
        interpreter,
        &args(&missing, "missing", server.url("/missing")),
    );
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("404"),
        "the reason reaches the consumer: {stderr}"
    );
}

#[test]
fn shell_consumer_example() {
    check_consumer("sh", "request.sh");
}

#[test]
fn python_consumer_example() {
    check_consumer("python3", "request.py");
}
