//! Unit tests of `config`.
use super::*;

const EXAMPLE: &str = r#"cache   = "cache"                          # content-addressed store
mirrors = ["https://mirror.example/distfiles"]
jobs    = 4                                # concurrent downloads
give_up_after = "60s"                      # no progress for this long: fail

[[consumer]]
name    = "builder01"
spool   = "builders/01/spool"
deliver = "builders/01/distfiles"
"#;

const CONSUMER: &str = "[[consumer]]\nname = \"a\"\nspool = \"s\"\ndeliver = \"d\"\n";

fn base() -> PathBuf {
    PathBuf::from("/etc/chitd")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &base())
}

/// Parses `text`, expecting an error about `key` at `line`; returns its message.
fn key_error(text: &str, key: &str, line: usize) -> String {
    match parse(text) {
        Err(error @ ConfigError::Key { .. }) => {
            let message = error.to_string();
            let ConfigError::Key {
                location,
                key: found,
                ..
            } = error
            else {
                unreachable!()
            };
            assert_eq!((found.as_str(), location.line), (key, line), "{message}");
            assert!(message.contains(&format!("line {line},")), "{message}");
            assert!(message.contains(&format!("`{key}`")), "{message}");
            message
        }
        other => panic!("expected an error about `{key}` at line {line}, got {other:?}"),
    }
}

#[test]
fn contract_example() {
    let config = parse(EXAMPLE).expect("the contract's example parses");
    let expected = Config {
        cache: "/etc/chitd/cache".into(),
        mirrors: vec![Url::parse("https://mirror.example/distfiles").expect("url")],
        jobs: 4,
        give_up_after: Duration::from_secs(60),
        log_format: LogFormat::Text,
        per_host: crate::fetch::DEFAULT_PER_HOST,
        ca_file: None,
        metrics: None,
        consumers: vec![Consumer {
            name: "builder01".into(),
            spool: "/etc/chitd/builders/01/spool".into(),
            deliver: "/etc/chitd/builders/01/distfiles".into(),
        }],
        cache_limits: CacheLimits::default(),
        remote: None,
    };
    assert_eq!(config, expected);
    assert_eq!(
        config.mirrors[0].as_str(),
        "https://mirror.example/distfiles"
    );
    config
        .validate_for_run()
        .expect("one consumer is enough to run");
}

#[test]
fn empty_text_gives_defaults_and_no_consumers() {
    let config = parse("").expect("empty is valid");
    assert_eq!(config.cache, PathBuf::from("/etc/chitd/cache"));
    assert!(config.mirrors.is_empty());
    assert_eq!(config.jobs, DEFAULT_JOBS);
    assert_eq!(config.give_up_after, DEFAULT_GIVE_UP_AFTER);
    assert!(config.consumers.is_empty());
    let message = config
        .validate_for_run()
        .expect_err("nothing to serve")
        .to_string();
    assert!(message.contains("no [[consumer]] defined"), "{message}");
}

