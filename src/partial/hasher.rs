//! The running sha256 of a partial download, computed inline or, for big
//! downloads, on a thread of its own.
//!
//! Hashing (~1.3 GB/s with SHA-NI) is the slowest stage of a download on
//! loopback. Done on the writer thread, it adds to the time of every write;
//! on its own thread it overlaps them (and the network receive), which on
//! two cores makes the hash the only limit. Chunks are passed as `Bytes`
//! (reference-counted, not copied) through a bounded channel, so memory
//! stays bounded. The midstate for a checkpoint is asked for through the
//! same channel, so it describes exactly the bytes appended before it.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};

use crate::chit::Digest;

/// Feed everything `reader` yields to `hasher`, in 1 MiB reads; returns the
/// number of bytes hashed. For re-reading files already on disk.
pub fn hash_all(mut reader: impl std::io::Read, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(read),
            Ok(n) => {
                hasher.update(&buffer[..n]);
                read += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Chunks queued for the hashing thread.
const QUEUED_CHUNKS: usize = 16;

enum Job {
    Data(Bytes),
    /// Reply with the serialized state after all data sent before.
    State(SyncSender<Vec<u8>>),
}

pub struct Hasher(State);

enum State {
    Inline(Sha256),
    Thread {
        jobs: SyncSender<Job>,
        thread: JoinHandle<Sha256>,
    },
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(State::Inline(Sha256::new()))
    }

    /// Continue from a serialized state (a progress record's midstate).
    pub fn resume(state: &[u8]) -> Result<Hasher, String> {
        let state = state
            .try_into()
            .map_err(|_| "record midstate has the wrong length".to_string())?;
        let hasher =
            Sha256::deserialize(state).map_err(|_| "record midstate is invalid".to_string())?;
        Ok(Hasher(State::Inline(hasher)))
    }

    /// Move hashing to its own thread from now on.
    pub fn offload(&mut self) {
        if let State::Inline(hasher) = &self.0 {
            let hasher = hasher.clone();
            let (jobs, queue) = sync_channel(QUEUED_CHUNKS);
            let thread = std::thread::spawn(move || run(hasher, queue));
            self.0 = State::Thread { jobs, thread };
        }
    }

    pub fn update(&mut self, bytes: Bytes) {
        match &mut self.0 {
            State::Inline(hasher) => hasher.update(&bytes),
            State::Thread { jobs, .. } => {
                if jobs.send(Job::Data(bytes)).is_err() {
                    self.rejoin();
                }
            }
        }
    }

    /// The serialized state after every byte given so far.
    pub fn state(&mut self) -> Vec<u8> {
        if let State::Thread { jobs, .. } = &self.0 {
            let (reply, answer) = sync_channel(1);
            if jobs.send(Job::State(reply)).is_ok()
                && let Ok(state) = answer.recv()
            {
                return state;
            }
        }
        self.inline().serialize().to_vec()
    }

    /// The digest of every byte given so far.
    pub fn digest(&mut self) -> Digest {
        Digest::from_bytes(self.inline().clone().finalize().into())
    }

    /// Bring the hash back to this thread (waiting for queued chunks).
    fn inline(&mut self) -> &mut Sha256 {
        self.rejoin();
        match &mut self.0 {
            State::Inline(hasher) => hasher,
            State::Thread { .. } => unreachable!("rejoin leaves the hasher inline"),
        }
    }

    fn rejoin(&mut self) {
        if let State::Thread { .. } = self.0 {
            let State::Thread { jobs, thread } =
                std::mem::replace(&mut self.0, State::Inline(Sha256::new()))
            else {
                return;
            };
            drop(jobs);
            match thread.join() {
                Ok(hasher) => self.0 = State::Inline(hasher),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            State::Inline(_) => "Hasher::Inline",
            State::Thread { .. } => "Hasher::Thread",
        })
    }
}

fn run(mut hasher: Sha256, queue: Receiver<Job>) -> Sha256 {
    for job in queue {
        match job {
            Job::Data(bytes) => hasher.update(&bytes),
            Job::State(reply) => {
                let _ = reply.send(hasher.serialize().to_vec());
            }
        }
    }
    hasher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloaded_hash_equals_inline_hash_and_states_line_up() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut inline = Hasher::new();
        let mut threaded = Hasher::new();
        inline.update(Bytes::copy_from_slice(&data[..100]));
        threaded.update(Bytes::copy_from_slice(&data[..100]));
        threaded.offload();
        for chunk in data[100..].chunks(4099) {
            inline.update(Bytes::copy_from_slice(chunk));
            threaded.update(Bytes::copy_from_slice(chunk));
        }
        assert_eq!(threaded.state(), inline.state());
        let resumed = Hasher::resume(&inline.state()).unwrap().digest();
        assert_eq!(threaded.digest(), inline.digest());
        assert_eq!(resumed, Digest::from_bytes(Sha256::digest(&data).into()));
    }
}
