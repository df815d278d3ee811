//! Attacks by upstream servers: encodings, redirects out of http(s), loops,
//! wrong or extra bytes, slow drips and stalls, and response heads too big
//! to hold. The fault server covers what HTTP can say; [`Evil`], a raw TCP
//! server (`evil.rs`), covers what it cannot.

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use super::evil::{Evil, drain, read_head};
use super::{Setup, assert_reason};
use crate::server::Fault;
use crate::util::{Content, Daemon};

/// Permanent answers fail within this long (give_up_after is not needed).
const FAST: Duration = Duration::from_secs(10);

impl Setup {
    /// A daemon that gives up after 2 s without progress and cuts a
    /// connection after 500 ms without (enough) data.
    fn impatient_daemon(&self) -> Daemon {
        Daemon::for_spool(&self.dir, &self.spool)
            .give_up_after("2s")
            .inactivity_timeout_ms(500)
            .start()
    }

    /// The cache holds no object and no partial download.
    fn assert_cache_empty(&self) {
        let cache = self.dir.cache();
        for sub in ["sha256-v1", "partial-v1"] {
            let mut found = Vec::new();
            let mut stack = vec![cache.join(sub)];
            while let Some(dir) = stack.pop() {
                for entry in fs::read_dir(&dir).into_iter().flatten() {
                    let entry = entry.unwrap();
                    if entry.file_type().unwrap().is_dir() {
                        stack.push(entry.path());
                    } else {
                        found.push(entry.path());
                    }
                }
            }
            assert!(found.is_empty(), "left in the cache: {found:?}");
        }
    }
}

/// The stored bytes are the bytes whose digest the chit names, whatever
/// `Content-Encoding` says: a real gzip body labelled gzip is delivered as
/// the gzip bytes, and a chit naming the *decoded* bytes fails.
#[test]
fn gzip_encoded_response_is_stored_as_sent_never_decoded() {
    let setup = Setup::new();
    let plain = Content::random(3_000);
    let gzipped = Content::new(gzip_stored(&plain.bytes));
    setup.server.add("/f.gz", gzipped.bytes.clone());
    setup.server.set_fault("/f.gz", Fault::Gzip);
    let url = setup.server.url("/f.gz");
    setup
        .spool
        .drop_chit("raw", gzipped.chit("f.gz", std::slice::from_ref(&url)));
    setup.spool.drop_chit("decoded", plain.chit("f", &[url]));
    let _daemon = setup.start();

    setup.spool.expect_downloaded("raw");
    setup.spool.assert_delivered("raw", "f.gz", &gzipped);
    let reason = setup.spool.expect_failed("decoded");
    assert_reason(
        &reason,
        &[&gzipped.len().to_string(), &plain.len().to_string()],
    );
    assert!(!setup.spool.delivered_path("f").exists());
    setup.still_serving();
}

/// Redirects to anything but http and https (a local file, ftp, data:)
/// are refused at once, naming the target; nothing is read from it.
#[test]
fn redirect_to_file_or_other_schemes_is_refused_naming_the_target() {
    let setup = Setup::new();
    let precious = setup.outside.file().display().to_string();
    let targets = [
        ("file", format!("file://{precious}")),
        ("file-host", format!("file://localhost{precious}")),
        ("ftp", "ftp://127.0.0.1/x".to_string()),
        ("data", "data:text/plain,precious%20bytes%0A".to_string()),
    ];
    // The file chit has the right size and digest for the precious file:
    // following its redirect would deliver it. (The others differ, so that
    // each is a download of its own.)
    let precious_content = Content::new(fs::read(setup.outside.file()).unwrap());
    for (name, target) in &targets {
        let path = format!("/{name}");
        setup
            .server
            .set_fault(&path, Fault::RedirectTo(target.clone()));
        let content = match *name {
            "file" => precious_content.clone(),
            _ => Content::random(100),
        };
        let chit = content.chit(&format!("{name}.bin"), &[setup.server.url(&path)]);
        setup.spool.drop_chit(name, chit);
    }
    let started = Instant::now();
    let _daemon = setup.start();

    for (name, target) in &targets {
        let reason = setup.spool.expect_failed(name);
        // As the URL parser normalises it: without "localhost".
        let shown = target.replace("file://localhost/", "file:///");
        assert_reason(&reason, &["redirect", &shown, "not http or https"]);
    }
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    setup.assert_cache_empty();
    setup.still_serving();
}

