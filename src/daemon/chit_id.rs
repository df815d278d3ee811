//! A chit's identity in the daemon: its consumer and its name.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// A chit: the index of its consumer (in the configuration's order) and
/// its name in that consumer's state directories, as bytes (a consumer may
/// name a chit with bytes that are not UTF-8; such a chit is failed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChitId {
    pub consumer: usize,
    pub name: OsString,
}

impl ChitId {
    pub fn new(consumer: usize, name: impl Into<OsString>) -> ChitId {
        ChitId {
            consumer,
            name: name.into(),
        }
    }
}

/// A chit's name for messages: as it is when UTF-8, else with the bytes
/// that are not ASCII escaped (`bad\xff`).
pub fn display_name(name: &OsStr) -> Cow<'_, str> {
    match name.to_str() {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(name.as_bytes().escape_ascii().to_string()),
    }
}
