//! TLS: the roots of trust a fetcher adds (`ca_file`), and certificate
//! errors told apart from other transport trouble and put in words.
//!
//! A certificate the client refuses (unknown issuer, expired, not valid
//! for the name, a CA certificate presented as a server's...) will be
//! refused again at the next attempt: it is permanent for that source
//! ([`FetchError::Certificate`], ruled out at once), and the reason says
//! what is wrong with it, not only that a handshake failed. reqwest hides
//! the `rustls::Error` a few causes deep (inside an `io::Error`, whose
//! `source()` skips it), so [`certificate_problem`] walks the chain itself.

use std::path::Path;

use rustls::CertificateError;

use super::ClientError;
use super::error::FetchError;

/// The certificates of the PEM file `path` (one or more), to be trusted
/// besides the system's roots.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let error = |reason: String| ClientError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot be read: {e}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| error(format!("is not a PEM certificate bundle: {e}")))?;
    if certificates.is_empty() {
        let reason = "holds no certificate (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")";
        return Err(error(reason.to_string()));
    }
    tracing::debug!(path = %path.display(), count = certificates.len(), "trusting the certificates of ca_file");
    Ok(certificates)
}

/// The certificate error somewhere in `error`'s causes, as a
/// [`FetchError::Certificate`] naming the problem; `None` when the error
/// is not about a certificate.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<FetchError> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(rustls::Error::InvalidCertificate(problem)) = current.downcast_ref() {
            return Some(FetchError::Certificate(describe(problem)));
        }
        // An `io::Error`'s `source()` is its inner error's source, which
        // skips the inner error itself (and an `io::Error` may wrap
        // another): step into it instead.
        cause = match current.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => current.source(),
        };
    }
    None
}

/// A certificate error in words, for the `# error:` line.
pub fn describe(problem: &CertificateError) -> String {
    let what = match problem {
        CertificateError::UnknownIssuer => {
            "is not signed by an authority chitd trusts (unknown issuer: self-signed, or \
             from a private CA; name that CA in `ca_file` to trust it)"
                .to_string()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet (is this machine's clock right?)".to_string()
        }
        CertificateError::NotValidForName => "is not valid for the server's name".to_string(),
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "is not valid for the server's name (it is for {})",
            match presented.as_slice() {
                [] => "no name".to_string(),
                names => names.join(", "),
            }
        ),
        CertificateError::Revoked => "has been revoked".to_string(),
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "has a bad or unsupported signature".to_string()
        }
        CertificateError::BadEncoding => "is malformed".to_string(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "is not meant for a TLS server".to_string()
        }
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "is a CA certificate, used as the server's own (CaUsedAsEndEntity): the server \
             must present a certificate issued by that CA"
                .to_string()
        }
        other => format!("was refused: {other}"),
    };
    format!("TLS certificate error: the server's certificate {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_are_named_in_words() {
        let cases = [
            (CertificateError::UnknownIssuer, "unknown issuer"),
            (CertificateError::Expired, "has expired"),
            (CertificateError::NotValidYet, "not valid yet"),
            (
                CertificateError::NotValidForName,
                "not valid for the server's name",
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: rustls::pki_types::ServerName::try_from("a.example").unwrap(),
                    presented: vec!["b.example".into()],
                },
                "(it is for b.example)",
            ),
            (CertificateError::Revoked, "revoked"),
        ];
        for (problem, words) in cases {
            let text = describe(&problem);
            assert!(text.starts_with("TLS certificate error: "), "{text}");
            assert!(text.contains(words), "{problem:?}: {text}");
        }
    }

    /// The error as reqwest nests it: an `io::Error` around the rustls
    /// error, inside other errors.
    #[test]
    fn the_problem_is_found_deep_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        // Wrapped once more, as a connector may.
        let io = std::io::Error::other(io);
        let found = certificate_problem(&Outer(io));
        assert!(
            matches!(&found, Some(FetchError::Certificate(text)) if text.contains("unknown issuer")),
            "{found:?}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(certificate_problem(&Outer(refused)).is_none());
    }
}
