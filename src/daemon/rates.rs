//! Download rates for `chitd status`, from successive samples of each
//! running download's bytes done (taken with the status files, every
//! second).
//!
//! A download's first sample has no rate yet (0); after that, each
//! interval's rate is averaged with the one before (half each), so one
//! slow second does not halve the ETA shown. A download that stops
//! progressing drops towards 0 within a few seconds.

use std::collections::HashMap;
use std::time::Instant;

use crate::inflight::Key;

#[derive(Debug, Clone, Copy)]
struct Sample {
    done: u64,
    at: Instant,
    /// Bytes per second; `None` before a second sample.
    rate: Option<f64>,
}

/// How a running download goes: for `chitd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speed {
    /// Bytes per second (0: not known yet, or not progressing).
    pub rate: u64,
    /// The host of the source asked last (`file` for a `file://` mirror).
    pub source: Option<String>,
}

/// The host of `source`, as `chitd status` shows it.
pub fn source_host(source: &url::Url) -> String {
    match source.host_str() {
        Some(host) => host.to_owned(),
        None => source.scheme().to_owned(),
    }
}

/// The last sample of each running download.
#[derive(Debug, Default)]
pub struct Rates {
    samples: HashMap<Key, Sample>,
}

impl Rates {
    /// Sample the `running` downloads (key, bytes done) at `now`: the rate
    /// of each, in bytes per second. Downloads no longer running are
    /// forgotten.
    pub fn sample(
        &mut self,
        running: impl IntoIterator<Item = (Key, u64)>,
        now: Instant,
    ) -> HashMap<Key, u64> {
        let mut samples = HashMap::new();
        for (key, done) in running {
            let rate = match self.samples.get(&key) {
                Some(last) if now > last.at => {
                    let bytes = done.saturating_sub(last.done) as f64;
                    let latest = bytes / now.duration_since(last.at).as_secs_f64();
                    Some(last.rate.map_or(latest, |before| (before + latest) / 2.0))
                }
                Some(last) => last.rate,
                None => None,
            };
            samples.insert(
                key,
                Sample {
                    done,
                    at: now,
                    rate,
                },
            );
        }
        self.samples = samples;
        let rate = |sample: &Sample| sample.rate.unwrap_or(0.0).round() as u64;
        self.samples
            .iter()
            .map(|(key, sample)| (*key, rate(sample)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chit::Digest;

    fn key(byte: &str) -> Key {
        Key {
            digest: Digest::parse_hex(&byte.repeat(32)).unwrap(),
            size: 1 << 20,
        }
    }

    #[test]
    fn rates_come_from_successive_samples_and_are_averaged() {
        let mut rates = Rates::default();
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(rates.sample([(key("ab"), 1000)], start)[&key("ab")], 0);
        let now = start + second;
        assert_eq!(rates.sample([(key("ab"), 5000)], now)[&key("ab")], 4000);
        let now = now + second;
        let sampled = rates.sample([(key("ab"), 7000), (key("cd"), 10)], now);
        assert_eq!(sampled[&key("ab")], 3000, "(4000 + 2000) / 2");
        assert_eq!(sampled[&key("cd")], 0, "its first sample");
        let now = now + second;
        let sampled = rates.sample([(key("cd"), 10)], now);
        assert_eq!(sampled.len(), 1, "ab ended: forgotten");
        assert_eq!(sampled[&key("cd")], 0, "no progress");
    }
}
