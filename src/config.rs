//! The daemon's layout: TOML text → [`Config`], and how `chitd run` and
//! `chitd status` arrive at one from their flags.
//!
//! This file owns the configuration format of contract §6 and nothing else:
//! [`Config::parse`] is pure (text and a base directory in, value or
//! [`ConfigError`] out) and [`Config::load`] is the thin wrapper that reads a
//! file. [`resolve_run`] and [`resolve_status_spools`] merge command-line flags
//! over a file or the embedded default layout; they read at most the one
//! configuration file and never create anything. [`Config::validate_for_run`]
//! also refuses roots that overlap (see [`Config::check_roots`]), which looks
//! at the file system only to resolve symlinks.
//!
//! Every error is a sentence that names the file (when there is one), the line
//! and the key. TOML values are read as [`toml::Value`] with their spans and
//! checked here, rather than typed by serde, so that a wrong type can name its
//! key; `deny_unknown_fields` catches unknown keys, whose serde message already
//! names the key.

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};
use url::Url;

use crate::cli::{CacheLocation, LogFormat, RunArgs, StatusArgs};

/// Concurrent downloads when the configuration does not say.
pub const DEFAULT_JOBS: usize = 4;
/// How long the sources of a chit may make no progress before it fails.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The conventional name of the configuration file. chitd never loads it
/// implicitly: a file is only read when `--config` names it.
pub const DEFAULT_CONFIG_NAME: &str = "chitd.toml";
/// The name of the consumer that `--spool`/`--deliver` and the embedded
/// default layout define.
pub const DEFAULT_CONSUMER: &str = "default";

/// Everything `chitd run` needs to know about its layout. Paths are absolute
/// whenever the base directory given to [`Config::parse`] was.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The content-addressed store shared by all consumers.
    pub cache: PathBuf,
    /// Tried after a chit's own URLs, as `<mirror>/<path>`; stored as written
    /// (a trailing slash may or may not be there). Schemes: http, https, file.
    pub mirrors: Vec<Url>,
    /// Downloads running at once; at least 1.
    pub jobs: usize,
    /// A chit fails once its sources have made no progress for this long; > 0.
    /// This is the setting's one home: `daemon::run` hands it to
    /// [`crate::fetch::Fetcher::new`].
    pub give_up_after: Duration,
    /// Requests in flight to one host (scheme, host, port) at once, over
    /// all downloads; at least 1 (see `fetch::hosts`).
    pub per_host: usize,
    /// A PEM file of certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Names are unique and non-empty; no two consumers share a spool. After
    /// [`Config::validate_for_run`], no two roots overlap (but see there).
    pub consumers: Vec<Consumer>,
    /// How `chitd run` writes its log (`log_format`, or `--log-format`).
    pub log_format: LogFormat,
    /// How much the cache may hold, and for how long unused (`cache_max_size`,
    /// `cache_max_age`; no limit by default).
    pub cache_limits: CacheLimits,
    /// The fleet's shared store (`[remote]`), if any.
    pub remote: Option<crate::remote::RemoteConfig>,
    /// Where `chitd run` serves Prometheus metrics at `/metrics`
    /// (`metrics`, or `--metrics`); none by default.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The bounds of the cache that collection keeps it within (see `gc`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheLimits {
    /// At most this many bytes of objects.
    pub max_size: Option<u64>,
    /// No object unused for longer than this.
    pub max_age: Option<Duration>,
}

impl CacheLimits {
    /// Whether there is any limit at all.
    pub fn is_set(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }
}

/// One consumer: where its chits arrive and where its files are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub name: String,
    pub spool: PathBuf,
    pub deliver: PathBuf,
}

impl Consumer {
    /// The consumer of `--spool`/`--deliver` and of the default layout.
    fn default_named(spool: PathBuf, deliver: PathBuf) -> Consumer {
        let name = DEFAULT_CONSUMER.to_string();
        Consumer {
            name,
            spool,
            deliver,
        }
    }
}

