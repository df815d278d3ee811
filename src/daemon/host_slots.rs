//! How many of the `jobs` download slots one host may hold (see "Fair
//! slots" in the module docs of [`super`]).
//!
//! A host starts with [`HostSlots::first`] slots, half of `jobs` (at least
//! one), and gains one for each of its downloads that is verified, up to
//! all of them (a slow start, as Postfix's queue manager does per
//! destination); a download from it that fails takes it back to the
//! first. A host that holds its share leaves the other slots to other
//! hosts' downloads, so a host that stalls, never answers or is in
//! backoff, which completes no download, holds at most half of the slots
//! however many downloads want it. And no host runs more downloads than it
//! takes requests at once (`per_host`, more once it speaks HTTP/2): a
//! download beyond that would only wait for a permit, holding a slot.
//!
//! A slot is a connection's worth of downloads, in [`SLOT`] parts; a
//! host's share and the `jobs` slots are counted in parts:
//!
//! - Once a host answers over HTTP/2, whose requests share a connection,
//!   a download from it takes one part: [`STREAMS_PER_CONNECTION`] of its
//!   downloads share a slot.
//! - Over HTTP/1.1 a connection carries one request at a time, and a
//!   small download (at most [`SMALL_MAX`]) is mostly its round trip: it
//!   takes `SLOT / per_host` parts, so a slot holds `per_host` of them
//!   (more when that does not divide 16; at most [`SMALL_PER_SLOT`]),
//!   keeping each of the host's connections busy with one small file, as
//!   a big download keeps one busy. Only once the host has verified a
//!   download since its last failure (the slow start above): until then,
//!   and for bigger downloads, a download takes the whole slot, so a host
//!   that never answers still holds at most half of the slots, and asks
//!   no more requests at once than it has slots.
//!
//! Many small files then cost one round trip each side by side, up to the
//! host's `per_host` permits, instead of `jobs` at a time.

use std::collections::HashMap;

use crate::fetch::{HostKey, Room, STREAMS_PER_CONNECTION};
use crate::inflight::HostLoad;

/// A slot, in the parts that downloads hold of it (see the module doc).
pub const SLOT: usize = STREAMS_PER_CONNECTION;

/// Small HTTP/1.1 downloads a slot holds at most: each has a connection
/// and perhaps a partial file open, within the descriptors the daemon
/// keeps for a slot (`PER_JOB` in `limits`, 16).
pub const SMALL_PER_SLOT: usize = 8;

/// A download of at most this many bytes is small (see the module doc):
/// 1 MiB takes 84 ms at 100 Mbit/s, about a WAN round trip.
pub const SMALL_MAX: u64 = 1 << 20;

/// Hosts remembered with a verified download before all are forgotten
/// (each then starts again from [`HostSlots::first`], a slot a download).
const REMEMBERED: usize = 1024;

#[derive(Debug)]
pub struct HostSlots {
    jobs: usize,
    /// Hosts with a verified download since their last failure, and their
    /// share (which grew past the first unless that is all the slots).
    grown: HashMap<HostKey, usize>,
}

impl HostSlots {
    pub fn new(jobs: usize) -> HostSlots {
        HostSlots {
            jobs: jobs.max(1),
            grown: HashMap::new(),
        }
    }

    /// A reload changed `jobs`: shares grown past it shrink to it; the
    /// first share follows it.
    pub fn set_jobs(&mut self, jobs: usize) {
        self.jobs = jobs.max(1);
        for share in self.grown.values_mut() {
            *share = (*share).min(self.jobs);
        }
    }

    /// The share of a host with no verified download yet.
    pub fn first(&self) -> usize {
        (self.jobs / 2).max(1)
    }

    /// The slots `host` may hold now.
    pub fn share(&self, host: &HostKey) -> usize {
        self.grown.get(host).copied().unwrap_or(self.first())
    }

    /// Whether `host`, with `load` running and `room` (see
    /// [`crate::fetch::Fetcher::host_room`]), may start a download of
    /// `size` bytes, and the parts of a [`SLOT`] it takes: within the
    /// host's share, and no more downloads than requests it takes.
    pub fn admit(&self, host: &HostKey, load: HostLoad, room: Room, size: u64) -> Option<usize> {
        let parts = self.parts(host, room, size);
        let fits = load.parts + parts <= self.share(host) * SLOT && load.downloads < room.requests;
        fits.then_some(parts)
    }

    /// The parts of a slot a download of `size` bytes from `host` takes.
    fn parts(&self, host: &HostKey, room: Room, size: u64) -> usize {
        if room.multiplexed {
            1
        } else if size <= SMALL_MAX && self.grown.contains_key(host) {
            // Not multiplexed: `requests` is `per_host`.
            SLOT / room.requests.clamp(1, SMALL_PER_SLOT)
        } else {
            SLOT
        }
    }

    /// A download whose first source is on `host` was verified.
    pub fn verified(&mut self, host: &HostKey) {
        let share = (self.share(host) + 1).min(self.jobs);
        if self.grown.len() >= REMEMBERED && !self.grown.contains_key(host) {
            self.grown.clear();
        }
        self.grown.insert(host.clone(), share);
    }

