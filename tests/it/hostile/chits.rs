//! Attacks through a chit's contents: paths that climb out, oversized and
//! garbage chits, and credentials that must never be shown.

use std::fs;
use std::time::Duration;

use super::{Setup, assert_reason, peak_rss_kib};
use crate::server::Fault;
use crate::util::{Content, Daemon, State, refused_url, try_wait_until};

/// Every way to name a place outside the delivery directory fails at line 3
/// with a reason naming the rule, and creates nothing anywhere.
#[test]
fn dotdot_absolute_nul_and_backslash_paths_fail_and_create_nothing() {
    let setup = Setup::new();
    let outside = setup.outside.root.to_string_lossy().into_owned();
    let content = Content::random(1_000);
    setup.server.add("/f", content.bytes.clone());
    let url = setup.server.url("/f");
    let absolute = format!("{outside}/pwned");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "dotdot",
            "../../outside/pwned".into(),
            &["line 3", "\"..\""],
        ),
        (
            "dotdot-inner",
            "a/../../../outside/pwned".into(),
            &["line 3", "\"..\""],
        ),
        ("dotdot-last", "a/..".into(), &["line 3", "\"..\""]),
        ("dot", "./pwned".into(), &["line 3", "\".\""]),
        ("absolute", absolute.clone(), &["line 3", "absolute"]),
        ("nul", "pwned\0/../../x".into(), &["line 3", "nul"]),
        (
            "backslash",
            "..\\..\\outside\\pwned".into(),
            &["line 3", "backslash"],
        ),
        (
            "newline-in-path",
            "a\rb".into(),
            &["line 3", "control character"],
        ),
        (
            "empty-component",
            "a//pwned".into(),
            &["line 3", "empty component"],
        ),
        (
            "long",
            format!("{}/x", "d/".repeat(600)),
            &["line 3", "limit is 1024"],
        ),
    ];
    for (name, path, _) in &cases {
        let text = format!("{}\n{}\n{path}\n{url}\n", content.sha256, content.len());
        setup.spool.drop_chit(name, text);
    }
    let _daemon = setup.start();

    for (name, _, words) in &cases {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, &["bad chit"]);
        assert_reason(&reason, words);
    }
    assert_eq!(setup.server.gets("/f"), 0, "a bad chit was fetched");
    assert!(!std::path::Path::new(&absolute).exists());
    for leaked in ["pwned", "outside/pwned", "c/pwned", "c/outside"] {
        assert!(!setup.dir.join(leaked).exists(), "{leaked} created");
    }
    assert_eq!(
        fs::read_dir(&setup.spool.deliver).unwrap().count(),
        0,
        "nothing may be delivered"
    );
    setup.still_serving();
}

/// A 10 GiB chit (sparse) is failed by its size without being read: the
/// daemon's peak memory stays small, and `fail/` gets no copy of it: the
/// reason is appended to the chit itself, which stays sparse.
#[test]
fn oversized_chit_is_failed_without_being_read() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const HUGE: u64 = 10 << 30;
    let setup = Setup::new();
    let request = setup.spool.state_dir(State::Request);
    let huge = fs::File::create(request.join(".huge.tmp")).unwrap();
    huge.set_len(HUGE).unwrap();
    let inode = huge.metadata().unwrap().ino();
    fs::rename(request.join(".huge.tmp"), request.join("huge")).unwrap();
    let mut daemon = Daemon::for_spool(&setup.dir, &setup.spool).start();

    // Not `expect_failed`, which reads the whole chit: only its tail.
    let failed = setup.spool.state_dir(State::Fail).join("huge");
    let tail = try_wait_until(Duration::from_secs(30), || {
        let file = fs::File::open(&failed).ok()?;
        let length = file.metadata().unwrap().len();
        assert!(length > HUGE, "fail/huge has {length} bytes: not the chit");
        let mut tail = vec![0; (length - HUGE + 1) as usize];
        file.read_exact_at(&mut tail, HUGE - 1).unwrap();
        Some(String::from_utf8(tail).unwrap())
    })
    .unwrap_or_else(|| panic!("huge not failed: {}", setup.spool.describe()));
    assert_eq!(
        tail,
        "\0\n# error: the chit is 10737418240 bytes; the limit is 65536\n"
    );
    let metadata = fs::metadata(&failed).unwrap();
    assert_eq!(metadata.ino(), inode, "fail/huge was copied");
    assert!(metadata.blocks() < 1024, "fail/huge was filled in");
    let peak = peak_rss_kib(daemon.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB: the chit was read");
    setup.still_serving();
}

