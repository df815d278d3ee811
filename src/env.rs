//! The environment variables chitd reads: `RUST_LOG` and the `CHITD_*`
//! tuning knobs, each checked before anything else runs.
//!
//! Policy: a variable that is set to a value chitd cannot use is an error
//! naming the variable and the value (`chitd` exits 2), never silently
//! ignored; an empty value counts as unset. [`Environment::parse`] is pure
//! (names and values in, settings or [`EnvError`] out); [`Environment::read`]
//! is the thin wrapper over the process environment. [`HELP`] is the list
//! that `chitd --help` prints, kept beside the code that reads them.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// The log filter when `RUST_LOG` is unset or empty.
pub const DEFAULT_LOG_FILTER: &str = "chitd=info";

/// The largest millisecond value a `CHITD_*_MS` variable takes: 7 days.
/// Longer makes no sense for any of them, and keeps deadline arithmetic
/// far from overflowing.
pub const MAX_MILLIS: u64 = 7 * 24 * 3600 * 1000;

/// The most ranged GETs one read from the remote tier may have under way
/// (`CHITD_REMOTE_RANGES_AT_ONCE`): each holds a connection and up to a
/// range in memory.
pub const MAX_RANGES_AT_ONCE: u64 = 64;

/// `chitd --help`'s list of environment variables.
pub const HELP: &str = "\
Environment:
  RUST_LOG                     log filter (tracing-subscriber EnvFilter syntax),
                               default chitd=info; e.g. chitd=debug
  CHITD_RETRY_DELAY_MS         first backoff between retry rounds, default 500,
                               doubling up to 10 s (0 or more)
  CHITD_INACTIVITY_TIMEOUT_MS  a connection that sends no data for this long
                               is cut and resumed, default 30000 (1 or more)
  CHITD_RESCAN_INTERVAL_MS     the safety-net rescan of every request/,
                               default 2000 (1 or more)
  CHITD_REMOTE_RULE_OUT_MS     the fleet tier ([remote]): a remote that failed
                               is not asked again for this long, default 60000
  CHITD_REMOTE_STALL_MS        no byte from the remote for this long rules it
                               out, default 10000
  CHITD_REMOTE_RANGE_SIZE, CHITD_REMOTE_RANGES_AT_ONCE
                               a read from the remote is ranged GETs of this
                               many bytes (default 8 MiB), this many at once
                               (default 4, at most 64)
  CHITD_REMOTE_MULTIPART_THRESHOLD, CHITD_REMOTE_PART_SIZE
                               uploads this big (bytes) go in parts of this
                               size, defaults 64 MiB and 16 MiB
  CHITD_REMOTE_UPLOAD_RATE     bytes per second of each upload, 0 unbounded
  CHITD_REMOTE_LEASE_TTL_MS, CHITD_REMOTE_LEASE_POLL_MS
                               how long a lease holds (default 600000) and how
                               often a host waiting on one looks (500)
  CHITD_BOOT_ID                a test knob: the boot id progress records are
                               compared with, default the kernel's
  HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY
                               proxies for downloads (also in lower case)
  SSL_CERT_FILE, SSL_CERT_DIR  trusted CA certificates (PEM) instead of the
                               system's
A value chitd cannot use is an error naming the variable (exit 2); an empty
value counts as unset. The CHITD_*_MS values are whole milliseconds, at most
604800000 (7 days).";

/// What the environment sets; `None` where it says nothing (the caller's
/// default applies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    /// `RUST_LOG`, checked to parse as an `EnvFilter`.
    pub log_filter: Option<String>,
    /// `CHITD_RETRY_DELAY_MS`.
    pub retry_delay: Option<Duration>,
    /// `CHITD_INACTIVITY_TIMEOUT_MS`.
    pub inactivity_timeout: Option<Duration>,
    /// `CHITD_RESCAN_INTERVAL_MS`.
    pub rescan_interval: Option<Duration>,
    /// The fleet tier's `CHITD_REMOTE_*` knobs.
    pub remote: RemoteKnobs,
    /// `CHITD_BOOT_ID` (read where it is used, `partial::boot`; checked
    /// here).
    pub boot_id: Option<String>,
}

/// The `CHITD_REMOTE_*` knobs (see `remote::Settings`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteKnobs {
    pub rule_out_for: Option<Duration>,
    pub stall: Option<Duration>,
    pub range_size: Option<u64>,
    pub ranges_at_once: Option<usize>,
    pub multipart_threshold: Option<u64>,
    pub part_size: Option<u64>,
    pub upload_rate: Option<u64>,
    pub lease_ttl: Option<Duration>,
    pub lease_poll: Option<Duration>,
}

