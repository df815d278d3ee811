//! `--metrics ADDR` / `metrics = "ADDR"`: Prometheus text at `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, TIMEOUT, TestDir, toml_string, wait_until};

/// The address the daemon says it serves metrics on.
fn metrics_address(daemon: &Daemon) -> String {
    wait_until(TIMEOUT, "the metrics address in the log", || {
        let log = daemon.log();
        let rest = log.split("serving metrics at http://").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    })
}

/// `GET path` over HTTP/1.0: (status line, body).
pub fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics address");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of the sample `series` (name and labels, as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn counts_a_miss_a_hit_and_a_failure() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(30_000);
    server.add("/f", content.bytes.clone());
    let mut daemon = Daemon::for_spool(&dir, &spool)
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let address = metrics_address(&daemon);

    spool.drop_chit("miss", content.chit("a", &[server.url("/f")]));
    spool.expect_downloaded("miss");
    spool.drop_chit("hit", content.chit("b", &[server.url("/f")]));
    spool.expect_downloaded("hit");
    let other = Content::random(10);
    spool.drop_chit("gone", other.chit("c", &[server.url("/nothing")]));
    spool.expect_failed("gone");

    let (status, text) = get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK", "{text}");
    let size = content.len() as f64;
    let expected = [
        (
            r#"chitd_chits_total{consumer="default",outcome="downloaded"}"#,
            2.0,
        ),
        (
            r#"chitd_chits_total{consumer="default",outcome="failed"}"#,
            1.0,
        ),
        (r#"chitd_chits{consumer="default",state="downloaded"}"#, 2.0),
        (r#"chitd_chits{consumer="default",state="fail"}"#, 1.0),
        (r#"chitd_chits{consumer="default",state="request"}"#, 0.0),
        (r#"chitd_chits{consumer="default",state="fetch"}"#, 0.0),
        ("chitd_cache_hits_total", 1.0),
        (r#"chitd_downloads_total{outcome="downloaded"}"#, 1.0),
        (r#"chitd_downloads_total{outcome="failed"}"#, 1.0),
        ("chitd_downloaded_bytes_total", size),
        ("chitd_delivered_bytes_total", 2.0 * size),
        ("chitd_downloads_in_flight", 0.0),
        ("chitd_download_duration_seconds_count", 1.0),
        ("chitd_cache_objects", 1.0),
        ("chitd_cache_bytes", size),
        (
            r#"chitd_source_errors_total{host="127.0.0.1",class="http_4xx"}"#,
            1.0,
        ),
    ];
    for (series, value) in expected {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE chitd_chits_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE chitd_chits gauge\n"), "{text}");
    assert!(
        text.contains("# TYPE chitd_download_duration_seconds histogram\n"),
        "{text}"
    );

    let (status, _) = get(&address, "/");
    assert_eq!(status, "HTTP/1.0 404 Not Found");
    let (status, _) = get(&address, "/metrics/x");
    assert_eq!(status, "HTTP/1.0 404 Not Found");
    daemon.sigterm();
    assert!(daemon.wait_exit(TIMEOUT).success());
}

#[test]
fn the_config_key_serves_and_a_busy_address_is_an_error() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let layout = ConfigFile {
        cache: Some(dir.cache()),
        consumers: vec![spool.clone()],
        ..ConfigFile::default()
    };
    let text = format!("metrics = {}\n{}", toml_string(&address), layout.render());
    let config = dir.write("chitd.toml", text);

    let mut daemon = Daemon::builder(&dir).config(&config).start();
    let status = daemon.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1));
    let log = daemon.log();
    assert!(
        log.contains(&format!("cannot serve metrics on {address}")),
        "{log}"
    );

    drop(taken);
    let mut daemon = Daemon::builder(&dir).config(&config).start();
    assert_eq!(metrics_address(&daemon), address);
    let (status, text) = get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    for series in [
        r#"chitd_chits{consumer="c",state="request"}"#,
        r#"chitd_chits_total{consumer="c",outcome="downloaded"}"#,
        r#"chitd_chits_total{consumer="c",outcome="failed"}"#,
        r#"chitd_downloads_total{outcome="failed"}"#,
        "chitd_cache_objects",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
    daemon.sigterm();
    assert!(daemon.wait_exit(TIMEOUT).success());
}
