//! A flood: 100,000 chits in one consumer's spool. chitd must work through
//! them in bounded memory, and another consumer must still be served within
//! seconds while the flood is in progress (the scheduler takes one chit
//! from each consumer in turn).
//!
//! The flood is what a hostile or broken consumer produces most cheaply:
//! junk. Bad chits are also the dearest for chitd per chit, with no
//! download to amortise: each is claimed, read, parsed, rebuilt with its
//! `# error:` line, fsync'd and moved to `fail/`. A few malformed forms
//! are mixed, so that every chit is read and parsed.

use std::fs;
use std::time::{Duration, Instant};

use super::{Outside, peak_rss_kib};
use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, State, TestDir, TestSpool};

const FLOOD: usize = 100_000;
/// The daemon's peak memory (VmHWM) must stay below this.
const MAX_PEAK_RSS_KIB: u64 = 256 * 1024;
/// The other consumer's chit, dropped mid-flood, is delivered within this.
const PROMPTLY: Duration = Duration::from_secs(5);
/// The whole flood must be through within this: about 25 s on this VM's
/// disk when quiet, over 120 s while ext4 still skips the inodes of
/// thousands of files deleted minutes before (see BENCHMARKS.md: every
/// file created pays for them, and each bad chit is rewritten into a new
/// file with its reason).
const FLOOD_DEADLINE: Duration = Duration::from_secs(300);

/// The name of flood chit `i`: as long as a name can be (255 bytes), so
/// the memory bound holds for the worst case: chitd keeps every pending
/// name, not the chits.
fn name(i: usize) -> String {
    let stem = format!("junk{i:06}-");
    format!("{stem}{}", "x".repeat(255 - stem.len()))
}

#[test]
fn flood_of_100000_chits_in_bounded_memory_does_not_starve_another_consumer() {
    let dir = TestDir::new();
    let outside = Outside::create(&dir);
    let flood = dir.spool("flood");
    let other = dir.spool("other");
    let request = flood.state_dir(State::Request);
    let started = Instant::now();
    for i in 0..FLOOD {
        // Straight into request/: the daemon is not running yet.
        fs::write(request.join(name(i)), junk(i)).unwrap();
    }
    eprintln!("wrote {FLOOD} chits in {:?}", started.elapsed());
    let config = ConfigFile::for_consumers(&dir, &[&flood, &other]);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    let started = Instant::now();

    poll(FLOOD_DEADLINE, "the flood to be under way", || {
        count(&flood, State::Fail) >= 1_000
    });
    let server = Server::start();
    let (content, latency) = serve_the_other(&server, &other);
    let pending = count(&flood, State::Request) + count(&flood, State::Fetch);
    eprintln!("the other consumer was served in {latency:?}, with {pending} flood chits pending");
    other.assert_delivered("other", "other.bin", &content);
    assert!(
        pending > 0,
        "the flood was over before the other chit was served: this proves nothing"
    );
    assert!(
        latency < PROMPTLY,
        "the other consumer waited {latency:?} behind the flood"
    );

    poll(FLOOD_DEADLINE, "every flood chit to fail", || {
        count(&flood, State::Fail) == FLOOD
    });
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(daemon.pid());
    eprintln!(
        "{FLOOD} chits failed in {elapsed:?} ({:.0}/s); peak RSS {} MiB",
        FLOOD as f64 / elapsed.as_secs_f64(),
        peak / 1024
    );
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "peak RSS {peak} KiB over {MAX_PEAK_RSS_KIB} KiB"
    );
    assert_eq!(
        count(&flood, State::Request) + count(&flood, State::Fetch),
        0
    );
    assert!(daemon.try_exit().is_none(), "the daemon died");
    // Spot checks: each junk chit got its reason.
    for i in [0, 1, 2, 3, FLOOD / 2, FLOOD - 1] {
        let failed = flood.read_chit(State::Fail, &name(i));
        let reason = crate::util::error_reason(&failed).unwrap_or_default();
        assert!(reason.starts_with("bad chit: "), "{}: {failed:?}", name(i));
    }
    outside.assert_untouched();
}

/// A flood of *downloads*: one consumer queues 300 downloads from a server
/// that stalls every one of them (each holds a download slot until
/// `give_up_after`). Another consumer's download must not wait behind that
/// queue: downloads start round-robin across consumers, so it gets the
/// next free slot (without lanes it would wait some 7 minutes).
#[test]
fn download_flood_from_one_consumer_does_not_starve_another_consumers_download() {
    const DOWNLOADS: usize = 300;
    let dir = TestDir::new();
    let flood = dir.spool("flood");
    let other = dir.spool("other");
    let server = Server::start();
    server.add("/stall", vec![0u8; 100]);
    server.set_fault("/stall", crate::server::Fault::Stall { after: 0 });
    for i in 0..DOWNLOADS {
        // Distinct digests (so distinct downloads), all served by /stall.
        let content = Content::random(100);
        flood.drop_chit(
            &format!("stalled{i}"),
            content.chit("f", &[server.url("/stall")]),
        );
    }
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(2),
        give_up_after: Some("2s".into()),
        consumers: vec![flood.clone(), other.clone()],
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let _daemon = Daemon::builder(&dir)
        .config(&config)
        .inactivity_timeout_ms(500)
        .start();
    poll(FLOOD_DEADLINE, "the stalled downloads to start", || {
        server.count("/stall") >= 2
    });

    let (_, latency) = serve_the_other(&server, &other);
    let failed = count(&flood, State::Fail);
    eprintln!(
        "the other download was served in {latency:?}; {failed} of {DOWNLOADS} stalled ones had failed"
    );
    assert!(
        latency < Duration::from_secs(10),
        "the other consumer's download waited {latency:?} behind the flood"
    );
    assert!(
        failed < DOWNLOADS / 2,
        "the flood was mostly over: this proves nothing"
    );
}

