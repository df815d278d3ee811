//! Self-tests of the fault-injecting server: the harness must be right
//! before it can judge chitd.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{Fault, Server};

/// A raw HTTP/1.1 exchange: the response head, and the body read to EOF
/// (requests ask for `Connection: close`).
fn raw_get(server: &Server, path: &str, headers: &[(&str, &str)]) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn full_get_has_validators_and_length() {
    let server = Server::start();
    server.add("/a", body(1000));
    let (head, got) = raw_get(&server, "/a", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("1000"));
    assert_eq!(header(&head, "etag"), server.etag("/a").as_deref());
    assert!(header(&head, "last-modified").is_some());
    assert_eq!(got, body(1000));
    assert_eq!(server.gets("/a"), 1);
    assert_eq!(server.bytes_served(), 1000);
}

#[test]
fn ranges_and_if_range() {
    let server = Server::start();
    server.add("/a", body(1000));
    let etag = server.etag("/a").unwrap();

    let (head, got) = raw_get(&server, "/a", &[("Range", "bytes=100-")]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 100-999/1000"));
    assert_eq!(got, body(1000)[100..]);

    let (head, got) = raw_get(&server, "/a", &[("Range", "bytes=10-19")]);
    assert_eq!(header(&head, "content-range"), Some("bytes 10-19/1000"));
    assert_eq!(got, body(1000)[10..20]);

    let if_range = [("Range", "bytes=100-"), ("If-Range", etag.as_str())];
    let (head, _) = raw_get(&server, "/a", &if_range);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");

    let stale = [("Range", "bytes=100-"), ("If-Range", "\"stale\"")];
    let (head, got) = raw_get(&server, "/a", &stale);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, body(1000));

    let (head, _) = raw_get(&server, "/a", &[("Range", "bytes=1000-")]);
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes */1000"));

    let requests = server.requests_for("/a");
    assert_eq!(requests[0].range_start(), Some(100));
    assert_eq!(requests[1].range_start(), Some(10));
    assert_eq!(requests[2].if_range.as_deref(), Some(etag.as_str()));
}

#[test]
fn faults_apply_for_their_count_then_normal_service_resumes() {
    let server = Server::start();
    server.add("/a", body(100));
    server.set_fault_times("/a", Fault::Status(503), 2);
    server.then_fault_times("/a", Fault::NotFound, 1);
    let statuses: Vec<String> = (0..4)
        .map(|_| raw_get(&server, "/a", &[]).0[9..12].to_string())
        .collect();
    assert_eq!(statuses, ["503", "503", "404", "200"]);
    assert_eq!(server.gets("/a"), 4);
}

#[test]
fn truncate_announces_full_length_and_sends_less() {
    let server = Server::start();
    server.add("/a", body(1000));
    server.set_fault("/a", Fault::Truncate { after: 300 });
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "content-length"), Some("1000"));
    assert_eq!(got, body(1000)[..300]);
    assert_eq!(server.bytes_served_for("/a"), 300);
}

#[test]
fn stale_sends_other_bytes_under_the_same_headers_the_inner_way() {
    let server = Server::start();
    server.add("/a", body(1000));
    server.set_fault_times("/a", Fault::stale(Fault::Truncate { after: 300 }), 1);
    let (fresh, _) = raw_get(&server, "/a", &[]);
    server.set_fault_times("/a", Fault::stale(Fault::Truncate { after: 300 }), 1);
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "content-length"), Some("1000"));
    assert_eq!(header(&head, "etag"), header(&fresh, "etag"));
    assert_eq!(got.len(), 300);
    assert_ne!(got, body(1000)[..300]);
}

#[test]
fn content_range_and_range_not_satisfiable_as_scripted() {
    let server = Server::start();
    server.add("/a", body(1000));
    server.set_fault_times("/a", Fault::ContentRange("bytes 0-999/1000".into()), 1);
    server.then_fault_times("/a", Fault::ContentRange("bytes */1000".into()), 1);
    server.then_fault_times("/a", Fault::RangeNotSatisfiable, 1);
    let (head, got) = raw_get(&server, "/a", &[("Range", "bytes=100-")]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 0-999/1000"));
    assert_eq!(got, body(1000)[100..]);
    let (head, got) = raw_get(&server, "/a", &[]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes */1000"));
    assert_eq!(got, body(1000));
    let (head, got) = raw_get(&server, "/a", &[("Range", "bytes=100-")]);
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes */1000"));
    assert!(got.is_empty());
}

#[test]
fn wrong_bytes_wrong_length_and_longer_than_announced() {
    let server = Server::start();
    server.add("/a", body(100));
    server.set_fault_times("/a", Fault::WrongBytes, 1);
    server.then_fault_times("/a", Fault::WrongLength, 1);
    server.then_fault_times("/a", Fault::LongerThanAnnounced, 1);
    let (_, got) = raw_get(&server, "/a", &[]);
    assert_eq!(got.len(), 100);
    assert_ne!(got, body(100));
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "content-length"), Some("116"));
    assert_eq!(got.len(), 116);
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "content-length"), Some("100"));
    assert_eq!(got.len(), 164);
}

