//! The submit: a container in memory or streamed from a file, to
//! `POST /v1/jobs` (or, for a simple JSON endpoint, its base64 form to the
//! URL as given), retried under one idempotency key.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use comfy_remote_protocol::api::{CONTAINER_MEDIA_TYPE, HEADER_IDEMPOTENCY_KEY, JSON_FORM_FORMAT};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Url;

use super::{join, Client};
use crate::error::{ClientError, Result};
use crate::http::read_json;
use crate::status::JobDoc;

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

fn upload_error(path: &Path, source: std::io::Error) -> ClientError {
    ClientError::Upload {
        path: path.display().to_string(),
        source,
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
        let (url, content_type, upload) = if native {
            (join(&self.base, "v1/jobs")?, CONTAINER_MEDIA_TYPE, upload)
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
        let request = || {
            self.http
                .post(url.clone())
                .header(CONTENT_TYPE, content_type)
                .header(ACCEPT, "application/json")
                .header(HEADER_IDEMPOTENCY_KEY, idempotency_key)
                .timeout(self.opts.request_timeout)
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
        let (at, json) = read_json(&url, resp).await?;
        let doc = JobDoc::parse(&json).map_err(|r| ClientError::protocol(at.as_str(), r))?;
        Ok((at, doc))
    }
}
