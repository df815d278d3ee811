//! The `chitd` binary: parse arguments, set up logging, call one library
//! function, map the result to an exit code (0 ok, 1 failure, 2 usage,
//! 124 timeout).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use chitd::cli::{Cli, Command, LogFormat, RequestArgs, RetryArgs, RunArgs, StatusArgs};
use chitd::config::{self, Config, LayoutSource};
use chitd::daemon::{self, Options};
use chitd::env::Environment;
use chitd::fetch::FetchSettings;
use chitd::request::{self, Outcome, RequestError, Requested};
use chitd::retry::{self, RetryError};
use chitd::status;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let environment = match Environment::read() {
        Ok(environment) => environment,
        Err(e) => return fatal(2, format!("{e}")),
    };
    // `run` sets up its log once its configuration (log_format) is known.
    if !matches!(cli.command, Command::Run(_)) {
        init_logging(&environment, LogFormat::Text);
    }
    match cli.command {
        Command::Run(args) => run(&args, &environment),
        Command::Check(args) => check(&args),
        Command::Request(args) => match &args.manifest {
            Some(file) => request_manifest(&args, file),
            None => request(&args),
        },
        Command::Retry(args) => retry(&args),
        Command::Status(args) => status(&args),
        Command::Cache(args) => ExitCode::from(chitd::cache::run(&args)),
    }
}

/// Logs go to stderr, one event a line, as text or JSON objects.
fn init_logging(environment: &Environment, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(environment.filter())
        .with_writer(|| OneLine(std::io::stderr()));
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `run`'s configuration: the layout and how it was arrived at, or the
/// error (a configuration error is a usage error: exit 2).
fn resolve(args: &RunArgs) -> Result<(Config, LayoutSource, PathBuf), ExitCode> {
    let cwd = std::env::current_dir()
        .map_err(|e| fatal(1, format!("cannot read the current directory: {e}")))?;
    let (config, source) = config::resolve_run(args, &cwd).map_err(|e| fatal(2, format!("{e}")))?;
    Ok((config, source, cwd))
}

/// The first line of the layout printed by `run` and `check`.
fn layout_source(source: &LayoutSource, cwd: &Path) -> String {
    match source {
        LayoutSource::EmbeddedDefault => format!(
            "chitd: no --config or --spool given; using the default layout in {}",
            cwd.display()
        ),
        LayoutSource::ConfigFile(path) => format!("chitd: configuration {}", path.display()),
        LayoutSource::Flags => "chitd: layout from flags".to_owned(),
    }
}

fn check(args: &RunArgs) -> ExitCode {
    let (config, source, cwd) = match resolve(args) {
        Ok(resolved) => resolved,
        Err(code) => return code,
    };
    println!("{}", layout_source(&source, &cwd));
    print!("{}", config.describe());
    println!("chitd: the configuration is valid; nothing was created");
    ExitCode::SUCCESS
}

fn run(args: &RunArgs, environment: &Environment) -> ExitCode {
    let (config, source, cwd) = match resolve(args) {
        Ok(resolved) => resolved,
        Err(code) => return code,
    };
    let format = config.log_format;
    init_logging(environment, format);
    // Once the log is set up, fatal errors are log events too (a JSON log
    // stays all JSON).
    let fatal = |code: u8, message: String| match format {
        LogFormat::Text => fatal(code, message),
        LogFormat::Json => {
            tracing::error!("{message}");
            ExitCode::from(code)
        }
    };
    raise_open_files_limit();
    keep_freed_memory();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fatal(1, format!("cannot start the async runtime: {e}")),
    };
    // Handlers first: a SIGTERM that arrives while the layout is printed
    // must still mean a clean exit 0, and a SIGHUP must not kill.
    let signals = {
        let _context = runtime.enter();
        shutdown_signal().and_then(|shutdown| Ok((shutdown, reload_requests()?)))
    };
    let (shutdown, requests) = match signals {
        Ok(signals) => signals,
        Err(e) => return fatal(1, format!("cannot install signal handlers: {e}")),
    };
    let reloads = daemon::reload::Reloads::new(requests, reload_load(args, &source, &cwd));
    let source = layout_source(&source, &cwd);
    match format {
        LogFormat::Text => print!("{source}\n{}", config.describe()),
        LogFormat::Json => tracing::info!(layout = %config.describe(), "{source}"),
    }
    let options = Options {
        exit_when_idle: args.exit_when_idle,
        fetch: fetch_settings(environment),
        rescan_interval: environment
            .rescan_interval
            .unwrap_or(daemon::RESCAN_INTERVAL),
        remote: chitd::remote::Settings::from_environment(&environment.remote),
    };
    match runtime.block_on(daemon::run(config, options, reloads, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(1, format!("{e}")),
    }
}

/// Have glibc's allocator keep memory the daemon frees, for a while: by
/// default it hands each big download's receive buffers back to the kernel
/// as they are freed and faults fresh pages in for the next ones, a page
/// fault per 4 KiB received (about 110,000 per GiB). Allocations under 32
/// MiB come from the heap, and up to 64 MiB freed at its top stay there:
/// 7,000 faults a GiB, 5-10 % less CPU for a big download, for about 8 MiB
/// more at its peak. Called before the runtime starts its threads.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; no other
    // thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Raise the soft limit on open files to the hard one, as a server that
/// holds a descriptor per chit in work should: [`daemon::LOCAL_SLOTS`]
/// deliveries at once hold a few each, on top of the spools, downloads and
/// connections, and the soft default is often 1024. A failure only leaves
/// the limit as it was (a chit that meets it is retried, never failed).
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The kernel's own ceiling on it (`fs.nr_open`) by default: the hard
    // limit may be "unlimited", which no process can have.
    const CEILING: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let Some(from) = limit.current else {
        return;
    };
    let to = limit.maximum.unwrap_or(CEILING).min(CEILING);
    if from >= to {
        return;
    }
    let raised = Rlimit {
        current: Some(to),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from, to, "raised the open files limit"),
        Err(e) => tracing::debug!(from, "cannot raise the open files limit: {e}"),
    }
}

