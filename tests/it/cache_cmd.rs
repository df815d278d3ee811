//! `chitd cache import` and `chitd cache verify` (contract §8), with and
//! without a running daemon.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{object_path, quarantined};
use crate::server::Server;
use crate::util::{CliOutput, Content, Daemon, TIMEOUT, TestDir, run_cli, wait_until};

/// `chitd cache ARGS... --cache <dir>/cache`.
fn cache_cmd(dir: &TestDir, args: &[&str]) -> CliOutput {
    let cache = dir.cache();
    let mut all: Vec<&str> = vec!["cache"];
    all.extend_from_slice(args);
    all.extend(["--cache", cache.to_str().unwrap()]);
    run_cli(dir, all, TIMEOUT)
}

/// The names in the cache's `sha256-v1/` and its fan-out directories that
/// are not objects (temporaries).
fn temporaries(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let objects = cache.join("sha256-v1");
    for entry in fs::read_dir(&objects).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            for inner in fs::read_dir(entry.path()).unwrap() {
                let inner = inner.unwrap();
                if inner.file_name().to_string_lossy().starts_with('.') {
                    found.push(inner.path());
                }
            }
        } else {
            found.push(entry.path());
        }
    }
    found
}

/// Every object in the cache.
fn objects(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(cache.join("sha256-v1")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(
                fs::read_dir(entry.path())
                    .unwrap()
                    .map(|e| e.unwrap().path()),
            );
        }
    }
    found
}

fn assert_cached(cache: &Path, content: &Content) {
    let path = object_path(cache, content);
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes == content.bytes,
        "{} holds other bytes",
        path.display()
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "{}", path.display());
}

fn line<'a>(output: &'a CliOutput, label: &str) -> &'a str {
    output
        .stdout
        .lines()
        .find(|line| line.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", output.all_output()))
}

