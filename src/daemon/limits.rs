//! How much local work may run at once: the slots of the blocking pool
//! and the backlog of delivered chits waiting for a group commit, from the
//! open files limit.

/// Chits whose local step (claim, parse, lookup, delivery) runs at once,
/// at most (fewer under a low open files limit: see [`LocalLimits`]).
/// Each delivery waits for its file's flush, and a disk serves the flushes
/// in flight together: on the 2-core VM of BENCHMARKS.md, 2,000 new 4 KiB
/// files are fdatasync'd in 1.1 s from one thread, 0.19 s from 32, 0.08-0.11 s
/// from 128, and no faster from more (256 threads cost more than they
/// overlap). Idle slots cost nothing: the blocking pool's threads exit
/// after 10 s without work.
pub const LOCAL_SLOTS: usize = 128;
/// How much local work may be under way at once, from the open files
/// limit: every local step holds a few descriptors (the chit, the cache
/// object, the delivery's directory and temporary), and so does every
/// delivered chit waiting for its group commit (its delivery directory,
/// shared with the others delivered into it, but chits may each have their
/// own). A budget that fits the limit keeps chitd from running out of
/// descriptors under a low one (then chits would be stuck, not failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLimits {
    /// Local steps at once ([`LOCAL_SLOTS`] at most).
    pub slots: usize,
    /// No new chit starts while this many delivered chits wait for a group
    /// commit (one is running, and slower than the deliveries): each holds
    /// its target and a descriptor, and the backlog would only grow, while
    /// the commit is what they all wait for.
    pub commit_backlog: usize,
}

impl LocalLimits {
    /// Descriptors a slot may account for: its own step's (up to 4: the
    /// chit, or the cache object, the delivery's directory and temporary),
    /// and the directories of chits waiting for a commit: up to
    /// `commit_backlog` (2 a slot) and the steps that end meanwhile (1) in
    /// the running commit, as many waiting for the next. Measured: 906 open
    /// at most with 128 slots, 30,000 chits each delivered into a directory
    /// of its own. (Counting the steps under way against the backlog would
    /// save two a slot, but costs a fifth of the throughput of a 100,000-chit
    /// backlog: smaller commits.)
    const PER_SLOT: u64 = 10;
    /// Descriptors kept for what does not grow with the slots (runtime,
    /// watches, spools, cache, logs, status file), and per download slot
    /// (a download's files, connection, early delivery; or those of the
    /// small downloads sharing it, at most 8 with two each: see
    /// `host_slots`).
    const BASE: u64 = 64;
    const PER_JOB: u64 = 16;
    /// The spool, its four state directories and the delivery directory,
    /// twice while they are opened anew.
    const PER_CONSUMER: u64 = 12;

    /// For an open files limit of `open_files` (`None`: unlimited), `jobs`
    /// downloads at once and `consumers` consumers.
    pub fn for_open_files(open_files: Option<u64>, jobs: usize, consumers: usize) -> LocalLimits {
        let reserved =
            Self::BASE + Self::PER_JOB * jobs as u64 + Self::PER_CONSUMER * consumers as u64;
        let slots = open_files.map_or(LOCAL_SLOTS, |limit| {
            let fit = limit.saturating_sub(reserved) / Self::PER_SLOT;
            usize::try_from(fit)
                .unwrap_or(usize::MAX)
                .clamp(1, LOCAL_SLOTS)
        });
        LocalLimits {
            slots,
            commit_backlog: 2 * slots,
        }
    }

    /// For this process's open files limit.
    pub fn for_this_process(jobs: usize, consumers: usize) -> LocalLimits {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        LocalLimits::for_open_files(limit, jobs, consumers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_limits_fit_the_open_files_limit() {
        let unlimited = LocalLimits::for_open_files(None, 4, 1);
        assert_eq!(unlimited.slots, LOCAL_SLOTS);
        assert_eq!(unlimited.commit_backlog, 2 * LOCAL_SLOTS);
        // A server's usual limit: all the slots.
        assert_eq!(
            LocalLimits::for_open_files(Some(65536), 4, 10).slots,
            LOCAL_SLOTS
        );
        // The common soft default, not raised: what fits, with room for
        // the downloads and the rest.
        let default = LocalLimits::for_open_files(Some(1024), 4, 1);
        assert!(
            default.slots < LOCAL_SLOTS && default.slots >= 80,
            "{default:?}"
        );
        for (limit, jobs, consumers) in [(1024, 4, 1), (256, 4, 1), (256, 8, 3), (400, 1, 10)] {
            let limits = LocalLimits::for_open_files(Some(limit), jobs, consumers);
            let reserved = LocalLimits::BASE
                + LocalLimits::PER_JOB * jobs as u64
                + LocalLimits::PER_CONSUMER * consumers as u64;
            let used = reserved + LocalLimits::PER_SLOT * limits.slots as u64;
            assert!(
                used <= limit,
                "{limit} {jobs} {consumers}: {limits:?} needs {used}"
            );
            assert_eq!(limits.commit_backlog, 2 * limits.slots);
        }
        // Even under a limit too low for the reserve: one at a time.
        assert_eq!(LocalLimits::for_open_files(Some(32), 4, 1).slots, 1);
        assert_eq!(LocalLimits::for_open_files(Some(0), 64, 1).slots, 1);
    }
}
