//! "The daemon never writes outside the consumer's spool and delivery
//! directories and its own cache/state directories, whatever a chit or the
//! consumer's directories contain (symlinks, hard links, `..`, races)."
//!
//! Each test plants something in a consumer's directories that points at a
//! file or directory outside them, and checks that it is untouched.

use std::fs;
use std::os::unix::fs::symlink;

use crate::server::Server;
use crate::util::{Content, Daemon, State, TIMEOUT, Terminal, TestDir};

/// A chit that is bound to fail (nothing serves its URL), so the daemon
/// appends an error line to it.
fn failing_chit(server: &Server) -> String {
    Content::random(100).chit("f.bin", &[server.url("/missing")])
}

#[test]
fn symlinked_directory_in_the_delivery_path_is_not_followed() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let outside = dir.join("outside");
    fs::create_dir(&outside).unwrap();
    symlink(&outside, spool.deliver.join("evil")).unwrap();
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    spool.drop_chit("f", content.chit("evil/f.bin", &[server.url("/f")]));

    Daemon::run_until_idle(&dir, &spool);

    let leaked: Vec<_> = fs::read_dir(&outside).unwrap().collect();
    assert!(leaked.is_empty(), "wrote through the symlink: {leaked:?}");
    let terminal = spool.wait_terminal("f", TIMEOUT);
    if terminal == Terminal::Downloaded {
        let delivered = spool.delivered_path("evil/f.bin");
        assert_eq!(fs::read(delivered).unwrap(), content.bytes);
    }
}

#[test]
fn symlink_at_the_delivery_path_is_replaced_not_written_through() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let precious = dir.write("outside/precious", "do not touch\n");
    symlink(&precious, spool.deliver.join("f.bin")).unwrap();
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));

    Daemon::run_until_idle(&dir, &spool);

    assert_eq!(fs::read_to_string(&precious).unwrap(), "do not touch\n");
    if spool.wait_terminal("f", TIMEOUT) == Terminal::Downloaded {
        let delivered = spool.delivered_path("f.bin");
        let kind = fs::symlink_metadata(&delivered).unwrap().file_type();
        assert!(kind.is_file(), "{} is still a symlink", delivered.display());
        assert_eq!(fs::read(delivered).unwrap(), content.bytes);
    }
}

#[test]
fn symlinked_chit_does_not_get_its_target_written() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let text = failing_chit(&server);
    let target = dir.write("outside/chit", &text);
    symlink(&target, spool.state_dir(State::Request).join("evil")).unwrap();

    Daemon::run_until_idle(&dir, &spool);

    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        text,
        "target modified"
    );
    assert!(
        spool.states_of("evil").len() == 1,
        "the chit must end in exactly one state: {}",
        spool.describe()
    );
}

#[test]
fn hard_linked_chit_does_not_get_the_other_link_written() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let server = Server::start();
    let text = failing_chit(&server);
    let other = dir.write("outside/chit", &text);
    fs::hard_link(&other, spool.state_dir(State::Request).join("linked")).unwrap();

    Daemon::run_until_idle(&dir, &spool);

    assert_eq!(
        fs::read_to_string(&other).unwrap(),
        text,
        "other link modified"
    );
    assert_eq!(
        spool.states_of("linked"),
        [State::Fail],
        "{}",
        spool.describe()
    );
    let failed = spool.read_chit(State::Fail, "linked");
    assert!(crate::util::error_reason(&failed).is_some(), "{failed:?}");
}

#[test]
fn a_consumer_that_breaks_its_own_spool_does_not_stop_the_others() {
    let dir = TestDir::new();
    let good = dir.spool("good");
    let evil = dir.spool("evil");
    // The evil consumer swaps its request/ for a symlink to somewhere else.
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir(evil.state_dir(State::Request)).unwrap();
    symlink(&elsewhere, evil.state_dir(State::Request)).unwrap();
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    good.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let config = crate::util::ConfigFile::for_consumers(&dir, &[&good, &evil]);

    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);

    good.assert_delivered("f", "f.bin", &content);
    assert!(
        daemon.log().contains("not serving this consumer"),
        "{}",
        daemon.log()
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}
