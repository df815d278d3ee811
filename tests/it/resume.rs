//! Crash-safe, resumable downloads: resuming within a run after a truncated,
//! reset or stalled body; servers that ignore `Range` or replace the object;
//! progress records that a SIGKILL left valid, or that were torn or edited
//! since; SIGTERM; orphaned partials; and what start-up recovers in delivery
//! directories and spools (temporaries, a chit name re-used by a consumer).
//!
//! Progress records are crafted the honest way: run a download against a
//! server that stalls (each stall ends in an inactivity timeout, which
//! checkpoints) or drips (the 2 s checkpoint timer), wait for the record to
//! appear, SIGKILL the daemon, then read or edit what it left.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::server::{Fault, Request, Server};
use crate::util::{
    Content, Daemon, DaemonBuilder, State, TIMEOUT, TestDir, TestSpool, sha256_hex, wait_until,
};

const MIB: usize = 1 << 20;
/// A download that breaks is resumed, so the server sends little more than
/// the object: less than this many times its size.
const MAX_RATIO: f64 = 1.25;

/// One consumer wanting `/f` (or the sources of
/// [`Case::with_sources`]) as `f.bin` (chit `f`, already dropped).
struct Case {
    dir: TestDir,
    spool: TestSpool,
    server: Server,
    content: Content,
    /// The paths the chit names, in order.
    paths: Vec<&'static str>,
}

impl Case {
    fn new(size: usize) -> Case {
        Case::with_sources(size, &["/f"])
    }