#[test]
fn paths_are_resolved_against_the_base_dir() {
    let text = "cache = \"/var/cache/chitd\"\n[[consumer]]\nname = \"x\"\n\
                spool = \"./sp/ool/\"\ndeliver = \"../dist\"\n";
    let config = parse(text).expect("valid");
    assert_eq!(config.cache, PathBuf::from("/var/cache/chitd"));
    assert_eq!(
        config.consumers[0].spool,
        PathBuf::from("/etc/chitd/sp/ool")
    );
    assert_eq!(
        config.consumers[0].deliver,
        PathBuf::from("/etc/chitd/../dist")
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let message = key_error("jobs = 2\n\ncolour = \"blue\"\n", "colour", 3);
    assert!(message.contains("unknown key"), "{message}");
    let in_consumer = format!("{CONSUMER}spoool = \"x\"\n");
    let message = key_error(&in_consumer, "spoool", 5);
    assert!(
        message.contains("`deliver`"),
        "lists the allowed keys: {message}"
    );
    let inline =
        "jobs = 1\nconsumer = [\n  { name = \"a\", spool = \"s\", deliver = \"d\", x = 1 },\n]\n";
    key_error(inline, "x", 3);
    key_error("[mirror]\nurl = \"x\"\n", "mirror", 1);
}

#[test]
fn wrong_types_name_the_key() {
    for (text, key, line) in [
        ("cache = 3\n", "cache", 1),
        ("\nmirrors = \"https://a.example\"\n", "mirrors", 2),
        ("mirrors = [1]\n", "mirrors", 1),
        ("jobs = \"four\"\n", "jobs", 1),
        ("jobs = 2.5\n", "jobs", 1),
        ("give_up_after = true\n", "give_up_after", 1),
        (
            "[[consumer]]\nname = 3\nspool = \"s\"\ndeliver = \"d\"\n",
            "name",
            2,
        ),
        (
            "[[consumer]]\nname = \"a\"\nspool = [\"s\"]\ndeliver = \"d\"\n",
            "spool",
            3,
        ),
        (
            "[[consumer]]\nname = \"a\"\nspool = \"s\"\ndeliver = {}\n",
            "deliver",
            4,
        ),
        ("jobs = 1\n[consumer]\nname = \"a\"\n", "consumer", 2),
        ("consumer = 5\n", "consumer", 1),
    ] {
        key_error(text, key, line);
    }
}

#[test]
fn jobs_must_be_at_least_one() {
    key_error("jobs = 0\n", "jobs", 1);
    key_error("jobs = -3\n", "jobs", 1);
    assert_eq!(parse("jobs = 16\n").expect("valid").jobs, 16);
}

#[test]
fn network_keys() {
    let config = parse("per_host = 2\nca_file = \"tls/extra-cas.pem\"\n").expect("valid");
    assert_eq!(config.per_host, 2);
    assert_eq!(
        config.ca_file,
        Some(PathBuf::from("/etc/chitd/tls/extra-cas.pem"))
    );
    let defaults = parse("").expect("valid");
    assert_eq!(defaults.per_host, crate::fetch::DEFAULT_PER_HOST);
    assert_eq!(defaults.ca_file, None);
    let absolute = parse("ca_file = \"/pki/roots.pem\"\n").expect("valid");
    assert_eq!(absolute.ca_file, Some(PathBuf::from("/pki/roots.pem")));
    let message = key_error("jobs = 2\nper_host = 0\n", "per_host", 2);
    assert!(message.contains("at least 1"), "{message}");
    key_error("per_host = \"4\"\n", "per_host", 1);
    key_error("ca_file = \"\"\n", "ca_file", 1);
    key_error("ca_file = 3\n", "ca_file", 1);
    let text = parse("per_host = 3\nca_file = \"x.pem\"\n")
        .unwrap()
        .describe();
    assert!(text.contains("per_host:      3"), "{text}");
    assert!(text.contains("ca_file:       /etc/chitd/x.pem"), "{text}");
}

#[test]
fn durations() {
    for (text, expected) in [
        ("\"60s\"", Duration::from_secs(60)),
        ("\"5m\"", Duration::from_secs(300)),
        ("\"1h 30m\"", Duration::from_secs(5400)),
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"90\"", Duration::from_secs(90)),
        ("90", Duration::from_secs(90)),
        ("1.5", Duration::from_millis(1500)),
        // Whole milliseconds.
        ("\"1.2345s\"", Duration::from_millis(1234)),
    ] {
        let config = parse(&format!("give_up_after = {text}\n")).expect(text);
        assert_eq!(config.give_up_after, expected, "{text}");
    }
    for text in [
        "\"soon\"",
        "\"0s\"",
        "0",
        "-1",
        "\"\"",
        "\"-5s\"",
        "0.0",
        "-0.5",
        "nan",
        "\"100us\"",
    ] {
        let message = key_error(&format!("\ngive_up_after = {text}\n"), "give_up_after", 2);
        assert!(message.contains("give_up_after"), "{message}");
    }
}

#[test]
fn consumers_need_every_field_and_a_name() {
    let message = key_error(
        "jobs = 1\n[[consumer]]\nname = \"a\"\nspool = \"s\"\n",
        "deliver",
        2,
    );
    assert!(message.contains("[[consumer]]"), "{message}");
    key_error("[[consumer]]\nspool = \"s\"\ndeliver = \"d\"\n", "name", 1);
    key_error(
        "[[consumer]]\nname = \"\"\nspool = \"s\"\ndeliver = \"d\"\n",
        "name",
        2,
    );
    key_error(
        "[[consumer]]\nname = \"a\"\nspool = \"\"\ndeliver = \"d\"\n",
        "spool",
        3,
    );
}

