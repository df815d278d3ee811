//! A low limit on open files. chitd fits its local work to the limit it
//! runs under, and a chit that meets the limit anyway (chitd out of
//! descriptors is no fault of the chit) is tried again, never failed for
//! it, and never rewritten without its lines.

use crate::server::Server;
use crate::util::{Content, Daemon, State, TIMEOUT, TestDir};

/// Soft and hard: chitd cannot raise it.
const LIMIT: u64 = 200;
/// Each into a directory of its own.
const CHITS: usize = 600;

#[test]
fn under_a_low_open_files_limit_every_chit_is_delivered() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(4096);
    server.add("/f.bin", content.bytes.clone());
    let spool = dir.spool("low");
    spool.drop_chits_into_own_dirs(&content, &server.url("/f.bin"), "f.bin", CHITS);
    let mut daemon = Daemon::for_spool(&dir, &spool)
        .open_files_limit(LIMIT)
        .exit_when_idle()
        .start();
    daemon.expect_success(TIMEOUT);

    let failed = spool.chits_in(State::Fail);
    assert!(
        failed.is_empty(),
        "{} chits failed, e.g. {}: {}",
        failed.len(),
        failed[0],
        spool.read_chit(State::Fail, &failed[0])
    );
    assert_eq!(spool.chits_in(State::Downloaded).len(), CHITS);
    for i in (0..CHITS).step_by(61) {
        spool.assert_delivered(&format!("c{i:04}"), &format!("d{i:04}/f.bin"), &content);
    }
    assert_eq!(server.gets("/f.bin"), 1, "one download for all");
    let log = daemon.log();
    assert!(
        log.contains("the open files limit allows"),
        "the limit's effect is not logged:\n{log}"
    );
    assert!(
        !log.contains("Too many open files"),
        "ran out of descriptors:\n{log}"
    );
}
