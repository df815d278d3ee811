//! Why a chit's file could not be had, kept as values until each chit's
//! `# error:` line is rendered.
//!
//! One download of a digest serves every chit that asks for it, from any
//! consumer, and tries the sources of all of them. A source can be private
//! to the chit that named it (a token in its query, a host only that
//! consumer may know of), so a chit's line names only the sources that
//! chit would have tried itself, its URLs and each mirror under its path
//! ([`Failure::render_for`]); the answers of the other chits' sources are
//! only counted. The daemon's log names every source
//! ([`Failure`]'s `Display`), always through `redact_url`.

use std::fmt;
use std::time::Duration;

use url::Url;

use super::error::FetchError;
use crate::chit::redact_url;

/// What one source answered last in a download.
#[derive(Debug)]
pub struct SourceAnswer {
    pub source: Url,
    /// `None`: not asked (the download gave up first).
    pub error: Option<FetchError>,
    /// Where redirects led the request that got `error`, when elsewhere
    /// than `source`: an answer is worth little without it.
    pub redirected: Option<Url>,
}

impl SourceAnswer {
    pub fn untried(source: Url) -> SourceAnswer {
        SourceAnswer {
            source,
            error: None,
            redirected: None,
        }
    }
}

/// "http://a/x: HTTP 404 Not Found", with where a redirect led.
impl fmt::Display for SourceAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", redact_url(&self.source))?;
        match &self.error {
            None => f.write_str("not tried"),
            Some(error) => match &self.redirected {
                Some(to) => write!(f, "{error} (redirected to {})", redact_url(to)),
                None => write!(f, "{error}"),
            },
        }
    }
}

/// Why one download gave up.
#[derive(Debug, thiserror::Error)]
pub enum Ending {
    #[error("no source to try: the chit has no URL and no mirror is configured")]
    NoSource,
    #[error("cannot open the partial download: {0}")]
    CannotOpen(std::io::Error),
    /// Every source answered permanently.
    #[error("every source failed")]
    EverySourceFailed,
    /// `give_up_after` passed without progress.
    #[error("no progress for {}", humantime::format_duration(*.0))]
    NoProgress(Duration),
}

/// One download that ended without the file: why, and each source's
/// last answer, in the order they were tried.
#[derive(Debug)]
pub struct DownloadFailure {
    pub ending: Ending,
    pub answers: Vec<SourceAnswer>,
}

impl DownloadFailure {
    /// "every source failed: http://a/x: HTTP 404 Not Found; ...", naming
    /// the sources `shown` admits and counting the others.
    fn render(&self, shown: &dyn Fn(&Url) -> bool) -> String {
        let (named, others): (Vec<&SourceAnswer>, Vec<&SourceAnswer>) = self
            .answers
            .iter()
            .partition(|answer| shown(&answer.source));
        let each: Vec<String> = named.iter().map(ToString::to_string).collect();
        let ending = &self.ending;
        let each = each.join("; ");
        match (each.is_empty(), others.len()) {
            (true, 0) => ending.to_string(),
            (false, 0) => format!("{ending}: {each}"),
            (false, 1) => {
                format!("{ending}: {each}; and 1 source of another chit for the same file")
            }
            (false, n) => {
                format!("{ending}: {each}; and {n} sources of other chits for the same file")
            }
            (true, 1) => format!("{ending} (1 source of another chit for the same file was tried)"),
            (true, n) => {
                format!("{ending} ({n} sources of other chits for the same file were tried)")
            }
        }
    }
}

/// One thing that kept a chit's file from it.
#[derive(Debug)]
pub enum Cause {
    Download(DownloadFailure),
    /// Downloaded and verified, but it could not be published into the cache.
    Publish(std::io::Error),
    /// The chit's size is wrong: the file of its sha256 was downloaded and
    /// verified for another chit.
    OtherSize {
        said: u64,
        actual: u64,
    },
}

impl Cause {
    fn render(&self, shown: &dyn Fn(&Url) -> bool) -> String {
        match self {
            Cause::Download(failure) => failure.render(shown),
            Cause::Publish(e) => format!("cannot publish into the cache: {e}"),
            Cause::OtherSize { said, actual } => format!(
                "the chit says {said} bytes, but the file with this sha256 is {actual} bytes \
                 (downloaded and verified for another chit)"
            ),
        }
    }
}

/// Why a chit's file could not be had: each cause in the order it
/// happened (a failed download, then another for sources that chits
/// joining it brought...), joined by "; then " when rendered.
#[derive(Debug)]
pub struct Failure {
    causes: Vec<Cause>,
}

impl Failure {
    /// `self`, then `later`.
    pub fn then(mut self, later: Failure) -> Failure {
        self.causes.extend(later.causes);
        self
    }