#[test]
fn consumer_names_and_spools_are_unique() {
    let two = |second: &str| format!("{CONSUMER}{second}");
    let same_name = two("[[consumer]]\nname = \"a\"\nspool = \"t\"\ndeliver = \"e\"\n");
    let message = key_error(&same_name, "name", 6);
    assert!(message.contains("\"a\""), "{message}");
    for spool in ["s", "./s/", "/etc/chitd/s", "x/../s"] {
        let text = two(&format!(
            "[[consumer]]\nname = \"b\"\nspool = \"{spool}\"\ndeliver = \"d2\"\n"
        ));
        let message = key_error(&text, "spool", 7);
        assert!(
            message.contains("\"a\"") && message.contains("\"b\""),
            "{message}"
        );
    }
    let text = two("[[consumer]]\nname = \"b\"\nspool = \"s2\"\ndeliver = \"d\"\n");
    assert_eq!(parse(&text).expect("distinct").consumers.len(), 2);
}

#[test]
fn mirrors_are_checked_and_kept_as_written() {
    let text = "mirrors = [\n  \"https://a.example/distfiles/\",\n  \"http://b.example\",\n  \
                \"file:///srv/mirror\",\n]\n";
    let mirrors = parse(text).expect("valid").mirrors;
    let written: Vec<&str> = mirrors.iter().map(Url::as_str).collect();
    assert_eq!(
        written,
        [
            "https://a.example/distfiles/",
            "http://b.example/",
            "file:///srv/mirror"
        ]
    );
    for (bad, why) in [
        ("ftp://c.example/pub", "scheme"),
        ("not a url", "not a valid URL"),
        ("https://c.example/?x=1", "query"),
        ("https://c.example/#top", "fragment"),
    ] {
        let text = format!("mirrors = [\n  \"https://a.example\",\n  \"{bad}\",\n]\n");
        let message = key_error(&text, "mirrors", 3);
        assert!(message.contains(bad) && message.contains(why), "{message}");
    }
}

#[test]
fn crlf_and_bom_are_fine() {
    let text = "\u{feff}jobs = 2\r\n\r\n[[consumer]]\r\nname = \"a\"\r\nspool = \"s\"\r\ndeliver = \"d\"\r\n";
    assert_eq!(parse(text).expect("valid").jobs, 2);
    key_error(&format!("{text}oops = 1\r\n"), "oops", 7);
}

#[test]
fn syntax_errors_have_a_line() {
    for (text, line) in [
        ("jobs = 1\ncache = \n", 2),
        ("jobs = 1\njobs = 2\n", 2),
        ("[[consumer]\n", 1),
    ] {
        match parse(text) {
            Err(error @ ConfigError::Syntax { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&format!("line {line},")), "{message}");
            }
            other => panic!("expected a syntax error for {text:?}, got {other:?}"),
        }
    }
    let message = parse("jobs = 1\njobs = 2\n")
        .expect_err("duplicate")
        .to_string();
    assert!(message.contains("jobs"), "{message}");
}

#[test]
fn load_resolves_against_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(DEFAULT_CONFIG_NAME);
    std::fs::write(&file, EXAMPLE).expect("write");
    let config = Config::load(&file).expect("loads");
    assert_eq!(config.cache, dir.path().join("cache"));
    assert_eq!(
        config.consumers[0].spool,
        dir.path().join("builders/01/spool")
    );

    std::fs::write(&file, format!("{CONSUMER}bogus = 1\n")).expect("write");
    let message = Config::load(&file).expect_err("unknown key").to_string();
    assert!(
        message.starts_with(&file.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("line 5") && message.contains("`bogus`"),
        "{message}"
    );

    let missing = dir.path().join("missing.toml");
    let error = Config::load(&missing).expect_err("missing");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains("missing.toml"), "{error}");
}

