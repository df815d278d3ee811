//! What one source answered, and what chitd does about it.

use std::time::Duration;

use super::hosts::HostAnswer;
use crate::chit::Digest;

/// One source's answer to one attempt, worded for the `# error:` line.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// A 429 or 503 that said when to come back (`Retry-After`): no
    /// download asks the host before then (see `hosts`).
    #[error("HTTP {status} (Retry-After: {})", human(*.retry_after))]
    Busy {
        status: reqwest::StatusCode,
        retry_after: Duration,
    },
    /// The server's TLS certificate was refused; the text says why, for a
    /// person (see `tls`).
    #[error("{0}")]
    Certificate(String),
    /// Not asked: its host must not be asked yet (a backoff, a
    /// `Retry-After` or a probe under way, from another download's
    /// answer); the text says which and why.
    #[error("{0}")]
    HostWaiting(String),
    #[error("{0}")]
    Transport(String),
    #[error("redirect refused: {0}")]
    Redirect(String),
    #[error("no data for {} (inactivity timeout)", human(*.0))]
    Stalled(Duration),
    #[error("no complete response head within {} (inactivity timeout)", human(*.0))]
    NoResponse(Duration),
    #[error(
        "server too slow: {received} bytes in {}, below the minimum of {minimum} \
         bytes per {} (a slow drip)", human(*.window), human(*.window)
    )]
    TooSlow {
        received: u64,
        window: Duration,
        minimum: u64,
    },
    #[error(
        "slow ({received} bytes in {}, under {minimum} bytes per {}): left for \
         sources not tried yet, to come back to", human(*.window), human(*.window)
    )]
    Slow {
        received: u64,
        window: Duration,
        minimum: u64,
    },
    #[error("server announced {announced} bytes, the chit says {expected}")]
    WrongLength { announced: u64, expected: u64 },
    #[error("server sent more than the {expected} bytes the chit says")]
    TooLong { expected: u64 },
    #[error("connection closed after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    /// A body with no `Content-Length` (chunked, or until the connection
    /// closes) that the server ended properly, short: the file it has is
    /// shorter than the chit says (often an error page sent with 200).
    #[error(
        "the response ended properly after {received} bytes, but the chit says {expected}: \
         the server has a shorter file"
    )]
    EndedShort { received: u64, expected: u64 },
    /// `resumed`: the bytes came from more than one response (see
    /// `Partial::resumed`).
    #[error("sha256 mismatch: got {got}")]
    DigestMismatch { got: Digest, resumed: bool },
    /// A resumed prefix no longer matches its checkpoint (changed on disk).
    #[error("{0}")]
    CorruptPartial(String),
    #[error("unusable Content-Range {0:?}")]
    BadRange(String),
    #[error("server answered a request for the whole object with a range (206 Partial Content)")]
    UnaskedRange,
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Disk(std::io::Error),
}

/// A duration as the `# error:` lines and the configuration write it
/// ("2s 500ms").
fn human(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

/// What the download does after an attempt ended with a [`FetchError`]:
/// the whole retry policy, decided by [`FetchError::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ask the same source again at once, for the rest only: it was
    /// making progress when it broke.
    AgainNow,
    /// Transient: on to the next source; this one is asked again in the
    /// next round, after the backoff, until `give_up_after` passes
    /// without progress.
    Later,
    /// Streaming, but slowly, while sources not tried yet wait: left for
    /// them, its bytes kept, and asked again in the next round without a
    /// backoff (and without being judged by time it did not have).
    Yield,
    /// The bytes may be the resume's fault, not the source's: discard
    /// the partial and start over from 0, from the first source.
    StartOver,
    /// Permanent: the source is not asked again in this download.
    RuleOut,
}

