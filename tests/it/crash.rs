//! The crash torture test: a mixed workload for three consumers (shared
//! digests, small files, three 64 MiB files served slowly, a few chits that
//! must fail) while the real daemon is SIGKILLed at random moments and
//! restarted, [`KILLS`] times; then a last run with `--exit-when-idle`, all
//! within [`BUDGET`] (3 minutes).
//! Afterwards every chit is in exactly one of `downloaded/` or `fail/`,
//! every delivered file has its digest's bytes, no temporary is left in a
//! spool, a delivery directory or the cache, and the server sent at most
//! [`MAX_RATIO`] × the bytes of the distinct objects.
//!
//! The random delays are the workload, not synchronisation. The seed is
//! printed; `CHITD_CRASH_SEED=<seed>` replays the same workload and delays.

mod throttled;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use self::throttled::{Throttled, fill, mix};
use crate::util::{ConfigFile, Daemon, State, TestDir, TestSpool, error_reason};

const KILLS: usize = 24;
const BIG: u64 = 64 << 20;
/// Slow objects' rate while the kills go on. A kill costs at most the
/// transfer since the last checkpoint (2 s), so about a second of it on
/// average: 24 kills × ~1.1 s × 768 KiB/s ≈ 20 MiB per 64 MiB object.
const RATE: u64 = 768 << 10;
const MAX_RATIO: f64 = 1.5;
const CONSUMERS: usize = 3;
/// The whole test, kills and the last run: at most 3 minutes.
const BUDGET: Duration = Duration::from_secs(180);

/// A seeded splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }

    /// A third of the kills land within half a second of a start (recovery,
    /// claims), the rest anywhere in the next 4 s (mostly mid-download).
    fn kill_delay(&mut self) -> Duration {
        match self.below(3) {
            0 => self.millis(0, 500),
            _ => self.millis(500, 4_000),
        }
    }
}

fn seed() -> u64 {
    match std::env::var("CHITD_CRASH_SEED") {
        Ok(text) => text.trim().parse().expect("CHITD_CRASH_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            mix(now.map(|d| d.as_nanos() as u64).unwrap_or(0) ^ u64::from(std::process::id()))
        }
    }
}

/// One object on the server, and the digest a chit names for it.
struct Object {
    path: String,
    seed: u64,
    size: u64,
    slow: bool,
    /// Chits name this digest: the object's, except for the "bad" one.
    sha256: String,
}

fn digest_of(seed: u64, size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buffer.len() as u64) as usize;
        fill(seed, offset, &mut buffer[..n]);
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
    hex::encode(hasher.finalize())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Delivered {
        object: usize,
    },
    /// Fails, with this in the reason.
    Fails(&'static str),
}

struct Chit {
    consumer: usize,
    name: String,
    text: String,
    /// The delivery path.
    path: String,
    expect: Expect,
}

/// 3 big slow objects, 2 medium and 12 small fast ones, and a "bad" one
/// whose chits name another digest.
fn objects(rng: &mut Rng) -> Vec<Object> {
    let mut specs: Vec<(String, u64, bool)> = (0..3)
        .map(|i| (format!("/big/{i}.tar.xz"), BIG, true))
        .collect();
    for i in 0..2 {
        specs.push((
            format!("/medium/{i}.tar.gz"),
            (4 << 20) + rng.below(2 << 20),
            false,
        ));
    }
    for i in 0..12 {
        specs.push((format!("/small/{i}.tgz"), 1 + rng.below(256 << 10), false));
    }
    specs.push(("/bad/x.zip".into(), 100 << 10, false));
    let seeds: Vec<u64> = specs.iter().map(|_| rng.next()).collect();
    let bad_seed = rng.next();
    let digests: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = specs
            .iter()
            .zip(&seeds)
            .map(|((path, size, _), &seed)| {
                let named = if path.starts_with("/bad/") {
                    bad_seed
                } else {
                    seed
                };
                scope.spawn(move || digest_of(named, *size))
            })
            .collect();
        let joined = threads
            .into_iter()
            .map(|t| t.join().expect("digest thread"));
        joined.collect()
    });
    specs
        .into_iter()
        .zip(seeds)
        .zip(digests)
        .map(|(((path, size, slow), seed), sha256)| Object {
            path,
            seed,
            size,
            slow,
            sha256,
        })
        .collect()
}

