//! Per-consumer queues of work, served round-robin.
//!
//! Each consumer has two queues: chits whose download has ended, waiting
//! for their delivery (or failure), and names of chits not started yet.
//! [`Queues::next`] takes one item from each consumer in turn, a delivery
//! first, so neither a flood of new chits nor a download that thousands
//! of one consumer's chits waited for holds up another consumer.
//!
//! A name is *known* from the moment it is queued until its local step (or
//! its delivery after a download) is done, so the many hints a burst of
//! events and rescans produce for one chit queue it once. The pending
//! queue and the known set share each name (`Arc<OsStr>`: names are
//! bytes, UTF-8 or not): a backlog of
//! 100,000 chits with 255-byte names holds one copy of them, not two.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::work::Origin;

#[derive(Debug)]
struct Queue<R> {
    /// Chits whose download ended, in the order they were handed over.
    deliveries: VecDeque<R>,
    pending: VecDeque<(Arc<OsStr>, Origin)>,
    known: HashSet<Arc<OsStr>>,
}

impl<R> Default for Queue<R> {
    fn default() -> Self {
        Queue {
            deliveries: VecDeque::new(),
            pending: VecDeque::new(),
            known: HashSet::new(),
        }
    }
}

/// What to do next, for the consumer it belongs to.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<R> {
    /// Deliver (or fail) a chit whose download ended.
    Deliver(R),
    /// Start a chit that is in `request/` or `fetch/`.
    Start(usize, OsString, Origin),
}

#[derive(Debug)]
pub struct Queues<R> {
    queues: Vec<Queue<R>>,
    /// The consumer served next.
    cursor: usize,
    /// Items in every queue, deliveries and pending names.
    waiting: usize,
    deliveries: usize,
}

impl<R> Queues<R> {
    pub fn new(consumers: usize) -> Queues<R> {
        Queues {
            queues: (0..consumers).map(|_| Queue::default()).collect(),
            cursor: 0,
            waiting: 0,
            deliveries: 0,
        }
    }

    /// Make room for one more consumer (added by a reload).
    pub fn add_consumer(&mut self) {
        self.queues.push(Queue::default());
    }

    /// `consumer` was taken out by a reload: its chits not started yet
    /// are forgotten (they stay where they are, in `request/` or
    /// `fetch/`); deliveries of its chits whose download ended still go.
    pub fn retire(&mut self, consumer: usize) {
        let queue = &mut self.queues[consumer];
        for (name, _) in queue.pending.drain(..) {
            queue.known.remove(&name);
            self.waiting -= 1;
        }
    }

    /// Queue a chit unless it is already queued or being worked on.
    pub fn push(&mut self, consumer: usize, name: OsString, origin: Origin) {
        let queue = &mut self.queues[consumer];
        if queue.known.contains(name.as_os_str()) {
            return;
        }
        let name: Arc<OsStr> = name.into();
        queue.known.insert(Arc::clone(&name));
        queue.pending.push_back((name, origin));
        self.waiting += 1;
    }

    /// Queue the delivery of one of `consumer`'s chits whose download
    /// ended (its name stays known).
    pub fn push_delivery(&mut self, consumer: usize, item: R) {
        self.queues[consumer].deliveries.push_back(item);
        self.waiting += 1;
        self.deliveries += 1;
    }

    /// The next item, taking one from each consumer in turn; within a
    /// consumer, a delivery before a new chit.
    pub fn next(&mut self) -> Option<Next<R>> {
        if self.waiting == 0 {
            return None;
        }
        let consumers = self.queues.len();
        for offset in 0..consumers {
            let consumer = (self.cursor + offset) % consumers;
            let queue = &mut self.queues[consumer];
            let next = if let Some(item) = queue.deliveries.pop_front() {
                self.deliveries -= 1;
                Next::Deliver(item)
            } else if let Some((name, origin)) = queue.pending.pop_front() {
                Next::Start(consumer, name.to_os_string(), origin)
            } else {
                continue;
            };
            self.cursor = (consumer + 1) % consumers;
            self.waiting -= 1;
            return Some(next);
        }
        None
    }

    /// Chits whose download ended, waiting for their delivery.
    pub fn deliveries_waiting(&self) -> usize {
        self.deliveries
    }

    /// The chit's work is over; a later hint may queue the name again.
    pub fn finished(&mut self, consumer: usize, name: impl AsRef<OsStr>) {
        self.queues[consumer].known.remove(name.as_ref());
    }

    /// Every chit queued or being worked on, as (consumer, name).
    pub fn known(&self) -> impl Iterator<Item = (usize, &OsStr)> {
        self.queues
            .iter()
            .enumerate()
            .flat_map(|(consumer, q)| q.known.iter().map(move |name| (consumer, &**name)))
    }

    /// Nothing queued and nothing being worked on.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.known.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(consumer: usize, name: &str) -> Next<&'static str> {
        Next::Start(consumer, name.into(), Origin::Request)
    }

    #[test]
    fn round_robin_and_deduplicated() {
        let mut queues = Queues::<&str>::new(2);
        for name in ["a1", "a2", "a3"] {
            queues.push(0, name.into(), Origin::Request);
        }
        queues.push(0, "a1".into(), Origin::Request);
        queues.push(1, "b1".into(), Origin::Request);
        let order: Vec<_> = std::iter::from_fn(|| queues.next()).collect();
        assert_eq!(
            order,
            [
                start(0, "a1"),
                start(1, "b1"),
                start(0, "a2"),
                start(0, "a3")
            ]
        );
        assert!(!queues.is_empty(), "still being worked on");
        queues.push(0, "a1".into(), Origin::Request);
        assert!(queues.next().is_none(), "a1 is known until finished");
        for (c, n) in [(0, "a1"), (0, "a2"), (0, "a3"), (1, "b1")] {
            queues.finished(c, n);
        }
        assert!(queues.is_empty());
    }

    /// Thousands of one consumer's chits whose shared download just ended
    /// do not hold up another consumer's new chit, and within a consumer
    /// deliveries come first, in the order they were handed over.
    #[test]
    fn deliveries_take_turns_with_other_consumers() {
        let mut queues = Queues::new(2);
        queues.push(0, "a-new".into(), Origin::Request);
        for item in ["a1", "a2", "a3"] {
            queues.push_delivery(0, item);
        }
        queues.push(1, "b1".into(), Origin::Request);
        queues.push_delivery(1, "b-done");
        assert_eq!(queues.deliveries_waiting(), 4);
        let order: Vec<_> = std::iter::from_fn(|| queues.next()).collect();
        assert_eq!(
            order,
            [
                Next::Deliver("a1"),
                Next::Deliver("b-done"),
                Next::Deliver("a2"),
                start(1, "b1"),
                Next::Deliver("a3"),
                start(0, "a-new"),
            ]
        );
        assert_eq!(queues.deliveries_waiting(), 0);
    }

    /// A consumer added by a reload takes its turn; one taken out loses
    /// its chits not started, and keeps its deliveries.
    #[test]
    fn consumers_added_and_retired() {
        let mut queues = Queues::new(1);
        queues.push(0, "a1".into(), Origin::Request);
        queues.push(0, "a2".into(), Origin::Fetch);
        queues.push_delivery(0, "a-done");
        queues.add_consumer();
        queues.push(1, "b1".into(), Origin::Request);
        queues.retire(0);
        let order: Vec<_> = std::iter::from_fn(|| queues.next()).collect();
        assert_eq!(order, [Next::Deliver("a-done"), start(1, "b1")]);
        queues.finished(1, "b1");
        assert!(queues.is_empty(), "{queues:?}");
    }
}