    /// A download whose first source is on `host` failed.
    pub fn failed(&mut self, host: &HostKey) {
        self.grown.remove(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostKey {
        HostKey::of(&url::Url::parse(&format!("http://{name}/")).unwrap()).unwrap()
    }

    const ROOMY: Room = Room {
        requests: 6,
        multiplexed: false,
    };

    const BIG: u64 = SMALL_MAX + 1;

    /// `downloads` running, each holding `parts`.
    fn load(downloads: usize, parts: usize) -> HostLoad {
        HostLoad {
            downloads,
            parts: downloads * parts,
        }
    }

    fn may_start(slots: &HostSlots, host: &HostKey, running: usize, room: Room) -> bool {
        slots.admit(host, load(running, SLOT), room, BIG).is_some()
    }

    #[test]
    fn a_host_starts_with_half_and_grows_with_each_verified_download() {
        let (a, b) = (host("a"), host("b"));
        let mut slots = HostSlots::new(4);
        assert_eq!(slots.first(), 2);
        assert!(may_start(&slots, &a, 1, ROOMY));
        assert!(
            !may_start(&slots, &a, 2, ROOMY),
            "half of the slots at first"
        );
        slots.verified(&a);
        assert!(may_start(&slots, &a, 2, ROOMY));
        assert!(!may_start(&slots, &a, 3, ROOMY));
        slots.verified(&a);
        slots.verified(&a);
        assert_eq!(slots.share(&a), 4, "never more than jobs");
        assert_eq!(slots.share(&b), 2, "each host its own");
        slots.set_jobs(2);
        assert_eq!(
            slots.share(&a),
            2,
            "a reload's fewer jobs bound a grown share"
        );
        assert_eq!(slots.share(&b), 1, "and the first share");
        slots.set_jobs(4);
        slots.failed(&a);
        assert_eq!(slots.share(&a), 2, "a failure: back to the first share");
        // One slot gives one share; it is all there is.
        assert_eq!(HostSlots::new(1).first(), 1);
    }

    #[test]
    fn no_host_runs_more_downloads_than_it_takes_requests() {
        let a = host("a");
        let mut slots = HostSlots::new(16);
        for _ in 0..16 {
            slots.verified(&a);
        }
        let narrow = Room {
            requests: 2,
            multiplexed: false,
        };
        let admit = |running, size| slots.admit(&a, load(running, SLOT), narrow, size);
        assert_eq!(admit(1, BIG), Some(SLOT), "a whole slot");
        assert_eq!(admit(2, BIG), None);
        assert_eq!(admit(1, 10), Some(SLOT / 2), "half a slot: per_host 2");
        assert_eq!(admit(2, 10), None, "however small");
    }

    /// Over HTTP/2 a slot holds many downloads of the host, each a part
    /// of it, and its share holds as many more, within its requests.
    #[test]
    fn over_http2_downloads_share_slots() {
        let a = host("a");
        let slots = HostSlots::new(4);
        let multiplexed = Room {
            requests: 6 * SLOT,
            multiplexed: true,
        };
        let admit = |running, room| slots.admit(&a, load(running, 1), room, BIG);
        assert_eq!(admit(0, multiplexed), Some(1));
        assert_eq!(admit(2 * SLOT - 1, multiplexed), Some(1));
        assert_eq!(admit(2 * SLOT, multiplexed), None, "its share: 2 slots");
        let few = Room {
            requests: 6,
            ..multiplexed
        };
        assert_eq!(admit(6, few), None, "within its requests");
    }

    /// Over HTTP/1.1, once the host verified a download, its small
    /// downloads share slots: with `jobs = 4` (a share of 2 slots at
    /// first) it runs all of `per_host`'s 6 at once, beside a big one; a
    /// host that verified nothing, or failed since, gets a slot each.
    #[test]
    fn over_http1_small_downloads_share_slots_once_the_host_answers() {
        let (a, dead) = (host("a"), host("dead"));
        let mut slots = HostSlots::new(4);
        let small = SLOT / 6;
        assert_eq!(slots.admit(&a, HostLoad::default(), ROOMY, 10), Some(SLOT));
        assert_eq!(slots.admit(&a, load(2, SLOT), ROOMY, 10), None, "its share");
        slots.verified(&a);
        assert_eq!(slots.share(&a), 3);
        assert_eq!(slots.admit(&a, load(5, small), ROOMY, 10), Some(small));
        assert_eq!(
            slots.admit(&a, load(5, small), ROOMY, SMALL_MAX),
            Some(small),
            "at most SMALL_MAX is small"
        );
        assert_eq!(slots.admit(&a, load(6, small), ROOMY, 10), None, "per_host");
        let mixed = HostLoad {
            downloads: 5,
            parts: 4 * small + SLOT,
        };
        assert_eq!(slots.admit(&a, mixed, ROOMY, 10), Some(small));
        assert_eq!(slots.admit(&a, mixed, ROOMY, BIG), Some(SLOT));
        let full = HostLoad {
            downloads: 3,
            parts: 3 * SLOT,
        };
        assert_eq!(slots.admit(&a, full, ROOMY, 10), None, "share full");
        // A host that never verified a download: a slot each.
        assert_eq!(slots.admit(&dead, load(1, SLOT), ROOMY, 10), Some(SLOT));
        assert_eq!(slots.admit(&dead, load(2, SLOT), ROOMY, 10), None);
        slots.failed(&a);
        assert_eq!(slots.admit(&a, load(1, SLOT), ROOMY, 10), Some(SLOT));
        assert_eq!(slots.admit(&a, load(2, SLOT), ROOMY, 10), None);
        // With one slot for all and a wide per_host: SMALL_PER_SLOT.
        let mut one = HostSlots::new(1);
        one.verified(&a);
        let wide = Room {
            requests: 64,
            multiplexed: false,
        };
        let part = SLOT / SMALL_PER_SLOT;
        let running = SMALL_PER_SLOT - 1;
        assert_eq!(one.admit(&a, load(running, part), wide, 10), Some(part));
        let full = load(SMALL_PER_SLOT, part);
        assert_eq!(one.admit(&a, full, wide, 10), None, "one slot");
    }
}