/// The chits of every consumer: each big object for two consumers, each
/// small one for one to three (sometimes twice in one consumer), and one
/// chit per consumer that must fail (wrong digest, 404, unparseable).
fn chits(objects: &[Object], server: &Throttled, rng: &mut Rng) -> Vec<Chit> {
    let mut chits = Vec::new();
    let mut add = |consumer: usize, object: usize, path: String| {
        let o: &Object = &objects[object];
        let text = format!(
            "{}\n{}\n{path}\n{}\n",
            o.sha256,
            o.size,
            server.url(&o.path)
        );
        let expect = if o.path.starts_with("/bad/") {
            Expect::Fails("sha256 mismatch")
        } else {
            Expect::Delivered { object }
        };
        let name = format!("chit-{}", chits.len());
        chits.push(Chit {
            consumer,
            name,
            text,
            path,
            expect,
        });
    };
    for consumer in 0..CONSUMERS {
        for big in [consumer, (consumer + 1) % 3] {
            add(consumer, big, format!("big/{big}.tar.xz"));
        }
        add(
            consumer,
            3 + consumer % 2,
            format!("medium-{consumer}.tar.gz"),
        );
    }
    for small in 5..17 {
        let wanted_by = 1 + rng.below(7);
        for consumer in (0..CONSUMERS).filter(|c| wanted_by & (1 << c) != 0) {
            add(consumer, small, format!("s/{small}/a.tgz"));
            if rng.below(4) == 0 {
                add(consumer, small, format!("s/{small}/copy.tgz"));
            }
        }
    }
    add(0, 17, "bad.zip".into());
    let missing = format!(
        "{}\n10\nmissing.tgz\n{}\n",
        "ab".repeat(32),
        server.url("/nope")
    );
    chits.push(Chit {
        consumer: 1,
        name: "missing".into(),
        text: missing,
        path: "missing.tgz".into(),
        expect: Expect::Fails("404"),
    });
    chits.push(Chit {
        consumer: 2,
        name: "garbage".into(),
        text: "this is not a chit\n".into(),
        path: String::new(),
        expect: Expect::Fails("bad chit"),
    });
    chits
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_leaves_nothing() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("crash torture seed {seed} (CHITD_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let objects = objects(&mut rng);
    let served: Vec<_> = objects
        .iter()
        .map(|o| (o.path.clone(), o.seed, o.size, o.slow))
        .collect();
    let server = Throttled::start(&served, RATE);
    let mut pending = chits(&objects, &server, &mut rng);
    // Big ones first, all at once; the rest trickle in during the kills.
    for i in (1..pending.len()).rev() {
        pending.swap(i, rng.below(i as u64 + 1) as usize);
    }
    pending.sort_by_key(|c| !matches!(c.expect, Expect::Delivered { object } if object < 3));

    let dir = TestDir::new();
    let spools: Vec<TestSpool> = (0..CONSUMERS)
        .map(|c| dir.spool(&format!("c{c}")))
        .collect();
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(4),
        consumers: spools.clone(),
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");
    let mut dropped = Vec::new();
    let mut drop_next = |count: usize| {
        for chit in pending.drain(..count.min(pending.len())) {
            spools[chit.consumer].drop_chit(&chit.name, &chit.text);
            dropped.push(chit);
        }
    };
    drop_next(10);

    for _ in 0..KILLS {
        let mut daemon = Daemon::builder(&dir).config(&config).start();
        let delay = rng.kill_delay();
        let before_drop = delay.mul_f64(rng.below(100) as f64 / 100.0);
        std::thread::sleep(before_drop);
        drop_next(rng.below(4) as usize);
        std::thread::sleep(delay - before_drop);
        daemon.kill();
    }
    let kill_phase = started.elapsed();
    drop_next(usize::MAX);
    server.unthrottle();
    // The kills take at most 96 s (24 × 4 s): the last run gets what is
    // left of the test's budget.
    let left = BUDGET.saturating_sub(started.elapsed());
    Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(left);

    check_chits(&spools, &dropped, &objects);
    check_no_temporaries(&dir, &spools, &objects, &dropped);
    // Every object is needed once, the bad one too (to learn it is bad).
    let needed: u64 = objects.iter().map(|o| o.size).sum();
    let served: u64 = objects.iter().map(|o| server.served(&o.path)).sum();
    let ratio = served as f64 / needed as f64;
    let (requests, ranged) = server.requests();
    eprintln!(
        "crash torture: seed {seed}, {KILLS} kills in {kill_phase:.1?}, {:.1?} in all; \
         served {served} bytes for {needed} needed (ratio {ratio:.3}); \
         {requests} requests, {ranged} ranged",
        started.elapsed(),
    );
    // The workload did what it is for: downloads were resumed after kills.
    assert!(ranged >= 6, "only {ranged} ranged requests (seed {seed})");
    assert!(
        ratio <= MAX_RATIO,
        "served {ratio:.3} × the bytes needed (seed {seed})"
    );
}

/// Distinct objects some chit expects delivered.
fn delivered_objects(chits: &[Chit]) -> impl Iterator<Item = usize> {
    let mut objects: Vec<usize> = chits
        .iter()
        .filter_map(|c| match c.expect {
            Expect::Delivered { object } => Some(object),
            Expect::Fails(_) => None,
        })
        .collect();
    objects.sort_unstable();
    objects.dedup();
    objects.into_iter()
}

/// Every chit in exactly the state it should be, nothing else anywhere, and
/// the right bytes delivered.
fn check_chits(spools: &[TestSpool], chits: &[Chit], objects: &[Object]) {
    for (consumer, spool) in spools.iter().enumerate() {
        for state in [State::Request, State::Fetch] {
            assert_eq!(
                spool.entries_in(state),
                Vec::<String>::new(),
                "{}",
                spool.describe()
            );
        }
        let mut expected: Vec<String> = chits
            .iter()
            .filter(|c| c.consumer == consumer)
            .map(|c| c.name.clone())
            .collect();
        expected.sort();
        // entries_in, not chits_in: a temporary left in a terminal state
        // (a dot name) would show here.
        let mut found = spool.entries_in(State::Downloaded);
        found.extend(spool.entries_in(State::Fail));
        found.sort();
        assert_eq!(
            found,
            expected,
            "chits lost or duplicated: {}",
            spool.describe()
        );
    }
    for chit in chits {
        let spool = &spools[chit.consumer];
        match chit.expect {
            Expect::Delivered { object } => {
                assert_eq!(
                    spool.states_of(&chit.name),
                    [State::Downloaded],
                    "{}",
                    chit.name
                );
                assert_content(&spool.delivered_path(&chit.path), &objects[object]);
            }
            Expect::Fails(why) => {
                assert_eq!(spool.states_of(&chit.name), [State::Fail], "{}", chit.name);
                let text = spool.read_chit(State::Fail, &chit.name);
                let reason = error_reason(&text).unwrap_or_default();
                assert!(reason.contains(why), "{}: {reason}", chit.name);
                assert!(chit.path.is_empty() || !spool.delivered_path(&chit.path).exists());
            }
        }
    }
}

/// The file at `path` holds exactly the object's bytes.
fn assert_content(path: &Path, object: &Object) {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let size = file.metadata().expect("metadata").len();
    assert_eq!(size, object.size, "{}", path.display());
    let (mut got, mut want) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(got.len() as u64) as usize;
        file.read_exact(&mut got[..n]).expect("read delivered file");
        fill(object.seed, offset, &mut want[..n]);
        assert!(
            got[..n] == want[..n],
            "{} differs near byte {offset}",
            path.display()
        );
        offset += n as u64;
    }
}

