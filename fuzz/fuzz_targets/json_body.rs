//! Fuzz target: the JSON body parser (both forms) must never panic.
#![no_main]

use comfy_remote_protocol::{decode_json_body, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|d: &[u8]| {
    let _ = decode_json_body(d, &Limits::default());
});