#[test]
fn change_etag_defeats_if_range() {
    let server = Server::start();
    server.add("/a", body(100));
    let old = server.etag("/a").unwrap();
    server.set_fault("/a", Fault::ChangeEtag);
    let (head, got) = raw_get(&server, "/a", &[("Range", "bytes=50-"), ("If-Range", &old)]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, body(100));
    assert_ne!(server.etag("/a").unwrap(), old);
}

#[test]
fn ignore_range_redirects_and_percent_decoded_paths() {
    let server = Server::start();
    server.add("/odd dir/a b#c?d%e", body(10));
    let (head, got) = raw_get(&server, "/odd%20dir/a%20b%23c%3Fd%25e?x=1", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, body(10));
    assert_eq!(server.gets("/odd dir/a b#c?d%e"), 1);

    server.set_fault("/odd dir/a b#c?d%e", Fault::IgnoreRange);
    let (head, _) = raw_get(
        &server,
        "/odd%20dir/a%20b%23c%3Fd%25e",
        &[("Range", "bytes=5-")],
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    server.set_fault("/r", Fault::Redirect { to: "/x".into() });
    let (head, _) = raw_get(&server, "/r", &[]);
    assert_eq!(header(&head, "location"), Some(server.url("/x").as_str()));
    server.set_fault("/loop", Fault::RedirectLoop);
    let (head, _) = raw_get(&server, "/loop", &[]);
    assert_eq!(
        header(&head, "location"),
        Some(server.url("/loop").as_str())
    );
}

#[test]
fn stall_holds_the_connection_until_the_client_gives_up() {
    let server = Server::start();
    server.add("/a", body(1000));
    server.set_fault("/a", Fault::Stall { after: 10 });
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    let error = loop {
        match stream.read(&mut chunk) {
            Ok(0) => panic!("stalled connection closed early"),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break e,
        }
    };
    assert!(matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(got.ends_with(&body(1000)[..10]));
}

#[test]
fn reqwest_keep_alive_range_and_reset() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Server::start();
    server.add("/a", body(50_000));
    server.add("/b", body(50_000));
    server.set_fault_times("/b", Fault::Reset { after: 20_000 }, 1);
    runtime.block_on(async {
        let client = reqwest::Client::builder().build().unwrap();
        for _ in 0..3 {
            let got = client.get(server.url("/a")).send().await.unwrap();
            assert_eq!(got.bytes().await.unwrap().as_ref(), body(50_000));
        }
        let partial = client
            .get(server.url("/a"))
            .header("Range", "bytes=49000-")
            .send()
            .await
            .unwrap();
        assert_eq!(partial.status(), 206);
        assert_eq!(
            partial.bytes().await.unwrap().as_ref(),
            &body(50_000)[49_000..]
        );

        let reset = client.get(server.url("/b")).send().await.unwrap();
        assert!(reset.bytes().await.is_err(), "a reset body must error");
        let again = client.get(server.url("/b")).send().await.unwrap();
        assert_eq!(again.bytes().await.unwrap().as_ref(), body(50_000));
    });
    assert_eq!(server.gets("/a"), 4);
}

#[test]
fn chunked_and_until_close_framing() {
    let server = Server::start();
    server.add("/a", body(2500));
    server.set_fault_times("/a", Fault::Chunked, 1);
    server.then_fault_times("/a", Fault::UntilClose, 1);
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    assert!(got.starts_with(b"3e8\r\n") && got.ends_with(b"\r\n0\r\n\r\n"));
    assert_eq!(got.len(), 2500 + 3 * 7 + 5);
    let (head, got) = raw_get(&server, "/a", &[]);
    assert_eq!(header(&head, "content-length"), None);
    assert_eq!(got, body(2500));
}

#[test]
fn a_held_path_answers_only_once_released() {
    let server = Server::start();
    server.add("/a", body(100));
    server.hold("/a");
    let getter = {
        let addr = server.addr();
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).unwrap();
            response
        })
    };
    // Recorded on arrival, unanswered while held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.count("/a") == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!getter.is_finished(), "answered while held");
    assert_eq!(server.requests_for("/a")[0].status, 0, "no reply yet");
    server.release("/a");
    let response = getter.join().unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    assert!(response.ends_with(&body(100)));
    let (head, _) = raw_get(&server, "/a", &[]);
    assert!(head.starts_with("HTTP/1.1 200"), "not held after release");
}
