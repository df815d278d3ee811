//! The `[remote]` section of the configuration (contract §11): where the
//! fleet's shared store is. Pure: TOML values in, a [`RemoteConfig`] or an
//! error naming the key out. Credentials are never part of it: they come
//! from the environment (see [`super::client`]).

use std::ops::Range;

use serde::Deserialize;
use toml::{Spanned, Value};
use url::Url;

/// The region when the section does not name one (S3-compatible stores
/// other than AWS accept any; Garage wants its own, e.g. "garage").
pub const DEFAULT_REGION: &str = "us-east-1";

/// An S3-compatible store shared by a fleet of chitd hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `http` or `https`, without credentials, query or fragment.
    pub endpoint: Url,
    pub bucket: String,
    /// Empty, or relative and ending in `/`: objects are at
    /// `<prefix>sha256/<hex>`.
    pub prefix: String,
    pub region: String,
}

/// The section as serde sees it: unknown keys are refused (and named) by
/// `deny_unknown_fields`, like everywhere in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    endpoint: Option<Spanned<Value>>,
    bucket: Option<Spanned<Value>>,
    prefix: Option<Spanned<Value>>,
    region: Option<Spanned<Value>>,
}

/// Why the section is unusable: where, which key, and a sentence.
pub type SectionError = (Range<usize>, &'static str, String);

/// Checks the `[remote]` table at `span`.
pub fn parse(raw: &RawRemote, span: Range<usize>) -> Result<RemoteConfig, SectionError> {
    let required = |field: &Option<Spanned<Value>>, key: &'static str| {
        field.clone().ok_or_else(|| {
            let message =
                format!("[remote] has no `{key}`; the remote tier needs `endpoint` and `bucket`");
            (span.clone(), key, message)
        })
    };
    let check =
        |key: &'static str, value: &Spanned<Value>, check: fn(&Value) -> Result<String, String>| {
            check(value.get_ref())
                .map_err(|reason| (value.span(), key, format!("`{key}` in [remote] {reason}")))
        };
    let endpoint = required(&raw.endpoint, "endpoint")?;
    let endpoint_text = check("endpoint", &endpoint, string)?;
    let endpoint = parse_endpoint(&endpoint_text).map_err(|reason| {
        (
            endpoint.span(),
            "endpoint",
            format!("`endpoint` in [remote] {reason}"),
        )
    })?;
    let bucket = check("bucket", &required(&raw.bucket, "bucket")?, bucket)?;
    let prefix = match &raw.prefix {
        Some(value) => check("prefix", value, prefix)?,
        None => String::new(),
    };
    let region = match &raw.region {
        Some(value) => check("region", value, non_empty)?,
        None => DEFAULT_REGION.to_string(),
    };
    Ok(RemoteConfig {
        endpoint,
        bucket,
        prefix,
        region,
    })
}

fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Table(_) => Err("must be a string, not a table".to_string()),
        Value::Array(_) => Err("must be a string, not an array".to_string()),
        other => Err(format!("must be a string, not {other}")),
    }
}

fn non_empty(value: &Value) -> Result<String, String> {
    match string(value)? {
        text if text.trim().is_empty() => Err("is empty".to_string()),
        text => Ok(text),
    }
}

/// The endpoint: an http(s) URL with nothing a signature would not cover
/// and no credentials (those come from the environment only).
fn parse_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("is not a valid URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "has the scheme {:?}, but it must be http or https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("holds credentials, which belong in AWS_ACCESS_KEY_ID and \
                    AWS_SECRET_ACCESS_KEY, never in the file"
            .to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("has a query or fragment, which an S3 endpoint cannot have".to_string());
    }
    Ok(url)
}

/// A bucket name as S3 allows it: 3 to 63 lowercase letters, digits, `.`
/// and `-`.
fn bucket(value: &Value) -> Result<String, String> {
    let name = string(value)?;
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    if !(3..=63).contains(&name.len()) || !name.chars().all(allowed) {
        return Err(format!(
            "= {name:?} is not a bucket name (3 to 63 lowercase letters, digits, `.` and `-`)"
        ));
    }
    Ok(name)
}

