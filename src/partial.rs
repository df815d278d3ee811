//! Partial downloads and their durable progress records.
//!
//! A download of digest D and size S writes `partial-v1/D-S.part` in the
//! cache directory
//! (never a consumer's directory, never the final cache name). Every
//! [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`] the `.part` is fdatasync'd
//! and then `partial-v1/D-S.progress` is replaced atomically and durably, on a
//! thread of its own (one at a time), so a slow fdatasync never stalls the
//! transfer; the record names the offset reached when it started. The
//! timer runs while no byte arrives too (a stalled body: see
//! [`Partial::checkpoint_due_in`]). The
//! record names the source, its validator, the total length, the durable
//! byte offset and the sha256 *midstate* at that offset, and ends with a
//! checksum of itself, and the boot it was written in. Only bytes covered
//! by a valid record count as done: after a reboot the `.part` is truncated
//! to the recorded offset and hashing continues from the saved midstate,
//! so resuming a 10 GiB partial does not re-read it before continuing. In
//! the same boot (a `kill -9`, not a power loss) the bytes past the offset
//! are still there and kept: only that tail is re-read (see `boot`). A torn, edited or foreign record is
//! rejected and the download starts from 0.
//!
//! The saved midstate vouches for the prefix only if the `.part` still holds
//! the bytes it was computed from. So a resumed prefix is re-hashed on a
//! background thread while the rest downloads (two cores: it costs no wall
//! time), and the result must equal the recorded midstate before the file
//! may be published ([`Partial::verify_prefix`]). A prefix damaged behind
//! chitd's back is caught, and the download starts over instead of
//! publishing wrong bytes.
//!
//! Downloads of at most [`IN_MEMORY_MAX`] bytes are held in memory instead
//! ([`Partial::in_memory`]): no `.part`, no record, no checkpoint, no disk
//! work until the bytes are verified and published (then written once,
//! beside their final cache name). Within a run they resume like the others
//! (the bytes are still there); a crash costs at most that many bytes of
//! transfer, and many small files cost no partial file each.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};

pub(crate) mod boot;
mod hasher;

pub use self::hasher::hash_all;

use bytes::Bytes;

use self::hasher::Hasher;
use crate::chit::Digest;
use crate::durable::{start_writeback, with_path, write_atomic};

/// A crash loses at most this many bytes of transfer (plus
/// [`CHECKPOINT_INTERVAL`] worth on a slow link). 32 MiB is ~0.05 s on
/// loopback and a second or two on a fast WAN. Smaller means more fsyncs;
/// since writeback is started every `WRITEBACK_BYTES`, each one finds
/// little left to write, so 32 per GiB cost no measurable throughput.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// On slow links, checkpoint at least this often so a crash costs at most
/// a couple of seconds of transfer.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// Writeback of received bytes is started every this many bytes, so the
/// disk writes while the network receives (see `Partial::start_writeback`).
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Downloads at least this big hash on a thread of their own (see
/// `hasher`); below it, a thread costs more than it saves.
const OFFLOAD_HASH_BYTES: u64 = 4 << 20;

/// Downloads of at most this many bytes are held in memory until verified
/// (see the module doc): at most 16 × `jobs` of them run at once (small
/// downloads share slots: see "Fair slots" in the daemon's module docs).
pub const IN_MEMORY_MAX: u64 = 64 << 10;

const MAGIC: &str = "chitd-progress v1";

/// What identifies the remote object the partial bytes came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validator {
    /// Strong ETag (weak ones are useless for ranges and are not kept).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validator {
    /// The `If-Range` value: the strong ETag, else Last-Modified.
    pub fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

/// The durable progress record of one partial download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub digest: Digest,
    pub source: String,
    pub validator: Validator,
    pub total: u64,
    pub offset: u64,
    /// Serialized sha256 state after `offset` bytes.
    pub midstate: Vec<u8>,
    /// The boot of the machine the record was written in (see `boot`):
    /// in the same boot, the `.part`'s bytes past `offset` are kept too.
    /// Records written before this field existed have none.
    pub boot: Option<String>,
}

impl Record {
    pub fn render(&self) -> String {
        let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let body = format!(
            "{MAGIC}\ndigest {}\nsource {}\netag {}\nlast-modified {}\ntotal {}\noffset {}\nmidstate {}\n",
            self.digest,
            self.source,
            field(&self.validator.etag),
            field(&self.validator.last_modified),
            self.total,
            self.offset,
            hex::encode(&self.midstate),
        );
        let body = match &self.boot {
            Some(boot) => format!("{body}boot {boot}\n"),
            None => body,
        };
        let check = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{body}check {check}\n")
    }

