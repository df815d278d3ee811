//! Reloading the configuration on SIGHUP.
//!
//! `chitd run --config FILE` re-reads FILE on SIGHUP, resolved exactly as
//! at start (`--spool`/`--deliver`, `--cache`, `--mirror`, `--jobs`,
//! `--metrics` and `--log-format` keep overriding it), and compares it
//! with the configuration it runs ([`changes`]):
//!
//! - **Applied live**: consumers added (opened as at start, watched, and
//!   their `request/` and `fetch/` scanned at once) and taken out,
//!   `mirrors`, `jobs`, `give_up_after`, `cache_max_size` and
//!   `cache_max_age`, `metrics`, `per_host` and `ca_file`. A consumer
//!   whose `spool` or `deliver` changed is taken out and added anew.
//! - **Refused** ([`refused`]): a different `cache`, `log_format` or
//!   `[remote]`. The whole reload is then refused, logged naming each such
//!   key; a restart applies them.
//! - **A file that does not load** (unreadable, bad TOML, an unknown key,
//!   overlapping roots, no consumer, a `ca_file` without certificates, a
//!   `metrics` address that cannot be bound): logged with its error, and
//!   the running configuration is kept, entirely.
//!
//! Nothing under way is dropped. Chits and downloads go on: a download
//! keeps the sources, mirrors, `give_up_after` and HTTP client it started
//! with; downloads started after the reload use the new ones. `per_host`
//! changes every host's limit in place, keeping what hosts told chitd
//! (`Retry-After`, backoff); requests in flight over a lowered limit
//! finish. A lower `jobs` lets running downloads finish and starts new
//! ones under the new limit. The local slots (`LocalLimits`), sized at
//! start from the open files limit, `jobs` and the consumers, stay as
//! they are.
//!
//! A consumer taken out is no longer watched or scanned, and its status
//! file is removed. Its chits already claimed (waiting for a download, or
//! being delivered) finish and reach `downloaded/` or `fail/`; its chits
//! still in `request/`, and those in `fetch/` not started yet, stay where
//! they are, never lost, for a later run or reload that serves it again.
//! The consumer keeps its number for the rest of the run
//! ([`super::Shared::retired`]), so work under way still finds it.
//!
//! Without `--config` (the layout from flags or the embedded default),
//! there is no file to re-read: SIGHUP is logged and changes nothing.
//!
//! Around every reload, applied or not, systemd is told `RELOADING=1`
//! (with `MONOTONIC_USEC=`) and then `READY=1` (see `notify`).

use std::sync::Arc;

use crate::config::{self, Config, ConfigError};

/// Loads the configuration anew, as `chitd run` did at start.
pub type Load = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Where reloads come from: one request per SIGHUP, and how to load the
/// configuration anew (`None`: started without a configuration file).
pub struct Reloads {
    requests: tokio::sync::mpsc::UnboundedReceiver<()>,
    load: Option<Load>,
}

impl Reloads {
    pub fn new(requests: tokio::sync::mpsc::UnboundedReceiver<()>, load: Option<Load>) -> Self {
        Reloads { requests, load }
    }

    /// No reload is ever asked for.
    pub fn none() -> Reloads {
        let (_, requests) = tokio::sync::mpsc::unbounded_channel();
        Reloads::new(requests, None)
    }

    /// Resolves at the next request (never once no more can come).
    pub async fn requested(&mut self) {
        if self.requests.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// How to load the configuration anew, if there is a file.
    pub fn load(&self) -> Option<Load> {
        self.load.clone()
    }
}

/// What differs between the running configuration and a reloaded one, of
/// what a reload applies.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Consumers to serve from now on (new, or with new directories).
    pub added: Vec<config::Consumer>,
    /// Names of consumers to take out (gone, or with new directories).
    pub removed: Vec<String>,
    pub mirrors: bool,
    pub jobs: bool,
    pub give_up_after: bool,
    pub cache_limits: bool,
    pub metrics: bool,
    /// `per_host` or `ca_file`.
    pub network: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// Whether the fetcher must be made anew.
    pub fn fetcher(&self) -> bool {
        self.give_up_after || self.network
    }