/// Where in the configuration text something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file, once [`Config::load`] knows it.
    pub file: Option<PathBuf>,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}, ", file.display())?;
        }
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why no usable [`Config`] could be made. Each message is complete on its
/// own (the I/O error of [`ConfigError::Read`] is part of the text), so
/// `source()` is always `None` and printing the chain repeats nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{location}: this is not valid TOML: {message}")]
    Syntax { location: Location, message: String },
    /// A key is unknown, has the wrong type or a value that cannot be used.
    #[error("{location}: {message}")]
    Key {
        location: Location,
        /// The key as written, without its table (`jobs`, `spool`).
        key: String,
        message: String,
    },
    /// `chitd run` has nothing to serve.
    #[error(
        "{}no [[consumer]] defined, so there is nothing to serve: add a [[consumer]] \
         section with name, spool and deliver, or pass --spool DIR --deliver DIR",
        file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default()
    )]
    NoConsumers { file: Option<PathBuf> },
    /// Two roots (the cache, a spool, a delivery directory) are the same
    /// directory or one is inside the other. `message` names both roots, their
    /// roles and why that is refused.
    #[error(
        "{}{message}",
        file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default()
    )]
    Overlap {
        file: Option<PathBuf>,
        message: String,
    },
    /// A command-line flag has a value that cannot be used.
    #[error("{flag} {value:?}: {message}")]
    Flag {
        flag: &'static str,
        value: String,
        message: String,
    },
}

impl ConfigError {
    /// Names `file` in an error that came from the text of that file.
    pub fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            Self::Syntax { location, .. } | Self::Key { location, .. } => {
                location.file = Some(path.to_path_buf());
            }
            Self::NoConsumers { file } | Self::Overlap { file, .. } => {
                *file = Some(path.to_path_buf());
            }
            Self::Read { .. } | Self::Flag { .. } => {}
        }
        self
    }
}

fn flag_error(
    flag: &'static str,
    value: impl fmt::Display,
    message: impl Into<String>,
) -> ConfigError {
    let (value, message) = (value.to_string(), message.into());
    ConfigError::Flag {
        flag,
        value,
        message,
    }
}

/// How `chitd run` got its layout, for printing at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSource {
    /// `--config FILE` (the absolute path), possibly with flags over it.
    ConfigFile(PathBuf),
    /// `--spool DIR --deliver DIR` without `--config`.
    Flags,
    /// Neither `--config` nor `--spool`: [`Config::default_layout`] in the
    /// current directory.
    EmbeddedDefault,
}

impl fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConfigFile(path) => write!(f, "configuration file {}", path.display()),
            Self::Flags => f.write_str("command-line flags"),
            Self::EmbeddedDefault => f.write_str(
                "the embedded default layout in the current directory \
                 (no --config or --spool given)",
            ),
        }
    }
}

/// The file as serde sees it. Values stay untyped so that [`Reader`] can
/// name the key when a type is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cache: Option<Spanned<Value>>,
    mirrors: Option<Spanned<Value>>,
    jobs: Option<Spanned<Value>>,
    give_up_after: Option<Spanned<Value>>,
    log_format: Option<Spanned<Value>>,
    cache_max_size: Option<Spanned<Value>>,
    cache_max_age: Option<Spanned<Value>>,
    per_host: Option<Spanned<Value>>,
    ca_file: Option<Spanned<Value>>,
    metrics: Option<Spanned<Value>>,
    #[serde(default)]
    consumer: Vec<Spanned<RawConsumer>>,
    remote: Option<Spanned<crate::remote::config::RawRemote>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    name: Option<Spanned<Value>>,
    spool: Option<Spanned<Value>>,
    deliver: Option<Spanned<Value>>,
}