#[test]
fn default_layout_and_describe() {
    let config = Config::default_layout(Path::new("/srv/chitd"));
    assert_eq!(config.cache, PathBuf::from("/srv/chitd/cache"));
    let expected = Consumer {
        name: DEFAULT_CONSUMER.into(),
        spool: "/srv/chitd/spool".into(),
        deliver: "/srv/chitd/distfiles".into(),
    };
    assert_eq!(config.consumers, [expected]);
    assert!(config.mirrors.is_empty());
    let text = config.describe();
    for part in [
        "/srv/chitd/cache",
        "mirrors:       none",
        "jobs:          4",
        "1m",
        "consumer \"default\"",
        "/srv/chitd/spool",
        "request/",
        "fetch/",
        "downloaded/",
        "fail/",
        "/srv/chitd/distfiles",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    let with_mirrors = parse(EXAMPLE).expect("valid").describe();
    assert!(
        with_mirrors.contains("https://mirror.example/distfiles"),
        "{with_mirrors}"
    );
}

#[test]
fn log_format_from_the_file_and_the_flag() {
    let json = parse(&format!("log_format = \"json\"\n{CONSUMER}")).expect("valid");
    assert_eq!(json.log_format, LogFormat::Json);
    assert!(json.describe().contains("log_format:    json"));
    assert_eq!(parse(CONSUMER).expect("valid").log_format, LogFormat::Text);
    let message = key_error("log_format = \"xml\"\n", "log_format", 1);
    assert!(
        message.contains("must be \"text\" or \"json\""),
        "{message}"
    );
    key_error("\nlog_format = 1\n", "log_format", 2);
    let args = RunArgs {
        log_format: Some(LogFormat::Json),
        ..RunArgs::default()
    };
    let (config, _) = resolve_run(&args, &cwd()).expect("valid");
    assert_eq!(config.log_format, LogFormat::Json);
}

fn cwd() -> PathBuf {
    PathBuf::from("/home/me/work")
}

#[test]
fn run_without_flags_uses_the_embedded_default() {
    let (config, source) = resolve_run(&RunArgs::default(), &cwd()).expect("default");
    assert_eq!(source, LayoutSource::EmbeddedDefault);
    assert_eq!(config, Config::default_layout(&cwd()));
    let args = RunArgs {
        jobs: Some(9),
        ..RunArgs::default()
    };
    let (config, source) = resolve_run(&args, &cwd()).expect("default");
    assert_eq!((config.jobs, source), (9, LayoutSource::EmbeddedDefault));
}

#[test]
fn run_with_spool_flags_only() {
    let args = RunArgs {
        spool: Some("sp".into()),
        deliver: Some("/abs/dist".into()),
        mirror: vec!["https://m.example/d/".into()],
        ..RunArgs::default()
    };
    let (config, source) = resolve_run(&args, &cwd()).expect("flags");
    assert_eq!(source, LayoutSource::Flags);
    assert_eq!(config.cache, cwd().join("cache"));
    let expected = Consumer {
        name: "default".into(),
        spool: cwd().join("sp"),
        deliver: "/abs/dist".into(),
    };
    assert_eq!(config.consumers, [expected]);
    assert_eq!(config.mirrors[0].as_str(), "https://m.example/d/");
    let lone = RunArgs {
        spool: Some("sp".into()),
        ..RunArgs::default()
    };
    assert!(matches!(
        resolve_run(&lone, &cwd()),
        Err(ConfigError::Flag {
            flag: "--spool",
            ..
        })
    ));
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), EXAMPLE).expect("write");
    let args = RunArgs {
        config: Some("c.toml".into()),
        ..RunArgs::default()
    };
    let (config, source) = resolve_run(&args, dir.path()).expect("file");
    assert_eq!(source, LayoutSource::ConfigFile(dir.path().join("c.toml")));
    assert_eq!(
        config,
        Config::load(&dir.path().join("c.toml")).expect("load")
    );

    let args = RunArgs {
        config: Some(dir.path().join("c.toml")),
        spool: Some("s".into()),
        deliver: Some("d".into()),
        cache: Some("/var/cache/x".into()),
        mirror: vec!["file:///srv/m".into(), "http://n.example".into()],
        jobs: Some(2),
        exit_when_idle: true,
        log_format: None,
        metrics: None,
    };
    let (config, _) = resolve_run(&args, &cwd()).expect("overrides");
    assert_eq!(config.cache, PathBuf::from("/var/cache/x"));
    assert_eq!(config.jobs, 2);
    assert_eq!(config.give_up_after, Duration::from_secs(60));
    assert_eq!(config.mirrors.len(), 2);
    assert_eq!(config.consumers.len(), 1);
    assert_eq!(config.consumers[0].spool, cwd().join("s"));
    assert_eq!(config.consumers[0].deliver, cwd().join("d"));
}

