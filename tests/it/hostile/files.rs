//! Attacks through the file system: what a consumer plants in its spool and
//! delivery directories (symlinks, hard links, FIFOs, sockets, devices,
//! directories), including a symlink swapped in while chitd delivers.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

use super::{Setup, assert_reason};
use crate::util::{Daemon, State, TIMEOUT, Terminal, run_cli, wait_until};

#[test]
fn symlinked_delivery_subdirectory_pointing_outside_fails_the_chit() {
    let setup = Setup::new();
    let spool = &setup.spool;
    symlink(&setup.outside.root, spool.deliver.join("evil")).unwrap();
    // Deeper too: a real directory, then a symlink to the outside subdir.
    fs::create_dir(spool.deliver.join("real")).unwrap();
    symlink(
        setup.outside.root.join("subdir"),
        spool.deliver.join("real/evil"),
    )
    .unwrap();
    let (content, _) = setup.serve("/f", 1_000);
    spool.drop_chit("top", content.chit("evil/f.bin", &[setup.server.url("/f")]));
    spool.drop_chit(
        "deep",
        content.chit("real/evil/new/f.bin", &[setup.server.url("/f")]),
    );
    let _daemon = setup.start();

    for (name, link) in [("top", "evil"), ("deep", "real/evil")] {
        let reason = spool.expect_failed(name);
        assert_reason(&reason, &["cannot deliver", "symbolic link", link]);
    }
    assert!(spool.delivery_temporaries().is_empty());
    setup.still_serving();
}

/// A racer swaps `deliver/sub` between a real directory and a symlink to
/// the outside directory (and to a file outside) as fast as it can, while
/// chitd delivers chits into `sub/`. Whatever wins each race, no byte may
/// land outside: each chit is delivered into a real directory beneath the
/// delivery directory, or fails with a reason.
#[test]
fn symlink_swapped_in_during_delivery_never_redirects_a_write() {
    const CHITS: usize = 300;
    let setup = Setup::new();
    let spool = &setup.spool;
    let (content, chit) = setup.serve("/f", 4_000);
    let _daemon = setup.start();
    // Cache the object first, so the raced chits are fast cache hits.
    spool.drop_chit("seed", chit);
    spool.expect_downloaded("seed");

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = Arc::clone(&stop);
        let deliver = spool.deliver.clone();
        let targets = [setup.outside.root.clone(), setup.outside.file()];
        std::thread::spawn(move || race(&deliver, &targets, &stop))
    };
    for i in 0..CHITS {
        let text = content.chit(&format!("sub/f{i}.bin"), &[setup.server.url("/f")]);
        spool.drop_chit(&format!("c{i}"), text);
    }
    let mut delivered = 0;
    for i in 0..CHITS {
        match spool.wait_terminal(&format!("c{i}"), TIMEOUT) {
            Terminal::Downloaded => delivered += 1,
            Terminal::Failed(reason) => assert_reason(&reason, &["cannot deliver", "sub"]),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{swaps} swaps; {delivered} of {CHITS} chits delivered, the rest failed");
    assert!(swaps > 10, "the racer barely ran ({swaps} swaps)");

    setup.outside.assert_untouched();
    // Every delivered file is a whole, regular file in a real directory
    // beneath the delivery directory (where the racer moved `sub` to).
    let mut found = 0;
    for entry in fs::read_dir(&spool.deliver).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        for file in fs::read_dir(entry.path()).unwrap() {
            let file = file.unwrap();
            assert!(file.file_type().unwrap().is_file(), "{:?}", file.path());
            assert_eq!(fs::read(file.path()).unwrap(), content.bytes);
            found += 1;
        }
    }
    assert!(
        found >= delivered,
        "{found} files for {delivered} deliveries"
    );
    assert!(spool.delivery_temporaries().is_empty());
    setup.still_serving();
}

