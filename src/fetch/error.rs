//! What one source answered, and what chitd does about it.

use std::time::Duration;

use crate::chit::Digest;

/// One source's answer to one attempt, worded for the `# error:` line.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
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

impl FetchError {
    /// Transient answers are retried (with backoff, resuming) until
    /// `give_up_after` passes without progress; permanent ones rule the
    /// source out for this download at once.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(status) => {
                status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
            }
            FetchError::Transport(_)
            | FetchError::Stalled(_)
            | FetchError::NoResponse(_)
            | FetchError::TooSlow { .. }
            | FetchError::Slow { .. }
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
            | FetchError::Local(_) => false,
        }
    }

    /// Classify a reqwest error, with its cause chain but without the URL
    /// (the caller names the source itself, with credentials redacted).
    pub fn from_reqwest(error: reqwest::Error) -> FetchError {
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

    #[test]
    fn classification() {
        use reqwest::StatusCode as S;
        for (status, transient) in [
            (S::NOT_FOUND, false),
            (S::GONE, false),
            (S::FORBIDDEN, false),
            (S::INTERNAL_SERVER_ERROR, true),
            (S::SERVICE_UNAVAILABLE, true),
            (S::TOO_MANY_REQUESTS, true),
        ] {
            assert_eq!(
                FetchError::Status(status).is_transient(),
                transient,
                "{status}"
            );
        }
        assert!(
            !FetchError::WrongLength {
                announced: 1,
                expected: 2
            }
            .is_transient()
        );
        assert!(
            FetchError::Truncated {
                received: 1,
                expected: 2
            }
            .is_transient()
        );
        assert_eq!(
            FetchError::Status(S::NOT_FOUND).to_string(),
            "HTTP 404 Not Found"
        );
    }
}
