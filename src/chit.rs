//! The chit: the small text file a consumer drops into its spool to ask for a file.
//!
//! This module owns the chit format of contract §2 and does no I/O. It turns the
//! bytes of a chit into a typed [`Chit`] (or a [`ChitError`] that names the line and
//! the problem), renders a chit back to canonical text, validates the [`Digest`] and
//! [`DeliveryPath`] newtypes, and builds the `# error:` line appended to failed chits.
//!
//! ```text
//! <sha256: 64 hex digits, any case>
//! <size: decimal byte count, no sign>
//! <path relative to the consumer's delivery directory>
//! [<absolute http or https URL> | # comment | empty line]...
//! ```
//!
//! Lines end with `\n` or `\r\n`; the last one may lack its line end. Leading and
//! trailing ASCII whitespace is ignored on every line. Beyond the contract:
//!
//! - a UTF-8 byte order mark before line 1 is ignored (some editors write one);
//! - a path may not hold ASCII control characters, begin or end with a space, or
//!   begin with `# error:` (see [`DeliveryPath::parse`]), so that every path
//!   survives a trip through a chit line;
//! - a `# error:` line where lines 1–3 belong is reported as the missing line it
//!   stands for, so a chit that failed for being short fails again the same way
//!   when retried, instead of taking its own error line as its path.

use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// The largest chit accepted, in bytes.
pub const MAX_CHIT_BYTES: usize = 64 * 1024;
/// The longest delivery path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// The longest component of a delivery path accepted, in bytes (the usual
/// file-name limit of Linux file systems).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// How the lines that chitd appends to a failed chit begin.
pub const ERROR_LINE_PREFIX: &str = "# error:";

/// How many characters of an offending text an error message quotes.
const EXCERPT_CHARS: usize = 80;
/// The longest reason an error line carries, in bytes, including a closing `…`.
const MAX_REASON_BYTES: usize = 4000;
/// A URL parameter whose name holds one of these (lowercased) carries a
/// secret: OAuth and API tokens, signed URLs (`X-Amz-Signature`,
/// `X-Amz-Credential`, `X-Amz-Security-Token`, `Signature`, `sig`,
/// `GoogleAccessId`), keys, passwords, session ids, JWTs (GitHub's
/// release-asset redirects carry one as `jwt`), SAML/OAuth assertions and
/// authorization codes.
const SECRET_PARAMETER_WORDS: [&str; 14] = [
    "token",
    "jwt",
    "assertion",
    "code",
    "secret",
    "signature",
    "sig",
    "key",
    "password",
    "passwd",
    "auth",
    "credential",
    "session",
    "googleaccessid",
];
/// Everything but the unreserved characters of RFC 3986 is percent-encoded in
/// a path component placed under a mirror URL.
const COMPONENT_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A sha256 digest. [`Display`](fmt::Display) and [`Digest::to_hex`] give lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Exactly 64 hex digits in any case, nothing else (no surrounding whitespace).
    pub fn parse_hex(text: &str) -> Result<Self, DigestError> {
        let characters = text.chars().count();
        if characters != 64 {
            return Err(DigestError::WrongLength { characters });
        }
        let not_hex = text
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit());
        if let Some((index, character)) = not_hex {
            let position = index + 1;
            return Err(DigestError::NotHex {
                character,
                position,
            });
        }
        let mut bytes = [0u8; 32];
        // 64 ASCII hex digits by now, so decoding cannot fail.
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| DigestError::WrongLength { characters })?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_hex(text)
    }
}

/// Why a text is not a sha256 digest.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest must be 64 hex digits, got {characters} characters")]
    WrongLength { characters: usize },
    #[error("digest must be 64 hex digits, found {character:?} at character {position}")]
    NotHex { character: char, position: usize },
}

/// A validated delivery path: relative, `/`-separated, where the requested file
/// must appear under the consumer's delivery directory. Only [`DeliveryPath::parse`]
/// builds one.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DeliveryPath(String);