/// Swap `<deliver>/sub` until `stop`: real directory (moved aside when
/// replaced, so deliveries into it stay inside), then a symlink to each
/// target in turn. Returns the number of swaps.
fn race(deliver: &Path, targets: &[std::path::PathBuf], stop: &AtomicBool) -> usize {
    let sub = deliver.join("sub");
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) {
        let _ = fs::create_dir(&sub);
        std::thread::yield_now();
        let _ = fs::rename(&sub, deliver.join(format!("moved-{swaps}")));
        let _ = symlink(&targets[swaps % targets.len()], &sub);
        std::thread::yield_now();
        let _ = fs::remove_file(&sub);
        swaps += 1;
    }
    // Leave `sub` as a real directory, as a consumer might.
    let _ = fs::create_dir(&sub);
    swaps
}

#[test]
fn chit_that_is_a_symlink_to_an_outside_file_is_failed_unread() {
    let mut setup = Setup::new();
    // Outside sits a perfectly good chit: following the link would deliver.
    let (_, chit) = setup.serve("/f", 1_000);
    let target = setup.outside.add("chit", chit.as_bytes());
    let request = setup.spool.state_dir(State::Request);
    symlink(&target, request.join("evil")).unwrap();
    symlink(setup.outside.file(), request.join("evil2")).unwrap();
    let _daemon = setup.start();

    for name in ["evil", "evil2"] {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, &["not a regular file", "symbolic link", name]);
        let failed = setup.spool.state_dir(State::Fail).join(name);
        let kind = fs::symlink_metadata(&failed).unwrap().file_type();
        assert!(kind.is_file(), "fail/{name} must be chitd's own file");
    }
    assert_eq!(setup.server.gets("/f"), 0, "the link was followed");
    setup.still_serving();
}

#[test]
fn chit_that_is_a_hard_link_to_an_outside_file_is_failed_unwritten() {
    let mut setup = Setup::new();
    let (_, chit) = setup.serve("/f", 1_000);
    let target = setup.outside.add("chit", chit.as_bytes());
    fs::hard_link(
        &target,
        setup.spool.state_dir(State::Request).join("linked"),
    )
    .unwrap();
    let _daemon = setup.start();

    let reason = setup.spool.expect_failed("linked");
    assert_reason(&reason, &["hard links"]);
    let failed = setup.spool.state_dir(State::Fail).join("linked");
    assert_ne!(
        fs::metadata(&failed).unwrap().ino(),
        fs::metadata(&target).unwrap().ino(),
        "fail/linked must be a new file, not the outside file's inode"
    );
    assert_eq!(setup.server.gets("/f"), 0, "the linked chit was acted on");
    // The snapshot includes the link count: back to 1.
    setup.still_serving();
}

/// FIFOs, sockets and devices are refused with a reason naming what they
/// are, and never opened (inotify sees no `IN_OPEN` on them): opening a
/// device runs its driver, opening a FIFO can block.
#[test]
fn chit_that_is_a_fifo_socket_or_device_is_failed_and_never_opened() {
    let setup = Setup::new();
    let request = setup.spool.state_dir(State::Request);
    let mut planted = vec![("fifo", "FIFO"), ("socket", "socket")];
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        request.join("fifo"),
        rustix::fs::Mode::from_raw_mode(0o666),
    )
    .unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(request.join("socket")).unwrap();
    let device = rustix::fs::mknodat(
        rustix::fs::CWD,
        request.join("device"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3), // /dev/null
    );
    match device {
        Ok(()) => planted.push(("device", "character device")),
        Err(e) => eprintln!("skipping the device chit: cannot mknod ({e}); needs CAP_MKNOD"),
    }
    let watch = Opens::watch(&[&request, &setup.spool.state_dir(State::Fetch)]);
    let _daemon = setup.start();

    for (name, kind) in &planted {
        let reason = setup.spool.expect_failed(name);
        assert_reason(&reason, &["not a regular file", kind, name]);
    }
    let opened = watch.opened();
    for (name, _) in &planted {
        assert!(!opened.contains(&name.to_string()), "{name} was opened");
    }
    setup.still_serving();
}

