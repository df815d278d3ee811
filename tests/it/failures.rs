//! Permanent failures end in `fail/` within seconds with a reason a person
//! understands; transient trouble is retried (and resumed) until it passes or
//! `give_up_after` elapses without progress.

use std::time::{Duration, Instant};

use crate::server::{Fault, Server};
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir, TestSpool, refused_url};

/// Permanent answers must not wait for `give_up_after` (60 s by default).
const FAST: Duration = Duration::from_secs(10);

/// The size of [`fail_with`]'s file.
const FAIL_SIZE: usize = (1 << 20) + 5_000;

/// One consumer, one chit for `/f` on `server` (with `fault`), a daemon
/// with default settings; returns the reason and how long failing took.
/// Over 1 MiB, so the download is early-delivered while it runs (see
/// `chase`): the copy is gone by the time the chit is in `fail/`.
fn fail_with(fault: Fault) -> (String, Duration, Server, String) {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(FAIL_SIZE);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", fault);
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    let started = Instant::now();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let reason = spool.expect_failed("f");
    let elapsed = started.elapsed();
    assert!(
        !spool.delivered_path("f.bin").exists(),
        "nothing may be delivered"
    );
    assert_eq!(
        spool.delivery_temporaries(),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(spool.states_of("f"), [State::Fail]);
    let url = server.url("/f");
    (reason, elapsed, server, url)
}

/// Drop a chit for `content` at `/f`, run until idle, expect delivery.
fn deliver_despite(
    server: &Server,
    content: &Content,
    configure: impl FnOnce(&TestDir, &TestSpool) -> Daemon,
) {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let mut daemon = configure(&dir, &spool);
    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", content);
    daemon.expect_success(TIMEOUT);
}

fn idle_daemon(dir: &TestDir, spool: &TestSpool) -> Daemon {
    Daemon::for_spool(dir, spool).exit_when_idle().start()
}

#[test]
fn not_found_everywhere_fails_fast_naming_every_source() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    server.set_fault("/first/pkg.tar.gz", Fault::NotFound);
    let urls = [
        server.url("/first/pkg.tar.gz"),
        server.url("/second/pkg.tar.gz"),
    ];
    let _daemon = Daemon::for_spool(&dir, &spool)
        .mirror(&server.url("/mirror"))
        .start();
    let started = Instant::now();
    spool.drop_chit("pkg", content.chit("pkg.tar.gz", &urls));

    let reason = spool.expect_failed("pkg");
    let elapsed = started.elapsed();
    assert!(elapsed < FAST, "404 everywhere took {elapsed:?} to fail");
    for url in urls.iter().chain([&server.url("/mirror/pkg.tar.gz")]) {
        assert!(
            reason.contains(url.as_str()),
            "reason does not name {url}: {reason}"
        );
    }
    assert!(reason.contains("404"), "reason: {reason}");
    assert_eq!(server.gets("/mirror/pkg.tar.gz"), 1);
}

#[test]
fn gone_and_forbidden_are_permanent() {
    for (fault, code) in [(Fault::Gone, "410"), (Fault::Forbidden, "403")] {
        let (reason, elapsed, _server, url) = fail_with(fault);
        assert!(elapsed < FAST, "{code} took {elapsed:?} to fail");
        assert!(
            reason.contains(code) && reason.contains(&url),
            "reason: {reason}"
        );
    }
}

#[test]
fn wrong_bytes_fail_with_a_digest_mismatch() {
    let (reason, elapsed, _server, url) = fail_with(Fault::WrongBytes);
    assert!(elapsed < FAST, "took {elapsed:?}");
    let lower = reason.to_lowercase();
    assert!(
        lower.contains("sha256") || lower.contains("digest"),
        "reason: {reason}"
    );
    assert!(reason.contains(&url), "reason: {reason}");
}

/// A download that fails creates nothing in the delivery directory: not
/// the subdirectories of its path, nor a copy made while it downloaded.
#[test]
fn failed_download_into_new_subdirectories_leaves_the_delivery_dir_empty() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(FAIL_SIZE);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::WrongBytes);
    spool.drop_chit("f", content.chit("new/sub/f.bin", &[server.url("/f")]));
    let mut daemon = idle_daemon(&dir, &spool);
    spool.expect_failed("f");
    daemon.expect_success(TIMEOUT);
    let left: Vec<_> = std::fs::read_dir(&spool.deliver)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn wrong_length_fails_naming_the_size() {
    let (reason, elapsed, _server, url) = fail_with(Fault::WrongLength);
    assert!(elapsed < FAST, "took {elapsed:?}");
    // Either in words or as "got 1053592, expected 1053576".
    let lower = reason.to_lowercase();
    let worded = lower.contains("size") || lower.contains("length");
    let numbers =
        reason.contains(&(FAIL_SIZE + 16).to_string()) && reason.contains(&FAIL_SIZE.to_string());
    assert!(worded || numbers, "reason: {reason}");
    assert!(reason.contains(&url), "reason: {reason}");
}

