//! The scheduler driven in-process, on temporary directories, with paused
//! time: the runtime's clock moves only when every task waits (blocking
//! file work holds it still), so timers fire in order and at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest as _;

use super::*;
use crate::config::{self, Config};
use crate::daemon::stuck::STUCK_RETRY_FIRST;
use crate::daemon::{RESCAN_INTERVAL, STATUS_FILE, open, run};
use crate::store::Store;

/// Temporary directories for a few consumers (each `<name>/spool` and
/// `<name>/deliver`) and a cache.
struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
}

impl Fixture {
    fn new(consumers: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default_layout(dir.path());
        config.consumers = consumers
            .iter()
            .map(|name| config::Consumer {
                name: (*name).to_owned(),
                spool: dir.path().join(name).join("spool"),
                deliver: dir.path().join(name).join("deliver"),
            })
            .collect();
        for consumer in &config.consumers {
            fs::create_dir_all(consumer.spool.join("request")).unwrap();
        }
        Fixture { dir, config }
    }

    fn spool(&self, consumer: &str) -> PathBuf {
        self.dir.path().join(consumer).join("spool")
    }

    /// Drop a chit into `request/` as consumers do: written under a dot
    /// name, renamed in.
    fn drop_chit(&self, consumer: &str, name: &str, text: &str) {
        let spool = self.spool(consumer);
        fs::write(spool.join(".chit.tmp"), text).unwrap();
        fs::rename(spool.join(".chit.tmp"), spool.join("request").join(name)).unwrap();
    }

    /// Put `content` into the cache; returns a chit for it, delivered to
    /// `path`.
    fn cached(&self, content: &[u8], path: &str) -> String {
        let store = Store::open(&self.config.cache).unwrap();
        let hex = hex(&sha2::Sha256::digest(content));
        let digest = crate::chit::Digest::parse_hex(&hex).unwrap();
        let object = store.object_path(&digest);
        fs::create_dir_all(object.parent().unwrap()).unwrap();
        fs::write(&object, content).unwrap();
        format!("{hex}\n{}\n{path}\n", content.len())
    }

    /// The names in a state directory, sorted.
    fn names(&self, consumer: &str, state: &str) -> Vec<String> {
        names(&self.spool(consumer).join(state))
    }