/// Writes each log event as one line, whatever it quotes: a chit's name
/// (the consumer's choice) or a server's answer could otherwise carry line
/// breaks that forge log lines. The formatter hands over one whole event
/// per write; its inner `\n` and `\r` are written as `\n` and `\r`.
/// (ANSI escapes are already escaped by the formatter.)
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        let body = event.strip_suffix(b"\n").unwrap_or(event);
        if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
            return self.0.write_all(event).map(|()| event.len());
        }
        let mut line = Vec::with_capacity(event.len() + 16);
        for &byte in body {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(byte),
            }
        }
        if body.len() < event.len() {
            line.push(b'\n');
        }
        self.0.write_all(&line).map(|()| event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Test and tuning knobs: `CHITD_RETRY_DELAY_MS` (first backoff between
/// retry rounds) and `CHITD_INACTIVITY_TIMEOUT_MS` (no data for this long
/// cuts a connection).
fn fetch_settings(environment: &Environment) -> FetchSettings {
    let mut settings = FetchSettings::default();
    if let Some(delay) = environment.retry_delay {
        settings.retry_delay = delay;
        settings.max_retry_delay = settings.max_retry_delay.max(delay);
    }
    if let Some(timeout) = environment.inactivity_timeout {
        settings.inactivity_timeout = timeout;
    }
    settings
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed
/// when this is called, not when the future is first polled.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// One message per SIGHUP, from the moment this is called.
fn reload_requests() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let (sender, requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            if sender.send(()).is_err() {
                break;
            }
        }
    });
    Ok(requests)
}

/// How a reload loads the configuration: as at start, the `--config`
/// file with the flags over it; nothing without a file.
fn reload_load(args: &RunArgs, source: &LayoutSource, cwd: &Path) -> Option<daemon::reload::Load> {
    let LayoutSource::ConfigFile(_) = source else {
        return None;
    };
    let (args, cwd) = (args.clone(), cwd.to_path_buf());
    Some(std::sync::Arc::new(move || {
        config::resolve_run(&args, &cwd).map(|(config, _)| config)
    }))
}

fn request(args: &RequestArgs) -> ExitCode {
    match request::request(args) {
        Ok((name, Outcome::Queued)) => {
            println!("{name}");
            ExitCode::SUCCESS
        }
        Ok((name, Outcome::Downloaded)) => {
            println!("{name}: downloaded");
            ExitCode::SUCCESS
        }
        Ok((name, Outcome::Failed(reason))) => {
            println!("{name}: failed");
            eprintln!("chitd: {name} failed: {reason}");
            ExitCode::from(1)
        }
        Ok((name, Outcome::TimedOut)) => {
            eprintln!("chitd: {name} is not terminal yet; timed out waiting");
            ExitCode::from(124)
        }
        Err(e @ RequestError::Invalid(..)) => fatal(2, format!("{e}")),
        Err(e) => fatal(1, format!("{e}")),
    }
}