impl Config {
    /// Pure: TOML text → Config. Relative paths are joined onto `base_dir`.
    /// Errors carry a line but no file; [`Config::load`] adds the file.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let reader = Reader { text };
        // Parse twice: a failure of the first is bad TOML; a failure of the
        // second is an unknown key or a misshapen [[consumer]].
        toml::from_str::<toml::Table>(text).map_err(|error| reader.syntax_error(&error))?;
        let raw: RawConfig = toml::from_str(text).map_err(|error| reader.shape_error(&error))?;
        let path = |value: &Value| directory(base_dir, value);
        let mut config = Config::default_layout(base_dir);
        config.consumers.clear();
        if let Some(value) = &raw.cache {
            config.cache = reader.check("cache", value, path)?;
        }
        if let Some(value) = &raw.mirrors {
            config.mirrors = reader.mirrors(value)?;
        }
        if let Some(value) = &raw.jobs {
            config.jobs = reader.check("jobs", value, jobs)?;
        }
        if let Some(value) = &raw.give_up_after {
            config.give_up_after = reader.check("give_up_after", value, give_up_after)?;
        }
        if let Some(value) = &raw.log_format {
            config.log_format = reader.check("log_format", value, log_format)?;
        }
        if let Some(value) = &raw.cache_max_size {
            let size = reader.check("cache_max_size", value, cache_max_size)?;
            config.cache_limits.max_size = Some(size);
        }
        if let Some(value) = &raw.cache_max_age {
            let age = reader.check("cache_max_age", value, cache_max_age)?;
            config.cache_limits.max_age = Some(age);
        }
        if let Some(value) = &raw.per_host {
            config.per_host = reader.check("per_host", value, per_host)?;
        }
        if let Some(value) = &raw.ca_file {
            config.ca_file = Some(reader.check("ca_file", value, |value| file(base_dir, value))?);
        }
        if let Some(value) = &raw.metrics {
            config.metrics = Some(reader.check("metrics", value, metrics_address)?);
        }
        for table in &raw.consumer {
            let consumer = &table.get_ref();
            let required = |field: &Option<Spanned<Value>>, key: &str| {
                field.clone().ok_or_else(|| {
                    let message = format!(
                        "this [[consumer]] has no `{key}`; every consumer needs `name`, \
                         `spool` and `deliver`"
                    );
                    reader.error(table.span(), key, message)
                })
            };
            let name = required(&consumer.name, "name")?;
            let spool = required(&consumer.spool, "spool")?;
            let deliver = required(&consumer.deliver, "deliver")?;
            let consumer = Consumer {
                name: reader.check("name", &name, consumer_name)?,
                spool: reader.check("spool", &spool, path)?,
                deliver: reader.check("deliver", &deliver, path)?,
            };
            if let Some((key, message)) = clash(&config.consumers, &consumer) {
                let at_fault = if key == "name" { &name } else { &spool };
                return Err(reader.error(at_fault.span(), key, message));
            }
            config.consumers.push(consumer);
        }
        if let Some(table) = &raw.remote {
            let remote = crate::remote::config::parse(table.get_ref(), table.span());
            config.remote = Some(remote.map_err(|(span, key, why)| reader.error(span, key, why))?);
        }
        Ok(config)
    }

    /// Reads and parses the file at `path`. Relative paths inside it are
    /// relative to its directory; a relative `path` is taken from the
    /// process's current directory. Errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        };
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let text = std::fs::read_to_string(&absolute).map_err(read_error)?;
        let base_dir = absolute.parent().unwrap_or(Path::new("/"));
        Config::parse(&text, base_dir).map_err(|error| error.in_file(path))
    }

    /// The embedded default layout rooted at `dir`: `dir/cache`, and one
    /// consumer "default" with spool `dir/spool` and deliver `dir/distfiles`.
    pub fn default_layout(dir: &Path) -> Config {
        Config {
            cache: dir.join("cache"),
            mirrors: Vec::new(),
            jobs: DEFAULT_JOBS,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            log_format: LogFormat::Text,
            per_host: crate::fetch::DEFAULT_PER_HOST,
            ca_file: None,
            metrics: None,
            consumers: vec![Consumer::default_named(
                dir.join("spool"),
                dir.join("distfiles"),
            )],
            cache_limits: CacheLimits::default(),
            remote: None,
        }
    }

    /// What `chitd run` needs beyond a well-formed file: at least one
    /// consumer, and roots that do not overlap ([`Config::check_roots`]).
    pub fn validate_for_run(&self) -> Result<(), ConfigError> {
        if self.consumers.is_empty() {
            return Err(ConfigError::NoConsumers { file: None });
        }
        self.check_roots()
    }

    /// Refuses a layout in which two roots (the cache, every consumer's spool
    /// and delivery directory) are the same directory or one lies inside the
    /// other: a consumer could then request a file whose path leads into
    /// another's spool or delivery directory, or into the cache. The one
    /// exception is two consumers sharing the very same delivery directory.
    ///
    /// Paths are compared lexically (absolute, `.` and `..` resolved), and
    /// again with symlinks resolved in the part of each path that exists, so
    /// that an alias is caught too. Nothing needs to exist yet.
    pub fn check_roots(&self) -> Result<(), ConfigError> {
        let mut roots = vec![Root::new(Role::Cache, &self.cache)];
        for consumer in &self.consumers {
            let name = consumer.name.as_str();
            roots.push(Root::new(Role::Spool(name), &consumer.spool));
            roots.push(Root::new(Role::Deliver(name), &consumer.deliver));
        }
        for (index, first) in roots.iter().enumerate() {
            for second in &roots[index + 1..] {
                if let Some(message) = overlap(first, second) {
                    return Err(ConfigError::Overlap {
                        file: None,
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    /// A multi-line description of the layout for a person, printed by
    /// `chitd run` at start. Ends with a newline.
    pub fn describe(&self) -> String {
        let mut lines = vec![format!("cache:         {}", self.cache.display())];
        match self.mirrors.as_slice() {
            [] => lines.push("mirrors:       none".to_string()),
            mirrors => lines.extend(
                mirrors
                    .iter()
                    .map(|mirror| format!("mirror:        {}", crate::chit::redact_url(mirror))),
            ),
        }
        lines.push(format!("jobs:          {}", self.jobs));
        let give_up_after = humantime::format_duration(self.give_up_after);
        lines.push(format!("give_up_after: {give_up_after} without progress"));
        let log_format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        lines.push(format!("log_format:    {log_format}"));
        if let Some(size) = self.cache_limits.max_size {
            lines.push(format!("cache_max_size: {size} bytes"));
        }
        if let Some(age) = self.cache_limits.max_age {
            let age = humantime::format_duration(age);
            lines.push(format!("cache_max_age:  {age} unused"));
        }
        if let Some(remote) = &self.remote {
            lines.push(format!(
                "remote:        {}",
                crate::remote::describe(remote)
            ));
        }
        lines.push(format!("per_host:      {} requests at once", self.per_host));
        if let Some(ca_file) = &self.ca_file {
            lines.push(format!("ca_file:       {}", ca_file.display()));
        }
        if let Some(address) = self.metrics {
            lines.push(format!("metrics:       http://{address}/metrics"));
        }
        let [request, fetch, downloaded, fail] = crate::spool::STATES;
        for consumer in &self.consumers {
            let spool = consumer.spool.display();
            lines.push(format!("consumer {:?}:", consumer.name));
            lines.push(format!("  spool:   {spool}"));
            lines.push(format!(
                "           chits go in {request}/, move to {fetch}/ while fetched, \
                 and end in {downloaded}/ or {fail}/"
            ));
            lines.push(format!("  deliver: {}", consumer.deliver.display()));
        }
        lines.join("\n") + "\n"
    }
}

/// Checks one mirror URL, from the file or `--mirror`. The error is the part
/// of a sentence after the URL.
pub fn parse_mirror(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("is not a valid URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        let scheme = url.scheme();
        return Err(format!(
            "has the scheme {scheme:?}, but a mirror must be http, https or file"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        let why = "chitd appends each file's path to a mirror URL";
        return Err(format!(
            "has a query or fragment, which it cannot have because {why}"
        ));
    }
    Ok(url)
}

/// The config text being checked, for turning spans into lines.
struct Reader<'a> {
    text: &'a str,
}

impl Reader<'_> {
    fn location(&self, span: Range<usize>) -> Location {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        let line = before.matches('\n').count() + 1;
        Location {
            file: None,
            line,
            column,
        }
    }

    fn error(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        let location = self.location(span);
        ConfigError::Key {
            location,
            key: key.to_string(),
            message,
        }
    }

    /// Runs `check` on the value of `key`; its message is about `key`.
    fn check<T>(
        &self,
        key: &str,
        value: &Spanned<Value>,
        check: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        check(value.get_ref())
            .map_err(|reason| self.error(value.span(), key, format!("`{key}` {reason}")))
    }

    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let mut message = error.message().to_string();
        // toml's message does not say which key; its span does.
        if message == "duplicate key" {
            let key = self.text.get(span.clone()).unwrap_or_default();
            message = format!("the key `{key}` is defined twice in the same table");
        }
        let location = self.location(span);
        ConfigError::Syntax { location, message }
    }

    /// The TOML is valid but serde refused it: an unknown key (serde names it)
    /// or a `consumer` that is not an array of tables.
    fn shape_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let message = error.message();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let key = rest.split('`').next().unwrap_or_default();
            let expected = rest.split_once(", expected ").map_or("", |(_, list)| list);
            let message = format!("unknown key `{key}` (expected {expected})");
            return self.error(span, key, message);
        }
        if message.contains("RawRemote") {
            let message = "`remote` must be a [remote] section with endpoint and bucket";
            return self.error(span, "remote", message.to_string());
        }
        let message = "`consumer` must be written as [[consumer]] sections (with double \
                       brackets), one per consumer, each with name, spool and deliver";
        self.error(span, "consumer", message.to_string())
    }

    fn mirrors(&self, value: &Spanned<Value>) -> Result<Vec<Url>, ConfigError> {
        let strings = self.check("mirrors", value, |value| match value {
            Value::Array(items) if items.iter().all(Value::is_str) => Ok(items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>()),
            other => Err(format!(
                "must be an array of URL strings, not {}",
                show(other)
            )),
        })?;
        let span = value.span();
        let mut mirrors = Vec::with_capacity(strings.len());
        for text in strings {
            let url = parse_mirror(&text).map_err(|reason| {
                // Array items carry no span: look for the string in the array.
                let inside = self.text.get(span.clone()).unwrap_or_default();
                let start = span.start + inside.find(&text).unwrap_or(0);
                self.error(
                    start..start,
                    "mirrors",
                    format!("the mirror {text:?} in `mirrors` {reason}"),
                )
            })?;
            mirrors.push(url);
        }
        Ok(mirrors)
    }
}

/// Whether `new` may join `consumers`: if not, the key at fault and why.
fn clash(consumers: &[Consumer], new: &Consumer) -> Option<(&'static str, String)> {
    let (name, spool) = (&new.name, new.spool.display());
    consumers.iter().find_map(|old| {
        if old.name == new.name {
            let message =
                format!("`name` = {name:?} is used by two consumers; names must be unique");
            Some(("name", message))
        } else if lexically_normal(&old.spool) == lexically_normal(&new.spool) {
            let other = &old.name;
            let message = format!(
                "consumers {other:?} and {name:?} have the same `spool`, {spool}; each \
                 consumer needs a spool directory of its own"
            );
            Some(("spool", message))
        } else {
            None
        }
    })
}

fn string(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, not {}", show(value)))
}

fn directory(base_dir: &Path, value: &Value) -> Result<PathBuf, String> {
    match string(value)? {
        "" => Err("is empty, but it must name a directory".to_string()),
        text => Ok(resolve_path(base_dir, Path::new(text))),
    }
}

fn file(base_dir: &Path, value: &Value) -> Result<PathBuf, String> {
    match string(value)? {
        "" => Err("is empty, but it must name a file".to_string()),
        text => Ok(resolve_path(base_dir, Path::new(text))),
    }
}

fn consumer_name(value: &Value) -> Result<String, String> {
    match string(value)? {
        "" => Err("is empty, but a consumer needs a name".to_string()),
        name => Ok(name.to_string()),
    }
}

fn jobs(value: &Value) -> Result<usize, String> {
    match value {
        // More than usize::MAX downloads at once is as good as unlimited.
        Value::Integer(jobs) if *jobs >= 1 => Ok(usize::try_from(*jobs).unwrap_or(usize::MAX)),
        other => Err(format!(
            "is the number of downloads at once and must be a whole number of at least 1, \
             not {}",
            show(other)
        )),
    }
}

fn log_format(value: &Value) -> Result<LogFormat, String> {
    match value.as_str() {
        Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(format!("must be \"text\" or \"json\", not {}", show(value))),
    }
}

fn per_host(value: &Value) -> Result<usize, String> {
    match value {
        Value::Integer(limit) if *limit >= 1 => Ok(usize::try_from(*limit).unwrap_or(usize::MAX)),
        other => Err(format!(
            "is the number of requests to one host at once and must be a whole number of \
             at least 1, not {}",
            show(other)
        )),
    }
}

fn metrics_address(value: &Value) -> Result<std::net::SocketAddr, String> {
    let text = value.as_str().ok_or_else(|| {
        format!(
            "must be an address and port such as \"127.0.0.1:9187\", not {}",
            show(value)
        )
    })?;
    text.parse().map_err(|_| {
        format!(
            "= {text:?} is not an IP address and port; write it like \"127.0.0.1:9187\" \
             or \"[::1]:9187\""
        )
    })
}

fn give_up_after(value: &Value) -> Result<Duration, String> {
    let duration = match value {
        // A bare number in a string is seconds too, as it is outside one.
        Value::String(text) => match text.trim().parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => humantime::parse_duration(text).map_err(|_| {
                format!(
                    "= {text:?} is not a duration; write it like \"60s\", \"5m\", \
                     \"1h 30m\" or \"500ms\", or as a number of seconds"
                )
            })?,
        },
        Value::Integer(seconds) if *seconds >= 0 => Duration::from_secs(seconds.unsigned_abs()),
        // Beyond what a Duration holds is "forever", which is what was meant.
        Value::Float(seconds) if *seconds >= 0.0 => {
            Duration::try_from_secs_f64(*seconds).unwrap_or(Duration::MAX)
        }
        other => {
            let shown = show(other);
            return Err(format!(
                "must be a duration such as \"60s\", or a number of seconds, not {shown}"
            ));
        }
    };
    // Whole milliseconds: no network answers faster than that.
    let duration = whole_ms(duration);
    if duration.is_zero() {
        return Err(
            "must be at least 1ms (longer, in practice), or every chit would fail at its first pause"
                .into(),
        );
    }
    Ok(duration)
}

fn cache_max_size(value: &Value) -> Result<u64, String> {
    match value {
        Value::String(text) => parse_size(text).map_err(|reason| format!("= {reason}")),
        Value::Integer(bytes) if *bytes >= 0 => Ok(bytes.unsigned_abs()),
        other => Err(format!(
            "must be a size such as \"20GB\" or \"500MiB\", or a number of bytes, not {}",
            show(other)
        )),
    }
}

fn cache_max_age(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(text) => parse_age(text).map_err(|reason| format!("= {reason}")),
        Value::Integer(seconds) if *seconds >= 0 => Ok(Duration::from_secs(seconds.unsigned_abs())),
        other => Err(format!(
            "must be a duration such as \"90d\" or \"12h\", or a number of seconds, not {}",
            show(other)
        )),
    }
}

