//! Admission: [`Engine::submit`] takes a submit body from the HTTP layer
//! and either stores a new job, returns the one a replayed idempotency key
//! created, or says why not, before anything runs.
//!
//! The body is streamed to a spool file while it is hashed (never held
//! whole, except a JSON body, which is parsed), decoded with the limits
//! from a memory map and checked against the workflow's signature on a
//! blocking thread, then renamed into the new job's directory.

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use comfy_remote_contract::{check_inputs, layout, InputError};
use comfy_remote_protocol::{CodecError, JsonBody, Limits};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Engine;
use crate::live::EventData;
use crate::store::{Inserted, JobRow, NewJob};

/// Largest JSON request body (the binary container has no such cliff).
pub const MAX_JSON_BODY: u64 = 64 << 20;

/// How the body is encoded (from its media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// The binary container (`application/vnd.comfy-remote.container`).
    Container,
    /// The base64 or plain inputs JSON form.
    Json,
}

/// A submit, as the HTTP layer parsed its headers and query.
#[derive(Debug)]
pub struct SubmitRequest<S> {
    pub kind: BodyKind,
    /// `Content-Length`, when declared.
    pub declared_len: Option<u64>,
    /// `?retry=true`: run again from the start after a worker restart.
    pub retryable: bool,
    pub idempotency_key: Option<String>,
    pub body: S,
}

/// What a submit did.
#[derive(Debug)]
pub enum Submitted {
    /// A new job (202).
    New(JobRow),
    /// The job a replayed idempotency key created (200).
    Replayed(JobRow),
}

/// Why a submit was refused; each maps to one status and error code.
#[derive(Debug)]
pub enum SubmitError {
    /// The worker holds `limit` unfinished jobs.
    TooManyJobs { limit: u64 },
    /// The body is over `limit` bytes; `json` when the JSON cap applied.
    TooLarge { limit: u64, json: bool },
    /// The body could not be read.
    BadBody(String),
    /// A JSON body is not JSON, or neither JSON form (`invalid_json_body`).
    InvalidJson(CodecError),
    /// The container (or a JSON form's value tree) failed decoding.
    InvalidPayload(CodecError),
    /// The inputs do not fit the signature.
    InvalidInput(InputError),
    /// The idempotency key was used with another body, by `job_id`.
    KeyReused { job_id: String },
    /// A failure of ours (logged, not sent).
    Internal(String),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::TooManyJobs { limit } => write!(
                f,
                "this worker already holds {limit} unfinished jobs; retry later"
            ),
            SubmitError::TooLarge { limit, json: false } => write!(
                f,
                "request body is larger than this worker's limit of {limit} bytes"
            ),
            SubmitError::TooLarge { limit, json: true } => write!(
                f,
                "JSON bodies are limited to {limit} bytes; send large inputs as `{}`",
                comfy_remote_protocol::api::CONTAINER_MEDIA_TYPE
            ),
            SubmitError::BadBody(m) => f.write_str(m),
            SubmitError::InvalidJson(e) => write!(f, "the JSON body is invalid: {e}"),
            SubmitError::InvalidPayload(e) => write!(f, "the inputs are invalid: {e}"),
            SubmitError::InvalidInput(e) => write!(f, "{e}"),
            SubmitError::KeyReused { .. } => f.write_str(
                "this Idempotency-Key was used for a different request body; use a new key for a new job",
            ),
            SubmitError::Internal(_) => f.write_str("internal error; see the worker's log"),
        }
    }
}

/// Removes a spool file or directory unless disarmed.
struct Spooled(Option<PathBuf>);

impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn internal(e: impl fmt::Display) -> SubmitError {
    SubmitError::Internal(e.to_string())
}

impl Engine {
    /// Admit a job: limits, body, decoding, signature, idempotency, in that
    /// order. Only a replay of a known key may pass the job limit.
    pub async fn submit<S, E>(&self, req: SubmitRequest<S>) -> Result<Submitted, SubmitError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        let max = self.config.max_body_bytes;
        let cap = match req.kind {
            BodyKind::Container => max,
            BodyKind::Json => max.min(MAX_JSON_BODY),
        };
        let too_large = SubmitError::TooLarge {
            limit: cap,
            json: req.kind == BodyKind::Json && cap < max,
        };
        if req.declared_len.is_some_and(|n| n > cap) {
            return Err(too_large);
        }
        let known_key = match req.idempotency_key.clone() {
            Some(k) => self
                .store
                .run(move |s| s.by_idempotency_key(&k))
                .await
                .map_err(internal)?
                .is_some(),
            None => false,
        };
        if !known_key {
            let active = self
                .store
                .run(|s| s.active_count())
                .await
                .map_err(internal)?;
            if active >= self.config.max_active_jobs {
                return Err(SubmitError::TooManyJobs {
                    limit: self.config.max_active_jobs,
                });
            }
        }