    /// `earlier` (when there is one), then `self`.
    pub fn after(self, earlier: Option<Failure>) -> Failure {
        match earlier {
            Some(earlier) => earlier.then(self),
            None => self,
        }
    }

    /// The reason for the `# error:` line of a chit whose own sources (its
    /// URLs, then each mirror under its path) are `own`: the answers of
    /// other sources are counted, never named.
    pub fn render_for(&self, own: &[Url]) -> String {
        self.render(&|source| own.contains(source))
    }

    fn render(&self, shown: &dyn Fn(&Url) -> bool) -> String {
        let each: Vec<String> = self
            .causes
            .iter()
            .map(|cause| cause.render(shown))
            .collect();
        each.join("; then ")
    }
}

impl From<Cause> for Failure {
    fn from(cause: Cause) -> Failure {
        Failure {
            causes: vec![cause],
        }
    }
}

impl From<DownloadFailure> for Failure {
    fn from(failure: DownloadFailure) -> Failure {
        Cause::Download(failure).into()
    }
}

/// Every source named: for the daemon's log, not a chit's line.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|_| true))
    }
}

impl fmt::Display for DownloadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|_| true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn answer(source: &str, code: u16) -> SourceAnswer {
        SourceAnswer {
            source: url(source),
            error: Some(FetchError::Status(
                reqwest::StatusCode::from_u16(code).unwrap(),
            )),
            redirected: None,
        }
    }

    /// A's private URL, B's own, and the mirror under their shared path.
    fn shared_download() -> Failure {
        Failure::from(DownloadFailure {
            ending: Ending::EverySourceFailed,
            answers: vec![
                answer("http://a.example/f?x=secret", 404),
                answer("http://b.example/f", 500),
                answer("http://mirror.example/d/f", 404),
            ],
        })
    }

    #[test]
    fn one_chit_alone_sees_every_answer_as_before() {
        let failure = shared_download();
        let all = [
            url("http://a.example/f?x=secret"),
            url("http://b.example/f"),
            url("http://mirror.example/d/f"),
        ];
        let expected = "every source failed: http://a.example/f?x=secret: HTTP 404 Not Found; \
             http://b.example/f: HTTP 500 Internal Server Error; \
             http://mirror.example/d/f: HTTP 404 Not Found";
        assert_eq!(failure.render_for(&all), expected);
        assert_eq!(failure.to_string(), expected);
    }

    #[test]
    fn each_chit_sees_its_own_sources_and_a_count_of_the_others() {
        let failure = shared_download();
        let mirror = url("http://mirror.example/d/f");
        let b = failure.render_for(&[url("http://b.example/f"), mirror.clone()]);
        assert_eq!(
            b,
            "every source failed: http://b.example/f: HTTP 500 Internal Server Error; \
             http://mirror.example/d/f: HTTP 404 Not Found; \
             and 1 source of another chit for the same file"
        );
        assert!(!b.contains("secret") && !b.contains("a.example"), "{b}");
        let a = failure.render_for(&[url("http://a.example/f?x=secret")]);
        assert_eq!(
            a,
            "every source failed: http://a.example/f?x=secret: HTTP 404 Not Found; \
             and 2 sources of other chits for the same file"
        );
    }

    #[test]
    fn a_chit_none_of_whose_sources_was_tried_learns_nothing_of_the_others() {
        let failure = shared_download();
        assert_eq!(
            failure.render_for(&[url("http://c.example/f")]),
            "every source failed (3 sources of other chits for the same file were tried)"
        );
        let one = Failure::from(DownloadFailure {
            ending: Ending::NoProgress(Duration::from_secs(60)),
            answers: vec![SourceAnswer::untried(url("http://a.example/f?x=secret"))],
        });
        assert_eq!(
            one.render_for(&[]),
            "no progress for 1m (1 source of another chit for the same file was tried)"
        );
    }

    #[test]
    fn causes_are_told_in_order_and_redirects_are_named() {
        let mut redirected = answer("http://a.example/f", 404);
        redirected.redirected = Some(url("http://user:pw@moved.example/f"));
        let first = Failure::from(DownloadFailure {
            ending: Ending::EverySourceFailed,
            answers: vec![redirected],
        });
        let failure = first.then(Cause::OtherSize { said: 5, actual: 4 }.into());
        assert_eq!(
            failure.render_for(&[url("http://a.example/f")]),
            "every source failed: http://a.example/f: HTTP 404 Not Found \
             (redirected to http://***@moved.example/f); then the chit says 5 bytes, \
             but the file with this sha256 is 4 bytes (downloaded and verified for another chit)"
        );
        let none = Failure::from(DownloadFailure {
            ending: Ending::NoSource,
            answers: Vec::new(),
        });
        assert_eq!(
            none.render_for(&[]),
            "no source to try: the chit has no URL and no mirror is configured"
        );
    }
}
