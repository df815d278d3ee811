//! A chit's identity in the daemon: its consumer and its name.

/// A chit: the index of its consumer (in the configuration's order) and
/// its name in that consumer's state directories.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChitId {
    pub consumer: usize,
    pub name: String,
}

impl ChitId {
    pub fn new(consumer: usize, name: String) -> ChitId {
        ChitId { consumer, name }
    }
}