impl FetchError {
    /// What an answer means for the download. `progressed`: the attempt
    /// brought new bytes at no less than the minimum pace;
    /// `started_over`: the download already discarded its partial once
    /// for a mismatch after a resume (it does so once).
    pub fn next(&self, progressed: bool, started_over: bool) -> Next {
        let transient = match self {
            // Bytes from more than one response (an earlier run's, an
            // earlier break's, another source's): perhaps the resume's
            // fault. Once more from 0 before any source is blamed.
            FetchError::DigestMismatch { resumed: true, .. } | FetchError::CorruptPartial(_)
                if !started_over =>
            {
                return Next::StartOver;
            }
            FetchError::Slow { .. } => return Next::Yield,
            // Never asked: nothing progressed, whatever the caller says.
            FetchError::HostWaiting(_) => return Next::Later,
            FetchError::Busy { .. } => true,
            FetchError::Status(status) => {
                status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
            }
            FetchError::Transport(_)
            | FetchError::Stalled(_)
            | FetchError::NoResponse(_)
            | FetchError::TooSlow { .. }
            | FetchError::Truncated { .. }
            | FetchError::CorruptPartial(_)
            | FetchError::Disk(_) => true,
            FetchError::Redirect(_)
            | FetchError::WrongLength { .. }
            | FetchError::EndedShort { .. }
            | FetchError::TooLong { .. }
            | FetchError::DigestMismatch { .. }
            | FetchError::BadRange(_)
            | FetchError::UnaskedRange
            | FetchError::Certificate(_)
            | FetchError::Local(_) => false,
        };
        match (transient, progressed) {
            (true, true) => Next::AgainNow,
            (true, false) => Next::Later,
            (false, _) => Next::RuleOut,
        }
    }

    /// What the answer says about the source's host (see `hosts`): it is
    /// not serving (5xx, 429, 408, a connection refused or reset, a
    /// timeout before any response), it said when to come back, or it
    /// answered. Trouble with a body under way, and local trouble, say
    /// nothing about it.
    pub fn for_host(&self) -> HostAnswer {
        match self {
            FetchError::Busy { retry_after, .. } => HostAnswer::Busy {
                after: *retry_after,
                answer: self.to_string(),
            },
            FetchError::Status(status)
                if status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT =>
            {
                HostAnswer::Trouble(self.to_string())
            }
            FetchError::Transport(_) | FetchError::NoResponse(_) => {
                HostAnswer::Trouble(self.to_string())
            }
            FetchError::Status(_)
            | FetchError::Redirect(_)
            | FetchError::Certificate(_)
            | FetchError::WrongLength { .. }
            | FetchError::EndedShort { .. }
            | FetchError::TooLong { .. }
            | FetchError::UnaskedRange
            | FetchError::BadRange(_) => HostAnswer::Healthy,
            FetchError::Stalled(_)
            | FetchError::TooSlow { .. }
            | FetchError::Slow { .. }
            | FetchError::Truncated { .. }
            | FetchError::DigestMismatch { .. }
            | FetchError::CorruptPartial(_)
            | FetchError::HostWaiting(_)
            | FetchError::Local(_)
            | FetchError::Disk(_) => HostAnswer::Neutral,
        }
    }

    /// The disk is full (or over quota): when the download fails, its
    /// partial is removed even if it could be resumed, for the space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FetchError::Disk(e) if matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ))
    }

    /// Classify a reqwest error, with its cause chain but without the URL
    /// (the caller names the source itself, with credentials redacted).
    pub fn from_reqwest(error: reqwest::Error) -> FetchError {
        if let Some(certificate) = super::tls::certificate_problem(&error) {
            return certificate;
        }
        let redirect = error.is_redirect();
        let timeout = error.is_timeout();
        let text = with_causes(&error.without_url());
        if redirect {
            FetchError::Redirect(text)
        } else if timeout {
            FetchError::Transport(format!("timed out: {text}"))
        } else {
            FetchError::Transport(text)
        }
    }
}

