//! The comfy-remote HTTP client: submit a payload to an endpoint, follow the
//! job, cancel it, fetch its outputs.
//!
//! It speaks the native protocol (`docs/protocol.md`: binary container to
//! `POST /v1/jobs`, live events over SSE, `GET /v1/info` signature) and the
//! seed's simple JSON shape (`status`, `progress`, `poll_url`, `result`, with
//! the usual synonyms), choosing by asking `GET /v1/info` once.
//!
//! - Retries: connection errors, 408/425/429 and 5xx are retried with
//!   jittered exponential backoff, honouring `Retry-After` ([`retry`]).
//!   Each submit has one idempotency key across its retries, so a retry
//!   never creates a second job.
//! - Following: the SSE stream with `Last-Event-ID` reconnects, falling back
//!   to polling `poll_url`; progress is made monotonic and given a one-line
//!   text ([`describe_progress`]).
//! - Cancel: [`Job::cancel`] (or dropping the job) sends the remote cancel.
//! - [`blocking`]: the same for callers without an async runtime.

pub mod blocking;
mod client;
mod error;
mod http;
pub mod packing;
pub mod retry;
pub mod signature;
pub mod sse;
pub mod status;

pub use client::{describe_progress, Client, ClientOptions, Job, JobEvent, Mode, Upload};
pub use error::{ClientError, Result};
pub use packing::Packing;
pub use retry::RetryPolicy;
pub use signature::{LocalInput, Signature, SignatureItem, NAMED_INPUT_PREFIX};
