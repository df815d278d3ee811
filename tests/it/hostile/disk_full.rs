//! A full disk (ENOSPC) while downloading into the cache and while
//! delivering: the chit fails with a reason that says so, no partial file
//! is left in the cache or the delivery directory, and the daemon goes on
//! serving once there is room.
//!
//! Each test mounts a 2 MiB tmpfs (as root: `mount -t tmpfs`), and skips
//! with a printed reason where it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Setup, assert_reason};
use crate::util::{Content, Daemon};

/// A small tmpfs mounted on a directory, unmounted when dropped.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mount a 2 MiB tmpfs on `dir` (created if missing); `None`, after
    /// saying why, where this is not possible.
    fn mount(dir: &Path) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "chitd-test"])
            .arg(dir)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(SmallFs {
                dir: dir.to_path_buf(),
            }),
            Ok(output) => {
                let why = String::from_utf8_lossy(&output.stderr);
                eprintln!(
                    "SKIPPED: cannot mount a small tmpfs on {}: {why}",
                    dir.display()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount(8): {e}");
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            // Still busy (a daemon being killed): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Every file beneath `dir`, recursively.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

/// The cache on a 2 MiB file system, a 3 MiB download: it cannot fit. The
/// chit fails after `give_up_after` naming ENOSPC, the bytes that did fit
/// are removed, and a small download then fits and is delivered.
#[test]
fn disk_full_while_downloading_fails_the_chit_and_leaves_no_partial() {
    let setup = Setup::new();
    let cache = setup.dir.cache();
    let Some(_small) = SmallFs::mount(&cache) else {
        return;
    };
    let (_, chit) = setup.serve("/big", 3 << 20);
    setup.spool.drop_chit("big", chit);
    let _daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .give_up_after("2s")
        .start();

    let reason = setup.spool.expect_failed("big");
    assert_reason(&reason, &["no space left on device", "/big"]);
    let left: Vec<PathBuf> = files_in(&cache)
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n != "lock"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    assert!(!setup.spool.delivered_path("good-big.bin").exists());
    setup.still_serving();
}

/// The delivery directory on a 2 MiB file system, a 3 MiB file: the copy
/// fails, the temporary is removed, the chit fails naming ENOSPC, and a
/// small file is then delivered.
#[test]
fn disk_full_while_delivering_fails_the_chit_and_leaves_no_temporary() {
    let setup = Setup::new();
    let Some(_small) = SmallFs::mount(&setup.spool.deliver) else {
        return;
    };
    let content = Content::random(3 << 20);
    setup.server.add("/big", content.bytes.clone());
    let chit = content.chit("sub/big.bin", &[setup.server.url("/big")]);
    setup.spool.drop_chit("big", chit);
    let _daemon = setup.start();

    let reason = setup.spool.expect_failed("big");
    assert_reason(
        &reason,
        &["cannot deliver sub/big.bin", "no space left on device"],
    );
    assert!(
        files_in(&setup.spool.deliver).is_empty(),
        "left in the delivery directory: {:?}",
        files_in(&setup.spool.deliver)
    );
    setup.still_serving();
}

/// The same with the delivery's directory already there, so the file is
/// copied while it downloads (early delivery, for files of 1 MiB or more):
/// the copy hits ENOSPC, is stopped and its temporary removed while the
/// download goes on into the cache; the delivery from the cache then fails
/// the chit naming ENOSPC, and nothing is left in the delivery directory.
#[test]
fn disk_full_during_early_delivery_removes_the_copy_and_fails_the_chit() {
    let setup = Setup::new();
    let Some(_small) = SmallFs::mount(&setup.spool.deliver) else {
        return;
    };
    std::fs::create_dir(setup.spool.deliver.join("sub")).unwrap();
    let content = Content::random(3 << 20);
    setup.server.add("/big", content.bytes.clone());
    let chit = content.chit("sub/big.bin", &[setup.server.url("/big")]);
    setup.spool.drop_chit("big", chit);
    let daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .env("RUST_LOG", "chitd=debug")
        .start();

    let reason = setup.spool.expect_failed("big");
    assert_reason(
        &reason,
        &["cannot deliver sub/big.bin", "no space left on device"],
    );
    let log = daemon.log().to_lowercase();
    assert!(
        log.contains("early delivery stopped: no space left on device"),
        "the early delivery did not run into the full disk:\n{log}"
    );
    assert!(
        files_in(&setup.spool.deliver).is_empty(),
        "left in the delivery directory: {:?}",
        files_in(&setup.spool.deliver)
    );
    // The download itself was not the victim: it is in the cache.
    let cached = setup
        .dir
        .cache()
        .join("sha256-v1")
        .join(&content.sha256[..2])
        .join(&content.sha256);
    assert_eq!(
        std::fs::metadata(&cached).map(|m| m.len()).ok(),
        Some(3 << 20)
    );
    setup.still_serving();
}

/// The disk fills up after a checkpoint made part of the download
/// resumable: the partial is discarded all the same when the chit fails,
/// since the space matters more (a kept partial would keep the cache full
/// for every consumer).
#[test]
fn disk_full_after_a_checkpoint_still_frees_the_space() {
    let setup = Setup::new();
    let cache = setup.dir.cache();
    let Some(_small) = SmallFs::mount(&cache) else {
        return;
    };
    let (content, chit) = setup.serve("/big", 3 << 20);
    // 640 KiB/s: the 2 s checkpoint comes before the 2 MiB are full.
    let drip = crate::server::Fault::SlowDrip {
        bytes_per_tick: 64 * 1024,
        tick: std::time::Duration::from_millis(100),
    };
    setup.server.set_fault("/big", drip);
    setup.spool.drop_chit("big", chit);
    let _daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .give_up_after("2s")
        .start();
    let record = cache.join(format!(
        "partial-v1/{}-{}.progress",
        content.sha256,
        content.len()
    ));
    crate::util::wait_until(crate::util::TIMEOUT, "a progress record", || {
        record.exists().then_some(())
    });

    let reason = setup.spool.expect_failed("big");
    assert_reason(&reason, &["no space left on device"]);
    let left: Vec<PathBuf> = files_in(&cache)
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|n| n != "lock"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    setup.server.clear_fault("/big");
    setup.still_serving();
}
