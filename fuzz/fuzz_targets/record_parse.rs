//! Fuzzes `partial::Record::parse`, the loader of the progress records that
//! let a download resume: it must never panic, and every record it accepts
//! must come back unchanged from `Record::render` (a record that does not
//! round-trip would change meaning across a restart).
//!
//! Random bytes almost never carry a valid `check` line, so the first input
//! byte picks a mode: the text as it is, or the text as a record *body* that
//! gets its correct checksum appended, so the fuzzer reaches the field
//! parsing behind the checksum.

#![no_main]

use chitd::partial::Record;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let text = if mode % 2 == 0 {
        text.to_owned()
    } else {
        let mut body = text.to_owned();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let check = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{body}check {check}\n")
    };
    let Ok(record) = Record::parse(&text) else {
        return;
    };
    let rendered = record.render();
    match Record::parse(&rendered) {
        Ok(again) => {
            assert_eq!(again, record, "round trip changed the record; rendered {rendered:?}");
            assert_eq!(again.render(), rendered, "render is not canonical");
        }
        Err(error) => panic!("rendered record {rendered:?} does not parse: {error}"),
    }
});