    /// Parse and verify a record; `None` (with the reason) if it is torn,
    /// edited or not a record.
    pub fn parse(text: &str) -> Result<Record, String> {
        let (body, check_line) = text
            .strip_suffix('\n')
            .and_then(|t| t.rsplit_once('\n'))
            .ok_or("record is truncated")?;
        let check = check_line
            .strip_prefix("check ")
            .ok_or("record has no checksum line")?;
        let body = format!("{body}\n");
        if hex::encode(Sha256::digest(body.as_bytes())) != check {
            return Err("record checksum does not match its content".into());
        }
        // Split on '\n' only: `lines()` would also eat a '\r' before it, and
        // a value ending in '\r' would not survive `render` (found by
        // fuzzing, see `record_parse_regressions`).
        let mut lines = body.split('\n');
        if lines.next() != Some(MAGIC) {
            return Err("record has an unknown format".into());
        }
        let mut field = |key: &str| -> Result<String, String> {
            let line = lines.next().ok_or(format!("record lacks {key}"))?;
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or(format!("record line {line:?} is not {key}"))
        };
        let optional = |v: String| (v != "-").then_some(v);
        let digest = field("digest")?
            .parse::<Digest>()
            .map_err(|e| e.to_string())?;
        let source = field("source")?;
        let etag = optional(field("etag")?);
        let last_modified = optional(field("last-modified")?);
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("record number {v:?}: {e}"))
        };
        let total = number(field("total")?)?;
        let offset = number(field("offset")?)?;
        let midstate = hex::decode(field("midstate")?).map_err(|e| e.to_string())?;
        // Optional, and last: a record without it is read as before.
        let boot = lines
            .next()
            .and_then(|line| line.strip_prefix("boot "))
            .map(str::to_owned);
        if offset > total {
            return Err("record offset is past the total".into());
        }
        Ok(Record {
            digest,
            source,
            validator: Validator {
                etag,
                last_modified,
            },
            total,
            offset,
            midstate,
            boot,
        })
    }
}

/// Where a partial download's bytes are.
#[derive(Debug)]
enum Backing {
    /// The `.part` file.
    Disk(File),
    /// In memory (at most [`IN_MEMORY_MAX`] bytes).
    Memory(Vec<u8>),
}

/// A complete, verified download, ready to be published into the cache.
#[derive(Debug)]
pub enum Complete {
    /// The fdatasync'd `.part` file, to be renamed into place; then its
    /// progress record, if one may exist, is to be removed. (In that
    /// order: a crash in between leaves the object published and a stale
    /// record, which the next start removes; the other order would leave
    /// a complete `.part` that no record lets a download resume.)
    File {
        part: PathBuf,
        record: Option<PathBuf>,
    },
    /// The bytes, to be written to their final place.
    Memory(Vec<u8>),
}

/// A partial download being written: the `.part` file (or the bytes in
/// memory), the running hash, and where it came from. Owned by one thread
/// at a time (it moves into the blocking writer while a body streams).
#[derive(Debug)]
pub struct Partial {
    digest: Digest,
    total: u64,
    part_path: PathBuf,
    record_path: PathBuf,
    backing: Backing,
    hasher: Hasher,
    offset: u64,
    durable_offset: u64,
    last_checkpoint: Instant,
    /// Bytes below this offset have had their writeback started.
    writeback_offset: u64,
    /// Where the bytes so far came from (the last response's source, when
    /// several sent them); `None` at offset 0. Recorded for people: a
    /// resume may ask any source, with the validator.
    pub source: Option<String>,
    /// What identifies the object the bytes so far are of: the validator of
    /// the response that sent them from 0. Every resume sends it as
    /// `If-Range`, to whichever source it asks.
    pub validator: Validator,
    /// True when the bytes came from more than one response: a progress
    /// record of an earlier run, or a ranged request in this run (after a
    /// break, or from another source). A digest mismatch may then be the
    /// resume's fault, so the download is tried once more from 0.
    pub resumed: bool,
    /// The background re-hash of a resumed prefix (see the module doc).
    prefix_check: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// A checkpoint under way on a thread of its own (see `append`); it
    /// returns the offset it made durable.
    checkpointing: Option<std::thread::JoinHandle<io::Result<u64>>>,
    /// The offset the last checkpoint started covers.
    checkpoint_offset: u64,
    /// Whether a record file may exist: false once none was found or it was
    /// removed, so a small download costs no `unlink` of a missing name
    /// (each takes the directory's lock that every download shares).
    record_may_exist: bool,
    /// Shared with a reader that follows the `.part` while it is written
    /// (`chase`), if any.
    frontier: Option<Arc<Frontier>>,
}

/// How far a `.part` is written, for a reader that follows it while the
/// download runs (`chase`). Within one generation the file only grows and
/// bytes below `written` never change; every truncation (a restart from 0,
/// or back to a durable offset) starts a new generation *before* it touches
/// the file. A reader that saw the same generation before and after
/// copying a range copied bytes that are still there.
#[derive(Debug, Default)]
pub struct Frontier {
    generation: AtomicU64,
    written: AtomicU64,
}