/// A chit that is a directory cannot carry an `# error:` line: it goes to
/// `fail/` as it is, with the line in a new file inside it, `.chitd-error`.
/// The consumer's files in it are kept, and a symlink of that name is
/// neither followed nor replaced (that directory goes to `fail/` without
/// the file, and the log says why).
#[test]
fn chit_that_is_a_directory_goes_to_fail_with_the_reason_inside() {
    let setup = Setup::new();
    let request = setup.spool.state_dir(State::Request);
    fs::create_dir(request.join("dir")).unwrap();
    fs::write(request.join("dir/inner"), "a consumer's file\n").unwrap();
    // One with a symlink of the reason file's name, to outside: chitd
    // neither follows nor replaces it, and the directory still fails.
    fs::create_dir(request.join("linked")).unwrap();
    symlink(
        setup.outside.file(),
        request.join("linked").join(REASON_FILE),
    )
    .unwrap();
    let daemon = setup.start();

    let failed = setup.spool.state_dir(State::Fail);
    for name in ["dir", "linked"] {
        wait_until(TIMEOUT, "the directory chit to reach fail/", || {
            failed.join(name).is_dir().then_some(())
        });
        assert_eq!(setup.spool.states_of(name), [State::Fail]);
    }
    let reason = fs::read_to_string(failed.join("dir").join(REASON_FILE)).unwrap();
    assert!(
        reason.starts_with("# error: ") && reason.ends_with('\n'),
        "{reason:?}"
    );
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    assert_reason(&reason, &["is a directory", "fetch/dir"]);
    assert_eq!(
        fs::read_to_string(failed.join("dir/inner")).unwrap(),
        "a consumer's file\n"
    );
    let link = failed.join("linked").join(REASON_FILE);
    assert_eq!(fs::read_link(&link).unwrap(), setup.outside.file());
    assert!(
        daemon.log().contains("without a .chitd-error file"),
        "the log should say why linked/ has no reason file:\n{}",
        daemon.log()
    );
    setup.still_serving();
}

/// An empty directory dropped again under the name of one that already
/// failed (`mkdir request/x` run twice): the earlier `fail/x/`, holding
/// only chitd's reason file, is replaced like any earlier outcome, and the
/// new one fails too, with its reason; the chit is never stuck.
#[test]
fn a_directory_chit_dropped_again_fails_again() {
    let setup = Setup::new();
    let request = setup.spool.state_dir(State::Request);
    let failed = setup.spool.state_dir(State::Fail);
    let _daemon = setup.start();
    for round in 0..2 {
        fs::create_dir(request.join("x")).unwrap();
        wait_until(TIMEOUT, "the directory chit to reach fail/", || {
            (!request.join("x").exists() && !setup.spool.state_dir(State::Fetch).join("x").exists())
                .then_some(())
        });
        assert_eq!(setup.spool.states_of("x"), [State::Fail], "round {round}");
        let reason = fs::read_to_string(failed.join("x").join(REASON_FILE)).unwrap();
        assert_reason(&reason, &["is a directory"]);
    }
    setup.still_serving();
}

/// The file a chit that is a directory gets its `# error:` line in.
const REASON_FILE: &str = ".chitd-error";

