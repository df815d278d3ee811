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
//! however many downloads want it. And no host gets more slots than it
//! takes requests at once (`per_host`, more once it speaks HTTP/2): a
//! download beyond that would only wait for a permit, holding a slot.
//!
//! A slot is a connection's worth of downloads: over HTTP/1.1 one
//! download, but once a host answers over HTTP/2, whose requests share a
//! connection, [`STREAMS_PER_CONNECTION`] of its downloads share one slot
//! (and its share in slots holds that many more downloads). Many small
//! files then cost one round trip each side by side, as with `per_host`'s
//! permits, instead of `jobs` at a time.

use std::collections::HashMap;

use crate::fetch::{HostKey, Room, STREAMS_PER_CONNECTION};

/// A slot, in the parts that downloads hold of it (see the module doc):
/// an HTTP/2 download holds one part, any other the whole slot.
pub const SLOT: usize = STREAMS_PER_CONNECTION;

/// Hosts remembered with a grown share before all are forgotten (each
/// then starts again from [`HostSlots::first`]).
const REMEMBERED: usize = 1024;

#[derive(Debug)]
pub struct HostSlots {
    jobs: usize,
    /// Hosts whose share grew past the first.
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

    /// Whether `host`, with `running` downloads and `room` (see
    /// [`crate::fetch::Fetcher::host_room`]), may start another, and what
    /// part of a [`SLOT`] it takes.
    pub fn admit(&self, host: &HostKey, running: usize, room: Room) -> Option<usize> {
        let per_slot = if room.multiplexed { SLOT } else { 1 };
        let cap = (self.share(host) * per_slot).min(room.requests);
        (running < cap).then_some(SLOT / per_slot)
    }

    /// A download whose first source is on `host` was verified.
    pub fn verified(&mut self, host: &HostKey) {
        let share = (self.share(host) + 1).min(self.jobs);
        if share > self.first() {
            if self.grown.len() >= REMEMBERED && !self.grown.contains_key(host) {
                self.grown.clear();
            }
            self.grown.insert(host.clone(), share);
        }
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

    fn may_start(slots: &HostSlots, host: &HostKey, running: usize, room: Room) -> bool {
        slots.admit(host, running, room).is_some()
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
    fn no_host_gets_more_slots_than_it_takes_requests() {
        let a = host("a");
        let mut slots = HostSlots::new(16);
        for _ in 0..16 {
            slots.verified(&a);
        }
        let narrow = Room {
            requests: 2,
            multiplexed: false,
        };
        assert_eq!(slots.admit(&a, 1, narrow), Some(SLOT), "a whole slot");
        assert_eq!(slots.admit(&a, 2, narrow), None);
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
        assert_eq!(slots.admit(&a, 0, multiplexed), Some(1));
        assert_eq!(slots.admit(&a, 2 * SLOT - 1, multiplexed), Some(1));
        assert_eq!(
            slots.admit(&a, 2 * SLOT, multiplexed),
            None,
            "its share: 2 slots"
        );
        let few = Room {
            requests: 6,
            ..multiplexed
        };
        assert_eq!(slots.admit(&a, 6, few), None, "within its requests");
    }
}