/// A flood of chits that wait for *one* download: when it ends, thousands
/// of one consumer's chits are due for delivery at once. Another consumer's
/// chit dropped right then must not wait behind all of them: deliveries
/// take turns with other consumers' chits like everything else.
#[test]
fn thousands_of_chits_sharing_one_download_do_not_starve_another_consumer() {
    const WAITERS: usize = 4_000;
    let dir = TestDir::new();
    let flood = dir.spool("flood");
    let other = dir.spool("other");
    let server = Server::start();
    let shared = Content::random(1_000);
    server.add("/shared", shared.bytes.clone());
    server.hold("/shared");
    let request = flood.state_dir(State::Request);
    for i in 0..WAITERS {
        // Straight into request/: the daemon is not running yet.
        let chit = shared.chit(&format!("f{i}"), &[server.url("/shared")]);
        fs::write(request.join(format!("w{i:05}")), chit).unwrap();
    }
    let config = ConfigFile::for_consumers(&dir, &[&flood, &other]);
    let daemon = Daemon::builder(&dir).config(&config).start();
    poll(
        FLOOD_DEADLINE,
        "every chit to wait for the download",
        || server.count("/shared") == 1 && count(&flood, State::Fetch) == WAITERS,
    );
    server.release("/shared");
    poll(FLOOD_DEADLINE, "the deliveries to begin", || {
        count(&flood, State::Downloaded) > 0
    });

    let (content, latency) = serve_the_other(&server, &other);
    let pending = count(&flood, State::Fetch);
    eprintln!(
        "the other consumer was served in {latency:?}, with {pending} of {WAITERS} deliveries pending"
    );
    other.assert_delivered("other", "other.bin", &content);
    // Served in turn, it is done long before most of the flood; served
    // after the flood's deliveries, it would find at most a group commit's
    // worth of them left in fetch/.
    assert!(
        pending > WAITERS / 4,
        "the other consumer's chit waited for {} of the flood's {WAITERS} deliveries",
        WAITERS - pending
    );
    poll(FLOOD_DEADLINE, "every flood chit to be delivered", || {
        count(&flood, State::Downloaded) == WAITERS
    });
    assert_eq!(server.gets("/shared"), 1, "one download for all of them");
    for i in [0, WAITERS / 2, WAITERS - 1] {
        flood.assert_delivered(&format!("w{i:05}"), &format!("f{i}"), &shared);
    }
    drop(daemon);
}

/// A consumer's chit gets to a download first and names a server that is
/// slow but steady (above the minimum pace, so never cut for it). Another
/// consumer's chit for the same file joins that download with a source of
/// its own: it is tried after one slow window, not after the slow server
/// finishes (about a minute here; a hostile one could take years).
#[test]
fn a_slow_source_of_one_consumer_does_not_hold_up_a_shared_download() {
    let dir = TestDir::new();
    let first = dir.spool("first");
    let other = dir.spool("other");
    let server = Server::start();
    let content = Content::random(200_000);
    server.add("/slow", content.bytes.clone());
    server.add("/good", content.bytes.clone());
    server.set_fault("/slow", crate::server::Fault::slow_but_steady());
    let config = ConfigFile::for_consumers(&dir, &[&first, &other]);
    let _daemon = Daemon::builder(&dir)
        .config(&config)
        .inactivity_timeout_ms(500)
        .start();
    first.drop_chit("slow", content.chit("a.bin", &[server.url("/slow")]));
    poll(FLOOD_DEADLINE, "the slow download to start", || {
        server.bytes_served_for("/slow") > 0
    });

    let dropped = Instant::now();
    other.drop_chit("good", content.chit("b.bin", &[server.url("/good")]));
    other.expect_downloaded("good");
    let latency = dropped.elapsed();
    eprintln!("the joining chit was served in {latency:?}");
    other.assert_delivered("good", "b.bin", &content);
    first.expect_downloaded("slow");
    first.assert_delivered("slow", "a.bin", &content);
    assert_eq!(server.gets("/good"), 1);
    assert!(
        latency < Duration::from_secs(20),
        "the joining chit waited {latency:?} for the slow source"
    );
}

/// Junk chit number `i`: one of a few malformed forms.
fn junk(i: usize) -> String {
    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    match i % 4 {
        0 => format!("junk {i}\n"),
        1 => format!("{DIGEST}\n{i}\n../../escape/{i}\n"),
        2 => format!("{DIGEST}\n{i}\nf{i}\nftp://127.0.0.1/{i}\n"),
        _ => format!("{DIGEST}\n-{i}\nf\n"),
    }
}

/// The chits in a state directory (counting a 100,000-entry directory is
/// not free: look every 100 ms).
fn count(spool: &TestSpool, state: State) -> usize {
    fs::read_dir(spool.state_dir(state))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

fn poll(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drop a chit for a fresh file into `other` and wait for it: the file, and
/// how long it took.
fn serve_the_other(server: &Server, other: &TestSpool) -> (Content, Duration) {
    let content = Content::random(10_000);
    server.add("/other", content.bytes.clone());
    let dropped = Instant::now();
    other.drop_chit("other", content.chit("other.bin", &[server.url("/other")]));
    other.expect_downloaded("other");
    (content, dropped.elapsed())
}
