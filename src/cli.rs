//! The command line of contract §5, §8 and §9 as clap types: `chitd run`,
//! `chitd check`, `chitd request`, `chitd retry`, `chitd status` and the
//! `chitd cache` commands.
//!
//! This file owns the flags, their help text and the checks clap can make on
//! its own (`--spool` needs `--deliver`, `--jobs` ≥ 1, `--timeout` ≥ 0). It
//! does no I/O and reads no files: turning [`RunArgs`] into a layout is
//! `config::resolve_run`, and the chit fields of [`RequestArgs`] are checked
//! by the chit parser. Clap exits 2 on a usage error, as the contract asks.

use std::path::PathBuf;

use clap::builder::{ArgPredicate, RangedU64ValueParser};

/// A download daemon for sandboxed package builders: chits in, verified distfiles out.
///
/// Consumers drop chits (sha256, size, path, URLs) into request/ of their
/// spool directory; the daemon fetches each file once into a shared, verified
/// cache and delivers it, moving the chit to downloaded/ or fail/.
#[derive(Debug, clap::Parser)]
#[command(name = "chitd", version, about, after_help = crate::env::HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the consumers' spools until SIGINT or SIGTERM.
    ///
    /// With --exit-when-idle, exit once there is nothing left to do. With no
    /// flags at all, serve the embedded default layout in the current
    /// directory: ./cache, ./spool and ./distfiles. SIGHUP re-reads the
    /// --config file (the flags still override it) without dropping a chit
    /// or a download.
    Run(RunArgs),
    /// Ask for a file: write a chit into a spool's request/ atomically.
    ///
    /// No daemon needs to be running, but the spool must exist. With
    /// --manifest, one chit per file of a distinfo. Exits 0 once written
    /// (with --wait: once downloaded), 1 when a chit failed (printing why),
    /// 124 when --timeout ran out, 2 on a usage error.
    #[command(
        override_usage = "chitd request --spool <DIR> [--wait] [--timeout <SECONDS>] \
                                <SHA256> <SIZE> <PATH> [URL]...\n       \
                                chitd request --spool <DIR> --manifest <FILE> [--wait] \
                                [--timeout <SECONDS>]"
    )]
    Request(RequestArgs),
    /// Show the chits in each spool, and the downloads of a running daemon.
    Status(StatusArgs),
    /// Work on the cache, with or without a daemon running on it.
    ///
    /// Each command exits 0 on success, 1 on a failure it names, 2 on a
    /// usage error.
    Cache(CacheArgs),
    /// Validate a configuration exactly as `run` would, print the layout,
    /// and touch nothing.
    ///
    /// Takes every flag of `run`, so that `run` replaced by `check` in a
    /// command line checks that command line (flags that only matter while
    /// serving, such as --exit-when-idle, are checked and have no effect).
    /// Exits 0 if `run` would accept it, 2 with the error if not.
    Check(RunArgs),
    /// Move failed chits from fail/ back to request/, for the daemon to try
    /// again.
    ///
    /// Each chit is one rename(2) and keeps its name and its old "# error:"
    /// lines (comments). A chit of the same name already in request/ or
    /// fetch/ is never replaced: that chit is named as a conflict and left
    /// in fail/. Exits 0 when every chit was retried, 1 when a NAME was not
    /// in fail/ or could not be moved (the others are retried), 2 on a
    /// usage error.
    Retry(RetryArgs),
}

