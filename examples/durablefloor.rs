//! The physical floor of `scripts/bench/small.sh`: the disk work that
//! chitd's promises require for each small file, and nothing else (no HTTP,
//! no hashing, no spool, no chit). For every regular file in SOURCE, on
//! THREADS threads: write it to a temporary in CACHE, fdatasync, rename it
//! into place (the cache object); write it to a temporary in DELIVER,
//! fdatasync, rename it into place (the delivered file); then fsync both
//! directories once. Prints the number of files copied.
//!
//! ```text
//! cargo run --release --example durablefloor -- SOURCE CACHE DELIVER [THREADS]
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn durable_copy(bytes: &[u8], dir: &Path, name: &str) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&temp, dir.join(name))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, cache, deliver, rest @ ..] = args.as_slice() else {
        eprintln!("usage: durablefloor SOURCE CACHE DELIVER [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = rest.first().map_or(Ok(128), |t| t.parse()).unwrap_or(128);
    let (cache, deliver) = (PathBuf::from(cache), PathBuf::from(deliver));
    let mut files = Vec::new();
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    while let Some(path) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let bytes = fs::read(path)?;
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        durable_copy(&bytes, &cache, &name)?;
                        durable_copy(&bytes, &deliver, &name)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("worker panicked"))
    })?;
    for dir in [&cache, &deliver] {
        File::open(dir)?.sync_all()?;
    }
    println!("{}", files.len());
    Ok(())
}
