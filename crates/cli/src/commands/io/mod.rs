//! Files and values for `comfy-remote run`: what `--input` reads
//! ([`inputs`]) and what the outputs are written as ([`outputs`]); the
//! conversions themselves are the protocol's (`comfy_remote_protocol::media`).

pub mod inputs;
pub mod outputs;