    /// A scheduler of these consumers with `slots` local slots, not
    /// started.
    fn scheduler(&self, slots: usize) -> Scheduler {
        let (shared, _hints) = open(&self.config, &Options::default()).unwrap();
        let limits = LocalLimits {
            slots,
            commit_backlog: 2 * slots,
        };
        Scheduler::new(shared, limits, 1, true)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn exit_when_idle() -> Options {
    Options {
        exit_when_idle: true,
        ..Options::default()
    }
}

/// With one slot, the chits of a consumer with a flood of them and of
/// another take turns: the other's chit is the second to end, not the
/// 101st.
#[tokio::test(start_paused = true)]
async fn a_flood_in_one_spool_does_not_starve_another() {
    let fixture = Fixture::new(&["flood", "other"]);
    for i in 0..100 {
        fixture.drop_chit("flood", &format!("f{i:03}"), "not a chit\n");
    }
    fixture.drop_chit("other", "o", "not a chit either\n");
    let mut scheduler = fixture.scheduler(1);
    scheduler.start();
    let mut ended = Vec::new();
    loop {
        scheduler.admit();
        assert!(scheduler.local.chits() <= 1, "one slot");
        let Some(step) = scheduler.local.join_next().await else {
            break;
        };
        let Step::Batch(steps) = &step else {
            panic!("a chit's step is a batch's: {step:?}");
        };
        for step in steps {
            if let Step::Done(id) = step {
                ended.push((id.consumer, id.name.clone()));
            }
        }
        scheduler.step_done(step);
    }
    assert_eq!(ended.len(), 101);
    // The first is any of the flood (a directory lists in no set order).
    assert_eq!(ended[0].0, 0);
    assert_eq!(ended[1], (1, "o".into()), "{:?}", &ended[..3]);
    assert_eq!(fixture.names("flood", "fail").len(), 100);
    assert_eq!(fixture.names("other", "fail"), ["o"]);
    assert!(scheduler.is_idle());
}

/// Start `scheduler` and drive it in-process until no local step ends
/// for a second of paused time: `admitted` sees it after each admission,
/// `batch` the steps of each batch that ends.
async fn drive_batches(
    scheduler: &mut Scheduler,
    mut admitted: impl FnMut(&Scheduler),
    mut batch: impl FnMut(&[Step]),
) {
    scheduler.start();
    loop {
        scheduler.admit();
        admitted(scheduler);
        let step = tokio::select! {
            Some(step) = scheduler.local.join_next() => step,
            () = tokio::time::sleep(Duration::from_secs(1)) => break,
        };
        if let Step::Batch(steps) = &step {
            batch(steps);
        }
        scheduler.step_done(step);
    }
}

/// A burst of cache hits is worked on in batches of at most
/// [`BATCH_MOST`] chits, by at most [`LOCAL_TASKS`] tasks, within the
/// local slots; every chit is delivered and committed.
#[tokio::test(start_paused = true)]
async fn a_burst_of_hits_is_worked_on_in_batches() {
    let fixture = Fixture::new(&["one"]);
    for i in 0..60 {
        let chit = fixture.cached(format!("file {i}").as_bytes(), &format!("f{i}"));
        fixture.drop_chit("one", &format!("c{i:02}"), &chit);
    }
    let mut scheduler = fixture.scheduler(32);
    let mut largest = 0;
    let admitted = |scheduler: &Scheduler| {
        assert!(scheduler.local.tasks() <= LOCAL_TASKS);
        assert!(scheduler.local.chits() <= 32, "{}", scheduler.local.chits());
    };
    let batch = |steps: &[Step]| {
        assert!(steps.len() <= BATCH_MOST, "{}", steps.len());
        largest = largest.max(steps.len());
    };
    drive_batches(&mut scheduler, admitted, batch).await;
    assert_eq!(largest, BATCH_MOST, "chits share batches");
    assert_eq!(fixture.names("one", "downloaded").len(), 60);
    assert!(scheduler.is_idle());
}

/// A big file's cache hit is copied in a batch of its own, not holding up
/// the small ones it was claimed with.
#[tokio::test(start_paused = true)]
async fn a_big_hit_is_delivered_in_a_batch_of_its_own() {
    let fixture = Fixture::new(&["one"]);
    let big_size = usize::try_from(work::SOLO_MIN).unwrap();
    for i in 0..3u8 {
        let chit = fixture.cached(&vec![i; big_size], &format!("big{i}"));
        fixture.drop_chit("one", &format!("b{i}"), &chit);
    }
    for i in 0..10 {
        let chit = fixture.cached(format!("small {i}").as_bytes(), &format!("small{i}"));
        fixture.drop_chit("one", &format!("s{i}"), &chit);
    }
    let mut scheduler = fixture.scheduler(32);
    let mut big_delivered = 0;
    let batch = |steps: &[Step]| {
        for step in steps {
            if let Step::Commit(commit) = step
                && commit.path.starts_with("big")
            {
                assert_eq!(steps.len(), 1, "a big hit shares its batch");
                big_delivered += 1;
            }
        }
    };
    drive_batches(&mut scheduler, |_| {}, batch).await;
    assert_eq!(big_delivered, 3);
    assert_eq!(fixture.names("one", "downloaded").len(), 13);
    assert!(scheduler.is_idle());
}

/// `--exit-when-idle`: cache hits are delivered and committed (group
/// commits waiting [`COMMIT_LINGER`](super::super::COMMIT_LINGER) on the
/// paused clock), a bad chit failed, and then the daemon exits 0.
#[tokio::test(start_paused = true)]
async fn exit_when_idle_exits_once_every_chit_is_terminal() {
    let fixture = Fixture::new(&["a"]);
    let mut expected = Vec::new();
    for i in 0..40 {
        let name = format!("hit{i:02}");
        let content = format!("content {i}\n");
        let chit = fixture.cached(content.as_bytes(), &format!("dir/{name}.bin"));
        fixture.drop_chit("a", &name, &chit);
        expected.push(name);
    }
    fixture.drop_chit("a", "bad", "not a chit\n");
    run(
        fixture.config.clone(),
        exit_when_idle(),
        Reloads::none(),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(fixture.names("a", "downloaded"), expected);
    assert_eq!(fixture.names("a", "fail"), ["bad"]);
    assert!(fixture.names("a", "request").is_empty());
    assert!(fixture.names("a", "fetch").is_empty());
    let delivered = fixture.dir.path().join("a/deliver/dir");
    assert_eq!(names(&delivered).len(), 40);
    assert_eq!(
        fs::read_to_string(delivered.join("hit07.bin")).unwrap(),
        "content 7\n"
    );
}

/// A chit that cannot reach `fail/` (a directory of the consumer's of its
/// name is there) makes `--exit-when-idle` exit with an error naming it,
/// and stays in `fetch/`.
#[tokio::test(start_paused = true)]
async fn exit_when_idle_with_only_stuck_chits_left_fails_naming_them() {
    let fixture = Fixture::new(&["a"]);
    let blocker = fixture.spool("a").join("fail/odd");
    fs::create_dir_all(&blocker).unwrap();
    fs::write(blocker.join("inner"), "the consumer's\n").unwrap();
    fixture.drop_chit("a", "odd", "not a chit\n");
    fixture.drop_chit("a", "fine", "not a chit either\n");
    let error = run(
        fixture.config.clone(),
        exit_when_idle(),
        Reloads::none(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let DaemonError::Stuck(chits) = error else {
        panic!("not stuck: {error}")
    };
    assert_eq!(chits, "1 chit(s) (a/odd)");
    assert_eq!(fixture.names("a", "fetch"), ["odd"]);
    assert_eq!(fixture.names("a", "fail"), ["fine", "odd"]);
}

/// Serving, a stuck chit is tried again at the rescans after 2, 4, 8 ...
/// times [`STUCK_RETRY_FIRST`], not at every rescan: in 20 s of rescans
/// every 2 s, at 0, 2, 6 and 14 s. Then a chit dropped while serving is
/// still served, and shutdown ends it all, removing the status file.
#[tokio::test(start_paused = true)]
async fn a_stuck_chit_backs_off_while_serving_until_shutdown() {
    assert_eq!(STUCK_RETRY_FIRST, RESCAN_INTERVAL);
    let fixture = Fixture::new(&["a"]);
    let blocker = fixture.spool("a").join("fail/odd");
    fs::create_dir_all(&blocker).unwrap();
    fs::write(blocker.join("inner"), "the consumer's\n").unwrap();
    fixture.drop_chit("a", "odd", "not a chit\n");
    let (shared, hints) = open(&fixture.config, &Options::default()).unwrap();
    let limits = LocalLimits::for_open_files(None, 1, 1);
    let mut scheduler = Scheduler::new(shared, limits, 1, true);
    scheduler.start();
    let start = Instant::now();
    let status = fixture.spool("a").join(STATUS_FILE);
    let shutdown = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(status.exists(), "the status file is written while serving");
        fixture.drop_chit("a", "later", "not a chit\n");
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    scheduler
        .serve(
            &Options::default(),
            hints,
            Notifier::off(),
            Reloads::none(),
            shutdown,
        )
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(20));
    assert!(!status.exists(), "the status file is removed at shutdown");
    assert_eq!(fixture.names("a", "fail"), ["later", "odd"]);
    assert_eq!(fixture.names("a", "fetch"), ["odd"]);
    // Stuck four times: the next delay is the fifth, 2^4 times the first.
    let id = ChitId::new(0, "odd");
    assert!(scheduler.stuck.is_stuck(0, id.name.as_os_str()));
    let next = scheduler.stuck.stuck(id, Instant::now());
    assert_eq!(next, 16 * STUCK_RETRY_FIRST);
}