/// How `chitd run` writes its log to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct RunArgs {
    /// Read the layout (cache, mirrors, jobs, give_up_after, consumers) from
    /// this TOML file; relative paths inside it are relative to its directory.
    /// The flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve one consumer, named "default", whose chits arrive in this spool
    /// directory. Replaces the consumers of --config. Needs --deliver.
    #[arg(long, value_name = "DIR", requires = "deliver")]
    pub spool: Option<PathBuf>,

    /// Where the --spool consumer's files are delivered. Needs --spool.
    #[arg(long, value_name = "DIR", requires = "spool")]
    pub deliver: Option<PathBuf>,

    /// The content-addressed cache shared by all consumers
    /// [default: ./cache, or the one in --config].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// A mirror tried after a chit's own URLs, as URL/PATH (PATH: the chit's path); http, https
    /// or file. Repeat for several; replaces the mirrors of --config.
    #[arg(long, value_name = "URL")]
    pub mirror: Vec<String>,

    /// How many downloads run at once, at least 1 [default: 4, or --config's].
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: Option<usize>,

    /// Exit 0 once no chit is in request/ or fetch/ of any consumer and no
    /// download is in flight.
    #[arg(long)]
    pub exit_when_idle: bool,

    /// How the log on stderr is written: text, or one JSON object per line
    /// [default: text, or --config's log_format].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Serve Prometheus metrics at http://ADDR/metrics, ADDR an IP address
    /// and port such as 127.0.0.1:9187 [default: none, or --config's
    /// metrics]. Anything but a loopback address is reachable by others.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RequestArgs {
    /// The consumer's spool directory, which must exist; the chit is written
    /// into its request/ (made if missing).
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,

    /// Request every file a distinfo FILE lists, one chit each, instead of
    /// SHA256 SIZE PATH: lines "<sha256> <size> <path>" (Ravenports), or
    /// FreeBSD's "SHA256 (path) = <hex>" and "SIZE (path) = <n>" pairs. The
    /// whole file is checked before any chit is written.
    #[arg(long, value_name = "FILE", conflicts_with = "sha256")]
    pub manifest: Option<PathBuf>,

    /// Wait until the chit is downloaded (exit 0) or failed (exit 1, printing
    /// the reason). Implied by --timeout.
    #[arg(long, default_value_if("timeout", ArgPredicate::IsPresent, "true"))]
    pub wait: bool,

    /// Stop waiting after this many seconds (fractions allowed) and exit 124.
    /// Implies --wait.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Option<f64>,

    /// The file's SHA-256 digest: 64 hexadecimal digits, any case.
    #[arg(value_name = "SHA256", required_unless_present = "manifest")]
    pub sha256: Option<String>,

    /// The file's size in bytes, in decimal.
    #[arg(value_name = "SIZE", required_unless_present = "manifest")]
    pub size: Option<String>,

    /// Where the file must appear, relative to the consumer's delivery
    /// directory, with / separators (for example gnu/make-4.4.tar.gz).
    #[arg(value_name = "PATH", required_unless_present = "manifest")]
    pub path: Option<String>,

    /// Absolute http or https URLs to try first, in order, before the mirrors.
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct StatusArgs {
    /// Show every consumer of this TOML configuration file.
    #[arg(long, value_name = "FILE", conflicts_with = "spool")]
    pub config: Option<PathBuf>,

    /// Show this one spool directory. Without --config or --spool, the
    /// default layout's ./spool is shown.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// List every chit in fail/ with its reason (without it: the newest 10).
    #[arg(long)]
    pub all: bool,

    /// Redraw the report every second until interrupted.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub location: CacheLocation,

    #[command(subcommand)]
    pub command: CacheCommand,
}