/// A loop back to the same URL, and a chain longer than the redirect
/// limit, both fail within seconds naming the redirects.
#[test]
fn redirect_loop_and_endless_chain_fail_fast() {
    let setup = Setup::new();
    let content = Content::random(1_000);
    setup.server.set_fault("/loop", Fault::RedirectLoop);
    for hop in 0..30 {
        let to = format!("/hop{}", hop + 1);
        setup
            .server
            .set_fault(&format!("/hop{hop}"), Fault::Redirect { to });
    }
    let server = &setup.server;
    setup
        .spool
        .drop_chit("loop", content.chit("loop.bin", &[server.url("/loop")]));
    setup
        .spool
        .drop_chit("chain", content.chit("chain.bin", &[server.url("/hop0")]));
    let started = Instant::now();
    let _daemon = setup.start();

    let reason = setup.spool.expect_failed("loop");
    assert_reason(&reason, &["redirect loop", "/loop"]);
    let reason = setup.spool.expect_failed("chain");
    assert_reason(&reason, &["more than 10 redirects"]);
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert!(
        server.count("/hop12") <= 1,
        "the chain was followed too far"
    );
    assert_eq!(server.count("/hop13"), 0, "the chain was followed too far");
    setup.still_serving();
}

/// Wrong bytes (right length) fail on the digest; nothing reaches the
/// cache or the delivery directory.
#[test]
fn wrong_bytes_fail_on_the_digest_and_are_not_kept() {
    let setup = Setup::new();
    let (content, chit) = setup.serve("/f", 100_000);
    setup.server.set_fault("/f", Fault::WrongBytes);
    setup.spool.drop_chit("f", chit);
    let _daemon = setup.start();

    let reason = setup.spool.expect_failed("f");
    assert_reason(&reason, &["sha256 mismatch", "/f"]);
    assert!(!setup.spool.delivered_path("good-f.bin").exists());
    assert!(setup.spool.delivery_temporaries().is_empty());
    setup.assert_cache_empty();
    let _ = content;
    setup.still_serving();
}

/// More bytes than announced, or than the chit says, never reach the file:
/// hyper reads exactly `Content-Length`; a body without a length is cut at
/// the first chunk past the chit's size (not read to its end: it is 64 MiB
/// here), and its bytes are dropped.
#[test]
fn longer_bodies_never_add_bytes_to_the_file() {
    let setup = Setup::new();
    let (content, chit) = setup.serve("/f", 5_000);
    setup.server.set_fault("/f", Fault::LongerThanAnnounced);
    setup.spool.drop_chit("announced", chit);
    let small = Content::random(1_000);
    setup.server.add("/endless", vec![b'!'; 64 << 20]);
    setup.server.set_fault("/endless", Fault::UntilClose);
    let url = setup.server.url("/endless");
    setup
        .spool
        .drop_chit("endless", small.chit("endless.bin", &[url]));
    let started = Instant::now();
    let _daemon = setup.start();

    setup.spool.expect_downloaded("announced");
    setup
        .spool
        .assert_delivered("announced", "good-f.bin", &content);
    let reason = setup.spool.expect_failed("endless");
    assert_reason(&reason, &["more than the 1000 bytes"]);
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    assert!(
        setup.server.bytes_served_for("/endless") < 32 << 20,
        "the endless body was read on: {} bytes",
        setup.server.bytes_served_for("/endless")
    );
    setup.still_serving();
}

/// A server that drips one byte every 50 ms (20 bytes/s, under the 34
/// bytes/s floor) is cut after each window, its drip is not progress, and
/// the chit fails after `give_up_after` naming the drip.
#[test]
fn slow_drip_is_cut_and_fails_naming_it() {
    let setup = Setup::new();
    let (_, chit) = setup.serve("/f", 10_000);
    let drip = Fault::SlowDrip {
        bytes_per_tick: 1,
        tick: Duration::from_millis(50),
    };
    setup.server.set_fault("/f", drip);
    let _daemon = setup.impatient_daemon();
    let started = Instant::now();
    setup.spool.drop_chit("f", chit);

    let reason = setup.spool.expect_failed("f");
    let elapsed = started.elapsed();
    assert_reason(&reason, &["no progress for 2s", "too slow", "/f"]);
    assert!(elapsed < FAST, "the drip held the chit for {elapsed:?}");
    let served = setup.server.bytes_served_for("/f");
    assert!(served < 1_000, "{served} bytes dripped");
    setup.still_serving();
}