/// A size of the cache: bytes (`1000000`), or with a unit (`500MiB`,
/// `20GB`, `1.5 GiB`; `K`, `M`, `G`, `T` are powers of 1000, `Ki`, `Mi`,
/// `Gi`, `Ti` of 1024). The error names the text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let starts_with_digit = trimmed.starts_with(|c: char| c.is_ascii_digit());
    match trimmed.parse::<bytesize::ByteSize>() {
        Ok(size) if starts_with_digit => Ok(size.as_u64()),
        _ => Err(format!(
            "{text:?} is not a size; write it like \"500MiB\", \"20GB\" or a number of bytes"
        )),
    }
}

/// An age: a duration such as `90d`, `12h` or `1h 30m`, or a number of
/// seconds. The error names the text.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(trimmed).map_err(|_| {
        format!(
            "{text:?} is not a duration; write it like \"90d\", \"12h\" or \"1h 30m\", \
             or as a number of seconds"
        )
    })
}

/// `duration` cut to whole milliseconds (as `give_up_after` and the
/// windows in `# error:` lines are shown).
pub fn whole_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A TOML value as a person would name it in a sentence.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => format!("the string {text:?}"),
        Value::Integer(number) => format!("the integer {number}"),
        Value::Float(number) => format!("the number {number}"),
        Value::Boolean(flag) => format!("the boolean {flag}"),
        Value::Datetime(datetime) => format!("the date {datetime}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// `path` joined onto `base` (unless absolute), without `.` components or a
/// trailing slash. `..` is kept: only the filesystem knows what it means.
fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    base.join(path).components().collect()
}