impl DeliveryPath {
    /// Checks the rules of contract §2: not empty, not absolute, no empty, `.` or
    /// `..` component, no trailing `/`, no NUL, no backslash, at most
    /// [`MAX_PATH_BYTES`] in all and [`MAX_COMPONENT_BYTES`] per component.
    ///
    /// Beyond the contract it also rejects any ASCII control character (a chit
    /// line cannot hold a line break, and a tab or an escape in a file name only
    /// hides it from the person reading a listing), a leading or trailing space
    /// (a chit line would lose it to trimming), a leading `# error:` (reserved
    /// for the lines chitd appends to failed chits), and a file name of the
    /// form of chitd's temporary files (`.<name>.chitd-<pid>.<n>`, see
    /// [`Dir::is_temp_name`](crate::dir::Dir::is_temp_name)): the start-up
    /// sweep removes those from delivery trees, so a file delivered under one
    /// would vanish at the next start.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let path = || excerpt(text);
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        if text.starts_with(' ') || text.ends_with(' ') {
            return Err(PathError::SurroundingSpace { path: path() });
        }
        if text.starts_with(ERROR_LINE_PREFIX) {
            return Err(PathError::ErrorLinePrefix { path: path() });
        }
        if text.contains('\0') {
            return Err(PathError::Nul { path: path() });
        }
        if let Some(character) = text.chars().find(char::is_ascii_control) {
            return Err(PathError::ControlCharacter {
                path: path(),
                code: u32::from(character),
            });
        }
        if text.contains('\\') {
            return Err(PathError::Backslash { path: path() });
        }
        if text.starts_with('/') {
            return Err(PathError::Absolute { path: path() });
        }
        if text.ends_with('/') {
            return Err(PathError::TrailingSlash { path: path() });
        }
        if text.len() > MAX_PATH_BYTES {
            let bytes = text.len();
            return Err(PathError::TooLong {
                path: path(),
                bytes,
            });
        }
        for component in text.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent { path: path() }),
                "." => return Err(PathError::DotComponent { path: path() }),
                ".." => return Err(PathError::DotDotComponent { path: path() }),
                _ if component.len() > MAX_COMPONENT_BYTES => {
                    let bytes = component.len();
                    return Err(PathError::ComponentTooLong {
                        path: path(),
                        bytes,
                    });
                }
                _ => {}
            }
        }
        let name = text.rsplit('/').next().unwrap_or(text);
        if crate::dir::Dir::is_temp_name(name) {
            return Err(PathError::TemporaryName { path: path() });
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, split on `/`; none is empty.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component: the name of the delivered file.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Every component but the last: the directories to create, outermost first.
    pub fn parent_components(&self) -> impl Iterator<Item = &str> {
        let parent = self.0.rsplit_once('/').map(|(parent, _)| parent);
        parent.into_iter().flat_map(|parent| parent.split('/'))
    }

    /// `<base>/<path>`: each component percent-encoded (the unreserved characters
    /// `A-Z a-z 0-9 - . _ ~` stay literal) and appended to the base URL's path
    /// with exactly one `/` between. The base's query and fragment are dropped.
    /// The base should be hierarchical (http, https or file), as mirrors are.
    pub fn under(&self, base: &Url) -> Url {
        let mut joined = base.path().trim_end_matches('/').to_owned();
        for component in self.components() {
            joined.push('/');
            joined.extend(utf8_percent_encode(component, COMPONENT_ENCODE_SET));
        }
        let mut url = base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.set_path(&joined);
        url
    }
}

