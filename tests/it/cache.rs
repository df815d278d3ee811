//! The cache kept (issue 16): a hit is delivered only with verified bytes;
//! corrupt objects are quarantined; objects are read-only.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::server::Server;
use crate::util::{Content, Daemon, State, TestDir, error_reason};

/// Where the cache at `cache` keeps the object of `content`.
pub fn object_path(cache: &Path, content: &Content) -> PathBuf {
    cache
        .join("sha256-v1")
        .join(&content.sha256[..2])
        .join(&content.sha256)
}

/// The files in the cache's `quarantine/`, with their bytes.
pub fn quarantined(cache: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(cache.join("quarantine")) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Fill the cache with `content` by downloading it once for `seed`.
fn cache_it(dir: &TestDir, server: &Server, content: &Content) {
    let seed = dir.spool("seed");
    server.add("/f", content.bytes.clone());
    seed.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    Daemon::run_until_idle(dir, &seed);
    seed.assert_delivered("f", "f.bin", content);
}

/// Overwrite the object of `content` with other bytes of the same size
/// (as bit rot or a person's edit would), returning them.
fn alter(cache: &Path, content: &Content) -> Vec<u8> {
    let path = object_path(cache, content);
    let mut altered = content.bytes.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x20;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, &altered).unwrap();
    altered
}

#[test]
fn a_corrupt_object_is_quarantined_and_the_file_fetched_again() {
    // Small (read whole), and big (hashed on a thread of its own).
    for size in [13, 6 << 20] {
        let dir = TestDir::new();
        let server = Server::start();
        let content = Content::random(size);
        cache_it(&dir, &server, &content);
        let altered = alter(&dir.cache(), &content);

        let spool = dir.spool("c");
        spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
        Daemon::run_until_idle(&dir, &spool);

        spool.assert_delivered("f", "f.bin", &content);
        assert_eq!(server.gets("/f"), 2, "fetched again (size {size})");
        let kept = quarantined(&dir.cache());
        assert_eq!(kept.len(), 1, "size {size}");
        assert!(kept[0].0.starts_with(&content.sha256), "{}", kept[0].0);
        assert!(kept[0].1 == altered, "the corrupt copy is kept as it was");
        assert!(fs::read(object_path(&dir.cache(), &content)).unwrap() == content.bytes);
    }
}

#[test]
fn a_corrupt_object_with_no_source_fails_the_chit_saying_so() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(5_000);
    cache_it(&dir, &server, &content);
    alter(&dir.cache(), &content);

    let spool = dir.spool("c");
    spool.drop_chit("f", content.chit("f.bin", &[]));
    Daemon::run_until_idle(&dir, &spool);

    let reason = error_reason(&spool.read_chit(State::Fail, "f")).unwrap();
    assert!(
        reason.contains("cached copy of this file was corrupt"),
        "{reason}"
    );
    assert!(reason.contains("no source"), "{reason}");
    assert!(!spool.delivered_path("f.bin").exists());
    assert_eq!(quarantined(&dir.cache()).len(), 1);
}

#[test]
fn objects_are_published_read_only() {
    // Held in memory while downloading, and written to a `.part`.
    for size in [100, 3 << 20] {
        let dir = TestDir::new();
        let server = Server::start();
        let content = Content::random(size);
        cache_it(&dir, &server, &content);
        let mode = fs::metadata(object_path(&dir.cache(), &content))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444, "size {size}");
    }
}