/// chitd's temporaries are named `.<name>.chitd-<pid>.<n>`, `<n>` counting
/// up from 0 in each run: a consumer that knows chitd's pid can plant
/// something under each name chitd is about to use, in its delivery
/// directory (a delivery's temporary) and in `fetch/` (a failed chit being
/// rebuilt). Symlinks to outside files, dangling symlinks into the outside
/// and regular files planted under the next names are neither followed nor
/// written (each is created `O_EXCL`), and cost no chit: chitd takes
/// another, random name, and both chits land where they should. (A
/// delivery to a new name needs no temporary name where the file system
/// makes unnamed files; one that replaces a file does: the target is
/// there already.)
#[test]
fn things_planted_under_chitds_next_temporary_names_redirect_nothing_and_cost_no_chit() {
    const PLANTED: u32 = 256;
    let setup = Setup::new();
    let (content, chit) = setup.serve("/planted", 3_000);
    let mut daemon = setup.start();
    let pid = daemon.pid();
    // Past its start-up sweep (which removes temporaries of earlier runs)
    // once it has delivered a first chit.
    let (_, warm_up) = setup.serve("/warm-up", 1_000);
    setup.spool.drop_chit("warm-up", warm_up);
    setup.spool.expect_downloaded("warm-up");
    let fetch = setup.spool.state_dir(State::Fetch);
    let deliver = &setup.spool.deliver;
    let planted = [(deliver, "good-planted.bin"), (&fetch, "bad")];
    for (dir, name) in planted {
        for n in 0..PLANTED {
            plant_at_temporary_name(&setup, &dir.join(format!(".{name}.chitd-{pid}.{n}")), n);
        }
    }

    fs::write(deliver.join("good-planted.bin"), "an older copy\n").unwrap();
    setup.spool.drop_chit("good", &chit);
    setup.spool.drop_chit("bad", "not a chit\n");
    setup.spool.expect_downloaded("good");
    setup
        .spool
        .assert_delivered("good", "good-planted.bin", &content);
    let reason = setup.spool.expect_failed("bad");
    assert_reason(&reason, &["bad chit"]);
    assert!(
        setup
            .spool
            .read_chit(State::Fail, "bad")
            .starts_with("not a chit\n# error: "),
        "the failed chit keeps its bytes"
    );

    let log = daemon.log();
    for (dir, name) in planted {
        let planted_name = dir.join(format!(".{name}.chitd-{pid}."));
        let planted_name = planted_name.to_str().unwrap();
        assert!(
            log.lines().any(|line| line.contains(planted_name)
                && line.contains("File exists")
                && line.contains("trying another temporary name")),
            "chitd should have met a planted name in {} and taken another:\n{log}",
            dir.display()
        );
        for n in 0..PLANTED {
            assert_planted_untouched(&setup, &dir.join(format!(".{name}.chitd-{pid}.{n}")), n);
        }
    }
    setup.still_serving();
}

/// Plant, at `path`, one of three things by `n`: a symlink to a file
/// outside, a dangling symlink to a name outside (a write through it would
/// create that file), or a regular file.
fn plant_at_temporary_name(setup: &Setup, path: &Path, n: u32) {
    match n % 3 {
        0 => symlink(setup.outside.file(), path).unwrap(),
        1 => symlink(setup.outside.root.join("made-through-a-symlink"), path).unwrap(),
        _ => fs::write(path, "planted by the consumer\n").unwrap(),
    }
}

/// What [`plant_at_temporary_name`] planted at `path` is still there, as
/// it was.
fn assert_planted_untouched(setup: &Setup, path: &Path, n: u32) {
    let shown = path.display();
    match n % 3 {
        0 => assert_eq!(
            fs::read_link(path).unwrap(),
            setup.outside.file(),
            "{shown}"
        ),
        1 => assert_eq!(
            fs::read_link(path).unwrap(),
            setup.outside.root.join("made-through-a-symlink"),
            "{shown}"
        ),
        _ => assert_eq!(
            fs::read_to_string(path).unwrap(),
            "planted by the consumer\n",
            "{shown}"
        ),
    }
}

/// A non-empty directory a consumer plants at `path`, so that nothing can
/// be renamed onto it (not even by root).
fn plant_blocker(path: &Path) -> std::path::PathBuf {
    fs::create_dir(path).unwrap();
    fs::write(path.join("inner"), "a consumer's file\n").unwrap();
    path.to_path_buf()
}