/// A server that answers ranges nobody asked for, or a `Content-Range`
/// that cannot be parsed, will not answer better later: ruled out at once.
#[test]
fn unasked_or_garbled_range_answers_fail_fast() {
    let (reason, elapsed, server, url) = fail_with(Fault::UnaskedRange);
    assert!(elapsed < FAST, "took {elapsed:?}");
    assert!(
        reason.contains(&format!(
            "{url}: server answered a request for the whole object with a range"
        )),
        "reason: {reason}"
    );
    assert_eq!(server.gets("/f"), 2, "{:?}", server.requests());
    let (reason, elapsed, _server, url) = fail_with(Fault::ContentRange("bytes garbage".into()));
    assert!(elapsed < FAST, "took {elapsed:?}");
    assert!(
        reason.contains(&format!("{url}: unusable Content-Range \"bytes garbage\"")),
        "reason: {reason}"
    );
}

/// A `206` to a request without `Range` whose `Content-Range` starts at
/// 0 and gives the file's total is the whole object, read as a `200`
/// would be (its body and sha256 still decide): one request, delivered.
#[test]
fn an_unasked_range_answer_of_the_whole_file_is_a_full_answer() {
    let server = Server::start();
    let content = Content::random(FAIL_SIZE);
    server.add("/f", content.bytes.clone());
    let whole = format!("bytes 0-{}/{FAIL_SIZE}", FAIL_SIZE - 1);
    server.set_fault("/f", Fault::ContentRange(whole));
    deliver_despite(&server, &content, idle_daemon);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].status, 206, "{requests:#?}");
    assert_eq!(requests[0].range, None, "{requests:#?}");
}

/// An answer from where a redirect led names that place too.
#[test]
fn a_failure_after_a_redirect_names_where_it_led() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(4096);
    server.add("/moved", content.bytes.clone());
    server.set_fault("/moved", Fault::WrongBytes);
    server.add("/f", content.bytes.clone());
    server.set_fault(
        "/f",
        Fault::Redirect {
            to: "/moved".into(),
        },
    );
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    Daemon::run_until_idle(&dir, &spool);
    let reason = spool.expect_failed("f");
    assert!(
        reason.contains(&format!("{}: sha256 mismatch", server.url("/f")))
            && reason.contains(&format!("(redirected to {})", server.url("/moved"))),
        "reason: {reason}"
    );
}

#[test]
fn redirect_loop_fails_fast() {
    let (reason, elapsed, _server, _url) = fail_with(Fault::RedirectLoop);
    assert!(elapsed < FAST, "took {elapsed:?}");
    assert!(
        reason.to_lowercase().contains("redirect"),
        "reason: {reason}"
    );
}

#[test]
fn redirect_to_a_file_url_is_refused() {
    let (reason, elapsed, _server, _url) =
        fail_with(Fault::RedirectTo("file:///etc/passwd".into()));
    assert!(
        elapsed < FAST,
        "a forbidden redirect took {elapsed:?} to fail"
    );
    // "HTTP 302" alone does not tell a person where it went or why not.
    assert!(
        reason.to_lowercase().contains("redirect") && reason.contains("file:///etc/passwd"),
        "the reason should name the refused redirect and its target: {reason}"
    );
}

#[test]
fn server_error_forever_fails_after_give_up_after() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::Status(500));
    let _daemon = Daemon::for_spool(&dir, &spool).give_up_after("2s").start();
    let started = Instant::now();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));

    let reason = spool.expect_failed("f");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_500),
        "gave up after only {elapsed:?}"
    );
    assert!(
        reason.contains("500") && reason.contains(&server.url("/f")),
        "reason: {reason}"
    );
    assert!(
        server.gets("/f") >= 2,
        "a 500 must be retried: {} GETs",
        server.gets("/f")
    );
}

#[test]
fn connection_refused_forever_fails_after_give_up_after() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let content = Content::random(1_000);
    let url = refused_url("/f");
    let _daemon = Daemon::for_spool(&dir, &spool).give_up_after("1s").start();
    spool.drop_chit("f", content.chit("f.bin", std::slice::from_ref(&url)));
    let reason = spool.expect_failed("f");
    assert!(reason.contains(&url), "reason: {reason}");
}

#[test]
fn transient_statuses_then_ok_are_delivered() {
    let server = Server::start();
    let content = Content::random(5_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Status(500), 2);
    server.then_fault_times("/f", Fault::Status(503), 1);
    server.then_fault_times("/f", Fault::Status(429), 1);
    deliver_despite(&server, &content, idle_daemon);
    assert_eq!(server.gets("/f"), 5);
}

