//! A real S3 server for the fleet-tier tests: `s3s-fs` over a temporary
//! directory (the bucket is a directory under its root), on a free port,
//! with test credentials. Its debug log records each part it receives.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::{DaemonBuilder, TIMEOUT, TestDir, wait_until};

pub const ACCESS_KEY: &str = "chitd-test";
pub const SECRET_KEY: &str = "chitd-test-secret";
pub const BUCKET: &str = "distfiles";
pub const PREFIX: &str = "chitd/";

const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --features binary --locked (then put ~/.cargo/bin on PATH)";

/// A running `s3s-fs`, killed when dropped.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
    log: PathBuf,
}

impl S3Server {
    /// Start `s3s-fs` over `<dir>/s3`; fails the test, saying how to
    /// install it, when it is not on PATH.
    pub fn start(dir: &TestDir) -> S3Server {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket");
        let log = dir.join("s3s-fs.log");
        let addr = free_port();
        let file = std::fs::File::create(&log).expect("create the s3s-fs log");
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "s3s_fs=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}): the fleet-tier tests need it; install it with {INSTALL}"));
        let server = S3Server {
            child,
            addr,
            root,
            log,
        };
        wait_until(TIMEOUT, "s3s-fs to listen", || {
            TcpStream::connect(addr).ok().map(|_| ())
        });
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[remote]` section for this server.
    pub fn remote_section(&self) -> String {
        remote_section(&self.endpoint())
    }

    /// Where the server keeps the object of `digest`.
    pub fn object_file(&self, digest: &str) -> PathBuf {
        self.root
            .join(BUCKET)
            .join(format!("{PREFIX}sha256/{digest}"))
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(BUCKET)
    }

    /// Parts the server received: its `UploadPart` logs "write file" with
    /// the part's path (`CompleteMultipartUpload` logs the parts as
    /// "from").
    pub fn parts_received(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("write file") && line.contains(".upload_id-"))
            .filter(|line| !line.contains("from"))
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[remote]` section for a store at `endpoint`.
pub fn remote_section(endpoint: &str) -> String {
    format!(
        "\n[remote]\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\nprefix = \"{PREFIX}\"\nregion = \"test\"\n"
    )
}

/// A daemon with the test credentials and quick fleet-tier knobs.
pub fn with_credentials(builder: DaemonBuilder) -> DaemonBuilder {
    builder
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("CHITD_REMOTE_LEASE_POLL_MS", "50")
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// Every file under `dir`, recursively (for messages).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| entry.into_path())
        .collect()
}
