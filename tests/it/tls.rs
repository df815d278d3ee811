//! TLS and proxies (contract §10): a certificate chitd does not trust is
//! permanent for that source (the next source at once; alone, a failure
//! within seconds naming the problem); `ca_file` adds trusted roots;
//! `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` are honoured.

use std::time::{Duration, Instant};

use crate::server::Server;
use crate::server::front::{Proxy, SelfSigned, TlsFront};
use crate::util::{Content, Daemon, DaemonBuilder, TestDir, TestSpool};

/// Far below the default `give_up_after` (60 s): a refused certificate is
/// not retried until then.
const AT_ONCE: Duration = Duration::from_secs(15);

/// A server with `/f`, the same behind HTTPS with a fresh self-signed
/// certificate, and a consumer.
struct Case {
    dir: TestDir,
    spool: TestSpool,
    server: Server,
    front: TlsFront,
    certificate: SelfSigned,
    content: Content,
}

impl Case {
    fn new() -> Case {
        let dir = TestDir::new();
        let spool = dir.spool("c");
        let server = Server::start();
        let content = Content::random(100_000);
        server.add("/f", content.bytes.clone());
        let certificate = SelfSigned::generate();
        let front = TlsFront::start(server.addr(), &certificate);
        Case {
            dir,
            spool,
            server,
            front,
            certificate,
            content,
        }
    }

    /// A daemon for the consumer, without any proxy from the environment
    /// of the tests.
    fn daemon(&self) -> DaemonBuilder {
        let daemon = Daemon::for_spool(&self.dir, &self.spool);
        let no_proxy = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];
        no_proxy.into_iter().fold(daemon, |daemon, key| {
            let daemon = daemon.env(key, "");
            daemon.env(&key.to_ascii_lowercase(), "")
        })
    }

    /// `ca_file = "extra-cas.pem"` naming the certificate, relative to the
    /// configuration file.
    fn trusting(&self) -> DaemonBuilder {
        self.dir
            .write("tls/extra-cas.pem", &self.certificate.cert_pem);
        let config = self
            .dir
            .write("tls/chitd.toml", "ca_file = \"extra-cas.pem\"\n");
        self.daemon().config(&config)
    }
}

#[test]
fn an_untrusted_certificate_fails_over_to_the_next_source_at_once() {
    let case = Case::new();
    let (https, http) = (case.front.url("/f"), case.server.url("/f"));
    case.spool
        .drop_chit("f", case.content.chit("f.bin", &[https, http]));
    let started = Instant::now();
    let _daemon = case.daemon().start();
    case.spool.expect_downloaded("f");
    assert!(started.elapsed() < AT_ONCE, "took {:?}", started.elapsed());
    case.spool.assert_delivered("f", "f.bin", &case.content);
    // The handshake failed: no request reached the server through TLS.
    assert_eq!(case.server.count("/f"), 1, "{:#?}", case.server.requests());
}

#[test]
fn alone_an_untrusted_certificate_fails_the_chit_at_once_naming_it() {
    let case = Case::new();
    let https = case.front.url("/f");
    case.spool.drop_chit(
        "f",
        case.content.chit("f.bin", std::slice::from_ref(&https)),
    );
    let started = Instant::now();
    let _daemon = case.daemon().start();
    let reason = case.spool.expect_failed("f");
    assert!(started.elapsed() < AT_ONCE, "took {:?}", started.elapsed());
    for words in [
        https.as_str(),
        "TLS certificate",
        "unknown issuer",
        "ca_file",
    ] {
        assert!(reason.contains(words), "{words:?} missing: {reason}");
    }
    assert_eq!(case.server.total_requests(), 0);
}

#[test]
fn ca_file_adds_a_trusted_root() {
    let case = Case::new();
    let https = case.front.url("/f");
    case.spool
        .drop_chit("f", case.content.chit("f.bin", &[https]));
    let _daemon = case.trusting().start();
    case.spool.expect_downloaded("f");
    case.spool.assert_delivered("f", "f.bin", &case.content);
    assert_eq!(case.server.count("/f"), 1);
}

#[test]
fn http_proxy_carries_plain_requests() {
    let case = Case::new();
    let proxy = Proxy::start();
    let url = case.server.url("/f");
    case.spool
        .drop_chit("f", case.content.chit("f.bin", std::slice::from_ref(&url)));
    let _daemon = case.daemon().env("HTTP_PROXY", &proxy.url()).start();
    case.spool.expect_downloaded("f");
    assert_eq!(proxy.seen(), [format!("GET {url} HTTP/1.1")]);
    // The server got the request in the absolute form a proxy is sent.
    assert_eq!(case.server.requests()[0].target, url);
}

#[test]
fn https_proxy_tunnels_tls_requests() {
    let case = Case::new();
    let proxy = Proxy::start();
    let https = case.front.url("/f");
    case.spool
        .drop_chit("f", case.content.chit("f.bin", &[https]));
    let _daemon = case.trusting().env("HTTPS_PROXY", &proxy.url()).start();
    case.spool.expect_downloaded("f");
    let authority = case.front.url("").replace("https://", "");
    let seen = proxy.seen();
    assert!(!seen.is_empty(), "the proxy saw nothing");
    for line in &seen {
        assert!(
            line.starts_with(&format!("CONNECT {authority} ")),
            "{seen:?}"
        );
    }
}

#[test]
fn no_proxy_names_hosts_asked_directly() {
    let case = Case::new();
    let proxy = Proxy::start();
    case.spool
        .drop_chit("f", case.content.chit("f.bin", &[case.server.url("/f")]));
    let daemon = case.daemon().env("HTTP_PROXY", &proxy.url());
    let _daemon = daemon.env("NO_PROXY", "127.0.0.1").start();
    case.spool.expect_downloaded("f");
    assert_eq!(proxy.seen(), Vec::<String>::new());
    assert!(case.server.requests()[0].target.starts_with('/'));
}
