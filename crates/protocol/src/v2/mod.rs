//! Comfy API v2 as comfy-remote serves it (docs/protocol.md §5.1): the
//! rules the worker (`comfy-remote serve`) and the Modal web front share,
//! so both answer alike.
//!
//! - [`wire`]: the JSON bodies (Job, Progress, Output, Asset, the SSE
//!   payloads) of the contract vendored in Comfy-Org/comfy-python-sdk
//!   (`spec/openapi.yaml`, 2.0.0);
//! - [`errors`]: v2's error codes with their HTTP status and
//!   `Retry-After`, and how a protocol v1 answer reads in v2;
//! - [`submit`]: the submit body and its checks, `core/ASSET` references,
//!   `Idempotency-Key`, and how a submitted value becomes a job input;
//! - [`assets`]: the upload form (read incrementally) and its fields,
//!   an asset's JSON;
//! - [`view`]: a v1 job view as a v2 job, progress, previews and outputs;
//! - [`outputs`]: a job's result container as v2 output files.
//!
//! A v2 job *is* a v1 job: one id, one record, one engine. v2 adds the
//! graph it was submitted as, single-use idempotency keys and assets.

pub mod assets;
pub mod errors;
pub mod outputs;
pub mod submit;
pub mod view;
pub mod wire;

pub use errors::{Code, Refusal};

/// The path prefix of every v2 route.
pub const PREFIX: &str = "/api/v2";

/// Seconds a `429 queue_full` or `too_many_streams` asks a client to wait.
pub const RETRY_AFTER_BUSY: u64 = crate::http::RETRY_AFTER_BUSY;
