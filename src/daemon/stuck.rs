//! Retry and backoff of stuck chits.
//!
//! A chit is *stuck* when its last attempt could not claim it or move it to
//! `fail/` ([`Step::Stuck`](super::work::Step::Stuck)): it stays where it
//! is, never lost. A serving daemon leaves it out of its scans until its
//! retry is due: [`STUCK_RETRY_FIRST`] after the first time, then twice as
//! long each time it is still stuck, up to [`STUCK_RETRY_MAX`], so a chit
//! the consumer made immovable costs a log line now and then, not one per
//! rescan. With `--exit-when-idle` scans queue it at once, and the daemon
//! exits 1 naming it once nothing else is left (see [`super::idle`]).
//!
//! A chit chitd was short of descriptors or memory for
//! ([`Step::Short`](super::work::Step::Short)) is no fault of its own: it
//! is tried again at the next scan of an idle daemon (in `fetch/`, where it
//! was left; everything else is done by then, so what it needs is free),
//! and is stuck after [`SHORT_TRIES`] such tries in a row.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::Duration;

use tokio::time::Instant;

use super::RESCAN_INTERVAL;
use super::chit_id::ChitId;

/// The first delay before a stuck chit is tried again.
pub const STUCK_RETRY_FIRST: Duration = RESCAN_INTERVAL;
/// The longest delay between two tries of a stuck chit.
pub const STUCK_RETRY_MAX: Duration = Duration::from_secs(300);
/// Tries in a row that chitd may be short of descriptors or memory for a
/// chit before it counts as stuck.
pub const SHORT_TRIES: u32 = 3;

/// When a stuck chit is tried again, and the delay that led there.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    delay: Duration,
}

/// The stuck chits and the chits chitd was short of resources for, per
/// consumer.
#[derive(Debug)]
pub struct Stuck {
    /// Per consumer: stuck chits by name, and when scans may queue them.
    retries: Vec<HashMap<OsString, Retry>>,
    /// Per consumer: chits left for want of descriptors or memory, and how
    /// many times in a row.
    short: Vec<HashMap<OsString, u32>>,
    /// Whether scans leave stuck chits alone until their retry is due
    /// (serving), or queue them at once (`--exit-when-idle`).
    hold: bool,
}

impl Stuck {
    pub fn new(consumers: usize, hold: bool) -> Stuck {
        Stuck {
            retries: (0..consumers).map(|_| HashMap::new()).collect(),
            short: (0..consumers).map(|_| HashMap::new()).collect(),
            hold,
        }
    }

    /// Make room for one more consumer (added by a reload).
    pub fn add_consumer(&mut self) {
        self.retries.push(HashMap::new());
        self.short.push(HashMap::new());
    }

    /// Whether scans hold stuck chits until their retry is due.
    pub fn holds(&self) -> bool {
        self.hold
    }

    /// The chit ended (terminal, or gone): it is neither stuck nor short.
    pub fn done(&mut self, id: &ChitId) {
        if !self.short[id.consumer].is_empty() {
            self.short[id.consumer].remove(&id.name);
        }
        if !self.retries[id.consumer].is_empty() {
            self.retries[id.consumer].remove(&id.name);
        }
    }

    /// chitd was short of resources for the chit once more; true when that
    /// makes it stuck (then call [`Stuck::stuck`]).
    pub fn short(&mut self, id: &ChitId) -> bool {
        let short = &mut self.short[id.consumer];
        let tries = short.entry(id.name.clone()).or_insert(0);
        *tries += 1;
        if *tries >= SHORT_TRIES {
            short.remove(&id.name);
            return true;
        }
        false
    }

    /// The chit is stuck (at `now`): returns the delay until scans queue it
    /// again (twice the last one, from [`STUCK_RETRY_FIRST`] up to
    /// [`STUCK_RETRY_MAX`]).
    pub fn stuck(&mut self, id: ChitId, now: Instant) -> Duration {
        let retries = &mut self.retries[id.consumer];
        let delay = retries
            .get(&id.name)
            .map_or(STUCK_RETRY_FIRST, |retry| retry.delay * 2)
            .min(STUCK_RETRY_MAX);
        let at = now + delay;
        retries.insert(id.name, Retry { at, delay });
        delay
    }

    /// Whether a scan at `now` leaves the chit alone: it is stuck, and its
    /// retry is not due (never when not holding).
    pub fn is_held(&self, consumer: usize, name: &OsStr, now: Instant) -> bool {
        let retries = &self.retries[consumer];
        self.hold && !retries.is_empty() && retries.get(name).is_some_and(|retry| retry.at > now)
    }

    pub fn is_stuck(&self, consumer: usize, name: &OsStr) -> bool {
        self.retries[consumer].contains_key(name)
    }

