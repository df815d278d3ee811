//! `chitd request` refusing a spool that does not exist.

use crate::util::{Content, TIMEOUT, TestDir, run_cli};

#[test]
fn request_refuses_a_spool_that_does_not_exist() {
    let dir = TestDir::new();
    let missing = dir.join("nowhere/spool");
    let content = Content::random(10);
    let size = content.len().to_string();
    let spool_arg = missing.to_string_lossy().into_owned();
    let args = [
        "request",
        "--spool",
        &spool_arg,
        &content.sha256,
        &size,
        "f.bin",
    ];
    let output = run_cli(&dir, args, TIMEOUT);
    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(output.stderr.contains("--spool"), "{output:?}");
    assert!(output.stderr.contains(&spool_arg), "{output:?}");
    assert!(output.stderr.contains("no such directory"), "{output:?}");
    assert!(!dir.join("nowhere").exists(), "request made the spool");
}