/// `error` and each of its causes that it does not already quote, joined
/// by ": " (reqwest's own text is often only "error sending request").
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use Next::*;
    use reqwest::StatusCode as S;
    use std::io::ErrorKind;

    const W: Duration = Duration::from_secs(1);

    fn status(code: u16) -> FetchError {
        FetchError::Status(S::from_u16(code).unwrap())
    }

    fn busy(code: u16) -> FetchError {
        FetchError::Busy {
            status: S::from_u16(code).unwrap(),
            retry_after: Duration::from_secs(5),
        }
    }

    fn digest() -> Digest {
        Digest::from_bytes([7; 32])
    }

    fn os(code: i32) -> FetchError {
        FetchError::Disk(std::io::Error::from_raw_os_error(code))
    }

    /// Every class of answer, and what the download does about it:
    /// (answer, after an attempt without progress, after one with
    /// progress). Asked before any start over.
    fn table() -> Vec<(&'static str, FetchError, Next, Next)> {
        let mismatch = |resumed| FetchError::DigestMismatch {
            got: digest(),
            resumed,
        };
        vec![
            ("400", status(400), RuleOut, RuleOut),
            ("401", status(401), RuleOut, RuleOut),
            ("403", status(403), RuleOut, RuleOut),
            ("404", status(404), RuleOut, RuleOut),
            ("410", status(410), RuleOut, RuleOut),
            (
                "416 to a whole-object request",
                status(416),
                RuleOut,
                RuleOut,
            ),
            ("408", status(408), Later, AgainNow),
            ("429", status(429), Later, AgainNow),
            ("500", status(500), Later, AgainNow),
            ("502", status(502), Later, AgainNow),
            ("503", status(503), Later, AgainNow),
            ("503 with Retry-After", busy(503), Later, AgainNow),
            ("429 with Retry-After", busy(429), Later, AgainNow),
            (
                "host waiting (another download's answer)",
                FetchError::HostWaiting("not asked: http://h:80 answered HTTP 503".into()),
                Later,
                Later,
            ),
            (
                "TLS certificate refused",
                FetchError::Certificate("certificate of unknown issuer".into()),
                RuleOut,
                RuleOut,
            ),
            ("504", status(504), Later, AgainNow),
            (
                "3xx reaching us",
                FetchError::Redirect("HTTP 301 without a Location".into()),
                RuleOut,
                RuleOut,
            ),
            (
                "redirect loop",
                FetchError::Redirect("redirect loop: back to http://a/x".into()),
                RuleOut,
                RuleOut,
            ),
            (
                "redirect to file:",
                FetchError::Redirect(
                    "redirect to file:///etc/passwd, which is not http or https".into(),
                ),
                RuleOut,
                RuleOut,
            ),
            (
                "too many redirects",
                FetchError::Redirect("more than 10 redirects".into()),
                RuleOut,
                RuleOut,
            ),
            (
                "connection refused",
                FetchError::Transport(
                    "error sending request: Connection refused (os error 111)".into(),
                ),
                Later,
                AgainNow,
            ),
            (
                "connection reset",
                FetchError::Transport("error decoding response body: connection reset".into()),
                Later,
                AgainNow,
            ),
            (
                "connect timeout",
                FetchError::Transport("timed out: operation timed out".into()),
                Later,
                AgainNow,
            ),
            ("stall", FetchError::Stalled(W), Later, AgainNow),
            (
                "no response head",
                FetchError::NoResponse(W),
                Later,
                AgainNow,
            ),
            (
                "slow drip",
                FetchError::TooSlow {
                    received: 1,
                    window: W,
                    minimum: 35,
                },
                Later,
                AgainNow,
            ),
            (
                "slow, with untried sources",
                FetchError::Slow {
                    received: 100,
                    window: W,
                    minimum: 16384,
                },
                Yield,
                Yield,
            ),
            (
                "truncated body",
                FetchError::Truncated {
                    received: 1,
                    expected: 2,
                },
                Later,
                AgainNow,
            ),
            (
                "different total",
                FetchError::WrongLength {
                    announced: 3,
                    expected: 2,
                },
                RuleOut,
                RuleOut,
            ),
            (
                "longer body",
                FetchError::TooLong { expected: 2 },
                RuleOut,
                RuleOut,
            ),
            (
                "shorter body, properly ended",
                FetchError::EndedShort {
                    received: 1,
                    expected: 2,
                },
                RuleOut,
                RuleOut,
            ),
            (
                "bad Content-Range",
                FetchError::BadRange("bytes garbage".into()),
                RuleOut,
                RuleOut,
            ),
            (
                "206 twice to a whole-object request",
                FetchError::UnaskedRange,
                RuleOut,
                RuleOut,
            ),
            (
                "wrong digest, one response",
                mismatch(false),
                RuleOut,
                RuleOut,
            ),
            (
                "wrong digest after a resume",
                mismatch(true),
                StartOver,
                StartOver,
            ),
            (
                "prefix changed on disk",
                FetchError::CorruptPartial("prefix differs".into()),
                StartOver,
                StartOver,
            ),
            (
                "local mirror unreadable",
                FetchError::Local("cannot open /m/x: Permission denied".into()),
                RuleOut,
                RuleOut,
            ),
            ("ENOSPC", os(libc::ENOSPC), Later, AgainNow),
            ("EDQUOT", os(libc::EDQUOT), Later, AgainNow),
            ("EIO", os(libc::EIO), Later, AgainNow),
            ("EACCES on the partial", os(libc::EACCES), Later, AgainNow),
        ]
    }

    #[test]
    fn every_answer_has_one_decision() {
        for (what, error, still, moving) in table() {
            assert_eq!(error.next(false, false), still, "{what}: {error}");
            assert_eq!(
                error.next(true, false),
                moving,
                "{what} with progress: {error}"
            );
        }
    }

    /// The start over after a resume happens once: a mismatch of the
    /// second try rules the source out; a changed prefix is then only
    /// transient.
    #[test]
    fn a_download_starts_over_once() {
        for (what, error, still, moving) in table() {
            let (still, moving) = match (&error, still) {
                (FetchError::DigestMismatch { .. }, _) => (RuleOut, RuleOut),
                (FetchError::CorruptPartial(_), _) => (Later, AgainNow),
                _ => (still, moving),
            };
            assert_eq!(error.next(false, true), still, "{what}: {error}");
            assert_eq!(
                error.next(true, true),
                moving,
                "{what} with progress: {error}"
            );
        }
    }

    /// What each class of answer says about its host (see `hosts`).
    #[test]
    fn every_answer_says_one_thing_about_its_host() {
        use HostAnswer::{Healthy, Neutral};
        let trouble = |error: &FetchError| HostAnswer::Trouble(error.to_string());
        for (what, error, _, _) in table() {
            let expected = match &error {
                FetchError::Busy { retry_after, .. } => HostAnswer::Busy {
                    after: *retry_after,
                    answer: error.to_string(),
                },
                FetchError::Status(s)
                    if s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408 =>
                {
                    trouble(&error)
                }
                FetchError::Transport(_) | FetchError::NoResponse(_) => trouble(&error),
                FetchError::Status(_)
                | FetchError::Redirect(_)
                | FetchError::Certificate(_)
                | FetchError::WrongLength { .. }
                | FetchError::EndedShort { .. }
                | FetchError::TooLong { .. }
                | FetchError::UnaskedRange
                | FetchError::BadRange(_) => Healthy,
                _ => Neutral,
            };
            assert_eq!(error.for_host(), expected, "{what}: {error}");
        }
        // Spot checks, in words.
        assert!(matches!(status(503).for_host(), HostAnswer::Trouble(_)));
        assert!(matches!(busy(429).for_host(), HostAnswer::Busy { .. }));
        assert_eq!(status(404).for_host(), Healthy);
        assert_eq!(FetchError::Stalled(W).for_host(), Neutral);
        assert_eq!(os(libc::ENOSPC).for_host(), Neutral);
        assert_eq!(
            busy(503).to_string(),
            "HTTP 503 Service Unavailable (Retry-After: 5s)"
        );
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = [os(libc::ENOSPC), os(libc::EDQUOT)];
        assert!(full.iter().all(FetchError::is_disk_full));
        let other = [
            os(libc::EIO),
            FetchError::Disk(ErrorKind::PermissionDenied.into()),
            status(507),
        ];
        assert!(!other.iter().any(FetchError::is_disk_full));
    }

    #[test]
    fn answers_are_worded_for_a_person() {
        assert_eq!(status(404).to_string(), "HTTP 404 Not Found");
        assert_eq!(
            FetchError::BadRange("bytes garbage".into()).to_string(),
            "unusable Content-Range \"bytes garbage\""
        );
    }
}