/// `request --manifest`: the chits' names (and with `--wait` how each
/// ended); exit 1 if any failed, else 124 if any is not terminal yet.
fn request_manifest(args: &RequestArgs, file: &Path) -> ExitCode {
    let requested = match request::request_manifest(args, file) {
        Ok(requested) => requested,
        Err(e @ RequestError::Invalid(..)) => return fatal(2, format!("{e}")),
        Err(e) => return fatal(1, format!("{e}")),
    };
    let (mut failed, mut pending) = (0, 0);
    for Requested {
        name,
        path,
        outcome,
        ..
    } in &requested
    {
        match outcome {
            Outcome::Queued => println!("{name}"),
            Outcome::Downloaded => println!("{name}: downloaded"),
            Outcome::Failed(reason) => {
                failed += 1;
                println!("{name}: failed");
                eprintln!("chitd: {path} ({name}) failed: {reason}");
            }
            Outcome::TimedOut => {
                pending += 1;
                println!("{name}: not terminal yet");
            }
        }
    }
    if !args.wait {
        return ExitCode::SUCCESS;
    }
    let downloaded = requested.len() - failed - pending;
    eprintln!("chitd: {downloaded} downloaded, {failed} failed, {pending} not terminal yet");
    match (failed, pending) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => fatal(124, "timed out waiting".to_owned()),
        _ => ExitCode::from(1),
    }
}

/// `retry`: each chit moved back prints `retried NAME`; each that could not
/// be is named on stderr, and makes the exit code 1.
fn retry(args: &RetryArgs) -> ExitCode {
    let outcomes = match retry::retry(args) {
        Ok(outcomes) => outcomes,
        Err(e @ RetryError::Invalid(..)) => return fatal(2, format!("{e}")),
        Err(e) => return fatal(1, format!("{e}")),
    };
    if outcomes.is_empty() {
        eprintln!("chitd: nothing to retry: fail/ holds no chit");
    }
    let mut code = ExitCode::SUCCESS;
    for (name, outcome) in outcomes {
        let name = name.to_string_lossy();
        let problem = match outcome {
            retry::Outcome::Retried => {
                println!("retried {name}");
                continue;
            }
            retry::Outcome::NotFailed => "not in fail/".to_owned(),
            retry::Outcome::Conflict(state) => {
                format!("a chit of this name is already in {state}; left in fail/")
            }
            retry::Outcome::Failed(error) => error,
        };
        code = fatal(1, format!("{name}: {problem}"));
    }
    code
}

fn status(args: &StatusArgs) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_default();
    let config::StatusLayout {
        spools,
        remote_cache,
    } = match config::resolve_status(args, &cwd) {
        Ok(layout) => layout,
        Err(e) => return fatal(2, format!("{e}")),
    };
    // A spool named on the command line is expected to be there (a typo
    // should not read as an empty spool); configured ones may not be made
    // yet.
    if let Some(spool) = &args.spool
        && !spool.exists()
    {
        return fatal(1, format!("no spool directory at {}", spool.display()));
    }
    let listed = if args.all {
        status::Failed::All
    } else {
        status::Failed::Newest
    };
    loop {
        let report = status::status(&spools, listed).map(|mut report| {
            report.uploads_pending =
                (remote_cache.as_deref()).map(|cache| chitd::remote::pending_uploads(cache).len());
            report
        });
        match report {
            Ok(report) if args.json => {
                return match serde_json::to_string_pretty(&report) {
                    Ok(json) => {
                        println!("{json}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fatal(1, format!("cannot render the report: {e}")),
                };
            }
            Ok(report) if args.watch => {
                // Home, clear to the end: redrawn in place.
                print!("\x1b[H\x1b[J{}", status::render(&report));
                let _ = std::io::Write::flush(&mut std::io::stdout());
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Ok(report) => {
                print!("{}", status::render(&report));
                return ExitCode::SUCCESS;
            }
            Err(e) => return fatal(1, format!("{e}")),
        }
    }
}

fn fatal(code: u8, message: String) -> ExitCode {
    eprintln!("chitd: {message}");
    ExitCode::from(code)
}