impl Frontier {
    /// (generation, bytes written in it). Generation 0: not followed yet.
    pub fn now(&self) -> (u64, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        (generation, self.written.load(Ordering::Acquire))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl Partial {
    /// Whether a download of `total` bytes is held in memory.
    pub fn fits_in_memory(total: u64) -> bool {
        total <= IN_MEMORY_MAX
    }

    /// A fresh partial held in memory, for a download that
    /// [`fits_in_memory`](Partial::fits_in_memory): no file is touched.
    pub fn in_memory(dir: &Path, digest: Digest, total: u64) -> Partial {
        debug_assert!(Partial::fits_in_memory(total));
        let mut partial = Partial::new(dir, digest, total, Backing::Memory(Vec::new()));
        partial.record_may_exist = false;
        partial
    }

    fn new(dir: &Path, digest: Digest, total: u64, backing: Backing) -> Partial {
        Partial {
            digest,
            total,
            part_path: Partial::part_path(dir, &digest, total),
            record_path: Partial::record_path(dir, &digest, total),
            backing,
            hasher: Hasher::new(),
            offset: 0,
            durable_offset: 0,
            last_checkpoint: Instant::now(),
            writeback_offset: 0,
            source: None,
            validator: Validator::default(),
            resumed: false,
            prefix_check: None,
            checkpointing: None,
            checkpoint_offset: 0,
            record_may_exist: true,
            frontier: None,
        }
    }

    /// Where the partial download of `digest` of `total` bytes is written,
    /// in `dir`. The size is in the name: a chit of the wrong size for a
    /// digest gets a partial of its own, never another's (which it would
    /// otherwise reset, losing that download's progress).
    pub fn part_path(dir: &Path, digest: &Digest, total: u64) -> PathBuf {
        dir.join(format!("{digest}-{total}.part"))
    }

    /// Where the progress record of that partial download is kept.
    pub fn record_path(dir: &Path, digest: &Digest, total: u64) -> PathBuf {
        dir.join(format!("{digest}-{total}.progress"))
    }

    /// The generation of the frontier a reader follows (see
    /// [`Partial::follow`]), if one does.
    pub fn followed_generation(&self) -> Option<u64> {
        self.frontier.as_ref().map(|frontier| frontier.generation())
    }

    /// Let a reader follow the `.part` through `frontier`, from now on (a
    /// new generation, at the current offset). Bytes held in memory cannot
    /// be followed: the frontier stays at generation 0.
    pub fn follow(&mut self, frontier: Arc<Frontier>) {
        if let Backing::Disk(_) = self.backing {
            frontier.generation.fetch_add(1, Ordering::AcqRel);
            frontier.written.store(self.offset, Ordering::Release);
            self.frontier = Some(frontier);
        }
    }

    /// The partial for `digest`: in memory when it
    /// [`fits_in_memory`](Partial::fits_in_memory), else [`Partial::open`].
    pub fn open_or_hold(dir: &Path, digest: Digest, total: u64) -> io::Result<Partial> {
        if Partial::fits_in_memory(total) {
            Ok(Partial::in_memory(dir, digest, total))
        } else {
            Partial::open(dir, digest, total)
        }
    }

    /// Open the partial for `digest` on disk, resuming from its record when
    /// the record is valid and agrees with the `.part` file, else from 0.
    /// A record of this boot keeps the whole `.part` (see `boot`).
    pub fn open(dir: &Path, digest: Digest, total: u64) -> io::Result<Partial> {
        Partial::open_in_boot(dir, digest, total, boot::current())
    }

    /// [`Partial::open`], as if the machine were in boot `boot`.
    pub fn open_in_boot(
        dir: &Path,
        digest: Digest,
        total: u64,
        boot: Option<&str>,
    ) -> io::Result<Partial> {
        let part_path = Partial::part_path(dir, &digest, total);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(|e| with_path(e, "opening", &part_path))?;
        let mut partial = Partial::new(dir, digest, total, Backing::Disk(file));
        match partial.load_record() {
            Ok(Some(record)) => partial.resume(record, boot)?,
            Ok(None) => partial.reset()?,
            Err(reason) => {
                tracing::warn!(digest = %digest, path = %partial.record_path.display(), "discarding progress record: {reason}");
                partial.reset()?;
            }
        }
        Ok(partial)
    }

    /// Resume from a valid `record`: from its offset, or, when it was
    /// written in `boot` (no reboot since), from the whole `.part`, its
    /// tail past the offset re-hashed from disk. The prefix is re-checked
    /// against the midstate beside the download (module doc).
    fn resume(&mut self, record: Record, boot: Option<&str>) -> io::Result<()> {
        let kept = match boot.filter(|now| record.boot.as_deref() == Some(*now)) {
            Some(_) => self.keep_tail(record.offset, &record.midstate),
            None => record.offset,
        };
        self.truncate(kept)?;
        self.offset = kept;
        self.durable_offset = record.offset;
        self.checkpoint_offset = record.offset;
        self.writeback_offset = record.offset;
        self.source = Some(record.source);
        self.validator = record.validator;
        self.resumed = kept > 0;
        self.prefix_check = Some(spawn_prefix_check(
            &self.part_path,
            record.offset,
            record.midstate,
        ));
        let (digest, total, tail) = (self.digest, self.total, kept - record.offset);
        tracing::info!(digest = %digest, offset = kept, checkpoint = record.offset, tail, total, "resuming partial download from its progress record");
        Ok(())
    }

    /// In the boot its record was written in, the `.part`'s bytes past the
    /// checkpoint at `offset` are still what was written (a crash of the
    /// process loses no completed write): hash them on from the restored
    /// midstate. Returns the offset to resume from; `offset` itself when
    /// the tail cannot be read (then only the checkpoint counts).
    /// (The midstate is known good: `load_record` restored it.)
    fn keep_tail(&mut self, offset: u64, midstate: &[u8]) -> u64 {
        let Backing::Disk(file) = &self.backing else {
            return offset;
        };
        let length = match file.metadata() {
            Ok(metadata) => metadata.len().min(self.total),
            Err(_) => return offset,
        };
        if length <= offset {
            return offset;
        }
        let Ok(mut hasher) = Hasher::resume(midstate) else {
            return offset;
        };
        match boot::hash_tail(file, offset, length, &mut hasher) {
            Ok(()) => {
                self.hasher = hasher;
                length
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, path = %self.part_path.display(), "cannot re-read the bytes past the checkpoint, resuming from it: {e}");
                offset
            }
        }
    }

    fn load_record(&mut self) -> Result<Option<Record>, String> {
        let text = match fs::read_to_string(&self.record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.record_may_exist = false;
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        let record = Record::parse(&text)?;
        if record.digest != self.digest || record.total != self.total {
            return Err("record is for another digest or size".into());
        }
        let on_disk = match &self.backing {
            Backing::Disk(file) => file.metadata().map_err(|e| e.to_string())?.len(),
            Backing::Memory(bytes) => bytes.len() as u64,
        };
        if on_disk < record.offset {
            return Err(format!(
                "part file has {on_disk} bytes, record claims {}",
                record.offset
            ));
        }
        self.hasher = Hasher::resume(&record.midstate)?;
        Ok(Some(record))
    }

    /// Bytes written so far (not necessarily durable).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the bytes are held in memory (see [`Partial::in_memory`]).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.backing, Backing::Memory(_))
    }

    fn truncate(&mut self, length: u64) -> io::Result<()> {
        if let Some(frontier) = &self.frontier {
            frontier.generation.fetch_add(1, Ordering::AcqRel);
            frontier.written.store(0, Ordering::Release);
        }
        let truncated = self.truncate_backing(length);
        if let (Some(frontier), Ok(())) = (&self.frontier, &truncated) {
            frontier.written.store(length, Ordering::Release);
        }
        truncated
    }

    fn truncate_backing(&mut self, length: u64) -> io::Result<()> {
        match &mut self.backing {
            Backing::Disk(file) => file
                .set_len(length)
                .map_err(|e| with_path(e, "truncating", &self.part_path)),
            Backing::Memory(bytes) => {
                bytes.truncate(usize::try_from(length).unwrap_or(usize::MAX));
                Ok(())
            }
        }
    }

    /// Forget every byte: truncate to 0, fresh hash, no record.
    pub fn reset(&mut self) -> io::Result<()> {
        // A checkpoint under way must not write its record after this; its
        // error, if any, no longer matters.
        let _ = self.finish_checkpoint();
        self.truncate(0)?;
        self.hasher = Hasher::new();
        self.offset = 0;
        self.durable_offset = 0;
        self.checkpoint_offset = 0;
        self.writeback_offset = 0;
        self.source = None;
        self.validator = Validator::default();
        self.resumed = false;
        // A running prefix check is moot now; let it finish on its own.
        self.prefix_check = None;
        self.remove_record()
    }

    fn remove_record(&mut self) -> io::Result<()> {
        if !self.record_may_exist {
            return Ok(());
        }
        match fs::remove_file(&self.record_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(with_path(e, "removing", &self.record_path))
            }
            _ => {
                self.record_may_exist = false;
                Ok(())
            }
        }
    }

