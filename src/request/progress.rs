//! The progress line of `request --wait`, drawn on stderr while stderr is a
//! terminal, and nothing otherwise: bytes, percent, rate and ETA of all the
//! chits waited for together, from the progress the daemon publishes for
//! `chitd status` (so it moves once a second while a daemon runs).
//!
//! A downloaded chit counts with its whole size; a failed one leaves the
//! total; one in flight counts the bytes its download has so far.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::Outcome;
use crate::daemon::StatusFile;

const TEMPLATE: &str =
    "{spinner} {bytes}/{total_bytes} {percent}% {binary_bytes_per_sec} ETA {eta} {msg}";

pub struct Progress {
    bar: ProgressBar,
    spool: PathBuf,
}

impl Progress {
    /// A progress line for chits of `total` bytes in all, if stderr is a
    /// terminal.
    pub fn start(spool: &Path, total: u64) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let style = ProgressStyle::with_template(TEMPLATE).ok()?;
        let bar = ProgressBar::new(total).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(Progress {
            bar,
            spool: spool.to_path_buf(),
        })
    }

    /// Redraw for `chits` (name and size of each) and what is known of
    /// each so far.
    pub fn update(&self, chits: &[(String, u64)], outcomes: &[Option<Outcome>]) {
        let published = StatusFile::read(&self.spool);
        let in_flight: HashMap<&str, u64> = published
            .iter()
            .flat_map(|published| &published.downloads)
            .map(|download| (download.chit.as_str(), download.done))
            .collect();
        let (mut done, mut total, mut finished) = (0u64, 0u64, 0usize);
        for ((name, size), outcome) in chits.iter().zip(outcomes) {
            match outcome {
                Some(Outcome::Failed(_)) => finished += 1,
                Some(_) => {
                    finished += 1;
                    done += size;
                    total += size;
                }
                None => {
                    done += in_flight
                        .get(name.as_str())
                        .copied()
                        .unwrap_or(0)
                        .min(*size);
                    total += size;
                }
            }
        }
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar
            .set_message(format!("{finished}/{} files done", chits.len()));
    }

    /// Remove the line: what follows is printed in its place.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
