//! The rounds of one download over its sources: one state value per
//! source ([`Source`]), and each failed attempt's answer turned into what
//! comes next by [`FetchError::next`], the one place that decides.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use url::Url;

use super::attempt::{Attempt, Stop};
use super::error::{FetchError, Next};
use super::failure::{DownloadFailure, Ending, SourceAnswer};
use super::hosts::{Admission, Admitted, HostAnswer, Wait};
use super::{DownloadError, Fetcher, Job, blocking};
use crate::chit::redact_url;
use crate::config::whole_ms;
use crate::partial::Partial;

/// One source of a download, and what became of it so far.
#[derive(Debug)]
pub(super) struct Source {
    /// Its URL and last answer (none while not asked).
    answer: SourceAnswer,
    /// It answered permanently: not asked again in this download.
    ruled_out: bool,
    /// Left for untried sources while still making progress
    /// ([`Next::Yield`]) and not asked again since: not judged by time it
    /// did not have.
    yielded: bool,
}

impl Source {
    pub(super) fn new(url: Url) -> Source {
        Source {
            answer: SourceAnswer::untried(url),
            ruled_out: false,
            yielded: false,
        }
    }

    fn url(&self) -> &Url {
        &self.answer.source
    }

    fn asked(&self) -> bool {
        self.answer.error.is_some()
    }
}

/// A download between its attempts.
pub(super) struct Run<'a> {
    pub fetcher: &'a Fetcher,
    pub job: &'a mut Job,
    pub progress: &'a AtomicU64,
    pub cancel: &'a CancellationToken,
    /// In the order they are tried; grows with the [`super::MoreSources`]
    /// of chits that join.
    pub sources: Vec<Source>,
    /// The furthest offset reached: bytes below it, fetched again, are
    /// not progress.
    pub high_water: u64,
    /// When the last new byte arrived (at no less than the minimum pace).
    pub last_progress: Instant,
    /// The partial was discarded once for a mismatch after a resume.
    pub started_over: bool,
    /// An attempt found the disk full: a failed download then removes its
    /// partial, resumable or not.
    pub disk_full: bool,
    /// The next backoff between rounds.
    pub delay: Duration,
    /// Sources' hosts that were not to be asked in this round (see
    /// `hosts`): the pause after it ends when the first may be.
    pub waits: Vec<Wait>,
}

/// Whether source `index` may be asked now.
enum Leave {
    /// Yes; with its host's permit (none for a `file://` source).
    Go(Option<Admitted>),
    /// Its host is not to be asked yet: on to the next source.
    Wait,
    Shutdown,
}

/// How asking one source ended.
enum Asked {
    /// On to the next source, or back to the first after a start over.
    Next { partial: Partial, first: bool },
    /// The download is over: the verified file, or a shutdown.
    Over(Result<Partial, DownloadError>),
}

/// One attempt's result, and what it did to the download's progress.
struct Tried {
    partial: Partial,
    result: Result<(), Stop>,
    progressed: bool,
    redirected: Option<Url>,
}