impl fmt::Display for DeliveryPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Why a text is not a delivery path. `path` holds at most the first 80
/// characters of the offending text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {path:?} begins or ends with a space, which a chit line cannot keep")]
    SurroundingSpace { path: String },
    #[error("path {path:?} begins with \"# error:\", which marks the error lines of failed chits")]
    ErrorLinePrefix { path: String },
    #[error("path {path:?} contains a NUL byte")]
    Nul { path: String },
    #[error(
        "path {path:?} contains the control character U+{code:04X}; \
         control characters (line breaks among them) are not allowed in paths"
    )]
    ControlCharacter { path: String, code: u32 },
    #[error("path {path:?} contains a backslash; directories are separated by \"/\"")]
    Backslash { path: String },
    #[error("path {path:?} is absolute; it must be relative to the delivery directory")]
    Absolute { path: String },
    #[error("path {path:?} ends with \"/\"; it must name a file")]
    TrailingSlash { path: String },
    #[error("path {path:?} is {bytes} bytes; the limit is {MAX_PATH_BYTES}")]
    TooLong { path: String, bytes: usize },
    #[error("path {path:?} has an empty component (\"//\")")]
    EmptyComponent { path: String },
    #[error("path {path:?} has a \".\" component")]
    DotComponent { path: String },
    #[error("path {path:?} has a \"..\" component")]
    DotDotComponent { path: String },
    #[error("path {path:?} has a component of {bytes} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    ComponentTooLong { path: String, bytes: usize },
    #[error(
        "path {path:?} names a file like chitd's temporary files (\".<name>.chitd-<pid>.<n>\"), \
         which chitd removes from delivery directories when it starts"
    )]
    TemporaryName { path: String },
}

/// One parsed chit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Chit {
    pub digest: Digest,
    pub size: u64,
    pub path: DeliveryPath,
    /// Source URLs in the chit's order; only http and https.
    pub urls: Vec<Url>,
}

impl Chit {
    /// The bytes of a chit file to a typed chit, or an error naming the line and
    /// the problem. The checks run in order: size of the whole chit, UTF-8, then
    /// line by line, stopping at the first problem.
    pub fn parse(bytes: &[u8]) -> Result<Chit, ChitError> {
        if bytes.len() > MAX_CHIT_BYTES {
            return Err(ChitError::TooLarge { bytes: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|error| {
            let before = &bytes[..error.valid_up_to()];
            let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
            ChitError::NotUtf8 { line }
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.split_inclusive('\n').map(|line| {
            let line = line.strip_suffix('\n').unwrap_or(line);
            line.strip_suffix('\r').unwrap_or(line)
        });

        let digest_text = header_line(&mut lines, HeaderField::Digest)?;
        let digest = Digest::parse_hex(digest_text).map_err(ChitError::Digest)?;
        let size = parse_size(header_line(&mut lines, HeaderField::Size)?)?;
        let path_text = header_line(&mut lines, HeaderField::Path)?;
        let path = DeliveryPath::parse(path_text).map_err(ChitError::Path)?;

        let mut urls = Vec::new();
        for (index, line) in lines.enumerate() {
            let line_number = index + 4;
            let text = line.trim_ascii();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            urls.push(parse_source_url(text, line_number)?);
        }
        Ok(Chit {
            digest,
            size,
            path,
            urls,
        })
    }

    /// Where the file can come from, in the order it is tried: the chit's
    /// URLs, then each mirror as `<mirror>/<path>`, each once.
    pub fn sources(&self, mirrors: &[Url]) -> Vec<Url> {
        let mut sources: Vec<Url> = Vec::new();
        let under_mirrors = mirrors.iter().map(|mirror| self.path.under(mirror));
        for url in self.urls.iter().cloned().chain(under_mirrors) {
            if !sources.contains(&url) {
                sources.push(url);
            }
        }
        sources
    }

    /// The canonical text: digest (lowercase), size, path and one URL per line,
    /// each line ending with `\n`. [`Chit::parse`] reads it back to an equal chit.
    pub fn render(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.digest, self.size, self.path);
        for url in &self.urls {
            text.push_str(url.as_str());
            text.push('\n');
        }
        text
    }
}

/// What lines 1, 2 and 3 of a chit hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderField {
    Digest,
    Size,
    Path,
}

impl HeaderField {
    /// The line number of this field, counting from 1.
    pub fn line(self) -> usize {
        match self {
            Self::Digest => 1,
            Self::Size => 2,
            Self::Path => 3,
        }
    }
}

impl fmt::Display for HeaderField {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Digest => "sha256 digest",
            Self::Size => "size",
            Self::Path => "path",
        })
    }
}

