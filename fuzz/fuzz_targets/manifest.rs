//! The manifest parser and validator on arbitrary text: every input is either a manifest or a
//! list of errors, never a panic, an overflow or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = weir_crds::Manifest::from_yaml(text, "fuzz") {
            // The message is built too: formatting paths and values must not panic either.
            let _ = e.to_string();
        }
    }
});