    /// Whether `consumer` has stuck chits.
    pub fn any(&self, consumer: usize) -> bool {
        !self.retries[consumer].is_empty()
    }

    /// Forget the stuck chits of `consumer` that are not in `seen` (the
    /// names found in its `request/` and `fetch/`): removed by the
    /// consumer. Returns their names.
    pub fn prune(&mut self, consumer: usize, seen: &HashSet<OsString>) -> Vec<OsString> {
        let mut gone = Vec::new();
        self.retries[consumer].retain(|name, _| {
            let kept = seen.contains(name);
            if !kept {
                gone.push(name.clone());
            }
            kept
        });
        gone
    }

    /// Forget every chit of `consumer`: its state directories were made
    /// anew, and a chit of a name in the new ones is another.
    pub fn forget_consumer(&mut self, consumer: usize) {
        self.retries[consumer].clear();
        self.short[consumer].clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ChitId {
        ChitId::new(0, name)
    }

    /// The delay doubles from the first to the most, and a held chit is
    /// queued again once its retry is due, by paused time.
    #[tokio::test(start_paused = true)]
    async fn stuck_chits_back_off_and_are_retried_when_due() {
        let mut stuck = Stuck::new(1, true);
        let mut delays = Vec::new();
        for _ in 0..10 {
            delays.push(stuck.stuck(id("a"), Instant::now()));
        }
        assert_eq!(delays[0], STUCK_RETRY_FIRST);
        assert_eq!(delays[1], 2 * STUCK_RETRY_FIRST);
        assert_eq!(delays[2], 4 * STUCK_RETRY_FIRST);
        assert_eq!(*delays.last().unwrap(), STUCK_RETRY_MAX);
        assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));

        let mut stuck = Stuck::new(2, true);
        stuck.stuck(id("a"), Instant::now());
        assert!(stuck.is_held(0, OsStr::new("a"), Instant::now()));
        assert!(!stuck.is_held(0, OsStr::new("b"), Instant::now()));
        assert!(
            !stuck.is_held(1, OsStr::new("a"), Instant::now()),
            "another consumer's"
        );
        tokio::time::sleep(STUCK_RETRY_FIRST - Duration::from_millis(1)).await;
        assert!(
            stuck.is_held(0, OsStr::new("a"), Instant::now()),
            "not due yet"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!stuck.is_held(0, OsStr::new("a"), Instant::now()), "due");
        assert!(
            stuck.is_stuck(0, OsStr::new("a")),
            "still stuck until it ends"
        );
        // Stuck again: twice as long.
        let delay = stuck.stuck(id("a"), Instant::now());
        assert_eq!(delay, 2 * STUCK_RETRY_FIRST);
        tokio::time::sleep(STUCK_RETRY_FIRST).await;
        assert!(stuck.is_held(0, OsStr::new("a"), Instant::now()));
        stuck.done(&id("a"));
        assert!(
            !stuck.is_stuck(0, OsStr::new("a"))
                && !stuck.is_held(0, OsStr::new("a"), Instant::now())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_holding_stuck_chits_are_queued_at_once() {
        let mut stuck = Stuck::new(1, false);
        stuck.stuck(id("a"), Instant::now());
        assert!(stuck.is_stuck(0, OsStr::new("a")));
        assert!(!stuck.is_held(0, OsStr::new("a"), Instant::now()));
    }

    #[test]
    fn short_of_resources_a_few_times_in_a_row_is_stuck() {
        let mut stuck = Stuck::new(1, true);
        for _ in 1..SHORT_TRIES {
            assert!(!stuck.short(&id("a")));
        }
        assert!(stuck.short(&id("a")));
        // Counted anew after that, and after the chit ends.
        assert!(!stuck.short(&id("a")));
        stuck.done(&id("a"));
        for _ in 1..SHORT_TRIES {
            assert!(!stuck.short(&id("a")));
        }
    }

    #[test]
    fn prune_forgets_chits_the_consumer_removed() {
        let mut stuck = Stuck::new(2, true);
        let now = Instant::now();
        for name in ["kept", "gone"] {
            stuck.stuck(id(name), now);
        }
        stuck.stuck(ChitId::new(1, "other"), now);
        let seen = HashSet::from([OsString::from("kept")]);
        assert_eq!(stuck.prune(0, &seen), ["gone"]);
        assert!(stuck.is_stuck(0, OsStr::new("kept")) && !stuck.is_stuck(0, OsStr::new("gone")));
        assert!(
            stuck.is_stuck(1, OsStr::new("other")),
            "another consumer's is kept"
        );
        stuck.forget_consumer(1);
        assert!(!stuck.any(1));
    }
}