#[test]
fn truncated_then_ok_is_delivered() {
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Truncate { after: 40_000 }, 1);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn truncated_download_resumes_with_a_range_request() {
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Truncate { after: 40_000 }, 1);
    deliver_despite(&server, &content, idle_daemon);
    let gets: Vec<_> = server.requests_for("/f");
    let last = gets.last().expect("requests");
    assert!(
        last.range_start().is_some_and(|start| start > 0),
        "the retry should resume with Range: {gets:?}"
    );
    assert!(server.bytes_served_for("/f") < 2 * 100_000, "{gets:?}");
}

#[test]
fn reset_then_ok_is_delivered() {
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Reset { after: 30_000 }, 1);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn stalled_download_times_out_and_is_retried() {
    let server = Server::start();
    let content = Content::random(50_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Stall { after: 10_000 }, 1);
    deliver_despite(&server, &content, |dir, spool| {
        Daemon::for_spool(dir, spool)
            .inactivity_timeout_ms(500)
            .exit_when_idle()
            .start()
    });
    assert!(server.gets("/f") >= 2);
}

#[test]
fn server_ignoring_range_after_truncation_still_yields_the_right_bytes() {
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Truncate { after: 40_000 }, 1);
    server.then_fault("/f", Fault::IgnoreRange);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn changed_etag_after_truncation_restarts_from_scratch() {
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.set_fault_times("/f", Fault::Truncate { after: 40_000 }, 1);
    server.then_fault("/f", Fault::ChangeEtag);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn slow_download_that_keeps_progressing_never_gives_up() {
    let server = Server::start();
    let content = Content::random(3_000);
    server.add("/f", content.bytes.clone());
    let drip = Fault::SlowDrip {
        bytes_per_tick: 100,
        tick: Duration::from_millis(100),
    };
    server.set_fault("/f", drip);
    deliver_despite(&server, &content, |dir, spool| {
        Daemon::for_spool(dir, spool)
            .give_up_after("1s")
            .inactivity_timeout_ms(1_000)
            .exit_when_idle()
            .start()
    });
}

#[test]
fn redirect_is_followed() {
    let server = Server::start();
    let content = Content::random(2_000);
    server.add("/real", content.bytes.clone());
    server.set_fault("/f", Fault::Redirect { to: "/real".into() });
    deliver_despite(&server, &content, idle_daemon);
    assert_eq!(server.gets("/real"), 1);
}

#[test]
fn content_encoding_gzip_is_not_decoded() {
    let server = Server::start();
    // Real gzip magic, so a decoding client would try (and fail or change it).
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend_from_slice(&Content::random(2_000).bytes);
    let content = Content::new(bytes);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::Gzip);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn body_longer_than_content_length_yields_the_announced_bytes() {
    let server = Server::start();
    let content = Content::random(5_000);
    server.add("/f", content.bytes.clone());
    server.set_fault("/f", Fault::LongerThanAnnounced);
    deliver_despite(&server, &content, idle_daemon);
}

#[test]
fn permanent_failure_on_one_source_falls_through_to_the_next() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(4_000);
    server.add("/bad", content.bytes.clone());
    server.set_fault("/bad", Fault::WrongBytes);
    server.add("/good", content.bytes.clone());
    let urls = [
        refused_url("/f"),
        server.url("/gone"),
        server.url("/bad"),
        server.url("/good"),
    ];
    server.set_fault("/gone", Fault::Gone);
    spool.drop_chit("f", content.chit("f.bin", &urls));

    Daemon::for_spool(&dir, &spool)
        .give_up_after("20s")
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);

    spool.assert_delivered("f", "f.bin", &content);
}

#[test]
fn failed_chit_keeps_its_lines_and_gets_one_error_line_last() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(1_000);
    let mut chit = content.chit("f.bin", &[server.url("/missing")]);
    chit.push_str("# a consumer's comment\n\n");
    spool.drop_chit("f", &chit);

    Daemon::run_until_idle(&dir, &spool);

    let failed = spool.read_chit(State::Fail, "f");
    let lines: Vec<&str> = failed.lines().collect();
    let original: Vec<&str> = chit.lines().collect();
    assert!(lines.len() > original.len(), "{failed:?}");
    let (last, before) = lines.split_last().unwrap();
    assert_eq!(
        before,
        &original[..],
        "original lines must be kept: {failed:?}"
    );
    assert!(
        last.starts_with("# error: ") && last.len() > 10,
        "{failed:?}"
    );
}

#[test]
fn failed_chit_moved_back_to_request_is_retried() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(2_000);
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    spool.expect_failed("f");

    server.add("/f", content.bytes.clone());
    std::fs::rename(
        spool.state_dir(State::Fail).join("f"),
        spool.state_dir(State::Request).join("f"),
    )
    .unwrap();

    spool.expect_downloaded("f");
    spool.assert_delivered("f", "f.bin", &content);
}
