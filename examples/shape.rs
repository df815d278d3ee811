//! A latency- and bandwidth-shaping TCP proxy for the WAN benchmarks
//! (`scripts/bench/wan.sh`), for kernels without `netem`.
//!
//! ```text
//! cargo run --release --example shape -- LISTEN UPSTREAM RTT_MS MBIT_PER_S
//! cargo run --release --example shape -- 127.0.0.1:8443 127.0.0.1:443 80 1000
//! ```
//!
//! Every connection to LISTEN is passed on to UPSTREAM. Each byte is held
//! for half the round trip in each direction, and every direction is one
//! link of MBIT_PER_S shared by all connections (a bytes queue: a chunk
//! leaves when the link has sent the chunks before it, then travels for
//! RTT/2). A request and its answer therefore take at least one round
//! trip, many connections share the bandwidth, and a transfer of B bytes
//! takes at least B / bandwidth. The TCP handshake is not delayed (the
//! proxy accepts at once), a TLS handshake is (its bytes travel the link).
//! TCP between the client and the proxy is
//! loopback: its congestion control sees no delay (slow start is not
//! modelled), which flatters tools that open few connections less than a
//! real WAN would, and every tool alike.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read at once; a chunk is the unit that queues on the link.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per connection and direction (the "wire"): enough
/// for 1 Gbit/s at 200 ms of round trip.
const IN_FLIGHT: usize = 2048;

/// One direction of the link: when it is free to send the next chunk.
struct Link {
    free_at: Mutex<Instant>,
    /// Time to put one byte on the wire.
    per_byte: Duration,
    /// One-way delay.
    delay: Duration,
}

impl Link {
    /// When a chunk of `len` bytes read now arrives at the other end.
    fn arrival(&self, len: usize) -> Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*free_at).max(Instant::now());
        *free_at = start + self.per_byte * u32::try_from(len).unwrap_or(u32::MAX);
        *free_at + self.delay
    }
}

fn usage() -> ! {
    eprintln!("usage: shape LISTEN UPSTREAM RTT_MS MBIT_PER_S");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, rtt_ms, mbit] = args.as_slice() else {
        usage();
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|_| usage());
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|_| usage());
    let rtt_ms: u64 = rtt_ms.parse().unwrap_or_else(|_| usage());
    let mbit: f64 = mbit.parse().unwrap_or_else(|_| usage());
    if mbit <= 0.0 {
        usage();
    }
    let link = |_| {
        Arc::new(Link {
            free_at: Mutex::new(Instant::now()),
            per_byte: Duration::from_secs_f64(8.0 / (mbit * 1e6)),
            delay: Duration::from_millis(rtt_ms) / 2,
        })
    };
    let (up, down) = (link(()), link(()));
    let listener = TcpListener::bind(listen).await?;
    eprintln!("shape: {listen} -> {upstream}, {rtt_ms} ms round trip, {mbit} Mbit/s each way");
    loop {
        let (client, _) = listener.accept().await?;
        let (up, down) = (Arc::clone(&up), Arc::clone(&down));
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, up),
                pump(server_read, client_write, down)
            );
        });
    }
}

/// Carry one direction of a connection over `link`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>) {
    let (wire, mut arriving) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return, // dropping `wire` ends the writer
                Ok(n) => n,
            };
            chunk.truncate(n);
            if wire.send((link.arrival(n), chunk)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = arriving.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
