//! A raw TCP server for answers no well-formed HTTP server gives (the
//! fault server in `tests/it/server.rs` speaks HTTP properly).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A raw TCP server on 127.0.0.1 running `handler` on each connection in
/// its own thread, for answers no well-formed HTTP server gives. Dropping
/// it stops accepting; handlers end when the client hangs up.
pub struct Evil {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Evil {
    pub fn start(handler: fn(TcpStream)) -> Evil {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    std::thread::spawn(move || handler(stream));
                }
            }
        });
        Evil { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/file", self.addr)
    }
}

impl Drop for Evil {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Read up to the end of a request head.
pub fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
}

/// Hold the connection until the client closes it.
pub fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