#[test]
fn run_refuses_a_file_without_consumers_and_bad_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "jobs = 2\n").expect("write");
    let args = RunArgs {
        config: Some(file.clone()),
        ..RunArgs::default()
    };
    let message = resolve_run(&args, &cwd())
        .expect_err("no consumers")
        .to_string();
    assert!(
        message.contains("empty.toml") && message.contains("no [[consumer]]"),
        "{message}"
    );
    let rescued = RunArgs {
        spool: Some("s".into()),
        deliver: Some("d".into()),
        ..args
    };
    resolve_run(&rescued, &cwd()).expect("--spool supplies the consumer");

    let ftp = RunArgs {
        mirror: vec!["ftp://x.example".into()],
        ..RunArgs::default()
    };
    let message = resolve_run(&ftp, &cwd()).expect_err("ftp").to_string();
    assert!(
        message.contains("--mirror") && message.contains("ftp://x.example"),
        "{message}"
    );
    let zero = RunArgs {
        jobs: Some(0),
        ..RunArgs::default()
    };
    assert!(matches!(
        resolve_run(&zero, &cwd()),
        Err(ConfigError::Flag { flag: "--jobs", .. })
    ));
}

#[test]
fn status_spools() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), EXAMPLE).expect("write");
    let args = StatusArgs {
        config: Some("c.toml".into()),
        ..StatusArgs::default()
    };
    let spools = resolve_status_spools(&args, dir.path()).expect("file");
    assert_eq!(
        spools,
        [(
            "builder01".to_string(),
            dir.path().join("builders/01/spool")
        )]
    );
    let args = StatusArgs {
        spool: Some("sp".into()),
        ..StatusArgs::default()
    };
    let spools = resolve_status_spools(&args, &cwd()).expect("flag");
    assert_eq!(spools, [("default".to_string(), cwd().join("sp"))]);
    let spools = resolve_status_spools(&StatusArgs::default(), &cwd()).expect("default");
    assert_eq!(spools, [("default".to_string(), cwd().join("spool"))]);
}

#[test]
fn cache_command_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), EXAMPLE).expect("write");
    let from_file = CacheLocation {
        config: Some("c.toml".into()),
        cache: None,
    };
    let config = resolve_cache(&from_file, dir.path()).expect("file");
    assert_eq!(config.cache, dir.path().join("cache"));
    assert_eq!(config.consumers.len(), 1);
    let overridden = CacheLocation {
        cache: Some("elsewhere".into()),
        ..from_file
    };
    let config = resolve_cache(&overridden, dir.path()).expect("flag");
    assert_eq!(config.cache, dir.path().join("elsewhere"));
    let config = resolve_cache(&CacheLocation::default(), &cwd()).expect("default");
    assert_eq!(config.cache, cwd().join("cache"));
    let missing = CacheLocation {
        config: Some("no-such.toml".into()),
        cache: None,
    };
    let error = resolve_cache(&missing, &cwd()).expect_err("no file");
    assert!(error.to_string().contains("no-such.toml"), "{error}");
}

/// A layout in `/srv` with the cache at `cache` and one consumer per
/// (name, spool, deliver); paths relative to `/srv`.
fn layout(cache: &str, consumers: &[(&str, &str, &str)]) -> Config {
    let dir = Path::new("/srv");
    Config {
        cache: dir.join(cache),
        consumers: consumers
            .iter()
            .map(|&(name, spool, deliver)| Consumer {
                name: name.into(),
                spool: dir.join(spool),
                deliver: dir.join(deliver),
            })
            .collect(),
        ..Config::default_layout(dir)
    }
}

/// Expects `config` to be refused for overlapping roots; returns the message.
fn overlap_error(config: &Config) -> String {
    match config.validate_for_run() {
        Err(error @ ConfigError::Overlap { .. }) => error.to_string(),
        other => panic!("expected an overlap error for {config:?}, got {other:?}"),
    }
}