/// A variable set to a value chitd cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}={value:?} {problem}")]
pub struct EnvError {
    pub name: &'static str,
    /// The value as set (lossily decoded if it was not UTF-8).
    pub value: String,
    pub problem: String,
}

impl Environment {
    /// Pure: the settings that `lookup` (a variable's name → its value, if
    /// set) gives, or the first unusable one.
    pub fn parse(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Environment, EnvError> {
        let millis = |name, minimum| {
            set(name, &lookup)?
                .map(|value| millis(name, &value, minimum))
                .transpose()
        };
        Ok(Environment {
            log_filter: set("RUST_LOG", &lookup)?
                .map(|value| log_filter(&value))
                .transpose()?,
            retry_delay: millis("CHITD_RETRY_DELAY_MS", 0)?,
            inactivity_timeout: millis("CHITD_INACTIVITY_TIMEOUT_MS", 1)?,
            rescan_interval: millis("CHITD_RESCAN_INTERVAL_MS", 1)?,
            remote: RemoteKnobs::parse(&lookup)?,
            boot_id: set("CHITD_BOOT_ID", &lookup)?
                .map(|value| boot_id(&value))
                .transpose()?,
        })
    }

    /// The settings of this process's environment.
    pub fn read() -> Result<Environment, EnvError> {
        Environment::parse(|name| std::env::var_os(name))
    }

    /// The log filter to use: `RUST_LOG`'s, else [`DEFAULT_LOG_FILTER`].
    pub fn filter(&self) -> EnvFilter {
        let directives = self.log_filter.as_deref().unwrap_or(DEFAULT_LOG_FILTER);
        // Checked in `parse`; the default is a constant that parses.
        EnvFilter::builder()
            .parse(directives)
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
    }
}

impl RemoteKnobs {
    fn parse(lookup: &impl Fn(&str) -> Option<OsString>) -> Result<RemoteKnobs, EnvError> {
        let millis = |name, minimum| {
            set(name, lookup)?
                .map(|value| millis(name, &value, minimum))
                .transpose()
        };
        let bytes = |name, minimum| {
            set(name, lookup)?
                .map(|value| bytes(name, &value, minimum))
                .transpose()
        };
        Ok(RemoteKnobs {
            rule_out_for: millis("CHITD_REMOTE_RULE_OUT_MS", 1)?,
            stall: millis("CHITD_REMOTE_STALL_MS", 1)?,
            range_size: bytes("CHITD_REMOTE_RANGE_SIZE", 1)?,
            ranges_at_once: set("CHITD_REMOTE_RANGES_AT_ONCE", lookup)?
                .map(|value| {
                    whole(
                        "CHITD_REMOTE_RANGES_AT_ONCE",
                        &value,
                        1..=MAX_RANGES_AT_ONCE,
                        "requests",
                    )
                })
                .transpose()?
                .map(|n| n as usize),
            multipart_threshold: bytes("CHITD_REMOTE_MULTIPART_THRESHOLD", 1)?,
            part_size: bytes("CHITD_REMOTE_PART_SIZE", 1)?,
            upload_rate: bytes("CHITD_REMOTE_UPLOAD_RATE", 0)?,
            lease_ttl: millis("CHITD_REMOTE_LEASE_TTL_MS", 1)?,
            lease_poll: millis("CHITD_REMOTE_LEASE_POLL_MS", 1)?,
        })
    }
}

/// The value of `name` as UTF-8, `None` if unset or empty.
fn set(
    name: &'static str,
    lookup: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, EnvError> {
    let Some(value) = lookup(name).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    value
        .into_string()
        .map(Some)
        .map_err(|value: OsString| EnvError {
            name,
            value: OsStr::to_string_lossy(&value).into_owned(),
            problem: "is not UTF-8".into(),
        })
}

fn log_filter(value: &str) -> Result<String, EnvError> {
    match EnvFilter::builder().parse(value) {
        Ok(_) => Ok(value.to_owned()),
        Err(error) => Err(EnvError {
            name: "RUST_LOG",
            value: value.to_owned(),
            problem: format!("is not a log filter ({error}); for example chitd=debug"),
        }),
    }
}

fn boot_id(value: &str) -> Result<String, EnvError> {
    crate::partial::boot::usable(value).ok_or_else(|| EnvError {
        name: "CHITD_BOOT_ID",
        value: value.to_owned(),
        problem: "is not a boot id: one word of printable ASCII".into(),
    })
}

fn millis(name: &'static str, value: &str, minimum: u64) -> Result<Duration, EnvError> {
    whole(name, value, minimum..=MAX_MILLIS, "milliseconds").map(Duration::from_millis)
}

fn bytes(name: &'static str, value: &str, minimum: u64) -> Result<u64, EnvError> {
    whole(name, value, minimum..=u64::MAX, "bytes")
}

/// `value` as a whole number of `unit` within `range`.
fn whole(
    name: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, EnvError> {
    let error = |problem: String| EnvError {
        name,
        value: value.to_owned(),
        problem,
    };
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(format!("is not a whole number of {unit}")));
    }
    match digits.parse::<u64>() {
        Ok(number) if range.contains(&number) => Ok(number),
        _ => Err(error(format!(
            "is out of range: give {} to {} {unit}",
            range.start(),
            range.end()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Environment, EnvError> {
        Environment::parse(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        })
    }

    #[test]
    fn nothing_set_is_all_defaults() {
        assert_eq!(parse(&[]), Ok(Environment::default()));
        let empty = [("RUST_LOG", ""), ("CHITD_RETRY_DELAY_MS", "")];
        assert_eq!(parse(&empty), Ok(Environment::default()));
    }

    #[test]
    fn good_values_are_taken() {
        let environment = parse(&[
            ("RUST_LOG", "chitd=debug,reqwest=warn"),
            ("CHITD_RETRY_DELAY_MS", "0"),
            ("CHITD_INACTIVITY_TIMEOUT_MS", " 250 "),
            ("CHITD_RESCAN_INTERVAL_MS", "3600000"),
            ("CHITD_REMOTE_RANGE_SIZE", "1048576"),
            ("CHITD_REMOTE_RANGES_AT_ONCE", "64"),
        ])
        .unwrap();
        assert_eq!(environment.remote.range_size, Some(1 << 20));
        assert_eq!(environment.remote.ranges_at_once, Some(64));
        assert_eq!(
            environment.log_filter.as_deref(),
            Some("chitd=debug,reqwest=warn")
        );
        assert_eq!(environment.retry_delay, Some(Duration::ZERO));
        assert_eq!(
            environment.inactivity_timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(environment.rescan_interval, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        let cases = [
            ("CHITD_RETRY_DELAY_MS", "fast", "is not a whole number"),
            ("CHITD_RETRY_DELAY_MS", "-5", "is not a whole number"),
            ("CHITD_RETRY_DELAY_MS", "1.5", "is not a whole number"),
            (
                "CHITD_RETRY_DELAY_MS",
                "99999999999999999999",
                "out of range",
            ),
            ("CHITD_INACTIVITY_TIMEOUT_MS", "0", "give 1 to"),
            ("CHITD_RESCAN_INTERVAL_MS", "0", "give 1 to"),
            (
                "CHITD_REMOTE_PART_SIZE",
                "16MiB",
                "is not a whole number of bytes",
            ),
            ("CHITD_REMOTE_STALL_MS", "soon", "is not a whole number"),
            ("CHITD_REMOTE_RANGES_AT_ONCE", "0", "give 1 to 64 requests"),
            ("CHITD_REMOTE_RANGES_AT_ONCE", "65", "give 1 to 64 requests"),
            ("CHITD_REMOTE_RANGE_SIZE", "0", "give 1 to"),
            ("CHITD_RESCAN_INTERVAL_MS", "604800001", "out of range"),
            ("RUST_LOG", "chitd=verbose", "is not a log filter"),
            ("RUST_LOG", "[", "is not a log filter"),
        ];
        for (name, value, says) in cases {
            let error = parse(&[(name, value)]).expect_err(value);
            assert_eq!((error.name, error.value.as_str()), (name, value));
            let message = error.to_string();
            assert!(message.contains(says), "{message}");
            assert!(message.contains(&format!("{name}={value:?}")), "{message}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let error = Environment::parse(|name| {
            (name == "CHITD_RESCAN_INTERVAL_MS").then(|| OsString::from_vec(vec![0xff]))
        })
        .unwrap_err();
        assert_eq!(error.name, "CHITD_RESCAN_INTERVAL_MS");
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn the_help_lists_every_variable() {
        let names = [
            "RUST_LOG",
            "CHITD_RETRY_DELAY_MS",
            "CHITD_INACTIVITY_TIMEOUT_MS",
            "CHITD_RESCAN_INTERVAL_MS",
        ];
        for name in names {
            assert!(HELP.contains(name), "{name}");
        }
    }
}
