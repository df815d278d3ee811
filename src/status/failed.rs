//! The chits in a consumer's `fail/`, newest first, with the reason each
//! ends with: what `chitd status` lists under a consumer.
//!
//! Read beneath the spool like everything else there (a symlink a consumer
//! put in `fail/` is listed with a note, never followed). A chit is read
//! from its end only (the reason is its last line): a huge file costs one
//! bounded read.

use std::io::{self, Read, Seek, SeekFrom};
use std::time::SystemTime;

use serde::Serialize;

use crate::dir::{Dir, Kind};

/// Shown per consumer unless `--all` asks for every one.
pub const NEWEST: usize = 10;

/// How much of a chit's end is read for its reason.
const TAIL: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedChit {
    pub chit: String,
    pub reason: String,
}

/// The chits in `fail/` (a directory beneath the spool), newest first (by
/// the time they were failed: chitd writes the reason as the chit moves),
/// at most `limit` of them.
pub fn failed_chits(fail: &Dir, limit: Option<usize>) -> io::Result<Vec<FailedChit>> {
    let mut names: Vec<(SystemTime, String)> = fail
        .names()?
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .filter_map(|name| Some((fail.modified(&name).ok()?, name)))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names.truncate(limit.unwrap_or(usize::MAX));
    Ok(names
        .into_iter()
        .map(|(_, chit)| FailedChit {
            reason: reason_of(fail, &chit),
            chit,
        })
        .collect())
}

/// The reason a failed chit gives, or what stands in its place.
fn reason_of(fail: &Dir, chit: &str) -> String {
    let read = match fail.kind(chit) {
        Ok(Kind::File) => fail.open_regular(chit).and_then(last_line),
        // A chit that was a directory carries its reason inside.
        Ok(Kind::Dir) => fail
            .open_dir(chit)
            .and_then(|dir| dir.open_regular(".chitd-error"))
            .and_then(last_line),
        Ok(_) => return "(not a chit: neither a file nor a directory)".into(),
        Err(e) => Err(e),
    };
    match read {
        Ok(line) => match line.strip_prefix("# error:") {
            Some(reason) => reason.trim().to_string(),
            None => "(no `# error:` line: not failed by chitd)".into(),
        },
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// The last non-empty line of `file`, read from its last [`TAIL`] bytes.
fn last_line(mut file: std::fs::File) -> io::Result<String> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    file.take(TAIL).read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Duration;

    #[test]
    fn newest_first_with_their_reasons_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let now = SystemTime::now();
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let text = format!("abc\n1\nx\n# error: reason {name}\n\n");
            fs::write(path.join(name), text).unwrap();
            let file = fs::File::options()
                .write(true)
                .open(path.join(name))
                .unwrap();
            file.set_modified(now - Duration::from_secs(100 - i as u64 * 10))
                .unwrap();
        }
        fs::write(path.join(".hidden"), "# error: no").unwrap();
        fs::write(path.join("by-hand"), "abc\n1\nx\n").unwrap();
        fs::create_dir(path.join("as-dir")).unwrap();
        fs::write(path.join("as-dir/.chitd-error"), "# error: a directory\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", path.join("link")).unwrap();
        let fail = Dir::open_existing(path).unwrap();

        let all = failed_chits(&fail, None).unwrap();
        let reasons: Vec<(&str, &str)> = all
            .iter()
            .map(|f| (f.chit.as_str(), f.reason.as_str()))
            .collect();
        // The three written just now come first, in some order; then new,
        // mid, old.
        assert_eq!(
            &reasons[3..],
            [
                ("new", "reason new"),
                ("mid", "reason mid"),
                ("old", "reason old")
            ]
        );
        let find = |chit: &str| reasons.iter().find(|r| r.0 == chit).unwrap().1;
        assert_eq!(find("as-dir"), "a directory");
        assert!(find("by-hand").contains("no `# error:` line"));
        assert!(find("link").contains("not a chit"));
        assert_eq!(failed_chits(&fail, Some(2)).unwrap().len(), 2);
    }
}
