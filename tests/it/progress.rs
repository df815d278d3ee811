//! `request --wait` draws a progress line on stderr when it is a terminal
//! (a pseudo-terminal here), and nothing extra when it is not.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::server::Server;
use crate::util::{Content, Daemon, TIMEOUT, TestDir, TestSpool, run_cli, wait_until};

/// A pseudo-terminal of 120 columns: (master, slave).
fn open_pty() -> (File, File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let size = rustix::termios::Winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, size).expect("set the window size");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().expect("UTF-8 pty name"))
        .expect("open the pty's slave");
    (File::from(master), slave)
}

fn wait_args(spool: &TestSpool, content: &Content, path: &str, url: String) -> Vec<OsString> {
    let args = ["request", "--spool"].map(OsString::from);
    let mut args = args.to_vec();
    args.push(spool.spool.clone().into());
    let rest = [
        "--wait".to_owned(),
        "--timeout".to_owned(),
        "60".to_owned(),
        content.sha256.clone(),
        content.len().to_string(),
        path.to_owned(),
        url,
    ];
    args.extend(rest.map(OsString::from));
    args
}

#[test]
fn request_wait_draws_a_progress_line_on_a_terminal_only() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let content = Content::random(100_000);
    server.add("/f", content.bytes.clone());
    server.hold("/f");
    let _daemon = Daemon::for_spool(&dir, &spool).start();

    let (mut master, slave) = open_pty();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chitd"))
        .current_dir(dir.path())
        .args(wait_args(&spool, &content, "f.bin", server.url("/f")))
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("pty.stdout")).expect("stdout file"))
        .stderr(slave)
        .spawn()
        .expect("spawn chitd request");
    let (sender, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // Ends with EIO once the child has closed the terminal.
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            let _ = sender.send(buffer[..n].to_vec());
        }
    });
    let mut seen = Vec::new();
    let started = Instant::now();
    // Held by the server: the line shows the file not done yet.
    while !String::from_utf8_lossy(&seen).contains("0/1 files done") {
        let left = TIMEOUT.saturating_sub(started.elapsed());
        match chunks.recv_timeout(left) {
            Ok(chunk) => seen.extend(chunk),
            Err(e) => panic!(
                "no progress line ({e}): {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    server.release("/f");
    let status = wait_until(TIMEOUT, "chitd request to exit", || {
        child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status}");
    let line = String::from_utf8_lossy(&seen);
    for part in ["B/s", "%", "ETA", "/97.66 KiB"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }

    // Not a terminal (a file): nothing but the outcome.
    let other = Content::random(1_000);
    server.add("/g", other.bytes.clone());
    let output = run_cli(
        &dir,
        wait_args(&spool, &other, "g.bin", server.url("/g")),
        TIMEOUT,
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.ends_with(": downloaded\n"), "{output:?}");
    assert!(!output.stderr.contains("files done"), "{output:?}");
    assert!(!output.stderr.contains(['\r', '\u{1b}']), "{output:?}");
}
