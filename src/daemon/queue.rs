//! Per-consumer queues of chit names, served round-robin.
//!
//! A name is *known* from the moment it is queued until its local step (or
//! its delivery after a download) is done, so the many hints a burst of
//! events and rescans produce for one chit queue it once.

use std::collections::{HashSet, VecDeque};

use super::work::Origin;

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<(String, Origin)>,
    known: HashSet<String>,
}

#[derive(Debug)]
pub struct Queues {
    queues: Vec<Queue>,
    /// The consumer served next.
    cursor: usize,
    pending: usize,
}

impl Queues {
    pub fn new(consumers: usize) -> Queues {
        Queues {
            queues: (0..consumers).map(|_| Queue::default()).collect(),
            cursor: 0,
            pending: 0,
        }
    }

    /// Queue a chit unless it is already queued or being worked on.
    pub fn push(&mut self, consumer: usize, name: String, origin: Origin) {
        let queue = &mut self.queues[consumer];
        if queue.known.insert(name.clone()) {
            queue.pending.push_back((name, origin));
            self.pending += 1;
        }
    }

    /// The next chit, taking one from each consumer in turn.
    pub fn next(&mut self) -> Option<(usize, String, Origin)> {
        if self.pending == 0 {
            return None;
        }
        for offset in 0..self.queues.len() {
            let consumer = (self.cursor + offset) % self.queues.len();
            if let Some((name, origin)) = self.queues[consumer].pending.pop_front() {
                self.cursor = (consumer + 1) % self.queues.len();
                self.pending -= 1;
                return Some((consumer, name, origin));
            }
        }
        None
    }

    /// The chit's work is over; a later hint may queue the name again.
    pub fn finished(&mut self, consumer: usize, name: &str) {
        self.queues[consumer].known.remove(name);
    }

    /// Every chit queued or being worked on, as (consumer, name).
    pub fn known(&self) -> impl Iterator<Item = (usize, &str)> {
        self.queues
            .iter()
            .enumerate()
            .flat_map(|(consumer, q)| q.known.iter().map(move |name| (consumer, name.as_str())))
    }

    /// Nothing queued and nothing being worked on.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.known.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_deduplicated() {
        let mut queues = Queues::new(2);
        for name in ["a1", "a2", "a3"] {
            queues.push(0, name.into(), Origin::Request);
        }
        queues.push(0, "a1".into(), Origin::Request);
        queues.push(1, "b1".into(), Origin::Request);
        let order: Vec<_> = std::iter::from_fn(|| queues.next())
            .map(|(c, n, _)| (c, n))
            .collect();
        assert_eq!(
            order,
            [
                (0, "a1".into()),
                (1, "b1".into()),
                (0, "a2".into()),
                (0, "a3".into())
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
}