/// `..` resolved lexically, for telling whether two spools are the same.
/// `/..` is `/`; a relative path keeps the `..` it cannot resolve.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match normal.components().next_back() {
                Some(Component::Normal(_)) => {
                    normal.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => normal.push(component),
            },
            other => normal.push(other),
        }
    }
    normal
}

/// `path` made absolute, with symlinks resolved in its longest existing
/// ancestor (the rest, which does not exist yet, is taken lexically).
fn resolved(absolute: &Path) -> PathBuf {
    for ancestor in absolute.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let rest = absolute.strip_prefix(ancestor).unwrap_or(Path::new(""));
            return lexically_normal(&real.join(rest));
        }
    }
    lexically_normal(absolute)
}

/// What a root is for, to name it in an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role<'a> {
    Cache,
    Spool(&'a str),
    Deliver(&'a str),
}

impl fmt::Display for Role<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cache => f.write_str("the cache"),
            Self::Spool(name) => write!(f, "consumer {name:?} spool"),
            Self::Deliver(name) => write!(f, "consumer {name:?} deliver"),
        }
    }
}

/// A root of the layout, as configured and in the two forms compared.
struct Root<'a> {
    role: Role<'a>,
    configured: &'a Path,
    /// Absolute, `.`/`..` and repeated slashes resolved.
    lexical: PathBuf,
    /// `lexical`, but with symlinks resolved where the path exists.
    real: PathBuf,
}

