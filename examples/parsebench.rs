//! How long `Chit::parse` takes, per chit, for a few shapes of chit: the
//! three-line chit consumers write, one with source URLs and comments, one
//! with a deep path, and a malformed one (the error path builds a message).
//! Every chit dropped goes through the parser once, so this bounds what
//! parsing can cost the cache-hit rate (`scripts/bench/hits.sh`).
//!
//! ```text
//! cargo run --release --example parsebench [ROUNDS]
//! ```

use std::hint::black_box;
use std::time::Instant;

use chitd::chit::Chit;

const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map_or(Ok(200_000), |r| r.parse())
        .unwrap_or_else(|_| {
            eprintln!("usage: parsebench [ROUNDS]");
            std::process::exit(2);
        });
    let shapes = [
        ("three lines", format!("{DIGEST}\n4096\nmake-4.4.tar.gz\n")),
        (
            "URLs and comments",
            format!(
                "{DIGEST}\n4096\ngnu/make/make-4.4.tar.gz\n# from the ports tree\n\
                 https://ftp.gnu.org/gnu/make/make-4.4.tar.gz\n\
                 https://mirrors.kernel.org/gnu/make/make-4.4.tar.gz\n"
            ),
        ),
        (
            "deep path",
            format!(
                "{DIGEST}\n1073741824\n{}/linux-6.18.tar.xz\n",
                ["a"; 40].join("/")
            ),
        ),
        (
            "malformed (bad digest)",
            format!("{}\n4096\nx\n", &DIGEST[1..]),
        ),
    ];
    println!("{:<24} {:>10} {:>12}", "chit", "bytes", "ns/parse");
    for (name, text) in &shapes {
        let bytes = text.as_bytes();
        // Warm up, then time.
        for _ in 0..rounds / 10 {
            let _ = black_box(Chit::parse(black_box(bytes)));
        }
        let start = Instant::now();
        for _ in 0..rounds {
            let _ = black_box(Chit::parse(black_box(bytes)));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
        println!("{name:<24} {:>10} {ns:>12.0}", bytes.len());
    }
}