fn assert_blocker_untouched(blocker: &Path) {
    assert_eq!(
        fs::read_to_string(blocker.join("inner")).unwrap(),
        "a consumer's file\n"
    );
}

/// A consumer can make a chit impossible to fail: a non-empty directory of
/// its name planted in `fail/` (the rename onto it is refused, even to
/// root). The chit stays in `fetch/`, never lost; the running daemon keeps
/// serving and tries it again less and less often; and `--exit-when-idle`
/// exits 1 naming it instead of retrying it forever.
#[test]
fn chit_that_cannot_reach_fail_is_kept_and_exit_when_idle_says_so() {
    let setup = Setup::new();
    let blocker = plant_blocker(&setup.spool.state_dir(State::Fail).join("stuck"));
    setup.spool.drop_chit("stuck", "not a chit\n");

    let kept = setup.spool.state_dir(State::Fetch).join("stuck");
    let daemon = setup.start();
    wait_until(TIMEOUT, "the failure to fail the chit", || {
        daemon
            .log()
            .contains("cannot move the chit to fail/")
            .then_some(())
    });
    assert!(kept.is_file());
    setup.still_serving();
    // Tried again later, and later still: not at every rescan.
    wait_until(TIMEOUT, "the second retry to be put off longer", || {
        daemon.log().contains("trying again in 4s").then_some(())
    });
    let log = daemon.log();
    assert!(
        log.contains("stuck (see the error above); trying again in 2s"),
        "{log}"
    );
    // Removed by its consumer: forgotten (and the test puts it back).
    let text = fs::read(&kept).unwrap();
    fs::remove_file(&kept).unwrap();
    wait_until(TIMEOUT, "the removed stuck chit to be forgotten", || {
        daemon
            .log()
            .contains("the stuck chit is gone from request/ and fetch/; forgotten")
            .then_some(())
    });
    drop(daemon);
    fs::write(&kept, text).unwrap();

    let mut daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .exit_when_idle()
        .start();
    let status = daemon.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("stuck: 1 chit(s) (default/stuck)")
            && log.contains("cannot move the chit to fail/")
            && !log.contains("trying again"),
        "{log}"
    );
    // Kept, with the reason it could not take along.
    let text = fs::read_to_string(&kept).unwrap();
    assert!(
        text.starts_with("not a chit\n# error: bad chit: line 1"),
        "{text}"
    );
    assert_blocker_untouched(&blocker);
}

/// A consumer can also keep a delivered chit out of `downloaded/`: a
/// non-empty directory of its name planted there. The file is delivered,
/// but the chit goes to `fail/` saying why, instead of staying in `fetch/`
/// to be delivered again at every scan (and `--exit-when-idle` exits 0).
#[test]
fn chit_that_cannot_reach_downloaded_is_failed_with_the_reason() {
    let setup = Setup::new();
    let blocker = plant_blocker(&setup.spool.state_dir(State::Downloaded).join("blocked"));
    let (content, chit) = setup.serve("/blocked", 3_000);
    setup.spool.drop_chit("blocked", chit);

    let mut daemon = Daemon::for_spool(&setup.dir, &setup.spool)
        .exit_when_idle()
        .start();
    let status = daemon.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let failed = fs::read_to_string(setup.spool.state_dir(State::Fail).join("blocked")).unwrap();
    let reason = failed.lines().last().unwrap();
    assert_reason(
        reason,
        &[
            "# error: good-blocked.bin was delivered",
            "the chit cannot move to downloaded/",
        ],
    );
    assert!(!setup.spool.state_dir(State::Fetch).join("blocked").exists());
    assert_eq!(
        fs::read(setup.spool.delivered_path("good-blocked.bin")).unwrap(),
        content.bytes
    );
    assert_blocker_untouched(&blocker);
}