/// No dot-file in any spool (beyond its four directories), delivery
/// directory or the cache, and no partial left for a delivered digest.
fn check_no_temporaries(dir: &TestDir, spools: &[TestSpool], objects: &[Object], chits: &[Chit]) {
    for spool in spools {
        assert_eq!(
            spool.delivery_temporaries(),
            Vec::<std::path::PathBuf>::new()
        );
        let mut root: Vec<String> = fs::read_dir(&spool.spool)
            .expect("spool")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        root.sort();
        assert_eq!(
            root,
            ["downloaded", "fail", "fetch", "request"],
            "spool root"
        );
    }
    let mut stack = vec![dir.cache()];
    let mut partials = Vec::new();
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path)
            .expect("cache dir")
            .map(|e| e.expect("entry"))
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.'),
                "temporary in the cache: {}",
                entry.path().display()
            );
            if entry.file_type().expect("type").is_dir() {
                stack.push(entry.path());
            } else if path.ends_with("partial-v1") {
                partials.push(name);
            }
        }
    }
    for object in delivered_objects(chits) {
        let digest = &objects[object].sha256;
        assert!(
            !partials.iter().any(|p| p.starts_with(digest.as_str())),
            "partial left for delivered {digest}: {partials:?}"
        );
    }
    eprintln!("partials left (failed digests only): {partials:?}");
}
