//! The chit format at the daemon's door: every bad chit ends in `fail/` with
//! a reason naming what is wrong, and never stops the daemon; every valid
//! spelling of a good chit is accepted.

use crate::server::Server;
use crate::util::{Content, Daemon, State, TestDir};

const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Chits that must fail: name, text, and what the reason must mention
/// (any one of the alternatives; empty means only "a reason exists").
fn bad_chits() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>)> {
    let chit = |lines: &[&str]| (lines.join("\n") + "\n").into_bytes();
    let long_component = "x".repeat(256);
    let mut too_big = chit(&[DIGEST, "4", "big.bin"]);
    too_big.extend(std::iter::repeat_n(b'#', 70 * 1024));
    let mut not_utf8 = chit(&[DIGEST, "4"]);
    not_utf8.extend_from_slice(b"caf\xe9.bin\n");
    vec![
        (
            "short-digest",
            chit(&[&DIGEST[1..], "4", "a.bin"]),
            vec!["line 1", &DIGEST[1..]],
        ),
        (
            "non-hex-digest",
            chit(&[&DIGEST.replace('9', "g"), "4", "a.bin"]),
            vec!["line 1", "gf86"],
        ),
        (
            "size-with-plus",
            chit(&[DIGEST, "+4", "a.bin"]),
            vec!["line 2", "+4"],
        ),
        (
            "negative-size",
            chit(&[DIGEST, "-4", "a.bin"]),
            vec!["line 2", "-4"],
        ),
        (
            "size-not-a-number",
            chit(&[DIGEST, "four", "a.bin"]),
            vec!["line 2", "four"],
        ),
        ("no-path", chit(&[DIGEST, "4"]), vec![]),
        ("empty", Vec::new(), vec![]),
        (
            "absolute-path",
            chit(&[DIGEST, "4", "/etc/passwd"]),
            vec!["line 3", "/etc/passwd"],
        ),
        (
            "dotdot-path",
            chit(&[DIGEST, "4", "a/../../escape"]),
            vec!["line 3", ".."],
        ),
        (
            "dot-component",
            chit(&[DIGEST, "4", "a/./b"]),
            vec!["line 3", "a/./b"],
        ),
        (
            "empty-component",
            chit(&[DIGEST, "4", "a//b"]),
            vec!["line 3", "a//b"],
        ),
        (
            "trailing-slash",
            chit(&[DIGEST, "4", "a/b/"]),
            vec!["line 3", "a/b/"],
        ),
        (
            "backslash",
            chit(&[DIGEST, "4", "a\\b"]),
            vec!["line 3", "a\\b"],
        ),
        (
            // chitd's own temporary name: swept at start, so refused.
            "temporary-name",
            chit(&[DIGEST, "4", "sub/.b.tar.gz.chitd-7.1"]),
            vec!["line 3", "temporary files"],
        ),
        (
            "long-component",
            chit(&[DIGEST, "4", &long_component]),
            vec!["line 3"],
        ),
        (
            "ftp-url",
            chit(&[DIGEST, "4", "a.bin", "ftp://127.0.0.1/a.bin"]),
            vec!["line 4", "ftp://"],
        ),
        (
            "file-url",
            chit(&[DIGEST, "4", "a.bin", "file:///etc/passwd"]),
            vec!["line 4", "file://"],
        ),
        (
            "relative-url",
            chit(&[DIGEST, "4", "a.bin", "not a url"]),
            vec!["line 4", "not a url"],
        ),
        ("too-big", too_big, vec![]),
        ("not-utf8", not_utf8, vec![]),
    ]
}