/// Which cache a `chitd cache` command works on: given before or after
/// the command's name.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct CacheLocation {
    /// The cache of this TOML configuration file (and its consumers).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// The cache directory [default: ./cache, or the one in --config];
    /// overrides --config's.
    #[arg(long, value_name = "DIR", global = true)]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum CacheCommand {
    /// Add every regular file under each DIR to the cache.
    ///
    /// Walks each DIR recursively, never following a symlink; hashes the
    /// files on every core and copies each into the cache under its sha256
    /// (the originals are left as they are; hidden files are imported too).
    /// Symlinks, FIFOs, sockets and devices are skipped and counted. Exits 1
    /// if a file could not be read (after importing the others).
    Import(ImportArgs),
    /// Re-hash every object; move the corrupt ones to quarantine/.
    ///
    /// Prints the digest of each corrupt object; exits 1 if any was
    /// corrupt or could not be read.
    Verify(VerifyArgs),
    /// List the objects: sha256, size, last use (UTC) and the paths each was
    /// delivered as, newest first. Most recently used first.
    Ls(LsArgs),
    /// Remove least-recently-used objects until the cache is within its
    /// limits; never one that a chit in a consumer's request/ or fetch/ names.
    ///
    /// The limits are the flags', else cache_max_size and cache_max_age of
    /// --config. Prints each object removed.
    Gc(GcArgs),
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ImportArgs {
    /// Directories (or single files) to import.
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct VerifyArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct LsArgs {
    /// Print a JSON array of {"sha256", "size", "last_used", "paths"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct GcArgs {
    /// Remove objects until the cache holds at most this much: 500MiB, 20GB,
    /// or a number of bytes.
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_size)]
    pub max_size: Option<u64>,

    /// Remove the objects unused for longer than this: 90d, 12h, or a number
    /// of seconds.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_age)]
    pub max_age: Option<std::time::Duration>,

    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RetryArgs {
    /// The consumer's spool directory, which must exist.
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,

    /// Retry every chit in fail/.
    #[arg(long, conflicts_with = "names", required_unless_present = "names")]
    pub all: bool,

    /// The chits to retry: names of files in fail/.
    #[arg(value_name = "NAME")]
    pub names: Vec<std::ffi::OsString>,
}