/// Just past the limit, with real bytes (a valid head and a long comment
/// with no line end): the chit in `fail/` keeps every original byte, and
/// the reason, naming the size and the limit, is appended on a line of its
/// own (contract §3).
#[test]
fn oversized_chit_keeps_its_bytes_in_fail_with_the_reason_appended() {
    let setup = Setup::new();
    let content = Content::random(100);
    let mut big = content.chit("big.bin", &[]).into_bytes();
    big.push(b'#');
    big.resize(64 * 1024 + 1, b'x');
    setup.spool.drop_chit("big", &big);
    let _daemon = setup.start();

    let reason = setup.spool.expect_failed("big");
    assert_reason(&reason, &["65537 bytes", "limit is 65536"]);
    let failed = fs::read(setup.spool.state_dir(State::Fail).join("big")).unwrap();
    let appended = failed
        .strip_prefix(&big[..])
        .expect("fail/big lost original bytes");
    assert_eq!(
        String::from_utf8_lossy(appended),
        "\n# error: the chit is 65537 bytes; the limit is 65536\n"
    );
    let text = String::from_utf8_lossy(&failed);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("# error:")).count(),
        1
    );
    setup.still_serving();
}

/// Random bytes, NULs, one endless line, and thousands of blank lines: each
/// is failed with a reason, quickly, and the daemon goes on.
#[test]
fn binary_garbage_chits_are_failed_with_a_reason() {
    let setup = Setup::new();
    let random = Content::random(4096).bytes;
    let mut utf8_noise: Vec<u8> = Content::random(8192)
        .bytes
        .iter()
        .map(|b| b % 0x60 + 0x20)
        .collect();
    utf8_noise[100] = b'\n';
    let garbage: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("random", random, &["bad chit"]),
        ("nuls", vec![0; 10_000], &["bad chit", "line 1"]),
        ("one-long-line", vec![b'f'; 60_000], &["bad chit", "line 1"]),
        ("blank-lines", vec![b'\n'; 30_000], &["bad chit", "line 1"]),
        ("printable-noise", utf8_noise, &["bad chit"]),
        (
            "escape-sequences",
            b"\x1b[2J\x1b]0;pwned\x07\n1\nx\n".to_vec(),
            &["bad chit", "line 1"],
        ),
        (
            "utf16",
            "\u{feff}abc"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            &["bad chit"],
        ),
    ];
    for (name, bytes, _) in &garbage {
        setup.spool.drop_chit(name, bytes);
    }
    let _daemon = setup.start();

    for (name, _, words) in &garbage {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, words);
        assert!(
            !reason.chars().any(char::is_control),
            "{name}: the reason carries control characters: {reason:?}"
        );
        assert!(
            reason.len() < 400,
            "{name}: reason of {} bytes",
            reason.len()
        );
    }
    setup.still_serving();
}

