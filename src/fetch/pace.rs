//! The minimum-progress rule that cuts slow-drip servers.
//!
//! The contract says a download that keeps making progress never times out;
//! a server that sends one byte every few seconds would then hold a download
//! slot forever. So "progress" has a floor: while a body streams, every
//! window (the attempt's: `inactivity_timeout`, or less when
//! `give_up_after` is shorter or partly spent) must bring at least
//! [`MIN_PROGRESS_BYTES`] per [`MIN_PROGRESS_PER`] (1 KiB per 30 s, about
//! 34 bytes/s: a 1 MiB file would take 8.5 hours; the slowest real links
//! are a hundred times faster), scaled to the window, or all that was
//! still missing. Less is [`FetchError::TooSlow`]: the attempt is cut like
//! a stalled one and does not count as progress towards `give_up_after`.
//! No byte at all for a whole window is
//! [`FetchError::Stalled`], as before.
//!
//! A window that passes but is slow (under [`SLOW_BYTES`] per [`SLOW_PER`])
//! lets the download try sources it has not tried yet ([`FetchError::Slow`]).
//!
//! Only time spent waiting for the network counts: while chitd itself is
//! busy (a slow disk holding up the writer), the clock is stopped.

use std::time::Duration;

use super::error::FetchError;

/// The least a window must bring, per [`MIN_PROGRESS_PER`] of window.
pub const MIN_PROGRESS_BYTES: u64 = 1024;
pub const MIN_PROGRESS_PER: Duration = Duration::from_secs(30);

/// A source that brings less than this in a window (16 KiB/s: a 100 MiB
/// file would take almost two hours), while the download has sources it
/// has not tried yet, is left for them ([`FetchError::Slow`]) and come back
/// to, resuming, if none of them does better. Above the minimum pace it
/// is progress, and with nothing else to try it is waited for.
pub const SLOW_BYTES: u64 = 16 * 1024;
pub const SLOW_PER: Duration = Duration::from_secs(1);

/// Progress accounting for one streaming body.
#[derive(Debug)]
pub struct Pace {
    window: Duration,
    minimum: u64,
    /// Bytes still missing when the current window began.
    remaining: u64,
    /// Network waiting time in the current window, and bytes it brought.
    waited: Duration,
    received: u64,
    /// Network waiting time since the last byte.
    idle: Duration,
    /// What the last window to close brought, until taken.
    closed: Option<u64>,
}

impl Pace {
    /// A body of `remaining` bytes, judged in windows of `window`.
    pub fn new(window: Duration, remaining: u64) -> Pace {
        Pace {
            window,
            minimum: minimum_for(window),
            remaining,
            waited: Duration::ZERO,
            received: 0,
            idle: Duration::ZERO,
            closed: None,
        }
    }

    /// Network waiting time since the last byte.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The window that passed the minimum and closed since the last call,
    /// as the bytes it brought and its length.
    pub fn take_closed_window(&mut self) -> Option<(u64, Duration)> {
        Some((self.closed.take()?, self.window))
    }

    /// How long to wait for the next chunk before calling
    /// [`Pace::waited`] with no bytes: the end of the window, or of the
    /// allowed idle time, whichever comes first.
    pub fn budget(&self) -> Duration {
        let window_left = self.window.saturating_sub(self.waited);
        let idle_left = self.window.saturating_sub(self.idle);
        window_left.min(idle_left)
    }

    /// The network was waited on for `waited` and brought `bytes` (0 when
    /// the budget ran out). Judges the window when it is over.
    pub fn waited(&mut self, waited: Duration, bytes: u64) -> Result<(), FetchError> {
        self.waited += waited;
        self.received += bytes;
        self.idle = if bytes > 0 {
            Duration::ZERO
        } else {
            self.idle + waited
        };
        if self.idle >= self.window {
            return Err(FetchError::Stalled(self.window));
        }
        if self.waited >= self.window {
            let needed = self.minimum.min(self.remaining);
            if self.received < needed {
                return Err(FetchError::TooSlow {
                    received: self.received,
                    window: self.window,
                    minimum: self.minimum,
                });
            }
            self.remaining = self.remaining.saturating_sub(self.received);
            self.closed = Some(self.received);
            self.waited = Duration::ZERO;
            self.received = 0;
        }
        Ok(())
    }
}

/// [`MIN_PROGRESS_BYTES`] per [`MIN_PROGRESS_PER`], scaled to `window`,
/// rounded up, at least 1 byte.
pub fn minimum_for(window: Duration) -> u64 {
    scaled(MIN_PROGRESS_BYTES, MIN_PROGRESS_PER, window)
}