    /// Append bytes at the current offset, hash them, and checkpoint when
    /// due. The caller guarantees `offset + bytes.len() <= total`.
    pub fn append(&mut self, bytes: Bytes) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &mut self.backing {
            Backing::Disk(file) => file
                .write_all_at(&bytes, self.offset)
                .map_err(|e| with_path(e, "writing", &self.part_path))?,
            Backing::Memory(held) => held.extend_from_slice(&bytes),
        }
        self.offset += bytes.len() as u64;
        if let Some(frontier) = &self.frontier {
            frontier.written.store(self.offset, Ordering::Release);
        }
        if self.total >= OFFLOAD_HASH_BYTES {
            self.hasher.offload();
        }
        self.hasher.update(bytes);
        if self.offset - self.writeback_offset >= WRITEBACK_BYTES {
            self.start_writeback();
        }
        if self.offset - self.checkpoint_offset >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.start_checkpoint()?;
        }
        Ok(())
    }

    /// How long until the bytes written since the last checkpoint are due
    /// for one by time ([`CHECKPOINT_INTERVAL`]; zero when overdue), or
    /// `None` when no byte waits for one (or the bytes are held in memory).
    /// A writer waiting for bytes that do not come (a stalled body) starts
    /// one then ([`Partial::start_checkpoint`]): the bytes before a stall
    /// are durable on time, not only when the attempt gives up.
    pub fn checkpoint_due_in(&self) -> Option<Duration> {
        let waiting =
            matches!(self.backing, Backing::Disk(_)) && self.offset > self.checkpoint_offset;
        waiting.then(|| CHECKPOINT_INTERVAL.saturating_sub(self.last_checkpoint.elapsed()))
    }

    /// Start a checkpoint of the bytes so far on a thread of its own, so
    /// that a slow fdatasync never stalls the writer (and through it the
    /// network): fdatasync through a second descriptor of the `.part`, then
    /// replace the record, as [`Partial::checkpoint`] does. One at a time:
    /// while one is under way, the next is only tried when the next falls
    /// due (see [`Partial::checkpoint_due_in`]). Reports the error of the
    /// previous one.
    pub fn start_checkpoint(&mut self) -> io::Result<()> {
        self.last_checkpoint = Instant::now();
        if self
            .checkpointing
            .as_ref()
            .is_some_and(|running| !running.is_finished())
        {
            return Ok(());
        }
        self.finish_checkpoint()?;
        let Backing::Disk(file) = &self.backing else {
            return Ok(());
        };
        if self.offset == self.durable_offset {
            return Ok(());
        }
        let file = file
            .try_clone()
            .map_err(|e| with_path(e, "reopening", &self.part_path))?;
        let record = self.record();
        let (part_path, record_path) = (self.part_path.clone(), self.record_path.clone());
        self.record_may_exist = true;
        self.checkpoint_offset = self.offset;
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                file.sync_data()
                    .map_err(|e| with_path(e, "syncing", &part_path))?;
                write_atomic(&record_path, record.render().as_bytes())?;
                Ok(record.offset)
            });
        match spawned {
            Ok(running) => {
                self.checkpointing = Some(running);
                Ok(())
            }
            // No thread to be had: checkpoint here and now instead.
            Err(_) => self.checkpoint(),
        }
    }

    /// Wait for the checkpoint under way, if any; its error, if it failed.
    fn finish_checkpoint(&mut self) -> io::Result<()> {
        match self.checkpointing.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(done)) => {
                self.durable_offset = done?;
                Ok(())
            }
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }

    /// The progress record of the bytes so far.
    fn record(&mut self) -> Record {
        Record {
            digest: self.digest,
            source: self.source.clone().unwrap_or_default(),
            validator: self.validator.clone(),
            total: self.total,
            offset: self.offset,
            midstate: self.hasher.state(),
            boot: boot::current().map(str::to_owned),
        }
    }

    /// Start writeback of the bytes since the last call (see
    /// [`start_writeback`]), so the disk writes while the network receives.
    fn start_writeback(&mut self) {
        if let Backing::Disk(file) = &self.backing {
            start_writeback(
                file,
                self.writeback_offset,
                self.offset - self.writeback_offset,
            );
        }
        self.writeback_offset = self.offset;
    }

    /// Make the bytes so far durable and record them: fdatasync the `.part`,
    /// then replace the record atomically and durably.
    /// Bytes held in memory are never checkpointed.
    /// Waits for a checkpoint under way first (see `start_checkpoint`).
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.last_checkpoint = Instant::now();
        self.finish_checkpoint()?;
        let Backing::Disk(file) = &self.backing else {
            return Ok(());
        };
        if self.offset == self.durable_offset {
            return Ok(());
        }
        file.sync_data()
            .map_err(|e| with_path(e, "syncing", &self.part_path))?;
        let record = self.record();
        self.record_may_exist = true;
        self.checkpoint_offset = self.offset;
        write_atomic(&self.record_path, record.render().as_bytes())?;
        self.durable_offset = self.offset;
        Ok(())
    }

    /// For a resumed download: wait for the background re-hash of the
    /// prefix and fail if it does not match the recorded midstate.
    pub fn verify_prefix(&mut self) -> Result<(), String> {
        match self.prefix_check.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }

    /// The digest of the bytes written, when all `total` are there.
    pub fn finished_digest(&mut self) -> Option<Digest> {
        (self.offset == self.total).then(|| self.hasher.digest())
    }

    /// Hand the complete download over: the `.part` path, made durable
    /// (the caller renames it into the cache, then removes the record); or
    /// the bytes held in memory.
    pub fn into_complete(mut self) -> io::Result<Complete> {
        // No checkpoint may rewrite the record after the caller removed
        // it; the final fdatasync reports what matters.
        let _ = self.finish_checkpoint();
        match std::mem::replace(&mut self.backing, Backing::Memory(Vec::new())) {
            Backing::Disk(file) => {
                file.sync_data()
                    .map_err(|e| with_path(e, "syncing", &self.part_path))?;
                let record = self.record_may_exist.then(|| self.record_path.clone());
                Ok(Complete::File {
                    part: self.part_path.clone(),
                    record,
                })
            }
            Backing::Memory(bytes) => Ok(Complete::Memory(bytes)),
        }
    }

    /// Whether a progress record covers some bytes, so that a later
    /// download of the digest can resume from them.
    pub fn is_resumable(&self) -> bool {
        self.durable_offset > 0
    }

    /// Drop the partial entirely (both files).
    pub fn discard(mut self) {
        let _ = self.finish_checkpoint();
        if !self.is_in_memory() {
            let _ = fs::remove_file(&self.part_path);
        }
        let _ = self.remove_record();
    }
}

