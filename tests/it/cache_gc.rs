//! The cache's life (issue 16): `chitd cache ls` from the last-use record,
//! `chitd cache gc` (least recently used first, pinned chits, dry runs,
//! racing deliveries), the daemon's own collection, and bad limits.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache::object_path;
use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli};

/// Deliver `content` to `spool` as `path` (downloaded from `server`, or a
/// hit), one daemon run.
fn deliver(dir: &TestDir, spool: &TestSpool, server: &Server, content: &Content, path: &str) {
    let url_path = format!("/{}", content.sha256);
    server.add(&url_path, content.bytes.clone());
    let chit = path.replace('/', "_");
    spool.drop_chit(&chit, content.chit(path, &[server.url(&url_path)]));
    Daemon::run_until_idle(dir, spool);
    spool.assert_delivered(&chit, path, content);
}

/// `chitd cache ARGS` in `dir`; its stdout, after checking the exit code.
fn cache_cli(dir: &TestDir, args: &[&str], code: i32) -> String {
    let mut argv = vec!["cache"];
    argv.extend_from_slice(args);
    let output = run_cli(dir, &argv, TIMEOUT);
    assert_eq!(
        output.code,
        Some(code),
        "chitd {argv:?}: {}",
        output.all_output()
    );
    output.stdout
}

fn cache_arg(dir: &TestDir) -> String {
    dir.cache().to_string_lossy().into_owned()
}

/// Make the object of `content` look unused for `age`.
fn age(cache: &Path, content: &Content, age: Duration) {
    let file = fs::File::open(object_path(cache, content)).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn cached(dir: &TestDir, content: &Content) -> bool {
    object_path(&dir.cache(), content).exists()
}

#[test]
fn ls_lists_each_object_with_its_paths_newest_first() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let (a, b) = (Content::random(1000), Content::random(3000));
    deliver(&dir, &spool, &server, &a, "a/one.tgz");
    deliver(&dir, &spool, &server, &b, "b.bin");
    // A cache hit: a use, and a second name, the newest.
    deliver(&dir, &spool, &server, &a, "two.tgz");
    // An object with no record (as imported): last used = its mtime.
    let c = Content::random(10);
    let c_path = object_path(&dir.cache(), &c);
    fs::create_dir_all(c_path.parent().unwrap()).unwrap();
    fs::write(&c_path, &c.bytes).unwrap();
    let c_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fs::File::open(&c_path)
        .unwrap()
        .set_modified(c_time)
        .unwrap();

    let json = cache_cli(&dir, &["ls", "--json", "--cache", &cache_arg(&dir)], 0);
    let listed: serde_json::Value = serde_json::from_str(&json).expect(&json);
    let listed = listed.as_array().expect("an array");
    let shas: Vec<&str> = listed
        .iter()
        .map(|o| o["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [&a.sha256, &b.sha256, &c.sha256], "most recent first");
    assert_eq!(listed[0]["size"], 1000);
    assert_eq!(
        listed[0]["paths"],
        serde_json::json!(["two.tgz", "a/one.tgz"])
    );
    assert_eq!(listed[1]["paths"], serde_json::json!(["b.bin"]));
    assert_eq!(listed[2]["paths"], serde_json::json!([]));
    assert_eq!(listed[2]["last_used"], "2023-11-14T22:13:20Z");
    for object in listed {
        let last_used = object["last_used"].as_str().unwrap();
        let parsed = humantime::parse_rfc3339(last_used).expect(last_used);
        assert!(last_used.ends_with('Z'), "{last_used}");
        assert!(parsed <= SystemTime::now());
    }

    let text = cache_cli(&dir, &["ls", "--cache", &cache_arg(&dir)], 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with(&a.sha256), "{text}");
    assert!(lines[0].contains(" 1000 "), "{text}");
    assert!(lines[0].ends_with("two.tgz, a/one.tgz"), "{text}");
    assert!(lines[2].ends_with("2023-11-14T22:13:20Z  -"), "{text}");
}

#[test]
fn gc_max_size_removes_the_least_recently_used_first() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let [a, b, c] = [0; 3].map(|_| Content::random(1000));
    deliver(&dir, &spool, &server, &a, "a");
    deliver(&dir, &spool, &server, &b, "b");
    deliver(&dir, &spool, &server, &c, "c");
    // A hit makes `a` the most recently used: `b` is the oldest now.
    deliver(&dir, &spool, &server, &a, "a2");

    let cache = cache_arg(&dir);
    let dry = cache_cli(
        &dir,
        &["gc", "--cache", &cache, "--max-size", "2000", "--dry-run"],
        0,
    );
    assert!(dry.contains(&format!("would remove {}", b.sha256)), "{dry}");
    assert!(
        [&a, &b, &c].iter().all(|content| cached(&dir, content)),
        "dry run"
    );

    let out = cache_cli(&dir, &["gc", "--cache", &cache, "--max-size", "2000"], 0);
    assert!(out.contains(&format!("removed {}", b.sha256)), "{out}");
    assert_eq!(
        out.matches("removed ").count(),
        2,
        "one object and the summary: {out}"
    );
    assert!(!cached(&dir, &b));
    assert!(cached(&dir, &a) && cached(&dir, &c));
    // Within the size already: nothing more.
    let out = cache_cli(&dir, &["gc", "--cache", &cache, "--max-size", "2KB"], 0);
    assert!(out.starts_with("removed 0 object(s)"), "{out}");
    // Removed, it is downloaded again for the next chit.
    deliver(&dir, &spool, &server, &b, "b-again");
    assert_eq!(server.gets(&format!("/{}", b.sha256)), 2);
}

#[test]
fn gc_max_age_removes_objects_unused_for_longer() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let [a, b] = [0; 2].map(|_| Content::random(500));
    deliver(&dir, &spool, &server, &a, "a");
    deliver(&dir, &spool, &server, &b, "b");
    age(&dir.cache(), &b, Duration::from_secs(100 * 86_400));
    age(&dir.cache(), &a, Duration::from_secs(80 * 86_400));
    let cache = cache_arg(&dir);

    let dry = cache_cli(
        &dir,
        &["gc", "--cache", &cache, "--max-age", "90d", "--dry-run"],
        0,
    );
    assert!(dry.contains(&format!("would remove {}", b.sha256)), "{dry}");
    assert!(!dry.contains(&a.sha256), "{dry}");
    assert!(cached(&dir, &b), "a dry run removes nothing");

    let out = cache_cli(&dir, &["gc", "--cache", &cache, "--max-age", "90d"], 0);
    assert!(out.contains(&format!("removed {}", b.sha256)), "{out}");
    assert!(!cached(&dir, &b) && cached(&dir, &a));
    // ls no longer lists it; its names are forgotten.
    let listed = cache_cli(&dir, &["ls", "--cache", &cache], 0);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&a.sha256), "{listed}");
}

