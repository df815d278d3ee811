//! The hash loop chitd runs on every downloaded byte (sha2's `Sha256`,
//! which uses SHA-NI when the CPU has it), on a file: prints the digest like
//! `sha256sum`, and the throughput on stderr. Used by
//! `scripts/bench/hash.sh` to compare with `openssl dgst` and `sha256sum`.

use std::io::Read;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Chunks as the download path sees them (hyper hands over buffers of
/// tens of KiB; bigger reads make no difference to the hash speed).
const CHUNK: usize = 64 * 1024;

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: hashbench FILE");
        std::process::exit(2);
    };
    let mut file = std::fs::File::open(&path)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{}  {path}", hex::encode(hasher.finalize()));
    eprintln!(
        "{total} bytes in {seconds:.3} s: {:.2} GB/s",
        total as f64 / seconds / 1e9
    );
    Ok(())
}