    /// What changed, for the log: "consumers added: a; mirrors; jobs".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            let names: Vec<&str> = self.added.iter().map(|c| c.name.as_str()).collect();
            parts.push(format!("consumers added: {}", names.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("consumers taken out: {}", self.removed.join(", ")));
        }
        let keys = [
            (self.mirrors, "mirrors"),
            (self.jobs, "jobs"),
            (self.give_up_after, "give_up_after"),
            (self.cache_limits, "cache_max_size/cache_max_age"),
            (self.metrics, "metrics"),
            (self.network, "per_host/ca_file"),
        ];
        parts.extend(
            keys.iter()
                .filter(|(changed, _)| *changed)
                .map(|(_, key)| key.to_string()),
        );
        if parts.is_empty() {
            return "nothing changed".to_owned();
        }
        parts.join("; ")
    }
}

/// What a reload from `running` to `new` applies. Pure.
pub fn changes(running: &Config, new: &Config) -> Changes {
    let added = new
        .consumers
        .iter()
        .filter(|c| !running.consumers.contains(c));
    let removed = running
        .consumers
        .iter()
        .filter(|c| !new.consumers.contains(c));
    Changes {
        added: added.cloned().collect(),
        removed: removed.map(|c| c.name.clone()).collect(),
        mirrors: running.mirrors != new.mirrors,
        jobs: running.jobs != new.jobs,
        give_up_after: running.give_up_after != new.give_up_after,
        cache_limits: running.cache_limits != new.cache_limits,
        metrics: running.metrics != new.metrics,
        network: running.per_host != new.per_host || running.ca_file != new.ca_file,
    }
}

/// The changes from `running` to `new` that a running daemon cannot
/// apply, one sentence each (none: the reload may go on). Pure.
pub fn refused(running: &Config, new: &Config) -> Vec<String> {
    let mut refused = Vec::new();
    if running.cache != new.cache {
        refused.push(format!(
            "cache changed from {} to {} (a running daemon keeps its cache)",
            running.cache.display(),
            new.cache.display()
        ));
    }
    if running.log_format != new.log_format {
        refused.push("log_format changed (the log is set up once, at start)".to_owned());
    }
    if running.remote != new.remote {
        refused.push("[remote] changed (the fleet tier is set up once, at start)".to_owned());
    }
    refused
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn consumer(name: &str, spool: &str) -> config::Consumer {
        config::Consumer {
            name: name.to_owned(),
            spool: Path::new("/s").join(spool),
            deliver: Path::new("/d").join(name),
        }
    }

    fn layout(consumers: &[(&str, &str)]) -> Config {
        let mut config = Config::default_layout(Path::new("/x"));
        config.consumers = consumers.iter().map(|(n, s)| consumer(n, s)).collect();
        config
    }

    #[test]
    fn consumers_added_removed_and_moved() {
        let running = layout(&[("a", "a"), ("b", "b"), ("c", "c")]);
        let new = layout(&[("a", "a"), ("c", "c2"), ("d", "d")]);
        let changes = changes(&running, &new);
        assert_eq!(changes.added, [consumer("c", "c2"), consumer("d", "d")]);
        assert_eq!(changes.removed, ["b", "c"]);
        assert!(!changes.mirrors && !changes.jobs && !changes.network);
        assert_eq!(
            changes.describe(),
            "consumers added: c, d; consumers taken out: b, c"
        );
    }

    #[test]
    fn each_key_applied_live_is_seen() {
        let running = layout(&[("a", "a")]);
        assert!(changes(&running, &running).is_empty());
        assert_eq!(changes(&running, &running).describe(), "nothing changed");
        type Change = fn(&mut Config);
        let cases: [(&str, Change); 7] = [
            ("mirrors", |c| {
                c.mirrors = vec!["http://m/".parse().unwrap()]
            }),
            ("jobs", |c| c.jobs = 9),
            ("give_up_after", |c| c.give_up_after *= 2),
            ("cache_max_size/cache_max_age", |c| {
                c.cache_limits.max_size = Some(1)
            }),
            ("metrics", |c| {
                c.metrics = Some("127.0.0.1:1".parse().unwrap())
            }),
            ("per_host/ca_file", |c| c.per_host = 1),
            ("per_host/ca_file", |c| c.ca_file = Some("/ca.pem".into())),
        ];
        for (key, change) in cases {
            let mut new = running.clone();
            change(&mut new);
            assert_eq!(changes(&running, &new).describe(), key);
            assert!(refused(&running, &new).is_empty(), "{key}");
        }
    }

    #[test]
    fn a_different_cache_log_format_or_remote_is_refused() {
        let running = layout(&[("a", "a")]);
        let mut new = running.clone();
        new.cache = "/elsewhere".into();
        new.log_format = crate::cli::LogFormat::Json;
        let refused = refused(&running, &new);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("cache changed from /x/cache to /elsewhere"));
        assert!(refused[1].contains("log_format"));
    }
}