impl Run<'_> {
    /// Rounds over the sources, with a backoff between them, until the
    /// file is there or the download gives up.
    pub async fn rounds(mut self, mut partial: Partial) -> Result<Partial, DownloadError> {
        loop {
            partial = match self.round(partial).await {
                Ok(partial) => partial,
                Err(over) => return over,
            };
            if let Some(ending) = self.give_up() {
                return Err(self.fail(partial, ending).await);
            }
            let pause = self.pause();
            let waits = std::mem::take(&mut self.waits);
            let host_changed = async {
                if waits.is_empty() {
                    std::future::pending::<()>().await;
                }
                futures_util::future::select_all(waits.into_iter().map(|w| Box::pin(w.changed())))
                    .await;
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(DownloadError::Shutdown),
                _ = tokio::time::sleep(pause) => {}
                _ = self.job.more.added.notified() => {}
                _ = host_changed => {}
            }
            self.delay = (self.delay * 2).min(self.fetcher.settings.max_retry_delay);
        }
    }

    /// The pause after a round: none when a source was left while it
    /// progressed; else the backoff, but no longer than until the first
    /// host that was not to be asked may be, nor than `give_up_after`
    /// leaves.
    fn pause(&self) -> Duration {
        if self.sources.iter().any(|source| source.yielded) {
            return Duration::ZERO; // back to the source it left, at once
        }
        let now = Instant::now();
        let host_opens = self.waits.iter().filter_map(|wait| wait.until);
        let first_open = host_opens
            .map(|until| until.saturating_duration_since(now))
            .min();
        let pause = self.delay.min(self.left());
        first_open.map_or(pause, |open| pause.min(open))
    }

    /// Ask each source not ruled out, in order: `Ok` with the partial when
    /// the round is over, `Err` with the download's end.
    async fn round(
        &mut self,
        mut partial: Partial,
    ) -> Result<Partial, Result<Partial, DownloadError>> {
        let mut index = 0;
        loop {
            self.take_more();
            let Some(source) = self.sources.get(index) else {
                return Ok(partial);
            };
            if source.ruled_out {
                index += 1;
                continue;
            }
            let first;
            (partial, first) = match self.ask(index, partial).await {
                Asked::Next { partial, first } => (partial, first),
                Asked::Over(over) => return Err(over),
            };
            index = if first { 0 } else { index + 1 };
        }
    }

    /// Sources that chits joining meanwhile brought: in this round.
    fn take_more(&mut self) {
        for url in self.job.more.take() {
            if !self.job.sources.contains(&url) {
                tracing::debug!(digest = %self.job.digest, source = %redact_url(&url), "source added by a chit that joined");
                self.job.sources.push(url.clone());
                self.sources.push(Source::new(url));
            }
        }
    }

    /// Ask source `index`, again at once while it makes progress, and
    /// do what its answer means ([`FetchError::next`]).
    async fn ask(&mut self, index: usize, mut partial: Partial) -> Asked {
        let untried = (self.sources.iter().enumerate())
            .any(|(other, source)| other != index && !source.asked());
        let next = |partial| Asked::Next {
            partial,
            first: false,
        };
        loop {
            // Before the wait for a permit, which moves the no-progress
            // clock on by as long as it takes.
            let inactivity = self.inactivity(index);
            if inactivity.is_zero() {
                return next(partial); // its time is up: on to the give-up check
            }
            let admitted = match self.leave(index).await {
                Leave::Go(admitted) => admitted,
                Leave::Wait => return next(partial),
                Leave::Shutdown => return Asked::Over(Err(DownloadError::Shutdown)),
            };
            self.sources[index].yielded = false;
            let tried =
                (self.attempt(index, partial, inactivity, untried, admitted.as_ref())).await;
            partial = tried.partial;
            let error = match tried.result {
                Ok(()) => return Asked::Over(Ok(partial)),
                Err(Stop::Shutdown) => return Asked::Over(Err(DownloadError::Shutdown)),
                Err(Stop::Failed(error)) => error,
            };
            if let Some(admitted) = &admitted {
                admitted.answered(match tried.progressed {
                    true => HostAnswer::Healthy,
                    false => error.for_host(),
                });
            }
            match self.answered(index, error, tried.progressed, tried.redirected) {
                Next::AgainNow => continue,
                Next::StartOver => {
                    self.started_over = true;
                    self.high_water = 0;
                    return Asked::Next {
                        partial,
                        first: true,
                    };
                }
                Next::Later | Next::Yield | Next::RuleOut => return next(partial),
            }
        }
    }

    /// Keep source `index`'s answer, and mark the source as it means.
    fn answered(
        &mut self,
        index: usize,
        error: FetchError,
        progressed: bool,
        redirected: Option<Url>,
    ) -> Next {
        let next = error.next(progressed, self.started_over);
        tracing::warn!(digest = %self.job.digest, source = %redact_url(self.sources[index].url()), "attempt failed: {error}");
        self.disk_full |= error.is_disk_full();
        let source = &mut self.sources[index];
        source.answer.error = Some(error);
        source.answer.redirected = redirected;
        match next {
            Next::Yield => source.yielded = true,
            Next::RuleOut => source.ruled_out = true,
            Next::AgainNow | Next::Later | Next::StartOver => {}
        }
        next
    }

    /// Wait for a permit of source `index`'s host, then see whether the
    /// host may be asked now (see `hosts`). Time spent waiting for the
    /// permit, while the host serves other downloads, is not held against
    /// this one's `give_up_after`. A host not to be asked yet leaves the
    /// source an answer saying so, unless it has one of its own.
    async fn leave(&mut self, index: usize) -> Leave {
        let url = self.sources[index].url();
        let Some(host) = self.fetcher.hosts.of(url) else {
            return Leave::Go(None);
        };
        let admission = tokio::select! {
            _ = self.cancel.cancelled() => return Leave::Shutdown,
            admission = host.admit(url) => admission,
        };
        match admission {
            Admission::Go(admitted) => {
                self.last_progress = (self.last_progress + admitted.waited).min(Instant::now());
                Leave::Go(Some(admitted))
            }
            Admission::Wait(wait) => {
                let source = &mut self.sources[index];
                tracing::debug!(digest = %self.job.digest, source = %redact_url(source.url()), "{}", wait.reason);
                if !source.asked() {
                    source.answer.error = Some(FetchError::HostWaiting(wait.reason.clone()));
                }
                self.waits.push(wait);
                Leave::Wait
            }
        }
    }

    /// One request to source `index`, and the progress it made.
    async fn attempt(
        &mut self,
        index: usize,
        partial: Partial,
        inactivity: Duration,
        untried: bool,
        host: Option<&Admitted>,
    ) -> Tried {
        let more = &self.job.more;
        let untried_elsewhere = || untried || !more.is_empty();
        let source = self.sources[index].url();
        more.now_serving(source);
        let attempt = Attempt {
            client: &self.fetcher.client,
            source,
            digest: self.job.digest,
            inactivity,
            progress: self.progress,
            cancel: self.cancel,
            redirected: std::sync::Mutex::new(None),
            last_byte: std::sync::Mutex::new(None),
            untried_elsewhere: &untried_elsewhere,
            host,
        };
        tracing::debug!(digest = %self.job.digest, source = %redact_url(source), offset = partial.offset(), "requesting");
        let (partial, result) = attempt.run(partial).await;
        let redirected = attempt
            .redirected
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let last_byte = attempt
            .last_byte
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        // Bytes from a server cut for dripping them too slowly are kept,
        // but are not progress (see `pace`).
        let too_slow = matches!(result, Err(Stop::Failed(FetchError::TooSlow { .. })));
        let advanced = partial.offset() > self.high_water;
        if advanced {
            self.high_water = partial.offset();
        }
        let progressed = advanced && !too_slow;
        if progressed {
            self.last_progress = last_byte.unwrap_or_else(Instant::now);
        }
        Tried {
            partial,
            result,
            progressed,
            redirected,
        }
    }

    /// How long an attempt at source `index` may wait for bytes: never
    /// past `give_up_after` without progress, except that a source not
    /// asked yet (or left while it progressed) gets a whole window of its
    /// own: a chit is not failed before each source was asked.
    fn inactivity(&self, index: usize) -> Duration {
        let settings = &self.fetcher.settings;
        let window = whole_ms(settings.inactivity_timeout.min(self.fetcher.give_up_after));
        let source = &self.sources[index];
        if !source.asked() || source.yielded {
            window
        } else {
            window.min(self.left())
        }
    }

    /// What is left of `give_up_after` since the last progress.
    fn left(&self) -> Duration {
        let give_up_after = self.fetcher.give_up_after;
        whole_ms(give_up_after.saturating_sub(self.last_progress.elapsed()))
    }

    /// After a round: give up when every source answered permanently, or
    /// when `give_up_after` passed without progress and no source was
    /// left while progressing. Sources that joined meanwhile get their
    /// round first.
    fn give_up(&self) -> Option<Ending> {
        if !self.job.more.is_empty() {
            None
        } else if self.sources.iter().all(|source| source.ruled_out) {
            Some(Ending::EverySourceFailed)
        } else if self.left().is_zero() && !self.sources.iter().any(|source| source.yielded) {
            Some(Ending::NoProgress(self.fetcher.give_up_after))
        } else {
            None
        }
    }

    /// The download gives up: keep only what a later download can resume
    /// from (an empty `.part`, or bytes no record covers, would only take
    /// space; on a full disk, the space matters more than a resume).
    async fn fail(self, partial: Partial, ending: Ending) -> DownloadError {
        if !partial.is_resumable() || self.disk_full {
            blocking(move || partial.discard()).await;
        }
        DownloadError::Failed(DownloadFailure {
            ending,
            answers: self
                .sources
                .into_iter()
                .map(|source| source.answer)
                .collect(),
        })
    }
}