/// Why some bytes are not a chit. Quoted texts (`text`, `url`, `scheme`) hold
/// at most the first 80 characters of what the chit had there; a URL's
/// credentials are not quoted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChitError {
    #[error("chit is {bytes} bytes; the limit is {MAX_CHIT_BYTES}")]
    TooLarge { bytes: usize },
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("chit has no line {line} ({field})", line = .field.line())]
    MissingLine { field: HeaderField },
    #[error(
        "chit has no line {line} ({field}); in its place is an \"# error:\" line \
         from an earlier attempt",
        line = .field.line()
    )]
    ErrorLineInHeader { field: HeaderField },
    #[error("line {line} is empty; expected the {field}", line = .field.line())]
    EmptyLine { field: HeaderField },
    #[error(
        "line {line} is a comment; expected the {field} (comments may follow line 3 only)",
        line = .field.line()
    )]
    CommentInHeader { field: HeaderField },
    #[error("line 1: {0}")]
    Digest(DigestError),
    #[error("line 2: size {text:?} is not a decimal byte count (no sign allowed)")]
    SizeSigned { text: String },
    #[error("line 2: size {text:?} is not a decimal byte count (only the digits 0-9 are allowed)")]
    SizeNotDecimal { text: String },
    #[error(
        "line 2: size {text:?} does not fit in 64 bits; the largest size is {} bytes",
        u64::MAX
    )]
    SizeOverflow { text: String },
    #[error("line 3: {0}")]
    Path(PathError),
    #[error("line {line}: URL {url:?} is not a valid absolute URL: {problem}")]
    UrlUnparseable {
        line: usize,
        url: String,
        problem: url::ParseError,
    },
    #[error(
        "line {line}: URL {url:?} has scheme {scheme:?}; only http and https are fetched{}",
        if .scheme == "file" { " (file:// is allowed for configured mirrors only)" } else { "" }
    )]
    UnsupportedScheme {
        line: usize,
        url: String,
        scheme: String,
    },
}

impl ChitError {
    /// The line the problem is on, when it is on one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::TooLarge { .. } => None,
            Self::NotUtf8 { line }
            | Self::UrlUnparseable { line, .. }
            | Self::UnsupportedScheme { line, .. } => Some(*line),
            Self::MissingLine { field }
            | Self::ErrorLineInHeader { field }
            | Self::EmptyLine { field }
            | Self::CommentInHeader { field } => Some(field.line()),
            Self::Digest(_) => Some(1),
            Self::SizeSigned { .. } | Self::SizeNotDecimal { .. } | Self::SizeOverflow { .. } => {
                Some(2)
            }
            Self::Path(_) => Some(3),
        }
    }
}

/// The next line as the given header field, trimmed; never empty or a comment.
/// Only lines 1 and 2 treat a leading `#` as a comment: a path may begin with one.
fn header_line<'a>(
    lines: &mut impl Iterator<Item = &'a str>,
    field: HeaderField,
) -> Result<&'a str, ChitError> {
    let text = lines
        .next()
        .ok_or(ChitError::MissingLine { field })?
        .trim_ascii();
    if text.starts_with(ERROR_LINE_PREFIX) {
        Err(ChitError::ErrorLineInHeader { field })
    } else if text.is_empty() {
        Err(ChitError::EmptyLine { field })
    } else if text.starts_with('#') && field != HeaderField::Path {
        Err(ChitError::CommentInHeader { field })
    } else {
        Ok(text)
    }
}

/// Decimal digits only; leading zeros are fine ("007" is 7).
fn parse_size(text: &str) -> Result<u64, ChitError> {
    if text.starts_with(['-', '+']) {
        return Err(ChitError::SizeSigned {
            text: excerpt(text),
        });
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(ChitError::SizeNotDecimal {
            text: excerpt(text),
        });
    }
    // Only digits remain, so the one way to fail is overflow.
    text.parse().map_err(|_| ChitError::SizeOverflow {
        text: excerpt(text),
    })
}