/// Empty, or relative segments each ending in `/` (`chitd/`, `a/b/`).
fn prefix(value: &Value) -> Result<String, String> {
    let prefix = string(value)?;
    if prefix.is_empty() {
        return Ok(prefix);
    }
    let segments_ok = prefix.strip_suffix('/').is_some_and(|inner| {
        inner
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
    });
    if !segments_ok {
        return Err(format!(
            "= {prefix:?} must be empty or relative and end in `/`, without empty, `.` \
             or `..` segments (like \"chitd/\")"
        ));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse(remote: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[consumer]]\nname = \"a\"\nspool = \"s\"\ndeliver = \"d\"\n\n[remote]\n{remote}"
        );
        Config::parse(&text, Path::new("/srv"))
    }

    #[test]
    fn a_remote_section_is_read_with_defaults() {
        let config =
            parse("endpoint = \"http://127.0.0.1:3900\"\nbucket = \"distfiles\"\n").expect("valid");
        let remote = config.remote.expect("remote");
        assert_eq!(remote.endpoint.as_str(), "http://127.0.0.1:3900/");
        assert_eq!(remote.bucket, "distfiles");
        assert_eq!(remote.prefix, "");
        assert_eq!(remote.region, super::DEFAULT_REGION);
        let config = parse(
            "endpoint = \"https://s3.example\"\nbucket = \"b.1-x\"\nprefix = \"chitd/a/\"\nregion = \"garage\"\n",
        )
        .expect("valid");
        let remote = config.remote.expect("remote");
        assert_eq!(
            (remote.prefix.as_str(), remote.region.as_str()),
            ("chitd/a/", "garage")
        );
        assert_eq!(
            Config::parse("", Path::new("/")).expect("empty").remote,
            None
        );
    }

    /// Each bad section: the line and key named, and a word of why.
    #[test]
    fn bad_remote_sections_name_the_key_and_line() {
        let ok = "endpoint = \"http://h:1\"\nbucket = \"distfiles\"\n";
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "endpoint = \"http://h:1\"\nbucket = \"distfiles\"\nsecret = \"x\"\n",
                9,
                "secret",
                "unknown key",
            ),
            (
                "bucket = \"distfiles\"\n",
                6,
                "endpoint",
                "needs `endpoint` and `bucket`",
            ),
            (
                "endpoint = \"http://h:1\"\n",
                6,
                "bucket",
                "needs `endpoint` and `bucket`",
            ),
            (
                "endpoint = \"ftp://h\"\nbucket = \"distfiles\"\n",
                7,
                "endpoint",
                "http or https",
            ),
            (
                "endpoint = \"http://k:s@h\"\nbucket = \"distfiles\"\n",
                7,
                "endpoint",
                "AWS_ACCESS_KEY_ID",
            ),
            (
                "endpoint = \"not a url\"\nbucket = \"distfiles\"\n",
                7,
                "endpoint",
                "not a valid URL",
            ),
            (
                "endpoint = 5\nbucket = \"distfiles\"\n",
                7,
                "endpoint",
                "must be a string",
            ),
            (
                "endpoint = \"http://h:1\"\nbucket = \"No_Such\"\n",
                8,
                "bucket",
                "not a bucket name",
            ),
            (
                &format!("{ok}prefix = \"chitd\"\n"),
                9,
                "prefix",
                "end in `/`",
            ),
            (
                &format!("{ok}prefix = \"/chitd/\"\n"),
                9,
                "prefix",
                "end in `/`",
            ),
            (
                &format!("{ok}prefix = \"a//\"\n"),
                9,
                "prefix",
                "end in `/`",
            ),
            (&format!("{ok}region = \"\"\n"), 9, "region", "is empty"),
        ];
        for &(section, line, key, why) in cases {
            match parse(section) {
                Err(ConfigError::Key {
                    location,
                    key: named,
                    message,
                }) => {
                    assert_eq!(
                        (location.line, named.as_str()),
                        (line, key),
                        "{section}: {message}"
                    );
                    assert!(message.contains(why), "{section}: {message}");
                }
                other => panic!("{section}: {other:?}"),
            }
        }
        let error = Config::parse("remote = 5\n", Path::new("/")).expect_err("not a table");
        assert!(error.to_string().contains("[remote] section"), "{error}");
    }
}
