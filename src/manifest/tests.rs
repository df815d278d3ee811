//! Unit tests of `manifest`: both forms, and each error with its line.
use super::*;

const A: &str = "581f4d4e872da74b3941c874215898a7d35802f03732bdccee1d4a7979105d18";
const B: &str = "8b0e2c0fc3d2b0a5a0e6d8a5a3b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2";

fn entries(text: &str) -> Vec<(usize, String, u64, String)> {
    parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .into_iter()
        .map(|entry| {
            let chit = entry.chit;
            (
                entry.line,
                chit.digest.to_hex(),
                chit.size,
                chit.path.as_str().to_owned(),
            )
        })
        .collect()
}

/// Expects `text` to be refused at `line` with a message containing `says`.
fn refused(text: &str, line: usize, says: &str) {
    match parse(text.as_bytes()) {
        Err(ManifestError::Line {
            line: found,
            message,
        }) => {
            assert_eq!(found, line, "{text:?}: {message}");
            assert!(message.contains(says), "{text:?}: {message}");
        }
        other => panic!("{text:?}: expected an error at line {line}, got {other:?}"),
    }
}

#[test]
fn ravenports_lines() {
    let text = format!(
        "# distinfo\n\n{A}  2312354 make-4.4.tar.gz\r\n{}\t7 gnu/x y.tgz\n",
        B.to_uppercase()
    );
    assert_eq!(
        entries(&text),
        [
            (3, A.to_owned(), 2312354, "make-4.4.tar.gz".to_owned()),
            (4, B.to_owned(), 7, "gnu/x y.tgz".to_owned()),
        ]
    );
}

#[test]
fn freebsd_pairs() {
    let text = format!(
        "TIMESTAMP = 1700000000\nSHA256 (gnu/make-4.4.tar.gz) = {A}\n\
         SIZE (gnu/make-4.4.tar.gz) = 2312354\n\
         SIZE (b (1).tgz) = 5\n# a comment\nSHA256 (b (1).tgz) = {B}\n"
    );
    assert_eq!(
        entries(&text),
        [
            (2, A.to_owned(), 2312354, "gnu/make-4.4.tar.gz".to_owned()),
            (4, B.to_owned(), 5, "b (1).tgz".to_owned()),
        ]
    );
}

#[test]
fn ravenports_errors_name_their_line() {
    refused(
        &format!("{A} 1 a\n{A} 2\n"),
        2,
        "expected \"<sha256> <size> <path>\"",
    );
    refused(
        &format!("{A} 1 a\n\nxyz 2 b\n"),
        3,
        "digest must be 64 hex digits",
    );
    refused(
        &format!("{A} -1 a\n"),
        1,
        "size \"-1\" is not a decimal byte count",
    );
    refused(&format!("{A} 1k a\n"), 1, "only the digits 0-9");
    refused(&format!("{A} 1 ../a\n"), 1, "has a \"..\" component");
    refused(&format!("{A} 1 /etc/passwd\n"), 1, "is absolute");
    refused(&format!("{A} #1 a\n"), 1, "the size begins with \"#\"");
    refused(&format!("{A} 1 a\n{B} 2 a\n"), 2, "already on line 1");
    refused(
        &format!("{A} 1 a\nSHA256 (b) = {B}\n"),
        2,
        "digest must be 64 hex digits",
    );
}

#[test]
fn freebsd_errors_name_their_line() {
    let pair = |path: &str, digest: &str, size: &str| {
        format!("SHA256 ({path}) = {digest}\nSIZE ({path}) = {size}\n")
    };
    refused(&pair("a", "nothex", "1"), 1, "digest must be 64 hex digits");
    refused(&pair("a", A, "+1"), 2, "no sign allowed");
    refused(&pair("a/../b", A, "1"), 1, "has a \"..\" component");
    refused(&format!("SHA256 (a) = {A}\n"), 1, "no SIZE line for \"a\"");
    refused(
        "TIMESTAMP = 1\nSIZE (a) = 1\n",
        2,
        "no SHA256 line for \"a\"",
    );
    let twice = format!("{}SIZE (a) = 2\n", pair("a", A, "1"));
    refused(
        &twice,
        3,
        "a second SIZE line for \"a\" (the first is line 2)",
    );
    refused(
        &format!("{}MD5 (a) = x\n", pair("a", A, "1")),
        3,
        "expected",
    );
    refused(&format!("{}{A} 1 b\n", pair("a", A, "1")), 3, "FreeBSD");
}

#[test]
fn empty_and_not_utf8() {
    assert_eq!(parse(b""), Err(ManifestError::Empty));
    assert_eq!(parse(b"# only\n\n  \n"), Err(ManifestError::Empty));
    assert_eq!(parse(b"TIMESTAMP = 1\n"), Err(ManifestError::Empty));
    refused_bytes(b"# ok\n\xff\n", 2);
}

fn refused_bytes(bytes: &[u8], line: usize) {
    match parse(bytes) {
        Err(ManifestError::Line { line: found, .. }) => assert_eq!(found, line),
        other => panic!("expected an error at line {line}, got {other:?}"),
    }
}

#[test]
fn chit_names_are_deterministic_unique_and_plain() {
    let text = format!("{A} 1 gnu/make-4.4.tar.gz\n{A} 1 gnu_make-4.4.tar.gz\n{B} 2 .hidden/é x\n");
    let parsed = parse(text.as_bytes()).expect("valid");
    let names: Vec<String> = parsed.iter().map(Entry::chit_name).collect();
    assert!(names[0].starts_with("gnu_make-4.4.tar.gz."), "{names:?}");
    assert!(names[1].starts_with("gnu_make-4.4.tar.gz."), "{names:?}");
    assert_ne!(names[0], names[1]);
    assert!(names[2].starts_with("hidden___x."), "{names:?}");
    for name in &names {
        let id = name.rsplit('.').next().expect("an id");
        assert_eq!(id.len(), 12, "{name}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
    let again: Vec<String> = parse(text.as_bytes())
        .expect("valid")
        .iter()
        .map(Entry::chit_name)
        .collect();
    assert_eq!(names, again);
    let long = format!("{A} 1 {}\n", "a".repeat(250));
    let name = parse(long.as_bytes()).expect("valid")[0].chit_name();
    assert_eq!(name.len(), 100 + 1 + 12);
}