impl<'a> Root<'a> {
    fn new(role: Role<'a>, configured: &'a Path) -> Root<'a> {
        let absolute = std::path::absolute(configured).unwrap_or_else(|_| configured.into());
        Root {
            role,
            configured,
            lexical: lexically_normal(&absolute),
            real: resolved(&absolute),
        }
    }

    /// The role and configured path, with the form compared if it differs.
    fn describe(&self, compared: &Path) -> String {
        let mut text = format!("{} {}", self.role, self.configured.display());
        if compared != self.configured {
            text += &format!(" (which is {})", compared.display());
        }
        text
    }
}

/// How `first` and `second` overlap, as an error message, or `None` if they
/// do not (or are one delivery directory shared by two consumers).
fn overlap(first: &Root<'_>, second: &Root<'_>) -> Option<String> {
    let shared_delivery = matches!(
        (first.role, second.role),
        (Role::Deliver(_), Role::Deliver(_))
    );
    let compare = |a: &Path, b: &Path| {
        if a == b {
            (!shared_delivery).then(|| {
                let (a, b) = (first.describe(a), second.describe(b));
                format!("{a} and {b} are the same directory")
            })
        } else if b.starts_with(a) {
            Some(format!(
                "{} contains {}",
                first.describe(a),
                second.describe(b)
            ))
        } else if a.starts_with(b) {
            Some(format!(
                "{} contains {}",
                second.describe(b),
                first.describe(a)
            ))
        } else {
            None
        }
    };
    let relation =
        compare(&first.lexical, &second.lexical).or_else(|| compare(&first.real, &second.real))?;
    let reason = match (first.role, second.role) {
        (Role::Cache, _) | (_, Role::Cache) => {
            "the cache must be chitd's own, out of every consumer's reach"
        }
        (Role::Spool(a) | Role::Deliver(a), Role::Spool(b) | Role::Deliver(b)) if a == b => {
            "a delivery could write into the consumer's spool"
        }
        _ => "a consumer could write into another's directories",
    };
    Some(format!("{relation}: {reason}"))
}

