//! The submit: a container in memory or streamed from a file, to
//! `POST /v1/jobs` (or, for a simple JSON endpoint, its base64 form to the
//! URL as given), retried under one idempotency key.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use comfy_remote_protocol::api::{
    JobStatus, CONTAINER_MEDIA_TYPE, FEATURE_UPLOADS, FEATURE_WAIT, HEADER_IDEMPOTENCY_KEY,
    HEADER_JOB, JSON_FORM_FORMAT, UPLOAD_MIN_BYTES,
};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Url;

use super::{join, Client};
use crate::error::{ClientError, Result};
use crate::http::{is_container, read_body, read_json};
use crate::status::{JobDoc, ResultRef};

/// The body of a submit: container bytes in memory, or a container file
/// streamed from disk (reopened for every retry, sent with its
/// `Content-Length`, never read into memory whole).
#[derive(Debug, Clone)]
pub enum Upload {
    Bytes(Bytes),
    File(PathBuf),
}

impl From<Bytes> for Upload {
    fn from(b: Bytes) -> Self {
        Upload::Bytes(b)
    }
}

impl From<Vec<u8>> for Upload {
    fn from(b: Vec<u8>) -> Self {
        Upload::Bytes(Bytes::from(b))
    }
}

/// Read size of a streamed upload: large enough that a big container goes
/// out in few, large writes.
const UPLOAD_CHUNK: usize = 256 << 10;

pub(super) fn upload_error(path: &Path, source: std::io::Error) -> ClientError {
    ClientError::Upload {
        path: path.display().to_string(),
        source,
    }
}

/// The size of a body.
async fn upload_len(upload: &Upload) -> Result<u64> {
    match upload {
        Upload::Bytes(b) => Ok(b.len() as u64),
        Upload::File(path) => Ok(tokio::fs::metadata(path)
            .await
            .map_err(|e| upload_error(path, e))?
            .len()),
    }
}

/// A fresh body for one attempt: the file reopened from its start, and its length.
async fn file_body(path: &Path) -> Result<(reqwest::Body, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| upload_error(path, e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| upload_error(path, e))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK);
    Ok((reqwest::Body::wrap_stream(stream), len))
}

impl Client {
    pub async fn submit(&self, body: Bytes, idempotency_key: &str) -> Result<(Url, JobDoc)> {
        self.submit_upload(Upload::Bytes(body), idempotency_key)
            .await
    }

    /// Submit a container, in memory or streamed from a file, once
    /// (retried with one idempotency key; a file is reopened for each try).
    pub async fn submit_upload(
        &self,
        upload: Upload,
        idempotency_key: &str,
    ) -> Result<(Url, JobDoc)> {
        let native = self.is_native().await?;
        let features = self
            .signature()
            .await?
            .map(|s| s.features)
            .unwrap_or_default();
        let serves = |f: &str| features.iter().any(|g| g == f);
        let (url, content_type, upload) = if native {
            let mut url = join(&self.base, "v1/jobs")?;
            let len = upload_len(&upload).await?;
            if serves(FEATURE_UPLOADS) && len >= UPLOAD_MIN_BYTES {
                // Large: in pieces that survive a broken connection.
                let id = self.upload_resumable(&upload, len).await?;
                url.query_pairs_mut().append_pair("upload", &id);
                (url, CONTAINER_MEDIA_TYPE, Upload::Bytes(Bytes::new()))
            } else {
                (url, CONTAINER_MEDIA_TYPE, upload)
            }
        } else {
            // The JSON form carries the container as base64: it needs the
            // bytes in memory either way.
            let body = match upload {
                Upload::Bytes(b) => b,
                Upload::File(path) => Bytes::from(
                    tokio::fs::read(&path)
                        .await
                        .map_err(|e| upload_error(&path, e))?,
                ),
            };
            let form = serde_json::json!({
                "format": JSON_FORM_FORMAT,
                "data": base64::engine::general_purpose::STANDARD.encode(&body),
            });
            (
                self.endpoint.clone(),
                "application/json",
                Upload::Bytes(Bytes::from(form.to_string())),
            )
        };
        // A native endpoint that waits may answer with the result itself.
        let wait = self
            .opts
            .submit_wait
            .filter(|w| native && !w.is_zero() && serves(FEATURE_WAIT));
        // A submit that waits may be answered with the result container.
        let accept = match wait {
            Some(_) => format!("application/json, {CONTAINER_MEDIA_TYPE}"),
            None => "application/json".to_owned(),
        };
        let request = || {
            let mut r = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, content_type)
                .header(ACCEPT, accept.as_str())
                .header(HEADER_IDEMPOTENCY_KEY, idempotency_key)
                .timeout(self.opts.request_timeout);
            if let Some(w) = wait {
                r = self
                    .result_headers(r)
                    .header("Prefer", format!("wait={}", w.as_secs().max(1)));
            }
            r
        };
        let sent = self
            .send_with("POST", &url, || async {
                Ok(match &upload {
                    Upload::Bytes(body) => request().body(body.clone()),
                    Upload::File(path) => {
                        let (body, len) = file_body(path).await?;
                        request().header(CONTENT_LENGTH, len).body(body)
                    }
                })
            })
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(ClientError::Http {
                status: post @ (404 | 405 | 501),
                message,
                ..
            }) if !native && self.info_status.load(std::sync::atomic::Ordering::Relaxed) != 0 => {
                // Neither an info document nor a JSON-shape submit route:
                // most likely some other web server.
                let info = self.info_status.load(std::sync::atomic::Ordering::Relaxed);
                let seen = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                return Err(ClientError::protocol(
                    url.as_str(),
                    format!(
                        "not a comfy-remote endpoint (GET /v1/info -> {info}, POST {} -> {post}){seen}",
                        url.path()
                    ),
                ));
            }
            Err(e) => {
                if matches!(
                    e,
                    ClientError::Http {
                        status: 400..=499,
                        ..
                    }
                ) {
                    // Perhaps planned with a stale signature: ask again next time.
                    self.forget_signature().await;
                }
                return Err(e);
            }
        };
        if is_container(&resp) {
            // The job ended while the submit waited: this is its result.
            let id = resp
                .headers()
                .get(HEADER_JOB)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let at = resp.url().clone();
            let bytes = read_body(&url, resp).await?;
            let doc = JobDoc {
                id,
                status: Some(JobStatus::Succeeded),
                result: Some(ResultRef::Inline(bytes)),
                ..JobDoc::default()
            };
            return Ok((at, doc));
        }
        let (at, json) = read_json(&url, resp).await?;
        let doc = JobDoc::parse(&json).map_err(|r| ClientError::protocol(at.as_str(), r))?;
        Ok((at, doc))
    }
}