/// One source URL line (already trimmed): absolute, http or https.
fn parse_source_url(text: &str, line: usize) -> Result<Url, ChitError> {
    let url = Url::parse(text).map_err(|problem| ChitError::UrlUnparseable {
        line,
        url: excerpt(&redact_unparsed_url(text)),
        problem,
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(ChitError::UnsupportedScheme {
            line,
            url: excerpt(&redact_url(&url)),
            scheme: excerpt(scheme),
        }),
    }
}

/// The line appended to a failed chit: `# error: <reason>\n`. The reason is made
/// one line (control characters and Unicode line or paragraph separators become
/// spaces) and capped at 4000 bytes on a character boundary, ending in `…` if cut.
pub fn error_line(reason: &str) -> String {
    let mut reason: String = reason
        .chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            '\u{2028}' | '\u{2029}' => ' ',
            c => c,
        })
        .collect();
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES - '…'.len_utf8();
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    format!("{ERROR_LINE_PREFIX} {reason}\n")
}

/// The chit's bytes with [`error_line`] appended as a new last line (a line end
/// is added first when the chit's last line lacks one).
pub fn with_error_line(chit: &[u8], reason: &str) -> Vec<u8> {
    let mut bytes = chit.to_vec();
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(error_line(reason).as_bytes());
    bytes
}

/// A URL safe to log or write into an error line: when it has a username or a
/// password, both are replaced by `***` (`https://***@host/x`), and so is the
/// value of every query or fragment parameter whose name looks like a secret
/// ([`is_secret_parameter`]: `?access_token=***`, `&X-Amz-Signature=***`);
/// otherwise the URL as it is.
pub fn redact_url(url: &Url) -> String {
    let mut redacted = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let hidden = (redacted.set_password(None), redacted.set_username("***"));
        if hidden != (Ok(()), Ok(())) {
            // Unreachable: only a URL that cannot have credentials refuses them.
            return format!("{}:***", url.scheme());
        }
    }
    if let Some(query) = url.query() {
        let query = redact_parameters(query);
        redacted.set_query(Some(&query));
    }
    if let Some(fragment) = url.fragment() {
        let fragment = redact_parameters(fragment);
        redacted.set_fragment(Some(&fragment));
    }
    redacted.into()
}

/// [`redact_url`] for a text that is not a valid URL: whatever precedes an `@`
/// in the part that looks like the authority becomes `***`, and so does the
/// value of each secret parameter after the first `?` or `#`.
pub fn redact_unparsed_url(text: &str) -> String {
    redact_unparsed_parameters(&redact_unparsed_credentials(text))
}

fn redact_unparsed_credentials(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let (head, rest) = text.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{head}***{}", &rest[at..]),
        None => text.to_owned(),
    }
}

/// The query (from the first `?` to the next `#`) and fragment (after that
/// `#`) of `text`, each through [`redact_parameters`].
fn redact_unparsed_parameters(text: &str) -> String {
    let Some(start) = text.find(['?', '#']) else {
        return text.to_owned();
    };
    let (head, tail) = text.split_at(start);
    let (query, fragment) = match tail.strip_prefix('?') {
        Some(rest) => match rest.split_once('#') {
            Some((query, fragment)) => (Some(query), Some(fragment)),
            None => (Some(rest), None),
        },
        None => (None, Some(&tail[1..])),
    };
    let mut redacted = head.to_owned();
    if let Some(query) = query {
        redacted.push('?');
        redacted.push_str(&redact_parameters(query));
    }
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(&redact_parameters(fragment));
    }
    redacted
}

/// `name=value&...` with each non-empty value of a secret parameter
/// ([`is_secret_parameter`]) replaced by `***`; everything else as it is.
fn redact_parameters(parameters: &str) -> String {
    parameters
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_parameter(name) => {
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a query parameter's name (as written in the URL, percent-encoded
/// or not) looks like it names a secret: its decoded, lowercased form holds
/// one of [`SECRET_PARAMETER_WORDS`]. Catching too much only hides a harmless
/// value from a log; `Expires` and the like stay readable.
fn is_secret_parameter(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(&name.replace('+', " "))
        .decode_utf8_lossy()
        .to_lowercase();
    SECRET_PARAMETER_WORDS
        .iter()
        .any(|word| name.contains(word))
}

/// At most the first 80 characters of `text`, with `…` if cut; error messages
/// quote it with `{:?}` so control characters show.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
