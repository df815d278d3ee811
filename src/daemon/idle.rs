//! The exit-when-idle policy (`chitd run --exit-when-idle`).
//!
//! The daemon exits once no chit is left in any `request/` or `fetch/`.
//! Idle, it looks once more (the directories are the truth): it scans
//! `request/` and `fetch/` (anything in `fetch/` then is nobody's work)
//! and queues what it finds, stuck chits included. Then:
//!
//! - nothing queued: it sweeps orphaned partial downloads and exits 0;
//! - only stuck chits queued (tried, and they could not move): retrying
//!   them at once, forever, would only spin, so it exits 1 naming them
//!   ([`DaemonError::Stuck`](super::DaemonError::Stuck));
//! - anything else: it works on, and decides again when idle.

use super::Consumer;
use super::chit_id::display_name;
use super::queue::Queues;
use super::stuck::Stuck;

/// What an idle daemon that exits when idle does after its last look.
#[derive(Debug, PartialEq, Eq)]
pub enum IdleExit {
    /// No chit is left: exit.
    Exit,
    /// Only stuck chits are left: exit with an error naming them (how many,
    /// and the first few as `<consumer>/<name>`).
    Stuck(String),
    /// Chits are left to work on.
    Work,
}

/// How many stuck chits the error names.
const NAMED: usize = 10;

/// Decide, from what the last look queued (`queues`) and the `stuck`
/// chits.
pub fn idle_exit<R>(
    queues: &Queues<R>,
    stuck: &Stuck,
    consumers: &[std::sync::Arc<Consumer>],
) -> IdleExit {
    if queues.is_empty() {
        return IdleExit::Exit;
    }
    if !queues
        .known()
        .all(|(consumer, name)| stuck.is_stuck(consumer, name))
    {
        return IdleExit::Work;
    }
    let all: Vec<String> = queues
        .known()
        .map(|(consumer, name)| format!("{}/{}", consumers[consumer].name, display_name(name)))
        .collect();
    let mut names: Vec<String> = all.iter().take(NAMED).cloned().collect();
    if all.len() > NAMED {
        names.push(format!("and {} more", all.len() - NAMED));
    }
    IdleExit::Stuck(format!("{} chit(s) ({})", all.len(), names.join(", ")))
}