/// Re-hash `[0, offset)` of the `.part` and compare with `midstate`.
fn spawn_prefix_check(
    part: &Path,
    offset: u64,
    midstate: Vec<u8>,
) -> std::thread::JoinHandle<Result<(), String>> {
    let part = part.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Read;
        let file =
            File::open(&part).map_err(|e| format!("cannot re-read {}: {e}", part.display()))?;
        let mut hasher = Sha256::new();
        let read = hash_all(file.take(offset), &mut hasher)
            .map_err(|e| format!("cannot re-read {}: {e}", part.display()))?;
        if read == offset && hasher.serialize().as_slice() == midstate.as_slice() {
            Ok(())
        } else {
            Err(format!(
                "the first {offset} bytes of the partial download changed since they were checkpointed"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::from_bytes(Sha256::digest(bytes).into())
    }

    #[test]
    fn record_round_trips_and_detects_edits() {
        let record = Record {
            digest: digest_of(b"x"),
            source: "http://h/x".into(),
            validator: Validator {
                etag: Some("\"abc\"".into()),
                last_modified: None,
            },
            total: 10,
            offset: 4,
            midstate: vec![1, 2, 3],
            boot: None,
        };
        let text = record.render();
        assert_eq!(Record::parse(&text).unwrap(), record);
        let booted = Record {
            boot: Some("4f0c-77".into()),
            ..record.clone()
        };
        let booted_text = booted.render();
        assert!(
            booted_text.contains("\nboot 4f0c-77\ncheck "),
            "{booted_text}"
        );
        assert_eq!(Record::parse(&booted_text).unwrap(), booted);
        let edited = text.replace("offset 4", "offset 9");
        assert!(Record::parse(&edited).unwrap_err().contains("checksum"));
        assert!(Record::parse(&text[..text.len() - 10]).is_err());
        assert!(Record::parse("").is_err());
    }

    /// Inputs the `record_parse` fuzz target found, with the checksum
    /// fixed up as that target does: each must be refused, or accepted
    /// and survive `render` unchanged.
    #[test]
    fn record_parse_regressions() {
        let with_check = |body: &str| {
            let check = hex::encode(Sha256::digest(body.as_bytes()));
            format!("{body}check {check}\n")
        };
        let digest = digest_of(b"x");
        let found = [
            // A value ending in '\r' (here "-\r"), once read as "-".
            format!(
                "chitd-progress v1\r\ndigest {digest}\r\nsource http://h/x\r\netag \"abc\"\r\n\
                 last-modified -\r\r\ntotal 10\r\noffset 4\r\nmidstate 0a\r\n"
            ),
            format!(
                "chitd-progress v1\ndigest {digest}\nsource s\netag -\r\nlast-modified -\n\
                 total 1\noffset 0\nmidstate \n"
            ),
        ];
        for body in &found {
            let text = with_check(body);
            if let Ok(record) = Record::parse(&text) {
                assert_eq!(Record::parse(&record.render()), Ok(record), "{text:?}");
            }
        }
        // '\r' is no line end of a record.
        assert!(Record::parse(&with_check(&found[0])).is_err());
        let record = Record::parse(&with_check(&found[1])).unwrap();
        assert_eq!(record.validator.etag.as_deref(), Some("-\r"));
    }

    #[test]
    fn resume_restores_midstate_and_truncates_to_durable_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = digest_of(&data);
        let mut partial = Partial::open(dir.path(), digest, data.len() as u64).unwrap();
        partial.source = Some("http://h/x".into());
        partial
            .append(Bytes::copy_from_slice(&data[..33_333]))
            .unwrap();
        partial.checkpoint().unwrap();
        // Bytes after the checkpoint are not durable and, after a reboot,
        // must be dropped.
        partial
            .append(Bytes::copy_from_slice(&data[33_333..50_000]))
            .unwrap();
        drop(partial);

        let rebooted = Some("another boot");
        let mut resumed =
            Partial::open_in_boot(dir.path(), digest, data.len() as u64, rebooted).unwrap();
        assert_eq!(resumed.offset(), 33_333);
        assert!(resumed.resumed);
        resumed
            .append(Bytes::copy_from_slice(&data[33_333..]))
            .unwrap();
        assert_eq!(resumed.finished_digest(), Some(digest));
        assert_eq!(resumed.verify_prefix(), Ok(()));
        let Complete::File { part: path, .. } = resumed.into_complete().unwrap() else {
            panic!("a partial opened on disk stays on disk");
        };
        assert_eq!(fs::read(path).unwrap(), data);
    }

    /// Without a reboot since the checkpoint (a `kill -9`), the bytes past
    /// it are kept and hashed on from disk; a record without a boot id
    /// (written before records had one) resumes from its offset.
    #[test]
    fn in_the_same_boot_the_bytes_past_the_checkpoint_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let (digest, total) = (digest_of(&data), data.len() as u64);
        let this_boot = Some("boot-a");
        let mut partial = Partial::open_in_boot(dir.path(), digest, total, this_boot).unwrap();
        partial.source = Some("http://h/x".into());
        partial
            .append(Bytes::copy_from_slice(&data[..33_333]))
            .unwrap();
        partial.checkpoint().unwrap();
        partial
            .append(Bytes::copy_from_slice(&data[33_333..50_000]))
            .unwrap();
        drop(partial); // as a kill -9 would: no checkpoint of the tail

        let record_path = Partial::record_path(dir.path(), &digest, total);
        let mut record = Record::parse(&fs::read_to_string(&record_path).unwrap()).unwrap();
        assert_eq!(record.offset, 33_333);
        assert_eq!(record.boot.as_deref(), boot::current());
        record.boot = this_boot.map(str::to_owned);
        fs::write(&record_path, record.render()).unwrap();
        let mut resumed = Partial::open_in_boot(dir.path(), digest, total, this_boot).unwrap();
        assert_eq!(resumed.offset(), 50_000);
        assert!(resumed.resumed);
        assert!(
            resumed.checkpoint_due_in().is_some(),
            "the tail is not durable yet"
        );
        resumed
            .append(Bytes::copy_from_slice(&data[50_000..]))
            .unwrap();
        assert_eq!(resumed.finished_digest(), Some(digest));
        assert_eq!(resumed.verify_prefix(), Ok(()));
        drop(resumed);

        // An old record (no boot id): from its offset, as before.
        record.boot = None;
        fs::write(&record_path, record.render()).unwrap();
        let old = Partial::open_in_boot(dir.path(), digest, total, this_boot).unwrap();
        assert_eq!(old.offset(), 33_333);
    }

    #[test]
    fn small_downloads_are_held_in_memory_and_touch_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; IN_MEMORY_MAX as usize];
        let digest = digest_of(&data);
        let mut partial = Partial::open_or_hold(dir.path(), digest, data.len() as u64).unwrap();
        assert!(partial.is_in_memory());
        partial
            .append(Bytes::copy_from_slice(&data[..1000]))
            .unwrap();
        // Checkpoints are no-ops: nothing to resume from after a crash.
        partial.checkpoint().unwrap();
        assert!(!partial.is_resumable());
        // Within the run, the bytes stay (a ranged request continues them).
        assert_eq!(partial.offset(), 1000);
        partial.reset().unwrap();
        assert_eq!(partial.offset(), 0);
        partial.append(Bytes::copy_from_slice(&data)).unwrap();
        assert_eq!(partial.finished_digest(), Some(digest));
        let Complete::Memory(bytes) = partial.into_complete().unwrap() else {
            panic!("a small partial is held in memory");
        };
        assert_eq!(bytes, data);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a file was created"
        );
        // One byte more: on disk.
        let bigger = Partial::open_or_hold(dir.path(), digest, IN_MEMORY_MAX + 1).unwrap();
        assert!(!bigger.is_in_memory());
    }

    #[test]
    fn background_checkpoint_records_the_offset_it_started_at() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = 1 << 20;
        let data: Vec<u8> = (0..CHECKPOINT_BYTES as usize + chunk)
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = digest_of(&data);
        let total = data.len() as u64;
        let mut partial = Partial::open(dir.path(), digest, total).unwrap();
        for piece in data[..CHECKPOINT_BYTES as usize].chunks(chunk) {
            partial.append(Bytes::copy_from_slice(piece)).unwrap();
        }
        // The last append started a checkpoint of everything so far.
        assert!(partial.checkpointing.is_some());
        partial.finish_checkpoint().unwrap();
        assert_eq!(partial.durable_offset, CHECKPOINT_BYTES);
        drop(partial);

        let mut resumed = Partial::open(dir.path(), digest, total).unwrap();
        assert_eq!(resumed.offset(), CHECKPOINT_BYTES);
        resumed
            .append(Bytes::copy_from_slice(&data[CHECKPOINT_BYTES as usize..]))
            .unwrap();
        assert_eq!(resumed.finished_digest(), Some(digest));
        assert_eq!(resumed.verify_prefix(), Ok(()));
        // The record stays until the caller has published the `.part`.
        let record = Partial::record_path(dir.path(), &digest, total);
        let Complete::File {
            record: Some(left), ..
        } = resumed.into_complete().unwrap()
        else {
            panic!("the record was not handed over");
        };
        assert_eq!(left, record);
        assert!(record.exists());
    }

    #[test]
    fn a_checkpoint_falls_due_only_for_bytes_on_disk_not_yet_covered() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 100_000];
        let digest = digest_of(&data);
        let mut partial = Partial::open(dir.path(), digest, data.len() as u64).unwrap();
        assert_eq!(partial.checkpoint_due_in(), None);
        partial
            .append(Bytes::copy_from_slice(&data[..1_000]))
            .unwrap();
        let due = partial.checkpoint_due_in().expect("bytes wait for one");
        assert!(due <= CHECKPOINT_INTERVAL);
        partial.start_checkpoint().unwrap();
        assert_eq!(partial.checkpoint_due_in(), None);
        partial.finish_checkpoint().unwrap();
        assert_eq!(partial.durable_offset, 1_000);
        let mut held = Partial::in_memory(dir.path(), digest, 1_000);
        held.append(Bytes::copy_from_slice(&data[..10])).unwrap();
        assert_eq!(held.checkpoint_due_in(), None);
    }

    #[test]
    fn a_prefix_changed_behind_the_record_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 10_000];
        let digest = digest_of(&data);
        let mut partial = Partial::open(dir.path(), digest, data.len() as u64).unwrap();
        partial
            .append(Bytes::copy_from_slice(&data[..6_000]))
            .unwrap();
        partial.checkpoint().unwrap();
        drop(partial);
        let part = Partial::part_path(dir.path(), &digest, data.len() as u64);
        let mut bytes = fs::read(&part).unwrap();
        bytes[10] ^= 1;
        fs::write(&part, bytes).unwrap();
        let mut resumed = Partial::open(dir.path(), digest, data.len() as u64).unwrap();
        resumed
            .append(Bytes::copy_from_slice(&data[6_000..]))
            .unwrap();
        // The midstate still yields the right digest; only the re-hash knows.
        assert_eq!(resumed.finished_digest(), Some(digest));
        assert!(resumed.verify_prefix().unwrap_err().contains("changed"));
    }

    #[test]
    fn a_partial_of_another_size_never_touches_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![9u8; 10_000];
        let digest = digest_of(&data);
        let mut partial = Partial::open(dir.path(), digest, 10_000).unwrap();
        partial
            .append(Bytes::copy_from_slice(&data[..4_000]))
            .unwrap();
        partial.checkpoint().unwrap();
        drop(partial);
        // A chit naming the digest with a wrong size starts its own.
        let mut wrong = Partial::open(dir.path(), digest, 10_001).unwrap();
        assert_eq!(wrong.offset(), 0);
        wrong.append(Bytes::copy_from_slice(&data[..100])).unwrap();
        wrong.checkpoint().unwrap();
        drop(wrong);
        let resumed = Partial::open(dir.path(), digest, 10_000).unwrap();
        assert_eq!(resumed.offset(), 4_000);
    }

    #[test]
    fn corrupt_record_restarts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let digest = digest_of(b"abcdef");
        let mut partial = Partial::open(dir.path(), digest, 6).unwrap();
        partial.append(Bytes::copy_from_slice(b"abc")).unwrap();
        partial.checkpoint().unwrap();
        drop(partial);
        let record = Partial::record_path(dir.path(), &digest, 6);
        let text = fs::read_to_string(&record)
            .unwrap()
            .replace("offset 3", "offset 2");
        fs::write(&record, text).unwrap();
        let partial = Partial::open(dir.path(), digest, 6).unwrap();
        assert_eq!(partial.offset(), 0);
        assert!(!record.exists());
        assert_eq!(
            fs::metadata(Partial::part_path(dir.path(), &digest, 6))
                .unwrap()
                .len(),
            0
        );
    }
}
