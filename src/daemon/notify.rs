//! systemd's service notifications (`sd_notify(3)`), when `NOTIFY_SOCKET`
//! is set (else nothing is sent).
//!
//! - `READY=1` once the start-up scan is done: every chit in a `request/`
//!   or `fetch/` at start is queued by then;
//! - `STATUS=` a one-line summary (downloads in flight, chits in work),
//!   sent with the status files (every second) when it changed;
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload (SIGHUP) begins,
//!   `READY=1` when it is over (applied or refused);
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` at half of `WATCHDOG_USEC` when that is set (and
//!   `WATCHDOG_PID`, if set, is this process), from the scheduler's own
//!   loop: a scheduler that stops turning stops the pings.
//!
//! A message that cannot be sent is logged at debug level only: systemd
//! going away must not stop the daemon.

use std::time::Duration;

use sd_notify::NotifyState;

/// The notifications of one daemon run.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// The last `STATUS=` sent, to send only changes.
    status: String,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on.
    watchdog: Option<tokio::time::Interval>,
}

impl Notifier {
    /// From the environment: `NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|_| enabled)
            .filter(|usec| !usec.is_zero())
            .map(|usec| {
                let half = (usec / 2).max(Duration::from_millis(1));
                let mut interval = tokio::time::interval(half);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
        Notifier {
            enabled,
            status: String::new(),
            watchdog,
        }
    }

    /// One that sends nothing, whatever the environment says.
    #[cfg(test)]
    pub fn off() -> Notifier {
        Notifier {
            enabled: false,
            status: String::new(),
            watchdog: None,
        }
    }

    /// `READY=1`: the start-up scan is done.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (`CLOCK_MONOTONIC` now, in
    /// µs): a reload begins; [`Notifier::ready`] says it is over.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::debug!("cannot read CLOCK_MONOTONIC: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// `STOPPING=1`: shutdown begins.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// `STATUS=` this summary, if it differs from the last one sent.
    pub fn status(&mut self, summary: String) {
        if self.enabled && summary != self.status {
            self.send(&[NotifyState::Status(&summary)]);
            self.status = summary;
        }
    }

    /// Resolves when the next `WATCHDOG=1` is due; never without a
    /// watchdog.
    pub async fn watchdog_due(&mut self) {
        match &mut self.watchdog {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }
}

/// The `STATUS=` line: "3 downloads in flight, 12 chits in work" (chits
/// queued, in their local step or waiting for a download).
pub fn summary(downloads: usize, chits: usize) -> String {
    let plural = |n: usize, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    format!(
        "{} in flight, {} in work",
        plural(downloads, "download"),
        plural(chits, "chit")
    )
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn the_summary_counts_downloads_and_chits() {
        assert_eq!(summary(0, 0), "0 downloads in flight, 0 chits in work");
        assert_eq!(summary(1, 1), "1 download in flight, 1 chit in work");
        assert_eq!(summary(3, 12), "3 downloads in flight, 12 chits in work");
    }
}