        let tmp = self
            .tmp_dir()
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let mut spooled = Spooled(Some(tmp.clone()));
        let (total, body_sha256) = match req.kind {
            BodyKind::Container => spool(req.body, &tmp, cap).await?,
            BodyKind::Json => {
                let (buf, total, sha) = read_all(req.body, cap).await?;
                let data = json_form_bytes(&buf, &self.config.limits)?;
                drop(buf);
                tokio::fs::write(&tmp, data).await.map_err(internal)?;
                (total, sha)
            }
        };
        let total = total.ok_or(too_large)?;

        // Decode with the limits and check against the signature before anything runs.
        let limits = self.config.limits.clone();
        let sig = self.workflow.inputs.clone();
        let path = tmp.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SubmitError> {
            let map = crate::fsutil::map(&path).map_err(internal)?;
            let payload = std::panic::catch_unwind(|| comfy_remote_protocol::decode(&map, &limits))
                .map_err(|_| internal("the container decoder panicked"))?
                .map_err(SubmitError::InvalidPayload)?;
            check_inputs(&sig, &payload).map_err(SubmitError::InvalidInput)
        })
        .await
        .map_err(internal)??;

        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.job_dir(&id);
        tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
        tokio::fs::rename(&tmp, layout::inputs_file(&dir))
            .await
            .map_err(internal)?;
        spooled.0 = None;
        let new = NewJob {
            id: id.clone(),
            retryable: req.retryable,
            idempotency_key: req.idempotency_key,
            body_sha256,
            input_bytes: total as i64,
        };
        let inserted = self.store.run(move |s| s.insert(&new)).await;
        let drop_dir = || async {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        };
        match inserted {
            Ok(Inserted::New(row)) => {
                tracing::info!(job = %id, bytes = total, "job accepted");
                self.accepted(&row).await;
                Ok(Submitted::New(row))
            }
            Ok(Inserted::Existing(row)) => {
                drop_dir().await;
                Ok(Submitted::Replayed(row))
            }
            Ok(Inserted::Conflict(row)) => {
                drop_dir().await;
                Err(SubmitError::KeyReused { job_id: row.id })
            }
            Err(e) => {
                drop_dir().await;
                Err(internal(e))
            }
        }
    }

    /// A job was inserted: make it live and wake the dispatcher.
    async fn accepted(&self, row: &JobRow) {
        self.metrics
            .submitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let live = self.add_live(
            &row.id,
            comfy_remote_protocol::api::Progress::start(comfy_remote_protocol::api::Phase::Queued),
        );
        live.publish(EventData::Status(Box::new(self.view(row, "").await)));
        self.wake.notify_one();
    }
}

/// Stream `body` into `path` while hashing it. `Ok((None, _))` once it
/// passes `cap` bytes (the caller answers 413).
async fn spool<S, E>(
    mut body: S,
    path: &std::path::Path,
    cap: u64,
) -> Result<(Option<u64>, String), SubmitError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: fmt::Display,
{
    let file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| SubmitError::BadBody(format!("reading the request body failed: {e}")))?;
        total += chunk.len() as u64;
        if total > cap {
            return Ok((None, String::new()));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(internal)?;
    }
    out.flush().await.map_err(internal)?;
    Ok((Some(total), hex::encode(hasher.finalize())))
}

/// Read a JSON body into memory (it is parsed whole), at most `cap` bytes.
async fn read_all<S, E>(
    mut body: S,
    cap: u64,
) -> Result<(Vec<u8>, Option<u64>, String), SubmitError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: fmt::Display,
{
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| SubmitError::BadBody(format!("reading the request body failed: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > cap {
            return Ok((Vec::new(), None, String::new()));
        }
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    let total = buf.len() as u64;
    Ok((buf, Some(total), hex::encode(hasher.finalize())))
}

/// The container bytes of a JSON body: the base64 form, or the plain
/// `{"inputs": {...}}` form encoded as a container.
fn json_form_bytes(buf: &[u8], limits: &Limits) -> Result<Vec<u8>, SubmitError> {
    let body = comfy_remote_protocol::parse_json_body(buf, limits).map_err(|e| {
        // Not JSON, or neither form: a malformed request. A value tree
        // that breaks the rules: the same error as in a container.
        if e.kind() == "invalid_json_body" {
            SubmitError::InvalidJson(e)
        } else {
            SubmitError::InvalidPayload(e)
        }
    })?;
    match body {
        JsonBody::Container(bytes) => Ok(bytes),
        JsonBody::Inputs(payload) => {
            comfy_remote_protocol::encode(&payload).map_err(SubmitError::InvalidPayload)
        }
    }
}