/// User names and passwords in URLs (of chits, of mirrors, and of redirect
/// targets), and secrets in their query strings (`access_token=`, a presigned
/// S3 URL's `X-Amz-Signature=`), never appear in an `# error:` line, the
/// daemon's log (at debug level) or its status file.
#[test]
fn credentials_in_urls_never_reach_reasons_or_logs() {
    const SECRET: &str = "hunter2";
    let setup = Setup::new();
    let server = &setup.server;
    let with_credentials =
        |url: &str| url.replacen("http://", &format!("http://user:{SECRET}@"), 1);
    let content = Content::random(3_000);
    server.set_fault(
        "/redirect",
        Fault::RedirectTo(with_credentials(&server.url("/gone"))),
    );
    server.set_fault("/gone", Fault::Gone);
    server.set_fault(
        "/redirect-ftp",
        Fault::RedirectTo(format!("ftp://user:{SECRET}@127.0.0.1/x")),
    );
    server.set_fault(
        "/redirect-unusable",
        Fault::RedirectTo(format!("http://user:{SECRET}@[::1/x")),
    );
    // Secrets in query strings: an OAuth token, a presigned S3 URL.
    let with_token = |url: &str| format!("{url}?access_token={SECRET}&page=2");
    let presigned = |url: &str| {
        format!(
            "{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRET}&X-Amz-Expires=300\
             &X-Amz-Signature={SECRET}"
        )
    };
    server.set_fault(
        "/redirect-token",
        Fault::RedirectTo(with_token(&server.url("/gone"))),
    );
    let urls = [
        with_credentials(&server.url("/redirect-unusable")),
        with_credentials(&server.url("/missing")),
        with_credentials(&refused_url("/refused")),
        with_credentials(&server.url("/redirect")),
        with_credentials(&server.url("/redirect-ftp")),
        with_token(&server.url("/missing-token")),
        presigned(&server.url("/missing-signed")),
        presigned(&server.url("/redirect-token")),
    ];
    setup
        .spool
        .drop_chit("fetched", content.chit("f.bin", &urls));
    let bad_urls = [
        format!("http://user:{SECRET}@host:99999/x"),
        format!("ftp://user:{SECRET}@host/x"),
        format!("gopher://{SECRET}@host/x"),
        with_token("http://host:99999/x"),
        presigned("ftp://host/x"),
    ];
    for (index, url) in bad_urls.iter().enumerate() {
        let text = content.chit("f.bin", std::slice::from_ref(url));
        setup.spool.drop_chit(&format!("bad{index}"), text);
    }
    let mirror = with_credentials(&server.url("/mirror"));
    let daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .mirror(&mirror)
        .give_up_after("1s")
        .start();

    let reason = setup.spool.expect_failed("fetched");
    assert_reason(
        &reason,
        &[
            "***@",
            "410",
            "redirect",
            "access_token=***",
            "X-Amz-Signature=***",
        ],
    );
    for (index, url) in bad_urls.iter().enumerate() {
        let reason = setup.spool.expect_failed(&format!("bad{index}"));
        let redacted = if url.contains('@') {
            "***@"
        } else if url.contains("access_token") {
            "access_token=***"
        } else {
            "X-Amz-Credential=***"
        };
        assert_reason(&reason, &[redacted]);
    }
    setup.still_serving();
    // Let a status round pass, then look everywhere.
    std::thread::sleep(Duration::from_millis(1_200));
    let mut places = vec![("daemon log".to_string(), daemon.log())];
    for state in State::ALL {
        for name in setup.spool.chits_in(state) {
            let text = String::from_utf8_lossy(
                &fs::read(setup.spool.state_dir(state).join(&name)).unwrap(),
            )
            .into_owned();
            let error_lines: String = text.lines().filter(|l| l.starts_with("# error:")).collect();
            places.push((format!("{}/{name}", state.dir_name()), error_lines));
        }
    }
    if let Ok(status) = fs::read_to_string(setup.spool.spool.join(".chitd-status.json")) {
        places.push(("status file".into(), status));
    }
    for (place, text) in &places {
        assert!(
            !text.contains(SECRET),
            "the password shows in the {place}:\n{text}"
        );
    }
    for redacted in ["***@", "access_token=***", "X-Amz-Signature=***"] {
        assert!(
            places[0].1.contains(redacted),
            "the log should show the redacted URLs ({redacted})"
        );
    }
}

/// A chit's name is the consumer's choice and may hold line breaks: they
/// must not let it forge lines in the daemon's log.
#[test]
fn chit_names_with_line_breaks_cannot_forge_log_lines() {
    let setup = Setup::new();
    let name = "evil\n2026-01-01T00:00:00.000000Z  INFO chitd: FORGED\r\nline";
    setup.spool.drop_chit(name, "junk\n");
    let daemon = setup.start();
    let reason = setup.spool.expect_failed(name);
    assert_reason(&reason, &["bad chit"]);
    setup.still_serving();
    let log = daemon.log();
    assert!(
        log.contains("FORGED"),
        "the name should be logged (escaped)"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00.000000Z"),
            "forged log line: {line:?}"
        );
    }
}

/// `request/<raw>/` path of a name that is not UTF-8.
fn not_utf8(dir: &std::path::Path, name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    dir.join(std::ffi::OsStr::from_bytes(name))
}

