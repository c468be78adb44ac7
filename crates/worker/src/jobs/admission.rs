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
use comfy_remote_contract::{check_inputs, layout};
use comfy_remote_protocol::api::ErrorCode;
use comfy_remote_protocol::http::{json_body_container, Refusal, SubmitMedia};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Engine;
use crate::live::EventData;
use crate::store::{Inserted, JobRow, NewJob};

/// A submit, as the HTTP layer parsed its headers and query.
#[derive(Debug)]
pub struct SubmitRequest<S> {
    pub media: SubmitMedia,
    /// `?retry=true`: run again from the start after a worker restart.
    pub retryable: bool,
    pub idempotency_key: Option<String>,
    pub body: SubmitBody<S>,
}

/// Where a submit's container comes from.
#[derive(Debug)]
pub enum SubmitBody<S> {
    /// The request body, streamed.
    Stream(S),
    /// A finished upload (§4.9), already in the spool: taken, not copied.
    Upload(PathBuf),
}

/// What a submit did.
#[derive(Debug)]
pub enum Submitted {
    /// A new job (202).
    New(JobRow),
    /// The job a replayed idempotency key created (200).
    Replayed(JobRow),
}

/// Why a submit was not admitted.
#[derive(Debug)]
pub enum SubmitError {
    /// An answer of the protocol (413, 400, 422, 409, 429, ...).
    Refused(Refusal),
    /// A failure of ours (logged, not sent).
    Internal(String),
}

impl From<Refusal> for SubmitError {
    fn from(r: Refusal) -> Self {
        SubmitError::Refused(r)
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

pub(super) fn internal(e: impl fmt::Display) -> SubmitError {
    SubmitError::Internal(e.to_string())
}

fn read_error(e: impl fmt::Display) -> SubmitError {
    Refusal::new(
        ErrorCode::BadRequest,
        format!("reading the request body failed: {e}"),
    )
    .into()
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
        let cap = req.media.limit(max);
        let known = match req.idempotency_key.clone() {
            Some(k) => self
                .store
                .read(move |s| s.by_idempotency_key(&k))
                .await
                .map_err(internal)?,
            None => None,
        };
        if let (SubmitBody::Upload(path), Some(row)) = (&req.body, &known) {
            // A retried submit of an upload its first try consumed.
            if !tokio::fs::try_exists(path).await.unwrap_or(false) {
                return Ok(Submitted::Replayed(row.clone()));
            }
        }
        self.check_capacity(known.is_some()).await?;

        let tmp = self
            .tmp_dir()
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let mut spooled = Spooled(Some(tmp.clone()));
        let (total, body_sha256) = match (req.body, req.media) {
            (SubmitBody::Upload(path), _) => {
                take_upload(&path, &tmp, cap, &self.upload_digests).await?
            }
            (SubmitBody::Stream(body), SubmitMedia::Container) => spool(body, &tmp, cap).await?,
            (SubmitBody::Stream(body), SubmitMedia::Json) => {
                let (buf, total, sha) = read_all(body, cap).await?;
                if total.is_some() {
                    let data = json_body_container(&buf, &self.config.limits)
                        .map_err(|e| Refusal::bad_payload(&e))?;
                    drop(buf);
                    tokio::fs::write(&tmp, data).await.map_err(internal)?;
                }
                (total, sha)
            }
        };
        let total = total.ok_or_else(|| req.media.too_large(max))?;

        // Decode with the limits and check against the signature before anything runs.
        let limits = self.config.limits.clone();
        let sig = self.workflow.inputs.clone();
        let path = tmp.clone();
        tokio::task::spawn_blocking(move || -> Result<(), SubmitError> {
            let map = crate::fsutil::map(&path).map_err(internal)?;
            let payload = std::panic::catch_unwind(|| comfy_remote_protocol::decode(&map, &limits))
                .map_err(|_| internal("the container decoder panicked"))?
                .map_err(|e| Refusal::bad_payload(&e))?;
            check_inputs(&sig, &payload).map_err(|e| {
                Refusal::new(ErrorCode::InvalidInput, e.message)
                    .with_details(serde_json::json!({"input": e.input}))
                    .into()
            })
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
            prompt: None,
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
                Err(Refusal::new(
                    ErrorCode::Conflict,
                    "this Idempotency-Key was used for a different request body; use a new key for a new job",
                )
                .with_details(serde_json::json!({"job_id": row.id}))
                .into())
            }
            Err(e) => {
                drop_dir().await;
                Err(internal(e))
            }
        }
    }

    /// The limit on unfinished jobs (429 beyond it); a replay of a known
    /// idempotency key (`known_key`) passes.
    pub(super) async fn check_capacity(&self, known_key: bool) -> Result<(), SubmitError> {
        if known_key {
            return Ok(());
        }
        let active = self
            .store
            .read(|s| s.active_count())
            .await
            .map_err(internal)?;
        if active >= self.config.max_active_jobs {
            return Err(Refusal::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this worker already holds {} unfinished jobs; retry later",
                    self.config.max_active_jobs
                ),
            )
            .into());
        }
        Ok(())
    }

    /// A job was inserted: make it live and wake the dispatcher.
    pub(super) async fn accepted(&self, row: &JobRow) {
        self.metrics
            .submitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (live, made) = self.live_or_add(
            &row.id,
            comfy_remote_protocol::api::Progress::start(comfy_remote_protocol::api::Phase::Queued),
        );
        // Else the dispatcher claimed the job first and speaks for it.
        if made {
            live.publish(EventData::Status(Box::new(self.view(row, "").await)));
        }
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
        let chunk = chunk.map_err(read_error)?;
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

/// Move a finished upload to `tmp` with its hash: the one its pieces were
/// hashed into as they came, else read again (on a blocking thread: it may
/// be gigabytes). `Ok((None, _))` when it is over `cap` bytes.
async fn take_upload(
    upload: &std::path::Path,
    tmp: &std::path::Path,
    cap: u64,
    digests: &crate::uploads::Digests,
) -> Result<(Option<u64>, String), SubmitError> {
    let len = tokio::fs::metadata(upload)
        .await
        .map_err(|_| {
            SubmitError::from(Refusal::new(
                ErrorCode::NotFound,
                "upload not found (it was submitted already, or expired)",
            ))
        })?
        .len();
    if len > cap {
        return Ok((None, String::new()));
    }
    let digest = digests.take(upload, len);
    tokio::fs::rename(upload, tmp).await.map_err(internal)?;
    if let Some(d) = digest {
        return Ok((Some(len), hex::encode(d.finalize())));
    }
    let path = tmp.to_path_buf();
    let sha = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok((Some(len), sha))
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
        let chunk = chunk.map_err(read_error)?;
        if (buf.len() + chunk.len()) as u64 > cap {
            return Ok((Vec::new(), None, String::new()));
        }
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    let total = buf.len() as u64;
    Ok((buf, Some(total), hex::encode(hasher.finalize())))
}