/// [`SLOW_BYTES`] per [`SLOW_PER`], scaled to `window` like
/// [`minimum_for`].
pub fn slow_below(window: Duration) -> u64 {
    scaled(SLOW_BYTES, SLOW_PER, window)
}

/// `bytes` per `per`, scaled to `window`, rounded up, at least 1 byte.
fn scaled(bytes: u64, per: Duration, window: Duration) -> u64 {
    let scaled = u128::from(bytes) * window.as_nanos();
    let minimum = scaled.div_ceil(per.as_nanos()).max(1);
    u64::try_from(minimum).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn minimum_scales_with_the_window() {
        assert_eq!(minimum_for(MIN_PROGRESS_PER), 1024);
        assert_eq!(minimum_for(Duration::from_secs(60)), 2048);
        assert_eq!(minimum_for(S), 35); // 34.13, rounded up
        assert_eq!(minimum_for(Duration::from_millis(500)), 18);
        assert_eq!(minimum_for(Duration::from_nanos(1)), 1);
        assert_eq!(minimum_for(Duration::ZERO), 1);
        assert_eq!(minimum_for(Duration::MAX), u64::MAX);
        assert_eq!(slow_below(Duration::from_secs(30)), 30 * 16 * 1024);
        assert_eq!(slow_below(Duration::from_millis(500)), 8 * 1024);
    }

    #[test]
    fn a_steady_stream_above_the_minimum_is_never_cut() {
        // 1,000 bytes/s in 100-byte chunks, judged per second.
        let mut pace = Pace::new(S, 1_000_000);
        for _ in 0..10_000 {
            assert!(pace.budget() > Duration::ZERO);
            pace.waited(S / 10, 100).unwrap();
        }
    }

    #[test]
    fn each_closed_window_is_reported_once() {
        let mut pace = Pace::new(S, 1_000_000);
        pace.waited(S / 2, 400).unwrap();
        assert_eq!(pace.take_closed_window(), None, "still open");
        pace.waited(S / 2, 600).unwrap();
        assert_eq!(pace.take_closed_window(), Some((1_000, S)));
        assert_eq!(pace.take_closed_window(), None, "taken");
    }

    #[test]
    fn a_drip_below_the_minimum_is_cut_at_the_end_of_the_window() {
        // 10 bytes/s, one byte every 100 ms: 10 < 35 per second.
        let mut pace = Pace::new(S, 1_000_000);
        for _ in 0..9 {
            pace.waited(S / 10, 1).unwrap();
        }
        let error = pace.waited(S / 10, 1).unwrap_err();
        assert!(
            matches!(
                error,
                FetchError::TooSlow {
                    received: 10,
                    minimum: 35,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.next(false, false), crate::fetch::Next::Later);
        assert!(error.to_string().contains("too slow"), "{error}");
    }

    #[test]
    fn a_drip_that_times_its_bytes_to_the_budget_is_still_cut() {
        // One byte just before each idle limit: never Stalled, but too slow.
        let mut pace = Pace::new(S, 1_000_000);
        let error = loop {
            let wait = pace.budget().saturating_sub(Duration::from_millis(1));
            if let Err(e) = pace.waited(wait.max(Duration::from_millis(1)), 1) {
                break e;
            }
        };
        assert!(matches!(error, FetchError::TooSlow { .. }), "{error:?}");
    }

    #[test]
    fn silence_for_a_whole_window_is_a_stall() {
        let mut pace = Pace::new(S, 1_000_000);
        pace.waited(S / 2, 5_000).unwrap();
        // The window ends at 1 s with enough bytes; silence goes on.
        assert_eq!(pace.budget(), S / 2);
        pace.waited(S / 2, 0).unwrap();
        assert_eq!(pace.budget(), S / 2);
        let error = pace.waited(S / 2, 0).unwrap_err();
        assert!(matches!(error, FetchError::Stalled(_)), "{error:?}");
    }

    #[test]
    fn the_last_few_bytes_only_need_to_arrive() {
        // 20 bytes left, fewer than the 35 a window needs: 20 is enough.
        let mut pace = Pace::new(S, 20);
        pace.waited(S / 2, 10).unwrap();
        pace.waited(S / 2, 10).unwrap();
        let mut pace = Pace::new(S, 20);
        pace.waited(S, 19).unwrap_err();
    }

    #[test]
    fn time_not_spent_waiting_does_not_count() {
        // Chunks arrive at once, however long chitd takes to write them.
        let mut pace = Pace::new(S, u64::MAX);
        for _ in 0..1_000 {
            pace.waited(Duration::ZERO, 1).unwrap();
        }
        assert_eq!(pace.budget(), S);
    }
}