/// `--timeout`: a finite, non-negative number of seconds.
fn parse_timeout(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    // Also refuse what std::time::Duration cannot hold, so that
    // Duration::from_secs_f64 on the result never panics.
    if seconds < 0.0 || std::time::Duration::try_from_secs_f64(seconds).is_err() {
        return Err(format!(
            "{text:?} is not a usable timeout: give zero or more seconds, such as 30 or 1.5"
        ));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("chitd").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse(args) {
            Ok(Command::Run(run)) => run,
            other => panic!("expected run, got {other:?}"),
        }
    }

    fn request(args: &[&str]) -> RequestArgs {
        match parse(args) {
            Ok(Command::Request(request)) => request,
            other => panic!("expected request, got {other:?}"),
        }
    }

    fn status(args: &[&str]) -> StatusArgs {
        match parse(args) {
            Ok(Command::Status(status)) => status,
            other => panic!("expected status, got {other:?}"),
        }
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        let error = parse(args).expect_err("this command line should be refused");
        assert_eq!(error.exit_code(), 2, "{error}");
        error
    }

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_without_flags_is_all_defaults() {
        assert_eq!(run(&["run"]), RunArgs::default());
    }

    #[test]
    fn run_with_every_flag() {
        let args = run(&[
            "run",
            "--config",
            "etc/chitd.toml",
            "--spool",
            "s",
            "--deliver",
            "d",
            "--cache",
            "c",
            "--mirror",
            "https://a.example/",
            "--mirror",
            "file:///srv/mirror",
            "--jobs",
            "8",
            "--exit-when-idle",
            "--log-format",
            "json",
        ]);
        let expected = RunArgs {
            config: Some("etc/chitd.toml".into()),
            spool: Some("s".into()),
            deliver: Some("d".into()),
            cache: Some("c".into()),
            mirror: vec!["https://a.example/".into(), "file:///srv/mirror".into()],
            jobs: Some(8),
            exit_when_idle: true,
            log_format: Some(LogFormat::Json),
            metrics: None,
        };
        assert_eq!(args, expected);
    }

    #[test]
    fn run_spool_and_deliver_need_each_other() {
        let error = usage_error(&["run", "--spool", "s"]);
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert!(error.to_string().contains("--deliver"), "{error}");
        let error = usage_error(&["run", "--deliver", "d"]);
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert!(error.to_string().contains("--spool"), "{error}");
    }

    #[test]
    fn run_jobs_must_be_at_least_one() {
        assert_eq!(
            usage_error(&["run", "--jobs", "0"]).kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&["run", "--jobs", "-1"]).kind(),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            usage_error(&["run", "--jobs", "x"]).kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(run(&["run", "--jobs", "1"]).jobs, Some(1));
    }

    #[test]
    fn request_positionals_and_urls() {
        let digest = "a".repeat(64);
        let args = request(&[
            "request",
            "--spool",
            "sp",
            &digest,
            "1234",
            "gnu/make-4.4.tar.gz",
            "https://ftp.gnu.org/gnu/make/make-4.4.tar.gz",
            "http://b.example/make.tgz",
        ]);
        assert_eq!(args.spool, PathBuf::from("sp"));
        assert!(!args.wait);
        assert_eq!(args.timeout, None);
        assert_eq!(
            (args.sha256.as_deref(), args.size.as_deref()),
            (Some(digest.as_str()), Some("1234"))
        );
        assert_eq!(args.path.as_deref(), Some("gnu/make-4.4.tar.gz"));
        assert_eq!(args.urls.len(), 2);
        let args = request(&["request", "--spool", "sp", "--wait", &digest, "0", "p"]);
        assert!(args.wait);
        assert!(args.urls.is_empty());
    }

    #[test]
    fn request_timeout_takes_fractions_and_implies_wait() {
        let digest = "a".repeat(64);
        for (text, seconds) in [("1.5", 1.5), ("0", 0.0), ("30", 30.0)] {
            let args = request(&[
                "request",
                "--spool",
                "s",
                "--timeout",
                text,
                &digest,
                "1",
                "p",
            ]);
            assert_eq!(args.timeout, Some(seconds));
            assert!(args.wait, "--timeout implies --wait");
        }
        let args = request(&[
            "request",
            "--spool",
            "s",
            "--wait",
            "--timeout",
            "2",
            &digest,
            "1",
            "p",
        ]);
        assert!(args.wait);
        for bad in ["-1", "abc", "inf", "NaN", "1e300"] {
            let flag = format!("--timeout={bad}");
            let error = usage_error(&["request", "--spool", "s", &flag, &digest, "1", "p"]);
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{bad}: {error}");
        }
    }

    #[test]
    fn request_needs_spool_and_three_fields() {
        let digest = "a".repeat(64);
        usage_error(&["request", &digest, "1", "p"]);
        usage_error(&["request", "--spool", "s", &digest, "1"]);
    }

    #[test]
    fn status_forms() {
        assert_eq!(status(&["status"]), StatusArgs::default());
        let args = status(&["status", "--config", "c.toml", "--json"]);
        assert_eq!(
            (args.config, args.spool, args.json),
            (Some("c.toml".into()), None, true)
        );
        let args = status(&["status", "--spool", "s"]);
        assert_eq!(args.spool, Some(PathBuf::from("s")));
        let error = usage_error(&["status", "--config", "c.toml", "--spool", "s"]);
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    fn cache(args: &[&str]) -> CacheArgs {
        match parse(args) {
            Ok(Command::Cache(cache)) => cache,
            other => panic!("expected cache, got {other:?}"),
        }
    }

    #[test]
    fn cache_location_goes_before_or_after_the_command() {
        let before = cache(&["cache", "--cache", "c", "import", "a", "b"]);
        let after = cache(&["cache", "import", "a", "--cache", "c", "b"]);
        assert_eq!(before, after);
        assert_eq!(before.location.cache, Some(PathBuf::from("c")));
        let CacheCommand::Import(import) = &before.command else {
            panic!("expected import: {before:?}");
        };
        assert_eq!(import.dirs, [PathBuf::from("a"), PathBuf::from("b")]);
        let args = cache(&["cache", "verify", "--json", "--config", "f.toml"]);
        assert_eq!(args.location.config, Some(PathBuf::from("f.toml")));
        assert_eq!(
            args.command,
            CacheCommand::Verify(VerifyArgs { json: true })
        );
    }

    #[test]
    fn cache_ls_and_gc() {
        let args = cache(&["cache", "ls", "--cache", "c", "--json"]);
        assert_eq!(args.location.cache, Some(PathBuf::from("c")));
        assert_eq!(args.command, CacheCommand::Ls(LsArgs { json: true }));
        let args = cache(&["cache", "--config", "f.toml", "gc", "--max-size", "500MiB"]);
        assert_eq!(args.location.config, Some(PathBuf::from("f.toml")));
        let CacheCommand::Gc(gc) = args.command else {
            panic!("expected gc");
        };
        assert_eq!(gc.max_size, Some(500 << 20));
        let args = cache(&["cache", "gc", "--max-age", "90d", "--dry-run"]);
        let expected = GcArgs {
            max_size: None,
            max_age: Some(std::time::Duration::from_secs(90 * 86_400)),
            dry_run: true,
        };
        assert_eq!(args.command, CacheCommand::Gc(expected));
        for (flag, value) in [("--max-size", "lots"), ("--max-age", "soon")] {
            let error = usage_error(&["cache", "gc", flag, value]);
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn cache_usage_errors() {
        usage_error(&["cache"]);
        usage_error(&["cache", "import"]);
        usage_error(&["cache", "verify", "extra"]);
        usage_error(&["cache", "frob"]);
    }

    #[test]
    fn request_manifest_replaces_the_chit_fields() {
        let args = request(&[
            "request",
            "--spool",
            "s",
            "--manifest",
            "distinfo",
            "--wait",
        ]);
        assert_eq!(args.manifest, Some(PathBuf::from("distinfo")));
        assert_eq!((args.sha256, args.size, args.path), (None, None, None));
        assert!(args.wait);
        let digest = "a".repeat(64);
        let both = [
            "request",
            "--spool",
            "s",
            "--manifest",
            "m",
            &digest,
            "1",
            "p",
        ];
        assert_eq!(usage_error(&both).kind(), ErrorKind::ArgumentConflict);
        let neither = usage_error(&["request", "--spool", "s"]);
        assert_eq!(neither.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn log_format_values() {
        assert_eq!(run(&["run"]).log_format, None);
        let text = run(&["run", "--log-format", "text"]).log_format;
        assert_eq!(text, Some(LogFormat::Text));
        let error = usage_error(&["run", "--log-format", "xml"]);
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn check_takes_the_flags_of_run() {
        let args = match parse(&["check", "--config", "c.toml", "--jobs", "2"]) {
            Ok(Command::Check(args)) => args,
            other => panic!("expected check, got {other:?}"),
        };
        assert_eq!(args.config, Some(PathBuf::from("c.toml")));
        assert_eq!(args.jobs, Some(2));
        usage_error(&["check", "--spool", "s"]);
    }

    #[test]
    fn retry_needs_all_or_names_not_both() {
        let retry = |list: &[&str]| match parse(list) {
            Ok(Command::Retry(args)) => args,
            other => panic!("expected retry, got {other:?}"),
        };
        let args = retry(&["retry", "--spool", "s", "--all"]);
        assert!(args.all && args.names.is_empty());
        let args = retry(&["retry", "--spool", "s", "a", "b"]);
        assert_eq!(args.names, ["a", "b"]);
        assert!(!args.all);
        let neither = usage_error(&["retry", "--spool", "s"]);
        assert_eq!(neither.kind(), ErrorKind::MissingRequiredArgument);
        let both = usage_error(&["retry", "--spool", "s", "--all", "a"]);
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        usage_error(&["retry", "--all"]);
    }

    #[test]
    fn help_lists_the_environment_variables() {
        let help = Cli::command().render_long_help().to_string();
        for name in [
            "RUST_LOG",
            "CHITD_RETRY_DELAY_MS",
            "HTTPS_PROXY",
            "SSL_CERT_FILE",
        ] {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
    }

    #[test]
    fn unknown_subcommand_and_flags_are_usage_errors() {
        usage_error(&[]);
        usage_error(&["fetch"]);
        usage_error(&["run", "--bogus"]);
    }
}
