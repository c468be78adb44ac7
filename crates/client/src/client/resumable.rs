//! A large container sent as a resumable upload (docs/protocol.md §4.9):
//! pieces of [`UPLOAD_PIECE_BYTES`] appended at the offset the server
//! holds, so a connection that breaks costs the piece in flight; after a
//! failure the client asks `HEAD` where to resume.

use std::io::SeekFrom;

use bytes::Bytes;
use comfy_remote_protocol::api::{HEADER_UPLOAD_LENGTH, HEADER_UPLOAD_OFFSET, UPLOAD_PIECE_BYTES};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::upload::{upload_error, Upload};
use super::{join, Client};
use crate::error::{ClientError, Result};
use crate::http::{http_error, read_json};
use crate::retry::{is_retryable_error, is_retryable_status};

/// The bytes `[start, end)` of the body.
async fn piece(upload: &Upload, start: u64, end: u64) -> Result<Bytes> {
    match upload {
        Upload::Bytes(b) => Ok(b.slice(start as usize..end as usize)),
        Upload::File(path) => {
            let mut f = tokio::fs::File::open(path)
                .await
                .map_err(|e| upload_error(path, e))?;
            f.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| upload_error(path, e))?;
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact(&mut buf)
                .await
                .map_err(|e| upload_error(path, e))?;
            Ok(Bytes::from(buf))
        }
    }
}

fn offset_header(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(HEADER_UPLOAD_OFFSET)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Client {
    /// Upload `len` bytes of `upload` in pieces; its id, for
    /// `POST /v1/jobs?upload=<id>`.
    pub(super) async fn upload_resumable(&self, upload: &Upload, len: u64) -> Result<String> {
        let create = join(&self.base, "v1/uploads")?;
        let resp = self
            .send("POST", &create, || {
                self.http
                    .post(create.clone())
                    .header(ACCEPT, "application/json")
                    .header(HEADER_UPLOAD_LENGTH, len)
                    .timeout(self.opts.request_timeout)
            })
            .await?;
        let (_, doc) = read_json(&create, resp).await?;
        let (Some(id), Some(path)) = (doc["id"].as_str(), doc["url"].as_str()) else {
            return Err(ClientError::protocol(
                create.as_str(),
                "POST /v1/uploads answered without an id and url",
            ));
        };
        let at = join(&self.base, path)?;
        let policy = &self.opts.retry;
        let mut offset = 0u64;
        let mut failures = 0u32;
        while offset < len {
            let end = (offset + UPLOAD_PIECE_BYTES).min(len);
            let body = piece(upload, offset, end).await?;
            let sent = self
                .http
                .patch(at.clone())
                .header(CONTENT_TYPE, "application/offset+octet-stream")
                .header(HEADER_UPLOAD_OFFSET, offset)
                .timeout(self.opts.request_timeout)
                .body(body)
                .send()
                .await;
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => {
                    offset = offset_header(&resp).unwrap_or(end);
                    failures = 0;
                    continue;
                }
                // The server holds another offset than this client thought.
                Ok(resp) if resp.status() == StatusCode::CONFLICT => None,
                Ok(resp) if !is_retryable_status(resp.status()) => {
                    return Err(http_error("PATCH", &at, resp).await);
                }
                Ok(resp) => Some(http_error("PATCH", &at, resp).await),
                Err(e) if is_retryable_error(&e) || e.is_body() || e.is_request() => {
                    Some(ClientError::Unreachable {
                        url: at.to_string(),
                        attempts: failures + 1,
                        source: e,
                    })
                }
                Err(source) => {
                    return Err(ClientError::Unreachable {
                        url: at.to_string(),
                        attempts: failures + 1,
                        source,
                    })
                }
            };
            failures += 1;
            if failures >= policy.max_attempts.max(1) {
                return Err(failure.unwrap_or_else(|| {
                    ClientError::protocol(at.as_str(), "the upload's offset keeps moving")
                }));
            }
            if failure.is_some() {
                let delay = policy.backoff(failures - 1);
                tracing::debug!(url = %at, offset, ?delay, "upload piece failed; resuming");
                tokio::time::sleep(delay).await;
            }
            offset = self.upload_offset(&at).await?;
        }
        Ok(id.to_owned())
    }

    /// The bytes the server holds of the upload at `at` (`HEAD`, retried).
    async fn upload_offset(&self, at: &Url) -> Result<u64> {
        let resp = self
            .send("HEAD", at, || {
                self.http
                    .head(at.clone())
                    .timeout(self.opts.request_timeout)
            })
            .await?;
        offset_header(&resp).ok_or_else(|| {
            ClientError::protocol(
                at.as_str(),
                "HEAD of an upload answered without Upload-Offset",
            )
        })
    }
}