/// Merges `chitd run`'s flags over its layout.
///
/// Starts from the `--config` file if given, else (with neither `--config`
/// nor `--spool`) from [`Config::default_layout`] of `cwd`, else from a
/// layout with `cwd/cache` and no consumers. Then `--spool`/`--deliver`
/// replace the consumers with one named "default"; `--cache`, `--mirror`
/// (replacing the list) and `--jobs` override. Relative flag paths are
/// relative to `cwd`. Finally [`Config::validate_for_run`].
pub fn resolve_run(args: &RunArgs, cwd: &Path) -> Result<(Config, LayoutSource), ConfigError> {
    let (mut config, source) = match (&args.config, &args.spool) {
        (Some(file), _) => {
            let file = resolve_path(cwd, file);
            (Config::load(&file)?, LayoutSource::ConfigFile(file))
        }
        (None, None) => (Config::default_layout(cwd), LayoutSource::EmbeddedDefault),
        (None, Some(_)) => {
            let mut config = Config::default_layout(cwd);
            config.consumers.clear();
            (config, LayoutSource::Flags)
        }
    };
    match (&args.spool, &args.deliver) {
        (Some(spool), Some(deliver)) => {
            let (spool, deliver) = (resolve_path(cwd, spool), resolve_path(cwd, deliver));
            config.consumers = vec![Consumer::default_named(spool, deliver)];
        }
        (None, None) => {}
        (Some(dir), None) | (None, Some(dir)) => {
            let flag = if args.spool.is_some() {
                "--spool"
            } else {
                "--deliver"
            };
            let message = "--spool and --deliver define a consumer together; give both";
            return Err(flag_error(flag, dir.display(), message));
        }
    }
    if let Some(cache) = &args.cache {
        config.cache = resolve_path(cwd, cache);
    }
    if !args.mirror.is_empty() {
        config.mirrors = args
            .mirror
            .iter()
            .map(|text| {
                parse_mirror(text)
                    .map_err(|reason| flag_error("--mirror", text, format!("this mirror {reason}")))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(jobs) = args.jobs {
        if jobs == 0 {
            let message = "at least one download must be allowed at a time";
            return Err(flag_error("--jobs", jobs, message));
        }
        config.jobs = jobs;
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(address) = args.metrics {
        config.metrics = Some(address);
    }
    if let Err(error) = config.validate_for_run() {
        return Err(match &source {
            LayoutSource::ConfigFile(file) => error.in_file(file),
            LayoutSource::Flags | LayoutSource::EmbeddedDefault => error,
        });
    }
    Ok((config, source))
}

/// What `chitd status` reads, from one reading of its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusLayout {
    /// (consumer name, spool directory): every consumer of the `--config`
    /// file, or ("default", `--spool`), or the default layout's consumer in
    /// `cwd`. A file without consumers gives none.
    pub spools: Vec<(String, PathBuf)>,
    /// The cache, if the configuration has a fleet tier (`[remote]`):
    /// where its pending uploads are recorded. None for `--spool` alone.
    pub remote_cache: Option<PathBuf>,
}

/// The layout `chitd status` reads (see [`StatusLayout`]).
pub fn resolve_status(args: &StatusArgs, cwd: &Path) -> Result<StatusLayout, ConfigError> {
    let config = match (&args.config, &args.spool) {
        (Some(file), _) => Config::load(&resolve_path(cwd, file))?,
        (None, Some(spool)) => {
            let name = DEFAULT_CONSUMER.to_string();
            return Ok(StatusLayout {
                spools: vec![(name, resolve_path(cwd, spool))],
                remote_cache: None,
            });
        }
        (None, None) => Config::default_layout(cwd),
    };
    let remote_cache = config.remote.is_some().then(|| config.cache.clone());
    let spools = (config.consumers.into_iter())
        .map(|consumer| (consumer.name, consumer.spool))
        .collect();
    Ok(StatusLayout {
        spools,
        remote_cache,
    })
}

/// [`resolve_status`]'s spools alone.
pub fn resolve_status_spools(
    args: &StatusArgs,
    cwd: &Path,
) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    resolve_status(args, cwd).map(|layout| layout.spools)
}

/// The layout a `chitd cache` command works on: the `--config` file's, else
/// the default layout of `cwd` (as `chitd run` with no flags); `--cache`
/// overrides its cache. Relative flag paths are relative to `cwd`.
pub fn resolve_cache(location: &CacheLocation, cwd: &Path) -> Result<Config, ConfigError> {
    let mut config = match &location.config {
        Some(file) => Config::load(&resolve_path(cwd, file))?,
        None => Config::default_layout(cwd),
    };
    if let Some(cache) = &location.cache {
        config.cache = resolve_path(cwd, cache);
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