#[test]
fn gc_never_removes_an_object_a_chit_in_request_or_fetch_names() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let [a, b, c] = [0; 3].map(|_| Content::random(700));
    for (content, path) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        deliver(&dir, &spool, &server, content, path);
        age(&dir.cache(), content, Duration::from_secs(365 * 86_400));
    }
    // Chits waiting for a daemon: one in request/, one in fetch/.
    spool.put_chit(State::Request, "wants-a", a.chit("a2", &[]));
    spool.put_chit(State::Fetch, "wants-b", b.chit("b2", &[]));
    let config = ConfigFile::for_consumers(&dir, &[&spool]);
    let config = config.to_string_lossy().into_owned();

    let out = cache_cli(&dir, &["gc", "--config", &config, "--max-size", "0"], 0);
    assert!(out.contains(&format!("removed {}", c.sha256)), "{out}");
    assert!(
        out.contains("2 kept for chits in request/ or fetch/ of 1 spool(s)"),
        "{out}"
    );
    assert!(cached(&dir, &a) && cached(&dir, &b) && !cached(&dir, &c));

    // With --cache alone, the spools the daemon listed are read.
    let out = cache_cli(
        &dir,
        &["gc", "--cache", &cache_arg(&dir), "--max-age", "1d"],
        0,
    );
    assert!(out.starts_with("removed 0 object(s)"), "{out}");
    assert!(cached(&dir, &a) && cached(&dir, &b));
    // Without that list (in the lock file) nothing is known to be pinned,
    // and it says so.
    fs::write(dir.cache().join("lock"), "").unwrap();
    let out = cache_cli(
        &dir,
        &["gc", "--cache", &cache_arg(&dir), "--max-age", "1d"],
        0,
    );
    assert!(out.contains("no consumer's spool was found"), "{out}");
    assert!(!cached(&dir, &a) && !cached(&dir, &b));
}

#[test]
fn gc_racing_deliveries_never_makes_a_wrong_or_missing_delivery() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let content = Content::random(300_000);
    server.add("/f", content.bytes.clone());
    let mut daemon = Daemon::for_spool(&dir, &spool).start();
    // The first chit downloads it; the daemon listed its spool in the
    // cache's lock file. Without that list, gc knows of no chit and removes the object whenever it
    // is there, as a gc run just before a chit arrives would.
    spool.drop_chit("c000", content.chit("f000", &[server.url("/f")]));
    spool.expect_downloaded("c000");
    fs::write(dir.cache().join("lock"), "").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cache = cache_arg(&dir);
    std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                cache_cli(&dir, &["gc", "--cache", &cache, "--max-size", "0"], 0);
                runs += 1;
            }
            runs
        });
        // Stops the collector however this thread ends (a failed
        // assertion too), so that the scope can end.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let guard = StopOnDrop(&stop);
        for i in 1..40 {
            let name = format!("c{i:03}");
            let path = format!("f{i:03}");
            spool.drop_chit(&name, content.chit(&path, &[server.url("/f")]));
            spool.expect_downloaded(&name);
            spool.assert_delivered(&name, &path, &content);
        }
        drop(guard);
        assert!(collector.join().unwrap() > 0);
    });
    assert!(
        server.gets("/f") >= 2,
        "the object was collected and fetched again"
    );
    assert!(spool.chits_in(State::Fail).is_empty(), "{}", daemon.log());
    daemon.sigterm();
    daemon.expect_success(TIMEOUT);
}