/// A chit whose *name* is not UTF-8 is failed under that very name, by its
/// raw bytes: a regular file keeps its bytes and gets a reason asking for a
/// UTF-8 name; a symlink is replaced by the reason alone, its target
/// untouched; a dot-named one is left alone. Nothing is fetched, and
/// `--exit-when-idle` exits only once they are in `fail/`.
#[test]
fn chits_with_names_that_are_not_utf8_are_failed_under_their_own_names() {
    let setup = Setup::new();
    let (_content, chit) = setup.serve("/f", 1_000);
    let request = setup.spool.state_dir(State::Request);
    fs::write(request.join(".bad.tmp"), &chit).unwrap();
    fs::rename(request.join(".bad.tmp"), not_utf8(&request, b"bad\xff")).unwrap();
    std::os::unix::fs::symlink(setup.outside.file(), not_utf8(&request, b"link\xfe")).unwrap();
    fs::write(not_utf8(&request, b".hidden\xff"), "being written").unwrap();
    let (content, good) = setup.serve("/g", 1_000);
    setup.spool.drop_chit("good", &good);

    Daemon::for_spool(&setup.dir, &setup.spool)
        .exit_when_idle()
        .start()
        .expect_success(crate::util::TIMEOUT);

    let fail = setup.spool.state_dir(State::Fail);
    let failed = fs::read_to_string(not_utf8(&fail, b"bad\xff"))
        .unwrap_or_else(|e| panic!("bad\\xff not in fail/ ({e}): {}", setup.spool.describe()));
    let reason = failed
        .strip_prefix(&chit)
        .expect("fail/bad\\xff lost its original bytes");
    assert!(reason.starts_with("# error: "), "{failed:?}");
    assert_eq!(reason.lines().count(), 1, "{failed:?}");
    assert_reason(reason, &["not UTF-8", r#""bad\xFF""#, "rename it"]);
    let link = not_utf8(&fail, b"link\xfe");
    assert!(!fs::symlink_metadata(&link).unwrap().is_symlink());
    let text = fs::read_to_string(&link).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert_reason(&text, &["# error:", "not UTF-8", "symbolic link"]);
    assert_eq!(
        fs::read_to_string(not_utf8(&request, b".hidden\xff")).unwrap(),
        "being written"
    );
    assert_eq!(setup.spool.entries_in(State::Request), [".hidden\u{FFFD}"]);
    assert!(setup.spool.entries_in(State::Fetch).is_empty());
    assert_eq!(
        setup.server.gets("/f"),
        0,
        "a chit with a bad name was fetched"
    );
    setup.spool.assert_delivered("good", "good-g.bin", &content);
    setup.outside.assert_untouched();
}

/// A flood of names that are not UTF-8, dropped while the daemon runs:
/// every one reaches `fail/`, with one log line each (not one per scan),
/// and the daemon keeps serving.
#[test]
fn a_flood_of_names_that_are_not_utf8_is_failed_without_flooding_the_log() {
    const NAMES: usize = 1_000;
    let setup = Setup::new();
    let daemon = setup.start();
    let request = setup.spool.state_dir(State::Request);
    let name = |i: usize| [format!("bad-{i}-").as_bytes(), b"\xff"].concat();
    for i in 0..NAMES {
        fs::write(request.join(".tmp"), format!("chit {i}\n")).unwrap();
        fs::rename(request.join(".tmp"), not_utf8(&request, &name(i))).unwrap();
    }
    let fail = setup.spool.state_dir(State::Fail);
    let all_failed = try_wait_until(Duration::from_secs(60), || {
        (fs::read_dir(&fail).unwrap().count() == NAMES).then_some(())
    });
    assert!(all_failed.is_some(), "{}", setup.spool.describe());
    for i in [0, NAMES / 2, NAMES - 1] {
        let text = fs::read_to_string(not_utf8(&fail, &name(i))).unwrap();
        assert!(
            text.starts_with(&format!("chit {i}\n# error: ")),
            "{text:?}"
        );
    }
    setup.still_serving();
    let log = daemon.log();
    let mentions = log
        .lines()
        .filter(|line| line.contains("not UTF-8"))
        .count();
    assert!(
        (NAMES..=NAMES + 10).contains(&mentions),
        "{mentions} log lines about names that are not UTF-8 for {NAMES} chits"
    );
    let lines = log.lines().count();
    assert!(lines < 20 * NAMES, "{lines} log lines for {NAMES} chits");
}

/// A chit whose name is not UTF-8 and that cannot reach `fail/` (a
/// non-empty directory of its name planted there) is kept, and
/// `--exit-when-idle` exits 1 naming it rather than 0 with it left behind.
#[test]
fn a_stuck_chit_whose_name_is_not_utf8_makes_exit_when_idle_fail_naming_it() {
    let setup = Setup::new();
    let blocker = not_utf8(&setup.spool.state_dir(State::Fail), b"odd\xff");
    fs::create_dir(&blocker).unwrap();
    fs::write(blocker.join("inner"), "a consumer's file\n").unwrap();
    let request = setup.spool.state_dir(State::Request);
    fs::write(not_utf8(&request, b"odd\xff"), "not a chit\n").unwrap();

    let mut daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .exit_when_idle()
        .start();
    let status = daemon.wait_exit(crate::util::TIMEOUT);
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(r"stuck: 1 chit(s) (default/odd\xff)"), "{log}");
    let kept = [
        not_utf8(&request, b"odd\xff"),
        not_utf8(&setup.spool.state_dir(State::Fetch), b"odd\xff"),
    ];
    assert!(kept.iter().any(|path| path.is_file()), "the chit was lost");
    assert_eq!(
        fs::read_to_string(blocker.join("inner")).unwrap(),
        "a consumer's file\n"
    );
}
