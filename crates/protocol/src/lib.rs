//! Wire types and the payload container of comfy-remote, protocol v1.
//!
//! This crate knows nothing of HTTP, async runtimes or Python. It owns:
//! - [`value`]: the typed value model ([`Value`], [`Tensor`], [`ComfyType`]);
//! - [`container`]: the binary container (a safetensors file whose metadata
//!   carries the value tree) with its limits and decoder checks;
//! - [`tree`]: the value tree as canonical JSON (tags, references, checks);
//! - [`json`]: the base64 and plain-inputs JSON forms of a payload;
//! - [`api`]: the JSON bodies of the jobs API (status, progress, events,
//!   errors, workflow signature) and the header names;
//! - [`media`]: values as media files (PNG, WAV, text, safetensors, JSON)
//!   and files as values;
//! - [`types`]: which values a declared Comfy type takes (the one rule the
//!   client, the worker, the CLI and the nodes share);
//! - [`http`]: the HTTP rules every server applies (error statuses,
//!   media types, limits, idempotency keys, URLs, the bearer token);
//! - [`openapi`]: the OpenAPI document of the jobs API;
//! - [`env`]: every environment variable comfy-remote reads;
//! - [`v2`]: Comfy API v2 as comfy-remote serves it.
//!
//! `docs/protocol.md` is the normative description; this crate implements it.

pub mod api;
pub mod container;
pub mod env;
mod error;
pub mod http;
pub mod json;
pub mod media;
pub mod openapi;
pub mod packed;
pub mod tree;
pub mod types;
pub mod v2;
pub mod value;

pub use container::{
    decode, encode, encode_to_writer, encode_to_writer_with, encode_with, read_layout, Layout,
    Limits, WriteError,
};
pub use error::CodecError;
pub use json::{decode_json_body, parse_json_body, parse_value, JsonBody};
pub use packed::PackOptions;
pub use value::{ComfyType, DType, Entry, Payload, Tensor, Value};

/// The protocol version string, sent in `Comfy-Remote-Protocol` headers and
/// in the info document.
pub const PROTOCOL_VERSION: &str = "comfy-remote/1";