#[test]
fn bad_chits_fail_with_a_reason_and_do_not_stop_the_daemon() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let good = Content::random(1_000);
    server.add("/good", good.bytes.clone());
    let bad = bad_chits();
    for (name, text, _) in &bad {
        spool.drop_chit(name, text);
    }
    spool.drop_chit("good", good.chit("good.bin", &[server.url("/good")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("good", "good.bin", &good);
    let mut problems = Vec::new();
    for (name, _, mentions) in &bad {
        if spool.states_of(name) != [State::Fail] {
            problems.push(format!("{name}: in {:?}", spool.states_of(name)));
            continue;
        }
        let text = std::fs::read(spool.state_dir(State::Fail).join(name)).unwrap();
        let text = String::from_utf8_lossy(&text);
        let reason = crate::util::error_reason(&text).unwrap_or_default();
        let named = mentions.is_empty() || mentions.iter().any(|m| reason.contains(m));
        if reason.is_empty() || !named {
            problems.push(format!(
                "{name}: reason {reason:?} should mention one of {mentions:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "bad chits mishandled:\n{}",
        problems.join("\n")
    );
    assert!(!dir.join("c/escape").exists() && !dir.join("escape").exists());
}

#[test]
fn every_valid_spelling_of_a_chit_is_accepted() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    // {SHA}, {SIZE} and {URL} are filled in per variant.
    let variants = [
        (
            "uppercase",
            "uppercase.bin",
            "{SHA_UPPER}\n{SIZE}\nuppercase.bin\n{URL}\n",
        ),
        (
            "whitespace",
            "sub/ws.bin",
            "  {SHA}\t\n {SIZE} \n\tsub/ws.bin  \n{URL}\n",
        ),
        (
            "crlf",
            "crlf.bin",
            "{SHA}\r\n{SIZE}\r\ncrlf.bin\r\n{URL}\r\n",
        ),
        (
            "comments",
            "comments.bin",
            "{SHA}\n{SIZE}\ncomments.bin\n\n# mirrors\n{URL}\n# end\n",
        ),
        ("no-final-newline", "nl.bin", "{SHA}\n{SIZE}\nnl.bin\n{URL}"),
    ];
    let mut expected = Vec::new();
    for (name, path, template) in variants {
        let content = Content::random(500);
        let url_path = format!("/{name}");
        server.add(&url_path, content.bytes.clone());
        let text = template
            .replace("{SHA_UPPER}", &content.sha256.to_uppercase())
            .replace("{SHA}", &content.sha256)
            .replace("{SIZE}", &content.len().to_string())
            .replace("{URL}", &server.url(&url_path));
        spool.drop_chit(name, text);
        expected.push((name, path, content));
    }

    Daemon::run_until_idle(&dir, &spool);

    for (name, path, content) in &expected {
        if let [State::Fail] = spool.states_of(name)[..] {
            panic!("{name} failed: {}", spool.read_chit(State::Fail, name));
        }
        spool.assert_delivered(name, path, content);
    }
}

#[test]
fn digest_with_a_size_of_zero_is_delivered_as_an_empty_file() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let empty = Content::new(Vec::new());
    let server = Server::start();
    server.add("/empty", Vec::new());
    spool.drop_chit("empty", empty.chit("empty.bin", &[server.url("/empty")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("empty", "empty.bin", &empty);
}

/// Names may use all 255 bytes a file name can have: a chit name, and each
/// component of the delivery path. chitd's temporaries beside them (the
/// delivered file's, the failed chit's) must still fit.
#[test]
fn names_of_255_bytes_are_delivered_and_failed() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(100);
    server.add("/long", content.bytes.clone());
    let good_name = "g".repeat(255);
    let path = format!("sub/{}", "é".repeat(127)); // 254 bytes, 2 per char
    // (No room for a `.name.tmp` beside these: written in place, before
    // the daemon starts.)
    spool.put_chit(
        State::Request,
        &good_name,
        content.chit(&path, &[server.url("/long")]),
    );
    let bad_name = "b".repeat(255);
    spool.put_chit(State::Request, &bad_name, "not a digest\n1\nx.bin\n");

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered(&good_name, &path, &content);
    assert_eq!(spool.states_of(&bad_name), [State::Fail]);
    let failed = spool.read_chit(State::Fail, &bad_name);
    let reason = crate::util::error_reason(&failed).unwrap_or_default();
    assert!(reason.contains("line 1"), "{failed}");
}