#[test]
fn import_adds_regular_files_hidden_ones_too_and_skips_the_rest() {
    let dir = TestDir::new();
    let (a, b, hidden, outside) = (
        Content::random(100_000),
        Content::random(10),
        Content::random(3000),
        Content::random(50),
    );
    dir.write("src/a.tar.gz", &a.bytes);
    dir.write("src/sub/b", &b.bytes);
    dir.write("src/.git/.hidden", &hidden.bytes);
    dir.write("elsewhere/outside", &outside.bytes);
    let src = dir.join("src");
    std::os::unix::fs::symlink("a.tar.gz", src.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), src.join("link-to-dir")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("sub/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    fs::set_permissions(src.join("sub/b"), fs::Permissions::from_mode(0o640)).unwrap();

    let output = cache_cmd(&dir, &["import", "src"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(line(&output, "added:").contains("3 files (103010 bytes"));
    assert!(line(&output, "already cached:").contains(" 0 files"));
    let skipped = line(&output, "skipped:");
    assert!(
        skipped.contains("4 (2 symlinks, 1 FIFO, 1 socket)"),
        "{skipped}"
    );
    let cache = dir.cache();
    for content in [&a, &b, &hidden] {
        assert_cached(&cache, content);
    }
    assert!(
        !object_path(&cache, &outside).exists(),
        "a symlink was followed"
    );
    assert_eq!(objects(&cache).len(), 3);
    assert!(temporaries(&cache).is_empty(), "{:?}", temporaries(&cache));
    // The originals are as they were.
    assert!(fs::read(src.join("sub/b")).unwrap() == b.bytes);
    let mode = fs::metadata(src.join("sub/b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn files_already_cached_are_counted_and_kept() {
    let dir = TestDir::new();
    let (a, b) = (Content::random(5000), Content::random(7000));
    dir.write("one/a", &a.bytes);
    dir.write("two/a-again", &a.bytes);
    dir.write("two/b", &b.bytes);
    // Two copies of one file in one import: one added, one already cached.
    let output = cache_cmd(&dir, &["import", "one", "two"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(line(&output, "added:").contains("2 files (12000 bytes"));
    assert!(line(&output, "already cached:").contains(" 1 file"));
    let object = object_path(&dir.cache(), &a);
    let inode = fs::metadata(&object).unwrap();

    let output = cache_cmd(&dir, &["import", "two"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(line(&output, "added:").contains(" 0 files (0 bytes"));
    assert!(line(&output, "already cached:").contains(" 2 files"));
    assert!(line(&output, "skipped:").ends_with(" 0"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&object).unwrap().ino(),
        inode.ino(),
        "kept, not replaced"
    );
    assert!(temporaries(&dir.cache()).is_empty());
}

#[test]
fn an_unreadable_file_is_named_and_the_others_are_imported() {
    let dir = TestDir::new();
    let (good, secret) = (Content::random(20_000), Content::random(30_000));
    dir.write("src/good", &good.bytes);
    let unreadable = dir.write("src/secret", &secret.bytes);
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let (code, stdout, stderr) =
        unprivileged(&dir, &["cache", "import", "--cache", "cache", "src"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&*unreadable.to_string_lossy()), "{stderr}");
    assert!(stderr.contains("1 file could not be imported"), "{stderr}");
    assert!(stdout.contains("failed:         1 file"), "{stdout}");
    assert_cached(&dir.cache(), &good);
    assert!(!object_path(&dir.cache(), &secret).exists());
    assert_eq!(objects(&dir.cache()).len(), 1);
    assert!(temporaries(&dir.cache()).is_empty());
}

/// Run `chitd ARGS` in `dir`: exit code, stdout, stderr. Root reads any
/// file: as root, chitd runs as an unprivileged user, owning the test's
/// directory (as a user's own files and cache would be), so that mode 000
/// stops it.
fn unprivileged(dir: &TestDir, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chitd"));
    command.current_dir(dir.path()).args(args);
    if rustix::process::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        const NOBODY: u32 = 65534;
        for entry in walk(dir.path()) {
            std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn verify_names_an_unreadable_object() {
    let dir = TestDir::new();
    let (good, locked) = (Content::random(2000), Content::random(3000));
    dir.write("src/good", &good.bytes);
    dir.write("src/locked", &locked.bytes);
    assert_eq!(cache_cmd(&dir, &["import", "src"]).code, Some(0));
    let object = object_path(&dir.cache(), &locked);
    fs::set_permissions(&object, fs::Permissions::from_mode(0o000)).unwrap();

    let (code, stdout, stderr) =
        unprivileged(&dir, &["cache", "verify", "--cache", "cache", "--json"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&*object.to_string_lossy()), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["checked"], 1);
    assert_eq!(report["corrupt"], serde_json::json!([]));
    let unreadable = report["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{report}");
    assert_eq!(unreadable[0]["path"], object.to_str().unwrap());
    assert!(object.exists(), "an unreadable object is not quarantined");
}

/// `path` and everything under it.
fn walk(path: &Path) -> Vec<PathBuf> {
    let mut all = vec![path.to_path_buf()];
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            all.extend(walk(&entry.unwrap().path()));
        }
    }
    all
}

#[test]
fn a_missing_dir_is_named_and_nothing_is_imported() {
    let dir = TestDir::new();
    let content = Content::random(100);
    dir.write("src/f", &content.bytes);
    let output = cache_cmd(&dir, &["import", "src", "no-such-dir"]);
    assert_eq!(output.code, Some(1), "{}", output.all_output());
    assert!(output.stderr.contains("no-such-dir"), "{}", output.stderr);
    assert!(!object_path(&dir.cache(), &content).exists());
}

#[test]
fn a_directory_that_is_not_a_cache_is_refused() {
    let dir = TestDir::new();
    dir.write("cache/thesis.tex", "mine");
    dir.write("src/f", "data");
    for args in [&["import", "src"][..], &["verify"], &["verify", "--json"]] {
        let output = cache_cmd(&dir, args);
        assert_eq!(output.code, Some(1), "{args:?}: {}", output.all_output());
        assert!(
            output.stderr.contains("is not a chitd cache"),
            "{args:?}: {}",
            output.stderr
        );
        assert!(output.stderr.contains(&*dir.cache().to_string_lossy()));
    }
    let names: Vec<_> = fs::read_dir(dir.cache()).unwrap().collect();
    assert_eq!(names.len(), 1, "something was written into it");
    // No cache at all: verify says so; import makes one.
    fs::remove_dir_all(dir.cache()).unwrap();
    let output = cache_cmd(&dir, &["verify"]);
    assert_eq!(output.code, Some(1), "{}", output.all_output());
    assert!(output.stderr.contains("no cache at"), "{}", output.stderr);
    let output = cache_cmd(&dir, &["import", "src"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert_eq!(objects(&dir.cache()).len(), 1);
}

#[test]
fn the_cache_of_a_config_file_is_used() {
    let dir = TestDir::new();
    dir.write("etc/chitd.toml", "cache = \"../store\"\n");
    let content = Content::random(64);
    dir.write("src/f", &content.bytes);
    let output = run_cli(
        &dir,
        ["cache", "import", "--config", "etc/chitd.toml", "src"],
        TIMEOUT,
    );
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert_cached(&dir.join("store"), &content);
    let output = run_cli(
        &dir,
        ["cache", "--config", "etc/chitd.toml", "verify"],
        TIMEOUT,
    );
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(
        output.stdout.contains("checked 1 object"),
        "{}",
        output.stdout
    );
}

#[test]
fn an_import_next_to_a_running_daemon_serves_hits_at_once() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let _daemon = Daemon::for_spool(&dir, &spool).start();
    // The daemon has opened the cache (and holds its lock).
    wait_until(TIMEOUT, "the daemon's cache", || {
        dir.cache().join("sha256-v1/ff").is_dir().then_some(())
    });
    let (small, big) = (Content::random(1000), Content::random(3 << 20));
    dir.write("distfiles/small", &small.bytes);
    dir.write("distfiles/big", &big.bytes);
    let output = cache_cmd(&dir, &["import", "distfiles"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());

    for (name, content) in [("s", &small), ("b", &big)] {
        server.add(&format!("/{name}"), content.bytes.clone());
        let path = format!("{name}.bin");
        spool.drop_chit(
            name,
            content.chit(&path, &[server.url(&format!("/{name}"))]),
        );
        spool.expect_downloaded(name);
        spool.assert_delivered(name, &path, content);
        assert_eq!(server.gets(&format!("/{name}")), 0, "{name}: fetched");
    }
    // verify works beside the daemon too.
    let output = cache_cmd(&dir, &["verify"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(
        output.stdout.contains("checked 2 objects"),
        "{}",
        output.stdout
    );
}

#[test]
fn verify_quarantines_corrupt_objects_naming_each() {
    let dir = TestDir::new();
    let (intact, rotten) = (Content::random(10_000), Content::random(2 << 20));
    dir.write("src/intact", &intact.bytes);
    dir.write("src/rotten", &rotten.bytes);
    assert_eq!(cache_cmd(&dir, &["import", "src"]).code, Some(0));
    let object = object_path(&dir.cache(), &rotten);
    fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
    let mut altered = rotten.bytes.clone();
    altered[12345] ^= 1;
    fs::write(&object, &altered).unwrap();
    // A temporary (an import or publish under way) is not an object.
    let temporary = object.with_file_name(".import.1.1");
    fs::write(&temporary, "half").unwrap();

    let output = cache_cmd(&dir, &["verify"]);
    assert_eq!(output.code, Some(1), "{}", output.all_output());
    assert!(
        output
            .stdout
            .contains(&format!("corrupt: {}", rotten.sha256))
    );
    assert!(
        output.stdout.contains("checked 2 objects"),
        "{}",
        output.stdout
    );
    assert!(output.stderr.contains(&rotten.sha256), "{}", output.stderr);
    assert!(!object.exists());
    let kept = quarantined(&dir.cache());
    assert_eq!(kept.len(), 1);
    assert!(kept[0].0.starts_with(&rotten.sha256), "{}", kept[0].0);
    assert!(kept[0].1 == altered, "kept as it was");
    assert!(temporary.exists(), "a temporary is left alone");
    assert_cached(&dir.cache(), &intact);

    let output = cache_cmd(&dir, &["verify"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    assert!(output.stdout.contains("checked 1 object (10000 bytes"));
    assert!(output.stdout.contains("0 corrupt, 0 unreadable"));
}

#[test]
fn verify_json_lists_the_corrupt_objects() {
    let dir = TestDir::new();
    let (intact, rotten) = (Content::random(300), Content::random(400));
    dir.write("src/intact", &intact.bytes);
    dir.write("src/rotten", &rotten.bytes);
    assert_eq!(cache_cmd(&dir, &["import", "src"]).code, Some(0));
    let json = |output: &CliOutput| -> serde_json::Value {
        serde_json::from_str(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", output.all_output()))
    };

    let output = cache_cmd(&dir, &["verify", "--json"]);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    let clean = serde_json::json!({"checked": 2, "bytes": 700, "corrupt": [], "unreadable": []});
    assert_eq!(json(&output), clean);

    let object = object_path(&dir.cache(), &rotten);
    fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&object, "not what it was").unwrap();
    let output = cache_cmd(&dir, &["verify", "--json"]);
    assert_eq!(output.code, Some(1), "{}", output.all_output());
    let report = json(&output);
    assert_eq!(report["checked"], 2);
    assert_eq!(report["bytes"], 300 + 15);
    assert_eq!(report["unreadable"], serde_json::json!([]));
    let corrupt = report["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0]["sha256"], rotten.sha256.as_str());
    let moved = PathBuf::from(corrupt[0]["quarantined_as"].as_str().unwrap());
    assert_eq!(fs::read(&moved).unwrap(), b"not what it was");
    assert_eq!(moved.parent().unwrap(), dir.cache().join("quarantine"));
}
