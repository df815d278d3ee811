//! The physical floor of `scripts/bench/small.sh`: the disk work that
//! chitd's promises require for each small file, and nothing else (no HTTP,
//! no hashing, no spool, no chit). For every regular file in SOURCE, on
//! THREADS threads: write it to a temporary in CACHE, fdatasync, rename it
//! into place (the cache object); write it to a temporary in DELIVER,
//! fdatasync, rename it into place (the delivered file); then fsync both
//! directories once. Prints the number of files copied.
//!
//! With `--batch N`, the same promises kept another way: the files go in
//! batches of N; the threads write a batch's temporaries without a flush,
//! then one `syncfs` makes them all durable, they are renamed into place,
//! and a second `syncfs` makes the names durable (CACHE and DELIVER must be
//! on one file system). Fewer flushes, the same bytes and names.
//!
//! With `--writeback N`, chitd's own way (its local batches): each thread
//! takes N files at a time, writes their temporaries and starts their
//! writeback (`sync_file_range`), then fdatasyncs and renames each, so the
//! flushes of a group share a journal commit; both directories are
//! fsync'd at the end. Every file is still flushed before its rename.
//!
//! ```text
//! cargo run --release --example durablefloor -- SOURCE CACHE DELIVER [THREADS] [--batch N | --writeback N]
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn temp_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

fn write_temp(bytes: &[u8], dir: &Path, name: &str, flush: bool) -> std::io::Result<File> {
    let mut file = File::create(temp_of(dir, name))?;
    file.write_all(bytes)?;
    if flush {
        file.sync_data()?;
    }
    Ok(file)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Run `each` over `items` on `threads` threads.
fn on_threads<T: Sync>(
    items: &[T],
    threads: usize,
    each: impl Fn(&T) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                        each(item)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("worker panicked"))
    })
}

/// Each file flushed and renamed on its own.
fn per_file(
    files: &[PathBuf],
    cache: &Path,
    deliver: &Path,
    threads: usize,
) -> std::io::Result<()> {
    on_threads(files, threads, |path| {
        let bytes = fs::read(path)?;
        let name = name_of(path);
        for dir in [cache, deliver] {
            write_temp(&bytes, dir, &name, true)?;
            fs::rename(temp_of(dir, &name), dir.join(&name))?;
        }
        Ok(())
    })?;
    sync_dirs(cache, deliver)
}

fn sync_dirs(cache: &Path, deliver: &Path) -> std::io::Result<()> {
    for dir in [cache, deliver] {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Groups of `group` files a thread: written with their writeback
/// started, then each fdatasync'd and renamed.
fn writeback_groups(
    files: &[PathBuf],
    cache: &Path,
    deliver: &Path,
    threads: usize,
    group: usize,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let groups: Vec<&[PathBuf]> = files.chunks(group).collect();
    on_threads(&groups, threads, |group| {
        let mut written = Vec::new();
        for path in *group {
            let bytes = fs::read(path)?;
            let name = name_of(path);
            for dir in [cache, deliver] {
                let file = write_temp(&bytes, dir, &name, false)?;
                // SAFETY: a plain syscall on an open descriptor.
                unsafe {
                    libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
                };
                written.push((file, dir, name.clone()));
            }
        }
        for (file, dir, name) in written {
            file.sync_data()?;
            fs::rename(temp_of(dir, &name), dir.join(&name))?;
        }
        Ok(())
    })?;
    sync_dirs(cache, deliver)
}

/// Batches of `batch` files: write, one `syncfs`, rename, one `syncfs`.
fn batched(
    files: &[PathBuf],
    cache: &Path,
    deliver: &Path,
    threads: usize,
    batch: usize,
) -> std::io::Result<()> {
    let fs_of = File::open(cache)?;
    for chunk in files.chunks(batch) {
        on_threads(chunk, threads, |path| {
            let bytes = fs::read(path)?;
            let name = name_of(path);
            write_temp(&bytes, cache, &name, false)?;
            write_temp(&bytes, deliver, &name, false).map(drop)
        })?;
        rustix::fs::syncfs(&fs_of)?;
        for path in chunk {
            let name = name_of(path);
            for dir in [cache, deliver] {
                fs::rename(temp_of(dir, &name), dir.join(&name))?;
            }
        }
        rustix::fs::syncfs(&fs_of)?;
    }
    Ok(())
}

/// Take `--name N` (N > 0) out of `args`.
fn take_option(args: &mut Vec<String>, name: &str) -> Option<usize> {
    let at = args.iter().position(|a| a == name)?;
    let n = args.get(at + 1).and_then(|n| n.parse::<usize>().ok());
    let Some(n) = n.filter(|&n| n > 0) else {
        usage()
    };
    args.drain(at..at + 2);
    Some(n)
}

fn usage() -> ! {
    eprintln!("usage: durablefloor SOURCE CACHE DELIVER [THREADS] [--batch N | --writeback N]");
    std::process::exit(2);
}

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let batch = take_option(&mut args, "--batch");
    let writeback = take_option(&mut args, "--writeback");
    let [source, cache, deliver, rest @ ..] = args.as_slice() else {
        usage()
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
    match (batch, writeback) {
        (Some(_), Some(_)) => usage(),
        (Some(batch), None) => batched(&files, &cache, &deliver, threads, batch)?,
        (None, Some(group)) => writeback_groups(&files, &cache, &deliver, threads, group)?,
        (None, None) => per_file(&files, &cache, &deliver, threads)?,
    }
    println!("{}", files.len());
    Ok(())
}