/// A configuration for `spool` with the test's cache and these extra lines.
fn config_with(dir: &TestDir, spool: &TestSpool, lines: &str) -> PathBuf {
    let text = ConfigFile::for_consumers(dir, &[spool]);
    let text = format!("{lines}\n{}", fs::read_to_string(text).unwrap());
    dir.write("limits.toml", text)
}

#[test]
fn the_daemon_collects_at_start_and_when_a_publish_takes_the_cache_over_its_size() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let [a, b, c, d] = [0; 4].map(|_| Content::random(1000));
    for (content, path) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        deliver(&dir, &spool, &server, content, path);
    }
    // At start: 3000 bytes, 2500 allowed; `a` is the oldest.
    let config = config_with(&dir, &spool, "cache_max_size = \"2500\"");
    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);
    assert!(!cached(&dir, &a) && cached(&dir, &b) && cached(&dir, &c));
    assert!(
        daemon.log().contains("removed from the cache"),
        "{}",
        daemon.log()
    );

    // A download takes it to 3000 again: `b` goes, the new one stays.
    server.add("/d", d.bytes.clone());
    spool.drop_chit("d", d.chit("d", &[server.url("/d")]));
    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);
    spool.assert_delivered("d", "d", &d);
    assert!(!cached(&dir, &b) && cached(&dir, &c) && cached(&dir, &d));
}

#[test]
fn the_daemon_collects_by_age_at_start() {
    let dir = TestDir::new();
    let server = Server::start();
    let spool = dir.spool("c");
    let [a, b] = [0; 2].map(|_| Content::random(100));
    deliver(&dir, &spool, &server, &a, "a");
    deliver(&dir, &spool, &server, &b, "b");
    age(&dir.cache(), &a, Duration::from_secs(13 * 3600));
    let config = config_with(&dir, &spool, "cache_max_age = \"12h\"");
    Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);
    assert!(!cached(&dir, &a) && cached(&dir, &b));
}

#[test]
fn bad_limits_caches_and_keys_are_errors_naming_them() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    Daemon::run_until_idle(&dir, &spool);
    let cache = cache_arg(&dir);
    for (flag, value) in [
        ("--max-size", "lots"),
        ("--max-size", "-1"),
        ("--max-age", "soon"),
    ] {
        let output = run_cli(
            &dir,
            ["cache", "gc", "--cache", &cache, flag, value],
            TIMEOUT,
        );
        assert_eq!(output.code, Some(2), "{}", output.all_output());
        assert!(output.stderr.contains(value), "{}", output.stderr);
    }
    let output = run_cli(&dir, ["cache", "gc", "--cache", &cache], TIMEOUT);
    assert_eq!(output.code, Some(2), "no limit: {}", output.all_output());
    assert!(output.stderr.contains("--max-size"), "{}", output.stderr);
    let elsewhere = dir.join("not-a-cache");
    fs::create_dir(&elsewhere).unwrap();
    for command in ["ls", "gc"] {
        let args = [
            "cache",
            command,
            "--cache",
            elsewhere.to_str().unwrap(),
            "--max-age",
            "1d",
        ];
        let args = if command == "ls" {
            &args[..4]
        } else {
            &args[..]
        };
        let output = run_cli(&dir, args, TIMEOUT);
        assert_eq!(output.code, Some(1), "{}", output.all_output());
        assert!(
            output.stderr.contains("not a chitd cache"),
            "{}",
            output.stderr
        );
    }
    // Config keys: the value, the key and the line are named, by `cache`
    // commands and by `run` alike.
    for (line, value) in [
        ("cache_max_size = \"20 parsecs\"", "20 parsecs"),
        ("cache_max_age = \"ninety days\"", "ninety days"),
        ("cache_max_sise = 5", "cache_max_sise"),
    ] {
        let config = config_with(&dir, &spool, line);
        let config = config.to_str().unwrap();
        for args in [
            vec!["cache", "gc", "--config", config],
            vec!["run", "--config", config],
        ] {
            let output = run_cli(&dir, &args, TIMEOUT);
            assert_eq!(output.code, Some(2), "{args:?}: {}", output.all_output());
            assert!(output.stderr.contains(value), "{}", output.stderr);
            assert!(output.stderr.contains("line 1"), "{}", output.stderr);
        }
    }
}
