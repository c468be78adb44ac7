//! Fuzz target: the container decoder must reject any input without panicking.
#![no_main]

use comfy_remote_protocol::{decode, encode, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|d: &[u8]| {
    if let Ok(payload) = decode(d, &Limits::default()) {
        // Whatever decodes must encode again.
        let _ = encode(&payload).expect("decoded payload re-encodes");
    }
});
