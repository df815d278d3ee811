//! Configuration files: unknown keys are errors naming the key and its line;
//! relative paths are relative to the file's directory; overlapping roots are
//! refused.

use crate::server::Server;
use crate::util::{ConfigFile, Content, Daemon, State, TIMEOUT, TestDir, TestSpool, run_cli};

#[test]
fn unknown_config_key_exits_2_naming_the_key_and_its_line() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let mut text = ConfigFile {
        cache: Some(dir.cache()),
        consumers: vec![spool],
        ..ConfigFile::default()
    }
    .render();
    // Line 2, before the consumer tables.
    text.insert_str(text.find('\n').unwrap() + 1, "colour = \"blue\"\n");
    let config = dir.write("chitd.toml", &text);

    let output = run_cli(
        &dir,
        ["run".into(), "--config".into(), config.into_os_string()],
        TIMEOUT,
    );

    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(
        output.stderr.contains("colour"),
        "stderr must name the key: {output:?}"
    );
    assert!(
        output.stderr.contains("line 2"),
        "stderr must name the line: {output:?}"
    );
}

#[test]
fn unknown_key_in_a_consumer_table_is_an_error_too() {
    let dir = TestDir::new();
    let spool = dir.spool("c");
    let mut text = ConfigFile {
        cache: Some(dir.cache()),
        consumers: vec![spool],
        ..ConfigFile::default()
    }
    .render();
    text.push_str("delivr = \"typo\"\n");
    let line = text.lines().count();
    let config = dir.write("chitd.toml", &text);

    let output = run_cli(
        &dir,
        ["run".into(), "--config".into(), config.into_os_string()],
        TIMEOUT,
    );

    assert_eq!(output.code, Some(2), "{output:?}");
    assert!(output.stderr.contains("delivr"), "{output:?}");
    assert!(
        output.stderr.contains(&format!("line {line}")),
        "{output:?}"
    );
}

#[test]
fn config_paths_are_relative_to_the_config_file() {
    let dir = TestDir::new();
    let server = Server::start();
    let content = Content::random(1_000);
    server.add("/f", content.bytes.clone());
    let spool = TestSpool::create("rel", &dir.join("etc/builders/rel"));
    spool.drop_chit("f", content.chit("f.bin", &[server.url("/f")]));
    let text = "cache = \"cache\"\n\n[[consumer]]\nname = \"rel\"\n\
                spool = \"builders/rel/spool\"\ndeliver = \"builders/rel/deliver\"\n";
    let config = dir.write("etc/chitd.toml", text);

    // The daemon runs in the test dir, one level above the config file.
    Daemon::builder(&dir)
        .config(&config)
        .exit_when_idle()
        .start()
        .expect_success(TIMEOUT);

    spool.assert_delivered("f", "f.bin", &content);
    assert!(
        dir.join("etc/cache").is_dir(),
        "cache not beside the config file"
    );
}

#[test]
fn a_spool_inside_another_consumers_delivery_dir_exits_2_naming_both() {
    let dir = TestDir::new();
    let a = dir.spool("a");
    // B's spool sits inside A's delivery dir: A could request
    // `bspool/request/<chit>` and plant chits in B's spool.
    let b = TestSpool {
        spool: a.deliver.join("bspool"),
        ..dir.spool("b")
    };
    let config = ConfigFile::for_consumers(&dir, &[&a, &b]);

    let output = run_cli(
        &dir,
        ["run".into(), "--config".into(), config.into_os_string()],
        TIMEOUT,
    );

    assert_eq!(output.code, Some(2), "{output:?}");
    let expected = format!(
        "consumer \"a\" deliver {} contains consumer \"b\" spool {}",
        a.deliver.display(),
        b.spool.display()
    );
    assert!(output.stderr.contains(&expected), "{output:?}");
    assert!(
        !b.spool.join(State::Request.dir_name()).exists(),
        "nothing was created"
    );
}
