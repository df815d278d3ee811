//! The `chitd` binary: parse arguments, set up logging, call one library
//! function, map the result to an exit code (0 ok, 1 failure, 2 usage,
//! 124 timeout).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use chitd::cli::{Cli, Command, RequestArgs, RunArgs, StatusArgs};
use chitd::config::{self, LayoutSource};
use chitd::daemon::{self, Options};
use chitd::fetch::FetchSettings;
use chitd::request::{self, Outcome, RequestError};
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("chitd=info")),
        )
        .with_writer(|| OneLine(std::io::stderr()))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Request(args) => request(&args),
        Command::Status(args) => status(&args),
        Command::Cache(args) => ExitCode::from(chitd::cache::run(&args)),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => return fatal(1, format!("cannot read the current directory: {e}")),
    };
    let (config, source) = match config::resolve_run(args, &cwd) {
        Ok(resolved) => resolved,
        Err(e) => return fatal(2, format!("{e}")),
    };
    raise_open_files_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fatal(1, format!("cannot start the async runtime: {e}")),
    };
    // Handlers first: a SIGTERM that arrives while the layout is printed
    // must still mean a clean exit 0.
    let shutdown = {
        let _context = runtime.enter();
        match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(e) => return fatal(1, format!("cannot install signal handlers: {e}")),
        }
    };
    match &source {
        LayoutSource::EmbeddedDefault => println!(
            "chitd: no --config or --spool given; using the default layout in {}",
            cwd.display()
        ),
        LayoutSource::ConfigFile(path) => println!("chitd: configuration {}", path.display()),
        LayoutSource::Flags => println!("chitd: layout from flags"),
    }
    print!("{}", config.describe());
    let options = Options {
        exit_when_idle: args.exit_when_idle,
        fetch: fetch_settings_from_env(),
        rescan_interval: env_millis("CHITD_RESCAN_INTERVAL_MS")
            .filter(|interval| !interval.is_zero())
            .unwrap_or(daemon::RESCAN_INTERVAL),
        remote: chitd::remote::Settings::from_env(),
    };
    match runtime.block_on(daemon::run(config, options, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(1, format!("{e}")),
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

/// A test and tuning knob in milliseconds, if set to a number.
fn env_millis(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Test and tuning knobs: `CHITD_RETRY_DELAY_MS` (first backoff between
/// retry rounds) and `CHITD_INACTIVITY_TIMEOUT_MS` (no data for this long
/// cuts a connection).
fn fetch_settings_from_env() -> FetchSettings {
    let mut settings = FetchSettings::default();
    if let Some(delay) = env_millis("CHITD_RETRY_DELAY_MS") {
        settings.retry_delay = delay;
        settings.max_retry_delay = settings.max_retry_delay.max(delay);
    }
    if let Some(timeout) = env_millis("CHITD_INACTIVITY_TIMEOUT_MS") {
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

fn status(args: &StatusArgs) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_default();
    let spools = match config::resolve_status_spools(args, &cwd) {
        Ok(spools) => spools,
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
        match status::status(&spools, listed) {
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