/// A state directory replaced by a symlink (here `fail/` pointing outside):
/// the daemon refuses to start, naming it, rather than write through it.
#[test]
fn state_directory_that_is_a_symlink_stops_the_start_with_a_reason() {
    let setup = Setup::new();
    let fail = setup.spool.state_dir(State::Fail);
    fs::remove_dir(&fail).unwrap();
    symlink(&setup.outside.root, &fail).unwrap();
    setup.spool.drop_chit("bad", "not a chit\n");

    let mut daemon = Daemon::for_spool(&setup.dir, &setup.spool).start();
    let status = daemon.wait_exit(TIMEOUT);
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains("symbolic link") && log.contains("fail"),
        "the error should name the symlinked state directory: {log}"
    );
    setup.outside.assert_untouched();
}

/// The daemon's status file in the spool root: a symlink planted there is
/// replaced, not written through; and `chitd status` does not hang on a
/// FIFO planted there.
#[test]
fn status_file_planted_as_symlink_or_fifo_is_neither_followed_nor_read() {
    let setup = Setup::new();
    let status_file = setup.spool.spool.join(".chitd-status.json");
    symlink(setup.outside.file(), &status_file).unwrap();
    // A slow download, so that there is progress to publish.
    let (content, chit) = setup.serve("/slow", 64 * 1024);
    setup.server.set_fault(
        "/slow",
        crate::server::Fault::SlowDrip {
            bytes_per_tick: 4 * 1024,
            tick: Duration::from_millis(100),
        },
    );
    let _daemon = setup.start();
    setup.spool.drop_chit("slow", chit);
    wait_until(TIMEOUT, "the status file to be published", || {
        fs::symlink_metadata(&status_file)
            .is_ok_and(|m| m.is_file())
            .then_some(())
    });
    setup.outside.assert_untouched();
    setup.spool.expect_downloaded("slow");
    assert_eq!(
        fs::read(setup.spool.delivered_path("good-slow.bin")).unwrap(),
        content.bytes
    );

    let other = setup.dir.spool("other");
    let planted = other.spool.join(".chitd-status.json");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &planted,
        rustix::fs::Mode::from_raw_mode(0o666),
    )
    .unwrap();
    let spool_arg = other.spool.to_string_lossy().into_owned();
    let output = run_cli(&setup.dir, ["status", "--spool", &spool_arg], TIMEOUT);
    assert_eq!(output.code, Some(0), "{}", output.all_output());
    setup.still_serving();
}

/// Which names in some directories get opened (inotify `IN_OPEN`).
struct Opens {
    inotify: OwnedFd,
}

impl Opens {
    fn watch(dirs: &[&Path]) -> Opens {
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).unwrap();
        for dir in dirs {
            inotify::add_watch(&inotify, *dir, WatchFlags::OPEN).unwrap();
        }
        Opens { inotify }
    }

    fn opened(&self) -> Vec<String> {
        let mut buffer = [std::mem::MaybeUninit::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buffer);
        let mut names = Vec::new();
        while let Ok(event) = reader.next() {
            if let Some(name) = event.file_name() {
                names.push(name.to_string_lossy().into_owned());
            }
        }
        names
    }
}