#[test]
fn separate_roots_and_a_shared_delivery_dir_are_accepted() {
    layout(
        "cache",
        &[("a", "a/spool", "a/dist"), ("b", "b/spool", "b/dist")],
    )
    .validate_for_run()
    .expect("separate roots");
    // Builders sharing one distfiles directory, even by a different spelling.
    layout(
        "cache",
        &[("a", "a/spool", "dist"), ("b", "b/spool", "./x/../dist/")],
    )
    .validate_for_run()
    .expect("one delivery dir shared by two consumers");
    // A common prefix of the name is not containment.
    layout(
        "cache",
        &[("a", "spool", "spool2"), ("b", "cache2", "cache-d")],
    )
    .validate_for_run()
    .expect("siblings with a common prefix");
    Config::default_layout(Path::new("/srv"))
        .validate_for_run()
        .expect("the default layout");
}

#[test]
fn a_spool_inside_another_consumers_delivery_dir_is_refused() {
    let config = layout(
        "cache",
        &[
            ("a", "a/spool", "adeliver"),
            ("b", "adeliver/bspool", "b/dist"),
        ],
    );
    let message = overlap_error(&config);
    assert_eq!(
        message,
        "consumer \"a\" deliver /srv/adeliver contains consumer \"b\" spool \
         /srv/adeliver/bspool: a consumer could write into another's directories"
    );
}

#[test]
fn every_kind_of_nesting_is_refused() {
    for (config, outer, inner) in [
        // A delivery dir inside another's spool.
        (
            layout(
                "cache",
                &[("a", "a/spool", "a/dist"), ("b", "b/spool", "a/spool/d")],
            ),
            "consumer \"a\" spool /srv/a/spool",
            "consumer \"b\" deliver /srv/a/spool/d",
        ),
        // A delivery dir inside another's delivery dir.
        (
            layout(
                "cache",
                &[("a", "a/spool", "dist"), ("b", "b/spool", "dist/b")],
            ),
            "consumer \"a\" deliver /srv/dist",
            "consumer \"b\" deliver /srv/dist/b",
        ),
        // A spool inside another's spool.
        (
            layout("cache", &[("a", "s/b", "a/d"), ("b", "s", "b/d")]),
            "consumer \"b\" spool /srv/s",
            "consumer \"a\" spool /srv/s/b",
        ),
        // A consumer's own spool inside its delivery dir, and the reverse.
        (
            layout("cache", &[("a", "d/spool", "d")]),
            "consumer \"a\" deliver /srv/d",
            "consumer \"a\" spool /srv/d/spool",
        ),
        (
            layout("cache", &[("a", "s", "s/dist")]),
            "consumer \"a\" spool /srv/s",
            "consumer \"a\" deliver /srv/s/dist",
        ),
        // The cache inside a consumer's directory, and roots inside the cache.
        (
            layout("a/dist/cache", &[("a", "a/spool", "a/dist")]),
            "consumer \"a\" deliver /srv/a/dist",
            "the cache /srv/a/dist/cache",
        ),
        (
            layout("cache", &[("a", "a/spool", "cache/dist")]),
            "the cache /srv/cache",
            "consumer \"a\" deliver /srv/cache/dist",
        ),
        (
            layout("cache", &[("a", "cache/spool", "a/dist")]),
            "the cache /srv/cache",
            "consumer \"a\" spool /srv/cache/spool",
        ),
        (
            layout("/", &[("a", "a/spool", "a/dist")]),
            "the cache /",
            "consumer \"a\" spool /srv/a/spool",
        ),
    ] {
        let message = overlap_error(&config);
        assert!(
            message.starts_with(&format!("{outer} contains {inner}: ")),
            "{message}"
        );
    }
    let message = overlap_error(&layout("a/dist/cache", &[("a", "a/spool", "a/dist")]));
    assert!(
        message.ends_with("out of every consumer's reach"),
        "{message}"
    );
    let message = overlap_error(&layout("cache", &[("a", "s", "s/dist")]));
    assert!(message.ends_with("into the consumer's spool"), "{message}");
}

