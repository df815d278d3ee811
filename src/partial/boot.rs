//! Which boot of the machine wrote a progress record, and the tail of a
//! `.part` that the boot id lets a resume keep.
//!
//! Bytes written to the `.part` after its last checkpoint were never
//! fdatasync'd: a power loss may roll them back (or leave zeros). A
//! `kill -9` cannot: the page cache still holds every completed write, and
//! it survives the process. So a record names the boot it was written in
//! (`/proc/sys/kernel/random/boot_id`, a random id the kernel draws at
//! every boot), and a resume in the same boot keeps the whole `.part`,
//! re-hashing its tail past the checkpoint from local disk; after a reboot
//! (another id, or a record without one) only the checkpointed prefix
//! counts. The final sha256 still checks every byte: a wrong tail costs
//! one fetch from 0, never a wrong file.
//!
//! The id is one global value, read once: it is a property of the machine
//! that cannot change while the process runs. `CHITD_BOOT_ID` overrides it
//! (a test knob: a restart under another id is a restart after a reboot).

use std::io;
use std::sync::OnceLock;

use super::hasher::Hasher;

/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The id of the current boot, if the system tells it (Linux does).
pub fn current() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let text = match std::env::var("CHITD_BOOT_ID") {
                Ok(text) => text,
                Err(_) => std::fs::read_to_string(BOOT_ID_PATH).ok()?,
            };
            usable(&text)
        })
        .as_deref()
}

/// A boot id as a record may carry it: trimmed, non-empty, one line of
/// printable ASCII without spaces.
pub(crate) fn usable(text: &str) -> Option<String> {
    let id = text.trim();
    let printable = id.bytes().all(|b| b.is_ascii_graphic());
    (!id.is_empty() && printable).then(|| id.to_string())
}

/// Feed the bytes `[from, to)` of `file` to `hasher`: the tail a resume
/// in the same boot keeps.
pub fn hash_tail(file: &std::fs::File, from: u64, to: u64, hasher: &mut Hasher) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = from;
    while at < to {
        let size = usize::try_from((to - at).min(1 << 20)).unwrap_or(1 << 20);
        let mut buffer = vec![0u8; size];
        file.read_exact_at(&mut buffer, at)?;
        at += size as u64;
        hasher.update(bytes::Bytes::from(buffer));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_one_line_id_is_used() {
        assert_eq!(usable("0b1e-4c\n").as_deref(), Some("0b1e-4c"));
        assert_eq!(usable("  \n"), None);
        assert_eq!(usable("two words"), None);
        assert_eq!(usable("a\nb"), None);
    }

    #[test]
    fn this_machine_has_one_on_linux() {
        if std::path::Path::new(BOOT_ID_PATH).exists() && std::env::var("CHITD_BOOT_ID").is_err() {
            assert!(
                current().is_some_and(|id| id.len() >= 32),
                "{:?}",
                current()
            );
        }
    }
}