/// A consumer that owns the directory above its roots swaps its spool and
/// delivery directories for symlinks to the outside while the daemon runs.
/// Every write chitd makes goes through descriptors opened at start, so it
/// keeps landing in the original (moved) directories: the delivery, the
/// chit's transitions, and the status file published during a download.
#[test]
fn roots_swapped_for_symlinks_while_running_redirect_nothing() {
    let setup = Setup::new();
    let spool = &setup.spool;
    let (content, chit) = setup.serve("/slow", 32 * 1024);
    setup.server.set_fault(
        "/slow",
        crate::server::Fault::SlowDrip {
            bytes_per_tick: 4 * 1024,
            tick: Duration::from_millis(100),
        },
    );
    let _daemon = setup.start();
    let status_file = spool.spool.join(".chitd-status.json");
    wait_until(TIMEOUT, "the first status publication", || {
        status_file.exists().then_some(())
    });

    let moved_spool = spool.spool.with_file_name("spool-moved");
    let moved_deliver = spool.deliver.with_file_name("deliver-moved");
    fs::rename(&spool.spool, &moved_spool).unwrap();
    fs::rename(&spool.deliver, &moved_deliver).unwrap();
    symlink(&setup.outside.root, &spool.spool).unwrap();
    symlink(setup.outside.root.join("subdir"), &spool.deliver).unwrap();
    let request = moved_spool.join("request");
    fs::write(request.join(".slow.tmp"), chit).unwrap();
    fs::rename(request.join(".slow.tmp"), request.join("slow")).unwrap();

    let downloaded = moved_spool.join("downloaded/slow");
    wait_until(
        TIMEOUT,
        "the chit to be downloaded in the moved spool",
        || downloaded.exists().then_some(()),
    );
    assert_eq!(
        fs::read(moved_deliver.join("good-slow.bin")).unwrap(),
        content.bytes
    );
    setup.outside.assert_untouched();
}

/// The same with the roots removed (not moved) and symlinks put in their
/// place, to a directory laid out as a spool with a chit waiting in it and
/// to the outside: chitd never opens a root by its path again while it
/// runs, so it serves neither; it says the roots are gone until a restart.
#[test]
fn roots_removed_and_replaced_by_symlinks_while_running_redirect_nothing() {
    let setup = Setup::new();
    let spool = &setup.spool;
    let (_, chit) = setup.serve("/file", 4096);
    let mut daemon = setup.start();
    spool.drop_chit("before", &chit);
    spool.expect_downloaded("before");

    let elsewhere = setup.dir.join("elsewhere");
    for state in State::ALL {
        fs::create_dir_all(elsewhere.join(state.dir_name())).unwrap();
    }
    fs::write(elsewhere.join("request/theirs"), &chit).unwrap();
    fs::remove_dir_all(&spool.spool).unwrap();
    fs::remove_dir_all(&spool.deliver).unwrap();
    symlink(&elsewhere, &spool.spool).unwrap();
    symlink(setup.outside.root.join("subdir"), &spool.deliver).unwrap();

    wait_until(TIMEOUT, "the removed roots to be reported", || {
        let log = daemon.log();
        (log.contains("served again after a restart of chitd")
            && log.contains("deliveries to this consumer fail until chitd is restarted"))
        .then_some(())
    });
    // The scan that reported them looked for new state directories first.
    assert!(
        elsewhere.join("request/theirs").exists(),
        "a chit elsewhere was claimed"
    );
    daemon.sigterm();
    setup.outside.assert_untouched();
}

/// A consumer that removes a state directory while chitd runs: chitd says
/// so, a chit it cannot claim meanwhile stays where it is (never lost), and
/// once the consumer makes the directory again chitd serves the new one.
#[test]
fn state_directory_replaced_while_running_is_reported_and_loses_nothing() {
    let setup = Setup::new();
    let (content, chit) = setup.serve("/file", 4096);
    let mut daemon = setup.start();
    setup.spool.drop_chit("before", &chit);
    setup.spool.expect_downloaded("before");
    let fetch = setup.spool.state_dir(State::Fetch);
    fs::remove_dir(&fetch).unwrap();
    setup.spool.drop_chit("after", &chit);
    wait_until(TIMEOUT, "the removed fetch/ to be reported", || {
        let log = daemon.log();
        (log.contains("cannot claim the chit")
            && log.contains("was removed or replaced while chitd runs"))
        .then_some(())
    });
    assert_eq!(setup.spool.states_of("after"), [State::Request]);

    fs::create_dir(&fetch).unwrap();
    setup.spool.expect_downloaded("after");
    assert!(daemon.log().contains("state directories made anew"));
    daemon.sigterm();
    for name in ["before", "after"] {
        setup
            .spool
            .assert_delivered(name, "good-file.bin", &content);
    }
}
