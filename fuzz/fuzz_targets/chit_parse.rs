//! Fuzzes `Chit::parse`: it must never panic, and every chit it accepts must
//! survive a round trip through `Chit::render`, and a retry (the chit with an
//! appended `# error:` line) must parse to the same chit.

#![no_main]

use chitd::chit::{Chit, MAX_CHIT_BYTES, error_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(chit) = Chit::parse(data) else {
        return;
    };

    let rendered = chit.render();
    // Normalising URLs can lengthen them ("é" becomes "%C3%A9"), so a chit near
    // the size limit may render past it; that is the only allowed failure.
    if rendered.len() <= MAX_CHIT_BYTES {
        match Chit::parse(rendered.as_bytes()) {
            Ok(again) => {
                assert_eq!(again, chit, "round trip changed the chit; rendered {rendered:?}");
                assert_eq!(again.render(), rendered, "render is not canonical");
            }
            Err(error) => panic!("rendered chit {rendered:?} does not parse: {error}"),
        }
    }

    let mut retried = data.to_vec();
    if !retried.is_empty() && !retried.ends_with(b"\n") {
        retried.push(b'\n');
    }
    retried.extend_from_slice(error_line("404 from https://h/x\nsecond line").as_bytes());
    if retried.len() <= MAX_CHIT_BYTES {
        assert_eq!(Chit::parse(&retried), Ok(chit), "the # error: line changed the chit");
    }
});
