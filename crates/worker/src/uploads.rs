//! Resumable uploads (docs/protocol.md §4.9): a large container sent in
//! pieces, so a broken connection costs the piece in flight, not the whole
//! body. The pieces go straight to a file under the spool (`uploads/`);
//! its length is the offset, so an upload survives a worker restart.
//! `POST /v1/jobs?upload=<id>` then submits it as any body.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use comfy_remote_protocol::api::{
    ErrorCode, HEADER_UPLOAD_LENGTH, HEADER_UPLOAD_OFFSET, UPLOAD_TTL_SECS,
};
use comfy_remote_protocol::http::{byte_count, Refusal};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::AppState;
use crate::error::{ApiError, Path};

/// The SHA-256 of each upload's bytes so far, kept as its pieces arrive, so
/// the submit that takes a finished upload need not read it again to hash
/// it (a worker restart forgets them; the submit then hashes the file).
#[derive(Debug, Default)]
pub struct Digests(Mutex<HashMap<PathBuf, (u64, Sha256)>>);

impl Digests {
    /// The running digest of the upload at `path` if it covers exactly its
    /// first `len` bytes (removed: whoever takes it puts it back).
    pub fn take(&self, path: &FsPath, len: u64) -> Option<Sha256> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(path) {
            Some((n, h)) if n == len => Some(h),
            _ if len == 0 => Some(Sha256::new()),
            _ => None,
        }
    }

    fn put(&self, path: PathBuf, len: u64, digest: Sha256) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 {
            // Uploads abandoned and swept: forget them.
            map.retain(|p, _| p.exists());
        }
        map.insert(path, (len, digest));
    }
}

fn dir(st: &AppState) -> PathBuf {
    st.engine.config.spool_dir.join("uploads")
}

/// The file of upload `id` (a UUID, else not found).
pub fn upload_path(st: &AppState, id: &str) -> Result<PathBuf, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("upload"));
    }
    Ok(dir(st).join(format!("{id}.part")))
}

async fn offset_of(path: &std::path::Path) -> Result<u64, ApiError> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(_) => Err(ApiError::not_found("upload")),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn with_offset(mut resp: Response, offset: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        resp.headers_mut().insert(HEADER_UPLOAD_OFFSET, v);
    }
    resp
}

/// `POST /v1/uploads`: a new, empty upload (201 with its URL).
pub async fn create(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let max = st.engine.config.max_body_bytes;
    let len = header_str(&headers, HEADER_UPLOAD_LENGTH);
    if byte_count(len, HEADER_UPLOAD_LENGTH)?.is_some_and(|len| len > max) {
        return Err(Refusal::too_large(max, false).into());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let path = upload_path(&st, &id)?;
    tokio::fs::create_dir_all(dir(&st))
        .await
        .map_err(ApiError::internal)?;
    tokio::fs::File::create(&path)
        .await
        .map_err(ApiError::internal)?;
    let url = format!("/v1/uploads/{id}");
    let mut resp = (
        StatusCode::CREATED,
        Json(serde_json::json!({"id": id, "offset": 0, "url": url})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(with_offset(resp, 0))
}

/// `HEAD /v1/uploads/{id}`: the bytes held so far.
pub async fn offset(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let n = offset_of(&upload_path(&st, &id)?).await?;
    Ok(with_offset(StatusCode::OK.into_response(), n))
}

/// `PATCH /v1/uploads/{id}` with `Upload-Offset`: append a piece that
/// starts where the upload ends (409 with `details.offset` otherwise). The
/// piece is appended as it arrives: a connection that breaks keeps what
/// came, and the client resumes from `HEAD`'s offset.
pub async fn append(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = upload_path(&st, &id)?;
    let have = offset_of(&path).await?;
    let at = byte_count(
        header_str(&headers, HEADER_UPLOAD_OFFSET),
        HEADER_UPLOAD_OFFSET,
    )?
    .ok_or_else(|| ApiError::bad_request("send the piece's start as Upload-Offset"))?;
    if at != have {
        return Err(Refusal::new(
            ErrorCode::Conflict,
            format!("the upload holds {have} bytes; send the piece that starts there"),
        )
        .with_details(serde_json::json!({"offset": have}))
        .into());
    }
    let max = st.engine.config.max_body_bytes;
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .map_err(ApiError::internal)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let digests = &st.engine.upload_digests;
    let mut digest = digests.take(&path, have);
    let mut total = have;
    let mut stream = body.into_data_stream();
    let mut broke = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                total += chunk.len() as u64;
                if total > max {
                    out.flush().await.map_err(ApiError::internal)?;
                    return Err(Refusal::too_large(max, false).into());
                }
                out.write_all(&chunk).await.map_err(ApiError::internal)?;
                if let Some(d) = digest.as_mut() {
                    d.update(&chunk);
                }
            }
            Err(e) => {
                broke = Some(e);
                break;
            }
        }
    }
    // What arrived stays, even from a broken connection.
    out.flush().await.map_err(ApiError::internal)?;
    if let Some(d) = digest {
        digests.put(path.clone(), total, d);
    }
    if let Some(e) = broke {
        return Err(ApiError::bad_request(format!(
            "the piece broke off after {} bytes ({e}); resume from Upload-Offset",
            total - have
        )));
    }
    Ok(with_offset(StatusCode::NO_CONTENT.into_response(), total))
}

/// Delete uploads older than [`UPLOAD_TTL_SECS`] (the janitor's sweep).
pub fn sweep(spool: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(spool.join("uploads")) else {
        return;
    };
    let ttl = std::time::Duration::from_secs(UPLOAD_TTL_SECS);
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ttl);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