/// A server that sends its head and then nothing, one that accepts and
/// never answers, and one that sends header lines forever: each is cut by
/// the inactivity timeout and the chit fails after `give_up_after`.
#[test]
fn stalled_and_never_answering_servers_are_cut() {
    let setup = Setup::new();
    let (_, chit) = setup.serve("/stall", 10_000);
    setup.server.set_fault("/stall", Fault::Stall { after: 0 });
    setup.spool.drop_chit("stall", chit);
    let silent = Evil::start(|mut stream| {
        read_head(&mut stream);
        drain(&mut stream);
    });
    let endless_head = Evil::start(|mut stream| {
        read_head(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
        for n in 0.. {
            std::thread::sleep(Duration::from_millis(50));
            if stream
                .write_all(format!("X-Wait-{n}: y\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let content = Content::random(100);
    setup
        .spool
        .drop_chit("silent", content.chit("silent.bin", &[silent.url()]));
    setup.spool.drop_chit(
        "endless-head",
        content.chit("endless-head.bin", &[endless_head.url()]),
    );
    let _daemon = setup.impatient_daemon();

    for name in ["stall", "silent", "endless-head"] {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, &["no progress for 2s", "inactivity timeout"]);
    }
    setup.still_serving();
}

/// A `give_up_after` shorter than the inactivity timeout (30 s by default)
/// bounds a stall too: a server that never answers, and one that stops
/// after a few bytes, each fail the chit about `give_up_after` after their
/// last byte, not after a whole inactivity timeout (or two).
#[test]
fn give_up_after_shorter_than_the_inactivity_timeout_bounds_a_stall() {
    let setup = Setup::new();
    let (_, chit) = setup.serve("/stall", 10_000);
    setup
        .server
        .set_fault("/stall", Fault::Stall { after: 1000 });
    let silent = Evil::start(|mut stream| {
        read_head(&mut stream);
        drain(&mut stream);
    });
    let content = Content::random(100);
    let _daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .give_up_after("2s")
        .start();
    let started = Instant::now();
    setup.spool.drop_chit("stall", chit);
    setup
        .spool
        .drop_chit("silent", content.chit("silent.bin", &[silent.url()]));

    for (name, answer) in [("stall", "no data for 2s"), ("silent", "within 2s")] {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, &["no progress for 2s", answer]);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < FAST, "a 2 s give_up_after took {elapsed:?}");
    setup.still_serving();
}

/// Response heads are bounded (hyper: at most 100 header fields and about
/// 400 KiB of head): a 1 MiB header and 200 headers are refused without
/// being held, and a `Content-Length` of an exabyte is refused without
/// allocating for it.
#[test]
fn oversized_response_heads_and_absurd_lengths_are_refused() {
    let setup = Setup::new();
    let huge_header = Evil::start(|mut stream| {
        read_head(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-Big: ");
        let _ = stream.write_all(&vec![b'a'; 1 << 20]);
        let _ = stream.write_all(b"\r\nContent-Length: 100\r\n\r\n");
        drain(&mut stream);
    });
    let many_headers = Evil::start(|mut stream| {
        read_head(&mut stream);
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n");
        for n in 0..200 {
            head.push_str(&format!("X-H{n}: v\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        drain(&mut stream);
    });
    let exabyte = Evil::start(|mut stream| {
        read_head(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000\r\n\r\n");
        let _ = stream.write_all(&[b'x'; 4096]);
        drain(&mut stream);
    });
    let content = Content::random(100);
    for (name, evil) in [
        ("huge-header", &huge_header),
        ("many-headers", &many_headers),
        ("exabyte", &exabyte),
    ] {
        let chit = content.chit(&format!("{name}.bin"), &[evil.url()]);
        setup.spool.drop_chit(name, chit);
    }
    let mut daemon = setup.impatient_daemon();

    for name in ["huge-header", "many-headers"] {
        let reason = setup.spool.expect_failed(name);
        assert_reason(
            &reason,
            &["no progress for 2s", "message head is too large"],
        );
    }
    let reason = setup.spool.expect_failed("exabyte");
    assert_reason(&reason, &["1000000000000000000", "100"]);
    let peak = super::peak_rss_kib(daemon.pid());
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    setup.still_serving();
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks:
/// valid gzip without a compression library.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn gzip_stored_is_valid_gzip() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    let gz = gzip_stored(b"hello");
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(gz.len(), 10 + 5 + 5 + 8);
}
