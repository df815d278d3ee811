//! Why a download ended without its file, as values: why it gave up and
//! what each source answered last ([`DownloadFailure`]).

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

/// "every source failed: http://a/x: HTTP 404 Not Found; ..."
impl fmt::Display for DownloadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ending)?;
        for (index, answer) in self.answers.iter().enumerate() {
            f.write_str(if index == 0 { ": " } else { "; " })?;
            write!(f, "{answer}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn each_source_and_its_answer_in_order() {
        let mut redirected = SourceAnswer::untried(url("http://a.example/f"));
        redirected.error = Some(FetchError::Status(reqwest::StatusCode::NOT_FOUND));
        redirected.redirected = Some(url("http://user:pw@moved.example/f"));
        let failure = DownloadFailure {
            ending: Ending::EverySourceFailed,
            answers: vec![redirected, SourceAnswer::untried(url("http://b.example/f"))],
        };
        assert_eq!(
            failure.to_string(),
            "every source failed: http://a.example/f: HTTP 404 Not Found \
             (redirected to http://***@moved.example/f); http://b.example/f: not tried"
        );
        let none = DownloadFailure {
            ending: Ending::NoSource,
            answers: Vec::new(),
        };
        assert_eq!(
            none.to_string(),
            "no source to try: the chit has no URL and no mirror is configured"
        );
    }
}