#[test]
fn equal_roots_are_refused_except_delivery_dirs() {
    for (config, first, second) in [
        (
            layout("cache", &[("a", "a/spool", "x"), ("b", "x", "b/dist")]),
            "consumer \"a\" deliver /srv/x",
            "consumer \"b\" spool /srv/x",
        ),
        (
            layout("cache", &[("a", "same", "same")]),
            "consumer \"a\" spool /srv/same",
            "consumer \"a\" deliver /srv/same",
        ),
        (
            layout("cache", &[("a", "a/spool", "cache")]),
            "the cache /srv/cache",
            "consumer \"a\" deliver /srv/cache",
        ),
        (
            layout("s", &[("a", "s", "a/dist")]),
            "the cache /srv/s",
            "consumer \"a\" spool /srv/s",
        ),
    ] {
        let message = overlap_error(&config);
        assert!(
            message.starts_with(&format!("{first} and {second} are the same directory: ")),
            "{message}"
        );
    }
}

#[test]
fn overlaps_are_found_through_dot_dot_and_repeated_slashes() {
    let config = layout(
        "cache",
        &[
            ("a", "a/spool", "adeliver"),
            ("b", "b/../adeliver//bspool", "b/dist"),
        ],
    );
    let message = overlap_error(&config);
    assert!(
        message.contains(
            "contains consumer \"b\" spool /srv/b/../adeliver//bspool \
             (which is /srv/adeliver/bspool)"
        ),
        "{message}"
    );
    let config = layout("x/../cache", &[("a", "a/spool", "./cache/./d")]);
    let message = overlap_error(&config);
    assert!(message.starts_with("the cache /srv/x/../cache (which is /srv/cache) contains"));
    // `..` above the root stays at the root.
    let config = layout("/../../srv/c", &[("a", "/srv/c/s", "d")]);
    overlap_error(&config);
}

#[test]
fn overlaps_are_found_through_a_symlink_alias() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
    std::fs::create_dir_all(root.join("real/bspool")).expect("mkdir");
    std::os::unix::fs::symlink(root.join("real"), root.join("alias")).expect("symlink");
    let consumer = |name: &str, spool: PathBuf, deliver: PathBuf| Consumer {
        name: name.into(),
        spool,
        deliver,
    };
    let mut config = Config::default_layout(&root);

    // A's deliver is an alias of the directory holding B's spool, which exists.
    config.consumers = vec![
        consumer("a", root.join("a/spool"), root.join("alias")),
        consumer("b", root.join("real/bspool"), root.join("b/dist")),
    ];
    let message = overlap_error(&config);
    let expected = format!(
        "consumer \"a\" deliver {} (which is {}) contains consumer \"b\" spool {}",
        root.join("alias").display(),
        root.join("real").display(),
        root.join("real/bspool").display(),
    );
    assert!(message.starts_with(&expected), "{message}");

    // The same through a path that does not exist yet (run creates it).
    config.consumers[1].spool = root.join("alias/new/spool");
    config.consumers[0].deliver = root.join("real/new");
    let message = overlap_error(&config);
    assert!(message.contains("(which is "), "{message}");

    // Equal through the alias.
    config.consumers[1].spool = root.join("alias");
    config.consumers[0].deliver = root.join("real");
    let message = overlap_error(&config);
    assert!(message.contains("are the same directory"), "{message}");

    // One delivery dir shared under two names is still allowed.
    config.consumers = vec![
        consumer("a", root.join("a/spool"), root.join("real")),
        consumer("b", root.join("b/spool"), root.join("alias")),
    ];
    config.validate_for_run().expect("a shared delivery dir");
}

#[test]
fn run_refuses_overlapping_roots_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    let text = "[[consumer]]\nname = \"a\"\nspool = \"a\"\ndeliver = \"d\"\n\
                [[consumer]]\nname = \"b\"\nspool = \"d/b\"\ndeliver = \"e\"\n";
    std::fs::write(&file, text).expect("write");
    let args = RunArgs {
        config: Some(file.clone()),
        ..RunArgs::default()
    };
    let message = resolve_run(&args, &cwd()).expect_err("overlap").to_string();
    assert!(
        message.starts_with(&format!("{}: consumer \"a\" deliver", file.display())),
        "{message}"
    );
    // Flags are checked too: the cache inside the delivery dir.
    let flags = RunArgs {
        spool: Some("s".into()),
        deliver: Some("d".into()),
        cache: Some("d/cache".into()),
        ..RunArgs::default()
    };
    assert!(matches!(
        resolve_run(&flags, &cwd()),
        Err(ConfigError::Overlap { file: None, .. })
    ));
    // status reads any spool: no check.
    let status = StatusArgs {
        config: Some(file),
        ..StatusArgs::default()
    };
    assert_eq!(
        resolve_status_spools(&status, &cwd())
            .expect("status")
            .len(),
        2
    );
}

