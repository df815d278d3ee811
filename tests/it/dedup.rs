//! "Two chits with the same digest cause at most one upstream download",
//! whether they arrive together, while the download runs, or later.

use std::time::Duration;

use crate::server::{Fault, Server};
use crate::util::{ConfigFile, Content, Daemon, TIMEOUT, TestDir, wait_until};

/// 1 MiB: early-delivered to its first chit while it downloads (see
/// `chase`), the others are copied from the cache.
#[test]
fn twenty_chits_for_one_digest_across_five_consumers_make_one_get() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(1 << 20);
    server.add("/big", content.bytes.clone());
    // Slow enough that the second wave arrives while the download runs.
    let drip = Fault::SlowDrip {
        bytes_per_tick: 64 * 1024,
        tick: Duration::from_millis(50),
    };
    server.set_fault("/big", drip);
    let consumers: Vec<_> = (0..5).map(|i| dir.spool(&format!("c{i}"))).collect();
    let chit = |n: usize| content.chit(&format!("copy{n}/big.bin"), &[server.url("/big")]);
    // Early delivery goes only into directories that exist.
    for consumer in &consumers {
        for n in 0..4 {
            std::fs::create_dir_all(consumer.deliver.join(format!("copy{n}"))).unwrap();
        }
    }
    for consumer in &consumers {
        for n in 0..2 {
            consumer.drop_chit(&format!("big{n}"), chit(n));
        }
    }
    let config = ConfigFile {
        cache: Some(dir.cache()),
        jobs: Some(4),
        consumers: consumers.clone(),
        ..ConfigFile::default()
    }
    .write(&dir, "chitd.toml");

    let mut daemon = Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start();
    wait_until(TIMEOUT, "the download to start", || {
        (server.bytes_served_for("/big") > 0).then_some(())
    });
    for consumer in &consumers {
        for n in 2..4 {
            consumer.drop_chit(&format!("big{n}"), chit(n));
        }
    }
    daemon.expect_success(TIMEOUT);

    for consumer in &consumers {
        for n in 0..4 {
            consumer.assert_delivered(&format!("big{n}"), &format!("copy{n}/big.bin"), &content);
        }
        assert_eq!(
            consumer.delivery_temporaries(),
            Vec::<std::path::PathBuf>::new()
        );
    }
    assert_eq!(server.gets("/big"), 1, "{:?}", server.requests());
    let log = daemon.log();
    assert_eq!(
        log.matches("delivered the copy made while it downloaded")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn same_digest_under_different_urls_is_fetched_once() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(16 * 1024);
    server.add("/one", content.bytes.clone());
    server.add("/two", content.bytes.clone());
    let spool = dir.spool("c");
    spool.drop_chit("a", content.chit("a.bin", &[server.url("/one")]));
    spool.drop_chit("b", content.chit("b.bin", &[server.url("/two")]));

    Daemon::run_until_idle(&dir, &spool);

    spool.assert_delivered("a", "a.bin", &content);
    spool.assert_delivered("b", "b.bin", &content);
    assert_eq!(server.gets("/one") + server.gets("/two"), 1);
}