    /// The chit names each of `paths` on the server, in order, each
    /// serving the content.
    fn with_sources(size: usize, paths: &[&'static str]) -> Case {
        let dir = TestDir::new();
        let spool = dir.spool("c");
        let server = Server::start();
        let content = Content::random(size);
        for path in paths {
            server.add(path, content.bytes.clone());
        }
        let urls: Vec<String> = paths.iter().map(|path| server.url(path)).collect();
        spool.drop_chit("f", content.chit("f.bin", &urls));
        Case {
            dir,
            spool,
            server,
            content,
            paths: paths.to_vec(),
        }
    }

    /// The requests for the chit's sources, in the order they came.
    fn requests(&self) -> Vec<Request> {
        let mut requests = self.server.requests();
        requests.retain(|r| self.paths.contains(&r.path.as_str()));
        requests
    }

    fn partial(&self, extension: &str) -> PathBuf {
        let name = format!("{}-{}.{extension}", self.content.sha256, self.content.len());
        self.dir.cache().join("partial-v1").join(name)
    }

    fn record_path(&self) -> PathBuf {
        self.partial("progress")
    }

    /// Run a daemon until idle and expect the file delivered, its partial
    /// gone. Returns the requests for its sources that this run made.
    fn run_to_delivery(&self, inactivity_ms: u64) -> Vec<Request> {
        self.run_to_delivery_in(Daemon::for_spool(&self.dir, &self.spool), inactivity_ms)
    }

    /// [`Case::run_to_delivery`] as after a reboot: only the bytes a
    /// progress record covers count (see `partial::boot`).
    fn run_to_delivery_after_reboot(&self) -> Vec<Request> {
        let daemon = Daemon::for_spool(&self.dir, &self.spool).env("CHITD_BOOT_ID", "rebooted");
        self.run_to_delivery_in(daemon, 30_000)
    }

    fn run_to_delivery_in(&self, daemon: DaemonBuilder, inactivity_ms: u64) -> Vec<Request> {
        let before = self.requests().len();
        daemon
            .inactivity_timeout_ms(inactivity_ms)
            .exit_when_idle()
            .start()
            .expect_success(TIMEOUT);
        self.spool.assert_delivered("f", "f.bin", &self.content);
        for leftover in [self.record_path(), self.partial("part")] {
            assert!(!leftover.exists(), "{} left", leftover.display());
        }
        self.requests().split_off(before)
    }

    /// Body bytes served for `/f` over the object's size: below
    /// [`MAX_RATIO`].
    fn assert_little_waste(&self) {
        let served = self.server.bytes_served_for("/f");
        let ratio = served as f64 / self.content.len() as f64;
        eprintln!(
            "bytes served / size = {served} / {} = {ratio:.3}",
            self.content.len()
        );
        assert!(
            ratio < MAX_RATIO,
            "served {ratio:.3} × the size: {:#?}",
            self.server.requests_for("/f")
        );
    }

    /// Download under `fault` until a progress record with an offset > 0
    /// exists, then SIGKILL the daemon. The fault is cleared and the chit
    /// must still be in `fetch/`. Returns the record the crash left.
    fn kill_after_checkpoint(&self, fault: Fault) -> String {
        self.server.set_fault("/f", fault);
        let mut daemon = Daemon::for_spool(&self.dir, &self.spool)
            .inactivity_timeout_ms(STALL_MS)
            .start();
        let record = self.record_path();
        wait_until(TIMEOUT, "a progress record past offset 0", || {
            let text = fs::read_to_string(&record).ok()?;
            (offset_of(&text) > 0).then_some(())
        });
        daemon.kill();
        self.server.clear_fault("/f");
        assert_eq!(self.spool.states_of("f"), [State::Fetch]);
        fs::read_to_string(&record).expect("progress record after the kill")
    }
}

/// The inactivity timeout that cuts a [`stall`] short.
const STALL_MS: u64 = 500;

/// 256 KiB per request, then silence (cut by the inactivity timeout).
fn stall() -> Fault {
    Fault::Stall { after: 256 << 10 }
}

/// The value of `key` in a progress record (`offset`, `etag`, ...).
fn field(record: &str, key: &str) -> Option<String> {
    record
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .map(str::to_owned)
}

fn offset_of(record: &str) -> u64 {
    field(record, "offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Each request as (`Range`, `If-Range`, status), for comparing whole
/// exchanges at once.
fn exchanges(requests: &[Request]) -> Vec<(Option<&str>, Option<&str>, u16)> {
    let each = requests.iter();
    each.map(|r| (r.range.as_deref(), r.if_range.as_deref(), r.status))
        .collect()
}

/// Set `key` to `value` and give the record a valid checksum again, as a
/// forger (or a bug) would.
fn forge(record: &str, key: &str, value: &str) -> String {
    let mut body = String::new();
    for line in record.lines().filter(|l| !l.starts_with("check ")) {
        match line.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
            Some(_) => body += &format!("{key} {value}\n"),
            None => body += &format!("{line}\n"),
        }
    }
    format!("{body}check {}\n", sha256_hex(body.as_bytes()))
}

// ---- within one run ----

#[test]
fn truncated_body_is_resumed_with_range() {
    let case = Case::new(MIB);
    case.server
        .set_fault_times("/f", Fault::Truncate { after: 200 << 10 }, 1);
    let requests = case.run_to_delivery(30_000);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=204800-"));
    assert_eq!(requests[1].status, 206);
    case.assert_little_waste();
}

/// Small downloads are held in memory, not in a `.part`: a break still
/// resumes from the bytes received, and no partial file ever appears.
#[test]
fn small_truncated_body_is_resumed_with_range_from_memory() {
    let case = Case::new(60 << 10);
    case.server
        .set_fault_times("/f", Fault::Truncate { after: 20 << 10 }, 1);
    let requests = case.run_to_delivery(30_000);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=20480-"));
    assert_eq!(requests[1].status, 206);
    case.assert_little_waste();
    assert_eq!(
        fs::read_dir(case.dir.cache().join("partial-v1"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn reset_body_is_resumed_with_range() {
    let case = Case::new(MIB);
    case.server
        .set_fault_times("/f", Fault::Reset { after: 200 << 10 }, 1);
    let requests = case.run_to_delivery(30_000);
    assert!(
        requests[1..]
            .iter()
            .any(|r| r.range_start().is_some_and(|s| s > 0) && r.status == 206),
        "no ranged request after the reset: {requests:#?}"
    );
    case.assert_little_waste();
}

#[test]
fn stalled_body_times_out_and_is_resumed_with_range() {
    let case = Case::new(MIB);
    case.server.set_fault_times("/f", stall(), 1);
    let started = Instant::now();
    let requests = case.run_to_delivery(STALL_MS);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].range.as_deref(), Some("bytes=262144-"));
    assert!(started.elapsed() < Duration::from_secs(15));
    case.assert_little_waste();
}

#[test]
fn server_ignoring_range_after_a_truncation_restarts_cleanly() {
    let case = Case::new(MIB);
    case.server
        .set_fault_times("/f", Fault::Truncate { after: 200 << 10 }, 1);
    case.server.then_fault("/f", Fault::IgnoreRange);
    let requests = case.run_to_delivery(30_000);
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests[1].range.is_some(), "{requests:#?}");
    assert_eq!(requests[1].status, 200);
    assert_eq!(
        case.server.bytes_served_for("/f"),
        (200 << 10) + MIB as u64,
        "the prefix is fetched once more, nothing else"
    );
}

/// Serve `old` at `/f` until 256 KiB of it went out and stalled, then
/// replace it with `new` (same size): the resume's `If-Range` no longer
/// matches and the server answers 200 with the new object. Returns the
/// running daemon and the old object's ETag.
fn replace_mid_download(case: &Case, old: &Content, new: &Content) -> (Daemon, String) {
    case.server.add("/f", old.bytes.clone());
    case.server.set_fault("/f", stall());
    let daemon = Daemon::for_spool(&case.dir, &case.spool)
        .inactivity_timeout_ms(STALL_MS)
        .exit_when_idle()
        .start();
    wait_until(TIMEOUT, "256 KiB of the old object sent", || {
        (case.server.bytes_served_for("/f") >= 256 << 10).then_some(())
    });
    let old_etag = case.server.etag("/f").expect("etag");
    case.server.add("/f", new.bytes.clone());
    case.server.clear_fault("/f");
    (daemon, old_etag)
}

/// Assert that a request for `/f` carried `old_etag` as `If-Range` and was
/// answered 200 (the whole new object, from 0).
fn assert_restarted_on_new_etag(case: &Case, old_etag: &str) {
    let requests = case.server.requests_for("/f");
    assert!(
        requests
            .iter()
            .any(|r| r.if_range.as_deref() == Some(old_etag) && r.status == 200),
        "no If-Range {old_etag} answered 200: {requests:#?}"
    );
}

#[test]
fn replaced_object_is_fetched_from_zero_and_delivered_when_it_matches() {
    let case = Case::new(MIB);
    let old = Content::random(MIB);
    let (mut daemon, old_etag) = replace_mid_download(&case, &old, &case.content);
    daemon.expect_success(TIMEOUT);
    case.spool.assert_delivered("f", "f.bin", &case.content);
    assert_restarted_on_new_etag(&case, &old_etag);
    // The copy made while it downloaded followed the restart (see `chase`).
    let log = daemon.log();
    assert!(
        log.contains("delivered the copy made while it downloaded"),
        "{log}"
    );
}

#[test]
fn replaced_object_that_does_not_match_fails_naming_the_digest_mismatch() {
    let case = Case::new(MIB);
    let new = Content::random(MIB);
    let started = Instant::now();
    let (mut daemon, old_etag) = replace_mid_download(&case, &case.content, &new);
    daemon.expect_success(TIMEOUT);
    let reason = case.spool.expect_failed("f");
    assert!(
        reason.contains("sha256 mismatch") && reason.contains(&new.sha256),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "failed slowly");
    assert_restarted_on_new_etag(&case, &old_etag);
    assert!(!case.spool.delivered_path("f.bin").exists());
    assert_eq!(case.spool.delivery_temporaries(), Vec::<PathBuf>::new());
}

/// Bytes of two responses that do not make the file may be the resume's
/// fault (here a stale prefix, cut short, and the right rest), not the
/// answering source's: the partial is discarded and fetched once more
/// from 0 before the source is ruled out.
#[test]
fn digest_mismatch_after_a_resume_within_the_run_fetches_once_more_from_zero() {
    let case = Case::new(MIB);
    let stale = Fault::stale(Fault::Truncate { after: 256 << 10 });
    case.server.set_fault_times("/f", stale, 1);
    let etag = case.server.etag("/f");
    let requests = case.run_to_delivery(30_000);
    assert_eq!(
        exchanges(&requests),
        [
            (None, None, 200),
            (Some("bytes=262144-"), etag.as_deref(), 206),
            (None, None, 200),
        ],
        "{requests:#?}"
    );
}

/// The same after a switch to another source: the source that completed
/// the file is not ruled out for a prefix another source sent; the
/// download goes back to its first source, from 0 (ruled out here: 404),
/// and gets the file from the next.
#[test]
fn digest_mismatch_after_a_switch_to_another_source_fetches_once_more_from_zero() {
    let case = Case::with_sources(MIB, &["/a", "/b"]);
    let stale = Fault::stale(Fault::Truncate { after: 256 << 10 });
    case.server.set_fault_times("/a", stale, 1);
    case.server.then_fault("/a", Fault::NotFound);
    let requests = case.run_to_delivery(30_000);
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/a", "/b", "/b"], "{requests:#?}");
    let etag = case.server.etag("/a");
    assert_eq!(
        exchanges(&case.server.requests_for("/b")),
        [
            (Some("bytes=262144-"), etag.as_deref(), 206),
            (None, None, 200)
        ],
        "{requests:#?}"
    );
}

/// A switch to another source resumes where that source has the object
/// the bytes so far are of: the range is asked for with the validator
/// they came with (`If-Range`), and that source's `206` is appended.
#[test]
fn another_source_with_the_same_validator_is_resumed_with_if_range() {
    let case = Case::with_sources(MIB, &["/a", "/b"]);
    case.server
        .set_fault_times("/a", Fault::Truncate { after: 256 << 10 }, 1);
    case.server.then_fault("/a", Fault::NotFound);
    let etag = case.server.etag("/a");
    assert_eq!(etag, case.server.etag("/b"), "one object, one ETag");
    case.run_to_delivery(30_000);
    assert_eq!(
        exchanges(&case.server.requests_for("/b")),
        [(Some("bytes=262144-"), etag.as_deref(), 206)]
    );
    let rest = (MIB - (256 << 10)) as u64;
    assert_eq!(case.server.bytes_served_for("/b"), rest, "only the rest");
}

/// ... else it starts over: a source whose object has another validator
/// answers the `If-Range` with a `200`, and the download goes on from 0
/// on that body.
#[test]
fn another_source_with_another_validator_starts_over_on_its_answer() {
    let case = Case::with_sources(MIB, &["/a", "/b"]);
    case.server
        .set_fault_times("/a", Fault::Truncate { after: 256 << 10 }, 1);
    case.server.then_fault("/a", Fault::NotFound);
    let etag = case.server.etag("/a");
    case.server.set_fault_times("/b", Fault::ChangeEtag, 1);
    case.run_to_delivery(30_000);
    assert_eq!(
        exchanges(&case.server.requests_for("/b")),
        [(Some("bytes=262144-"), etag.as_deref(), 200)]
    );
    assert_ne!(case.server.etag("/b"), etag);
    assert_eq!(case.server.bytes_served_for("/b"), MIB as u64);
}

/// Once more from 0 means from the first source again: the one that sent
/// the prefix may have been the one at fault (here it failed transiently
/// in between, and serves the right bytes again).
#[test]
fn the_fetch_from_zero_after_a_digest_mismatch_starts_at_the_first_source() {
    let case = Case::with_sources(MIB, &["/a", "/b"]);
    let stale = Fault::stale(Fault::Truncate { after: 256 << 10 });
    case.server.set_fault_times("/a", stale, 1);
    case.server.then_fault_times("/a", Fault::Status(503), 1);
    let requests = case.run_to_delivery(30_000);
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/a", "/b", "/a"], "{requests:#?}");
    let last = &requests[3];
    assert_eq!((last.range.as_deref(), last.status), (None, 200));
}

// ---- answers to a ranged request ----

/// A 1 MiB case whose first answer is cut after 256 KiB and whose
/// resuming request (`Range: bytes=262144-`) is answered by `answer`; then
/// `/f` is served normally.
fn ranged_request_answered(answer: Fault) -> Case {
    let case = Case::new(MIB);
    case.server
        .set_fault_times("/f", Fault::Truncate { after: 256 << 10 }, 1);
    case.server.then_fault_times("/f", answer, 1);
    case
}

/// What chitd does after the answer to its resuming request, when that
/// answer cannot be appended: one request without `Range`, answered 200.
fn assert_started_over(case: &Case, requests: &[Request], status: u16) {
    let etag = case.server.etag("/f");
    assert_eq!(
        exchanges(requests),
        [
            (None, None, 200),
            (Some("bytes=262144-"), etag.as_deref(), status),
            (None, None, 200),
        ],
        "{requests:#?}"
    );
}

#[test]
fn range_not_satisfiable_starts_over_from_zero() {
    let case = ranged_request_answered(Fault::RangeNotSatisfiable);
    let requests = case.run_to_delivery(30_000);
    assert_started_over(&case, &requests, 416);
}

#[test]
fn a_range_answer_that_starts_elsewhere_starts_over_from_zero() {
    let whole = format!("bytes 0-{}/{MIB}", MIB - 1);
    let case = ranged_request_answered(Fault::ContentRange(whole));
    let requests = case.run_to_delivery(30_000);
    assert_started_over(&case, &requests, 206);
}

/// `bytes */N` (which only a 416 may send), a range of an unknown total,
/// garbage: nothing to append to; the whole object is asked for instead.
#[test]
fn a_range_answer_with_an_unusable_content_range_starts_over_from_zero() {
    let unknown_total = format!("bytes 262144-{}/*", MIB - 1);
    for content_range in [
        format!("bytes */{MIB}"),
        unknown_total,
        "bytes x-y/z".into(),
    ] {
        let case = ranged_request_answered(Fault::ContentRange(content_range.clone()));
        let requests = case.run_to_delivery(30_000);
        eprintln!("Content-Range: {content_range}");
        assert_started_over(&case, &requests, 206);
    }
}

/// A `206` for another total says the source's object is not the chit's
/// size: no request to it can complete the file, so it is ruled out at
/// once, like a `200` of another length. The bytes already received came
/// in an answer of the chit's size and stay, under their record, for the
/// next source or a later download to resume.
#[test]
fn a_range_answer_for_another_total_rules_the_source_out_and_keeps_the_partial() {
    let case = ranged_request_answered(Fault::ContentRange("bytes 100-199/999".into()));
    let started = Instant::now();
    Daemon::for_spool(&case.dir, &case.spool)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    let reason = case.spool.expect_failed("f");
    let answer = format!(
        "{}: server announced 999 bytes, the chit says {MIB}",
        case.server.url("/f")
    );
    assert!(reason.contains(&answer), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(15), "failed slowly");
    assert_eq!(case.server.count("/f"), 2, "{:#?}", case.server.requests());
    let record = fs::read_to_string(case.record_path()).expect("the record is kept");
    assert_eq!(offset_of(&record), 256 << 10);
    let part = fs::metadata(case.partial("part")).expect("the part is kept");
    assert!(part.len() >= 256 << 10);
}

// ---- across a SIGKILL: the progress record ----

#[test]
fn valid_record_is_resumed_with_range_and_if_range() {
    let case = Case::new(16 * MIB);
    // 3.2 MiB/s: the 2 s checkpoint timer writes the first record (the
    // inactivity timeout never fires: a byte comes every 20 ms).
    let drip = Fault::SlowDrip {
        bytes_per_tick: 64 << 10,
        tick: Duration::from_millis(20),
    };
    let record = case.kill_after_checkpoint(drip);
    let offset = offset_of(&record);
    let etag = field(&record, "etag").expect("etag in the record");
    assert_eq!(Some(etag.clone()), case.server.etag("/f"));

    let requests = case.run_to_delivery_after_reboot();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let expected_range = format!("bytes={offset}-");
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
    assert_eq!(requests[0].if_range.as_deref(), Some(etag.as_str()));
    assert_eq!(requests[0].status, 206);
    case.assert_little_waste();
}

/// After a `kill -9` (no reboot), the bytes written past the last
/// checkpoint are kept: the restart asks only for what the `.part` lacks,
/// so at most 1 MiB more than it held is fetched again (contract §10).
#[test]
fn after_a_kill_the_bytes_past_the_checkpoint_are_kept() {
    let case = Case::new(16 * MIB);
    let drip = Fault::SlowDrip {
        bytes_per_tick: 64 << 10,
        tick: Duration::from_millis(20),
    };
    case.server.set_fault("/f", drip);
    let mut daemon = Daemon::for_spool(&case.dir, &case.spool).start();
    let tail = "a checkpoint, then 1 MiB more sent";
    let record = wait_until(TIMEOUT, tail, || {
        let text = fs::read_to_string(case.record_path()).ok()?;
        let offset = offset_of(&text);
        let sent = case.server.bytes_served_for("/f");
        (offset > 0 && sent > offset + MIB as u64).then_some(text)
    });
    daemon.kill();
    case.server.clear_fault("/f");
    let held = fs::metadata(case.partial("part")).expect("the .part").len();
    let checkpoint = offset_of(&record);
    assert!(held > checkpoint, "held {held}, checkpoint {checkpoint}");

    let before = case.server.bytes_served_for("/f");
    let requests = case.run_to_delivery(30_000);
    let expected_range = format!("bytes={held}-");
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
    let refetched = case.server.bytes_served_for("/f") - before;
    let missing = case.content.len() as u64 - held;
    assert!(
        refetched <= missing + MIB as u64,
        "fetched {refetched} bytes again for {missing} missing: {requests:#?}"
    );
}

/// Kill after a checkpoint, damage the record with `edit`, restart: the
/// download starts over from 0 and delivers the right bytes.
fn damaged_record_restarts_from_zero(edit: impl FnOnce(&str) -> String) {
    let case = Case::new(2 * MIB);
    let record = case.kill_after_checkpoint(stall());
    fs::write(case.record_path(), edit(&record)).expect("edit record");
    let requests = case.run_to_delivery(30_000);
    assert_eq!(
        requests[0].range, None,
        "expected a fresh start: {requests:#?}"
    );
}

#[test]
fn garbage_record_restarts_from_zero() {
    damaged_record_restarts_from_zero(|_| "not a progress record\n".into());
}

#[test]
fn empty_record_restarts_from_zero() {
    damaged_record_restarts_from_zero(|_| String::new());
}

#[test]
fn torn_record_restarts_from_zero() {
    damaged_record_restarts_from_zero(|record| record[..record.len() / 2].to_string());
}

#[test]
fn edited_record_restarts_from_zero() {
    damaged_record_restarts_from_zero(|record| {
        let offset = offset_of(record);
        record.replace(
            &format!("offset {offset}\n"),
            &format!("offset {}\n", offset - 1),
        )
    });
}

#[test]
fn record_claiming_more_than_the_part_file_holds_restarts_from_zero() {
    damaged_record_restarts_from_zero(|record| {
        let total = field(record, "total").expect("total");
        forge(record, "offset", &total)
    });
}

#[test]
fn record_for_another_size_restarts_from_zero() {
    damaged_record_restarts_from_zero(|record| forge(record, "total", &(3 * MIB).to_string()));
}

/// A prefix from an earlier run that does not make the file with the
/// rest (a stale copy served under the same ETag) is fetched once more
/// from 0 before the source is ruled out.
#[test]
fn digest_mismatch_after_resuming_a_record_fetches_once_more_from_zero() {
    let case = Case::new(2 * MIB);
    let record = case.kill_after_checkpoint(Fault::stale(stall()));
    let range = format!("bytes={}-", offset_of(&record));
    let etag = field(&record, "etag");
    assert_eq!(etag, case.server.etag("/f"));
    let requests = case.run_to_delivery_after_reboot();
    assert_eq!(
        exchanges(&requests),
        [
            (Some(range.as_str()), etag.as_deref(), 206),
            (None, None, 200)
        ],
        "{requests:#?}"
    );
}

/// What a crash leaves between a checkpoint of the last byte (the 2 s
/// timer was due at the last append) and the publish: a `.part` of
/// `bytes`, all of them covered by a record, for the case's chit. Written
/// with chitd's own `Partial`, as the daemon writes it.
fn checkpointed_whole(case: &Case, bytes: &[u8]) {
    use chitd::partial::{Partial, Validator};
    let dir = case.dir.cache().join("partial-v1");
    fs::create_dir_all(&dir).expect("partial-v1");
    let digest = case.content.sha256.parse().expect("digest");
    let total = case.content.len() as u64;
    let mut partial = Partial::open(&dir, digest, total).expect("open the partial");
    partial.source = Some(case.server.url("/f"));
    partial.validator = Validator {
        etag: case.server.etag("/f"),
        last_modified: None,
    };
    partial
        .append(bytes::Bytes::copy_from_slice(bytes))
        .expect("append");
    partial.checkpoint().expect("checkpoint");
    let record = fs::read_to_string(case.record_path()).expect("record");
    assert_eq!(offset_of(&record), total);
}

/// Nothing is left to ask for: the file is verified from the restored
/// midstate (and its prefix re-hashed) and published without a request.
#[test]
fn a_record_covering_every_byte_is_published_without_a_request() {
    let case = Case::new(2 * MIB);
    checkpointed_whole(&case, &case.content.bytes);
    let requests = case.run_to_delivery(30_000);
    assert_eq!(exchanges(&requests), [], "{requests:#?}");
    assert_eq!(case.server.bytes_served_for("/f"), 0);
}

/// ... and when those bytes are not the file, it is fetched once more
/// from 0.
#[test]
fn a_record_covering_every_byte_of_wrong_bytes_is_fetched_once_more_from_zero() {
    let case = Case::new(2 * MIB);
    let wrong: Vec<u8> = case.content.bytes.iter().map(|b| !b).collect();
    checkpointed_whole(&case, &wrong);
    let requests = case.run_to_delivery(30_000);
    assert_eq!(exchanges(&requests), [(None, None, 200)], "{requests:#?}");
}

#[test]
fn corrupt_part_file_behind_a_valid_record_is_fetched_once_more_from_zero() {
    let case = Case::new(2 * MIB);
    let record = case.kill_after_checkpoint(stall());
    let offset = offset_of(&record);
    let part = case.partial("part");
    let mut bytes = fs::read(&part).expect("read part");
    bytes[1000] ^= 0xff;
    fs::write(&part, bytes).expect("corrupt part");

    let requests = case.run_to_delivery_after_reboot();
    let expected_range = format!("bytes={offset}-");
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
    let last = requests.last().expect("requests");
    assert_eq!(
        (last.range.as_deref(), last.status),
        (None, 200),
        "the digest mismatch after the resume should lead to one more try from 0: {requests:#?}"
    );
}

/// The 2 s checkpoint timer runs while a body is silent too: the bytes
/// received before a stall are durable within about 2 s, not only when
/// the inactivity timeout (30 s here) ends the attempt, and a SIGKILL
/// during the stall loses none of them.
#[test]
fn bytes_received_before_a_stall_are_checkpointed_on_time() {
    const SENT: u64 = 256 << 10;
    let case = Case::new(4 * MIB);
    case.server.set_fault("/f", stall());
    let mut daemon = Daemon::for_spool(&case.dir, &case.spool)
        .inactivity_timeout_ms(30_000)
        .start();
    let covered = "a progress record covering the bytes sent before the stall";
    let record = wait_until(Duration::from_secs(10), covered, || {
        let text = fs::read_to_string(case.record_path()).ok()?;
        (offset_of(&text) == SENT).then_some(text)
    });
    daemon.kill();
    case.server.clear_fault("/f");
    assert_eq!(case.server.count("/f"), 1, "the stall was cut short");
    assert_eq!(case.server.bytes_served_for("/f"), SENT);

    let etag = field(&record, "etag");
    let range = format!("bytes={SENT}-");
    let requests = case.run_to_delivery(30_000);
    assert_eq!(
        exchanges(&requests),
        [(Some(range.as_str()), etag.as_deref(), 206)],
        "{requests:#?}"
    );
}

// ---- SIGTERM, orphans ----

#[test]
fn sigterm_checkpoints_and_the_restart_resumes_from_the_record() {
    let case = Case::new(4 * MIB);
    let drip = Fault::SlowDrip {
        bytes_per_tick: 16 << 10,
        tick: Duration::from_millis(20),
    };
    case.server.set_fault("/f", drip);
    let mut daemon = Daemon::for_spool(&case.dir, &case.spool).start();
    wait_until(TIMEOUT, "256 KiB sent", || {
        (case.server.bytes_served_for("/f") >= 256 << 10).then_some(())
    });
    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(TIMEOUT);
    let stopping = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping < Duration::from_secs(3),
        "SIGTERM took {stopping:?}"
    );
    assert_eq!(case.spool.states_of("f"), [State::Fetch]);
    // The copy made while it downloaded (see `chase`) is not left behind.
    assert_eq!(case.spool.delivery_temporaries(), Vec::<PathBuf>::new());
    let record = fs::read_to_string(case.record_path()).expect("progress record after SIGTERM");
    let offset = offset_of(&record);
    assert!(
        offset >= 256 << 10 && offset <= case.server.bytes_served_for("/f"),
        "record offset {offset}"
    );

    case.server.clear_fault("/f");
    let requests = case.run_to_delivery(30_000);
    let expected_range = format!("bytes={offset}-");
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
    case.assert_little_waste();
}

#[test]
fn orphaned_partial_is_kept_and_resumed_when_its_chit_returns() {
    let case = Case::new(2 * MIB);
    let record = case.kill_after_checkpoint(stall());
    // The consumer takes the chit away while the daemon is down.
    let chit = case.spool.state_dir(State::Fetch).join("f");
    let saved = case.dir.join("f.saved");
    fs::rename(&chit, &saved).expect("take the chit away");
    Daemon::run_until_idle(&case.dir, &case.spool);
    assert_eq!(
        fs::read_to_string(case.record_path()).ok(),
        Some(record.clone())
    );
    let part = fs::metadata(case.partial("part")).expect("part kept");
    assert!(part.len() >= offset_of(&record));

    // Retrying later resumes where the orphan left off.
    let text = fs::read(&saved).expect("saved chit");
    case.spool.drop_chit("f", text);
    let requests = case.run_to_delivery_after_reboot();
    let expected_range = format!("bytes={}-", offset_of(&record));
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
}

/// Set the files' mtime 8 days back: past the 7 days an orphaned partial
/// is kept.
fn age_past_the_grace(paths: &[PathBuf]) {
    let aged = SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    for path in paths {
        let file = fs::File::options().append(true).open(path).unwrap();
        file.set_modified(aged).unwrap();
    }
}

/// A partial (`.part` and record) of a digest of `byte`s in `partials`, that
/// no chit asks for, aged past the grace: its `.part`.
fn plant_aged_orphan(partials: &std::path::Path, byte: &str) -> PathBuf {
    let orphan = partials.join(format!("{}-5.part", byte.repeat(32)));
    fs::write(&orphan, "x").unwrap();
    fs::write(orphan.with_extension("progress"), "y").unwrap();
    age_past_the_grace(&[orphan.clone(), orphan.with_extension("progress")]);
    orphan
}

/// Partials are removed only when nothing has written them for the grace
/// period (7 days) and no chit wants them. A partial that old whose chit is
/// still in `fetch/` (chitd was down for longer) is resumed, not removed
/// at start; one that old that no chit asks for is removed once the daemon
/// is idle.
#[test]
fn aged_partials_are_resumed_by_their_chit_and_removed_without_one() {
    let case = Case::new(2 * MIB);
    let record = case.kill_after_checkpoint(stall());
    let orphan = plant_aged_orphan(&case.dir.cache().join("partial-v1"), "ab");
    age_past_the_grace(&[case.partial("part"), case.record_path()]);

    let requests = case.run_to_delivery_after_reboot();

    let expected_range = format!("bytes={}-", offset_of(&record));
    assert_eq!(requests[0].range.as_deref(), Some(expected_range.as_str()));
    case.assert_little_waste();
    assert!(!orphan.exists(), "the orphaned .part is left");
    assert!(
        !orphan.with_extension("progress").exists(),
        "the orphaned record is left"
    );
}

/// A daemon that keeps running sweeps aged orphans once it is idle (its
/// first idle moment), not only one run with `--exit-when-idle`.
#[test]
fn a_running_daemon_removes_aged_orphans_once_idle() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let partials = dir.cache().join("partial-v1");
    fs::create_dir_all(&partials).unwrap();
    let orphan = plant_aged_orphan(&partials, "cd");

    let _daemon = Daemon::for_spool(&dir, &spool)
        .env("CHITD_RESCAN_INTERVAL_MS", "100")
        .start();

    wait_until(TIMEOUT, "the aged orphan to be removed", || {
        (!orphan.exists() && !orphan.with_extension("progress").exists()).then_some(())
    });
}

// ---- start-up recovery in delivery directories and spools ----

#[test]
fn startup_removes_delivery_and_status_temporaries_and_nothing_else() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let outside = TestDir::new();
    let deliver = &spool.deliver;
    fs::create_dir_all(deliver.join("gnu")).unwrap();
    let ours = [".f.bin.chitd-4242.7", "gnu/.make-4.4.tar.gz.chitd-1.0"];
    let theirs = [
        ".hidden",
        "gnu/.notes.chitd-",
        ".y.chitd-1.2.bak",
        "gnu/keep",
    ];
    for name in ours.iter().chain(&theirs) {
        fs::write(deliver.join(name), "x").unwrap();
    }
    // A status file write cut short leaves its temporary in the spool root.
    let status_temp = spool.spool.join(".status.chitd-4242.3");
    fs::write(&status_temp, "{").unwrap();
    outside.write(".o.chitd-1.1", "outside");
    std::os::unix::fs::symlink(outside.path(), deliver.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(outside.join(".o.chitd-1.1"), deliver.join(".s.chitd-2.2")).unwrap();
    // A delivery in the same run still works.
    let server = Server::start();
    let content = Content::random(10_000);
    server.add("/f", content.bytes.clone());
    spool.drop_chit("f", content.chit("gnu/f.bin", &[server.url("/f")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("f", "gnu/f.bin", &content);
    for name in ours {
        assert!(!deliver.join(name).exists(), "{name} should be removed");
    }
    for name in theirs {
        assert!(deliver.join(name).exists(), "{name} is the consumer's");
    }
    assert!(!status_temp.exists(), "status temporary left");
    assert!(outside.join(".o.chitd-1.1").exists(), "followed a symlink");
    assert!(fs::symlink_metadata(deliver.join(".s.chitd-2.2")).is_ok());
}

/// The "two copies" rule: a chit name found in `request/` or `fetch/` and
/// also in `downloaded/` or `fail/` with other lines is a newer request
/// under a re-used name (with the same lines, see the next test).
/// It is processed normally and its outcome replaces the old one: at the end
/// the name is in exactly one directory, the one the new request reached.
#[test]
fn reused_chit_name_newer_request_wins() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let old = Content::random(1_000);
    let new = Content::random(2_000);
    let missing = Content::random(3_000);
    server.add("/new", new.bytes.clone());
    let new_chit = new.chit("new.bin", &[server.url("/new")]);
    let missing_chit = missing.chit("missing.bin", &[server.url("/missing")]);
    let old_chit = old.chit("old.bin", &[server.url("/old")]);
    let old_failure = format!("{old_chit}# error: HTTP 404 Not Found\n");
    // Terminal then re-requested (request/), or found in fetch/ at start.
    spool.put_chit(State::Downloaded, "a", &old_chit);
    spool.put_chit(State::Request, "a", &new_chit);
    spool.put_chit(State::Fail, "b", &old_failure);
    spool.put_chit(State::Request, "b", &new_chit);
    spool.put_chit(State::Downloaded, "c", &old_chit);
    spool.put_chit(State::Request, "c", &missing_chit);
    spool.put_chit(State::Downloaded, "d", &old_chit);
    spool.put_chit(State::Fail, "d", &old_failure);
    spool.put_chit(State::Fetch, "d", &new_chit);

    Daemon::run_until_idle(&dir, &spool);

    for name in ["a", "b", "d"] {
        assert_eq!(
            spool.states_of(name),
            [State::Downloaded],
            "{}",
            spool.describe()
        );
        assert_eq!(spool.read_chit(State::Downloaded, name), new_chit);
    }
    spool.assert_delivered("a", "new.bin", &new);
    assert_eq!(spool.states_of("c"), [State::Fail], "{}", spool.describe());
    let failed = spool.read_chit(State::Fail, "c");
    assert!(failed.starts_with(&missing_chit), "{failed}");
    assert!(failed.contains("404"), "{failed}");
}

/// The other half of the "two copies" rule: the same chit (the same lines;
/// in `fail/` with its `# error:` line) in `fetch/` and in a terminal state
/// after a crash is one chit in two places, and the terminal copy wins:
/// `fetch/X` is removed, the terminal copy (and its reason) kept, nothing
/// downloaded again.
#[test]
fn the_same_chit_in_fetch_and_a_terminal_state_stays_terminal() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let done = Content::random(1_000);
    let failed = Content::random(2_000);
    server.add("/done", done.bytes.clone());
    server.add("/failed", failed.bytes.clone());
    let done_chit = done.chit("done.bin", &[server.url("/done")]);
    let failed_chit = failed.chit("failed.bin", &[server.url("/failed")]);
    let failure = format!("{failed_chit}# error: HTTP 404 Not Found\n");
    spool.put_chit(State::Downloaded, "d", &done_chit);
    spool.put_chit(State::Fetch, "d", &done_chit);
    spool.put_chit(State::Fail, "f", &failure);
    spool.put_chit(State::Fetch, "f", &failed_chit);

    Daemon::run_until_idle(&dir, &spool);

    assert_eq!(
        spool.states_of("d"),
        [State::Downloaded],
        "{}",
        spool.describe()
    );
    assert_eq!(spool.read_chit(State::Downloaded, "d"), done_chit);
    assert_eq!(spool.states_of("f"), [State::Fail], "{}", spool.describe());
    assert_eq!(spool.read_chit(State::Fail, "f"), failure);
    assert_eq!(
        server.total_requests(),
        0,
        "a terminal chit was fetched again"
    );
}