#[test]
fn cache_limits() {
    assert_eq!(
        parse("").expect("empty").cache_limits,
        CacheLimits::default()
    );
    let config = parse("cache_max_size = \"500MiB\"\ncache_max_age = \"90d\"\n").expect("valid");
    let limits = CacheLimits {
        max_size: Some(500 << 20),
        max_age: Some(Duration::from_secs(90 * 86_400)),
    };
    assert_eq!(config.cache_limits, limits);
    let config = parse("cache_max_size = 1000\ncache_max_age = 3600\n").expect("numbers");
    assert_eq!(config.cache_limits.max_size, Some(1000));
    assert_eq!(config.cache_limits.max_age, Some(Duration::from_secs(3600)));
    assert!(config.describe().contains("cache_max_size: 1000 bytes"));
    for (text, key, value) in [
        ("cache_max_size = \"lots\"\n", "cache_max_size", "\"lots\""),
        ("cache_max_size = \"20XB\"\n", "cache_max_size", "\"20XB\""),
        ("cache_max_size = -1\n", "cache_max_size", "-1"),
        ("cache_max_size = true\n", "cache_max_size", "true"),
        (
            "cache_max_age = \"ninety days\"\n",
            "cache_max_age",
            "\"ninety days\"",
        ),
        ("cache_max_age = -5\n", "cache_max_age", "-5"),
    ] {
        let message = key_error(text, key, 1);
        assert!(
            message.contains(value),
            "names the value {value}: {message}"
        );
    }
    let message = key_error("jobs = 1\ncache_max_sise = 5\n", "cache_max_sise", 2);
    assert!(
        message.contains("cache_max_size"),
        "lists the keys: {message}"
    );
}

#[test]
fn sizes_and_ages() {
    for (text, bytes) in [
        ("0", 0),
        ("1024", 1024),
        ("500MiB", 500 << 20),
        ("20GB", 20_000_000_000),
        ("1.5 GiB", 3 << 29),
        ("10k", 10_000),
        (" 2KiB ", 2048),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for text in ["", "lots", "-1", "20XB", "MiB", "1e9"] {
        let error = parse_size(text).expect_err(text);
        assert!(error.contains(&format!("{text:?}")), "{error}");
    }
    for (text, seconds) in [
        ("90d", 90 * 86_400),
        ("12h", 43_200),
        ("60", 60),
        ("1h 30m", 5400),
    ] {
        assert_eq!(parse_age(text), Ok(Duration::from_secs(seconds)), "{text}");
    }
    for text in ["", "soon", "-1d", "12 parsecs"] {
        let error = parse_age(text).expect_err(text);
        assert!(error.contains(&format!("{text:?}")), "{error}");
    }
}

#[test]
fn metrics_is_an_address_and_the_flag_overrides_it() {
    let config = parse("metrics = \"127.0.0.1:9187\"\n").expect("valid");
    assert_eq!(config.metrics, Some("127.0.0.1:9187".parse().unwrap()));
    assert!(
        config
            .describe()
            .contains("metrics:       http://127.0.0.1:9187/metrics")
    );
    assert_eq!(parse("").expect("valid").metrics, None);
    let message = key_error("metrics = \"localhost\"\n", "metrics", 1);
    assert!(message.contains("not an IP address and port"), "{message}");
    key_error("\nmetrics = 9187\n", "metrics", 2);
    let args = RunArgs {
        metrics: Some("[::1]:9000".parse().unwrap()),
        ..RunArgs::default()
    };
    let (config, _) = resolve_run(&args, &cwd()).expect("valid");
    assert_eq!(config.metrics, Some("[::1]:9000".parse().unwrap()));
}
