//! A chit whose name is not UTF-8 takes the steps any chit takes (scanned,
//! queued, claimed `request/ → fetch/`, read), and then one more refusal:
//! it is failed `fetch/ → fail/` under that very name, with a reason that
//! asks for a UTF-8 name. Its bytes are kept in `fail/` when chitd would
//! read it ([`Spool::read`]); a symlink, FIFO, device or hard link is
//! never read nor written through, and the reason also says what it is.
//! One that cannot move is stuck like any other chit.

use std::ffi::{OsStr, OsString};

use super::Shared;
use super::chit_id::{ChitId, display_name};
use super::work::{Origin, Step};
use crate::chit::error_line;
use crate::spool::{Claim, ReadError, Spool};

/// Claim the chit `name` of `consumer` (when in `request/`), and fail it
/// for its name.
pub fn refuse(shared: &Shared, consumer: usize, name: OsString, origin: Origin) -> Step {
    let spool = shared.consumers[consumer].spool();
    let id = ChitId::new(consumer, name);
    let chit = display_name(&id.name).into_owned();
    if origin == Origin::Request {
        match spool.claim(&id.name) {
            Ok(Claim::Claimed) => {
                tracing::info!(consumer = %spool.name, chit = %chit, "claimed: request/ → fetch/");
            }
            Ok(Claim::Gone) => return Step::Done(id),
            Ok(Claim::Busy) => {
                tracing::debug!(consumer = %spool.name, chit = %chit, "a chit of this name is still in fetch/; leaving request/ for later");
                return Step::Done(id);
            }
            Err(e) => {
                tracing::error!(consumer = %spool.name, chit = %chit, "cannot claim the chit: {e}");
                return Step::Stuck(id);
            }
        }
    }
    fail_for_its_name(&spool, id, &chit, origin)
}

/// The reason a chit named `name` is failed.
fn reason(name: &OsStr) -> String {
    format!(
        "the chit's name {name:?} is not UTF-8; chitd handles only chits with UTF-8 names: \
         rename it to a UTF-8 name and retry"
    )
}

/// Read the claimed chit and fail it for its name (`chit`: the name as
/// logged).
fn fail_for_its_name(spool: &Spool, id: ChitId, chit: &str, origin: Origin) -> Step {
    let mut reason = reason(&id.name);
    let read = spool.read(&id.name);
    if origin == Origin::Fetch
        && let Ok(bytes) = &read
        && let Some(state) = spool.terminal_twin(&id.name, bytes)
    {
        // One chit in two places: the terminal copy wins.
        return match spool.drop_fetched(&id.name) {
            Ok(()) => Step::Done(id),
            Err(e) => {
                tracing::error!(consumer = %spool.name, chit = %chit, "the same chit is in fetch/ and {state}/, and cannot be removed from fetch/: {e}");
                Step::Stuck(id)
            }
        };
    }
    let original = match read {
        Ok(bytes) => Some(without_reason(bytes, &reason)),
        Err(ReadError::Gone) => return Step::Done(id),
        Err(ReadError::Refused(why)) => {
            reason = format!("{reason}; besides, {why}");
            None
        }
        // Failed without its lines, it would lose them: later.
        Err(ReadError::Unavailable(why)) => {
            tracing::error!(consumer = %spool.name, chit = %chit, "{why}");
            return Step::Short(id);
        }
    };
    // This request supersedes any outcome of an earlier one of its name.
    spool.clear_outcomes(&id.name);
    match spool.fail(&id.name, original.as_deref(), &reason) {
        Ok(()) => {
            tracing::info!(consumer = %spool.name, chit = %chit, reason, "failed: fetch/ → fail/");
            Step::Done(id)
        }
        Err(e) => {
            tracing::error!(consumer = %spool.name, chit = %chit, "cannot move the chit to fail/: {e}");
            Step::Stuck(id)
        }
    }
}

/// The chit's bytes without the reason line an earlier try appended (it
/// was rebuilt with it in `fetch/`, then could not move to `fail/`): the
/// reason is given once, not once per try.
fn without_reason(mut bytes: Vec<u8>, reason: &str) -> Vec<u8> {
    let line = error_line(reason);
    if let Some(kept) = bytes.strip_suffix(line.as_bytes())
        && (kept.is_empty() || kept.ends_with(b"\n"))
    {
        bytes.truncate(kept.len());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn the_reason_names_the_bytes_and_is_given_once() {
        let reason = reason(OsStr::from_bytes(b"bad\xff"));
        assert!(
            reason.starts_with(r#"the chit's name "bad\xFF" is not UTF-8"#),
            "{reason}"
        );
        let line = error_line(&reason);
        let once = [b"chit\n", line.as_bytes()].concat();
        assert_eq!(without_reason(once, &reason), b"chit\n");
        assert_eq!(without_reason(line.clone().into_bytes(), &reason), b"");
        // Another reason, or the line not on a line of its own: kept.
        let other = [b"chit\n", error_line("other").as_bytes()].concat();
        assert_eq!(without_reason(other.clone(), &reason), other);
        let glued = [b"chit", line.as_bytes()].concat();
        assert_eq!(without_reason(glued.clone(), &reason), glued);
    }
}
