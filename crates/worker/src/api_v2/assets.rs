//! `/api/v2/assets`: multipart upload (read with `v2::assets::FormReader`,
//! streamed to the spool and hashed with blake3 on the way, never held in memory), minting over bytes the
//! server has (`from-hash`), the `HEAD by-hash` probe, metadata, delete,
//! and the bytes with `Range`.

use comfy_remote_protocol::v2::assets::AssetRecord;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;

use comfy_remote_protocol::http::{byte_range, RangeError};
use comfy_remote_protocol::v2::assets::{self, FormReader, Part};
use comfy_remote_protocol::v2::view::is_blake3;
use comfy_remote_protocol::v2::wire::Asset;
use comfy_remote_protocol::v2::{submit, Code, Refusal};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::blobs::Spool;
use super::store::AssetRow;
use super::{check_id, V2Error, V2};
use crate::error::Path;
use crate::store::now_ms;

impl V2 {
    fn asset_json(&self, a: &AssetRow, created_new: Option<bool>, base: &str) -> Asset {
        a.record
            .asset(created_new, base, now_ms() + self.retention_ms())
    }

    /// The expiry of an asset created now, kept `expires_in` seconds (else the retention).
    fn expiry(&self, expires_in: Option<i64>) -> i64 {
        now_ms() + expires_in.map_or(self.retention_ms(), |s| s * 1000)
    }

    async fn live_asset(&self, id: &str) -> Result<AssetRow, V2Error> {
        check_id(id, "asset")?;
        let key = id.to_owned();
        self.store
            .read(move |s| s.asset(&key))
            .await?
            .ok_or_else(|| Refusal::not_found("asset").into())
    }

    async fn claim(&self, key: &Option<String>) -> Result<(), V2Error> {
        if let Some(k) = key.clone() {
            if !self.store.run(move |s| s.claim_key(&k)).await? {
                return Err(submit::key_reused().into());
            }
        }
        Ok(())
    }
}

fn asset_key(headers: &HeaderMap) -> Result<Option<String>, V2Error> {
    Ok(headers
        .get("idempotency-key")
        .map(|v| submit::idempotency_key(v.as_bytes()))
        .transpose()?
        .map(|k| format!("assets:{k}")))
}

/// `POST /api/v2/assets`: `file` (the bytes), `file_path`, optional
/// `content_type`, `expected_hash`, `expires_in`, `tags`.
pub(super) async fn upload(State(v2): State<Arc<V2>>, req: Request) -> Result<Response, V2Error> {
    let headers = req.headers().clone();
    let key = asset_key(&headers)?;
    let limit = v2.config.max_asset_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // The form's other fields are small: allow them 1 MiB beside the file.
    if declared.is_some_and(|n| n > limit.saturating_add(1 << 20)) {
        return Err(assets::too_large(limit).into());
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut form = FormReader::new(ctype)?;
    let mut fields = HashMap::new();
    let mut spool: Option<Spool> = None;
    let mut file: Option<(std::path::PathBuf, u64, String)> = None;
    let mut part_type: Option<String> = None;
    let mut body = req.into_body().into_data_stream();
    let read: Result<(), V2Error> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Refusal::new(
                    Code::InvalidRequest,
                    format!("reading the upload failed: {e}"),
                )
            })?;
            for part in form.feed(&chunk)? {
                match part {
                    Part::Field { name, value } => {
                        fields.insert(name, value);
                    }
                    Part::FileStart { content_type, .. } => {
                        if file.is_some() || spool.is_some() {
                            return Err(Refusal::new(
                                Code::InvalidRequest,
                                "the form has two `file` parts",
                            )
                            .into());
                        }
                        part_type = content_type;
                        spool = Some(v2.blobs.spool().await.map_err(V2Error::internal)?);
                    }
                    Part::FileData(d) => {
                        if let Some(s) = spool.as_mut() {
                            if s.size() + d.len() as u64 > limit {
                                return Err(assets::too_large(limit).into());
                            }
                            s.write(&d).await.map_err(V2Error::internal)?;
                        }
                    }
                    Part::FileEnd => {
                        if let Some(s) = spool.take() {
                            file = Some(s.finish().await.map_err(V2Error::internal)?);
                        }
                    }
                }
            }
        }
        form.finish()?;
        Ok(())
    }
    .await;
    if let Some(s) = spool.take() {
        s.discard().await;
    }
    let discard = |file: &Option<(std::path::PathBuf, u64, String)>| {
        if let Some((p, ..)) = file {
            let _ = std::fs::remove_file(p);
        }
    };
    let checked = read.and_then(|()| {
        let upload = assets::upload_fields(&fields, file.is_some(), part_type.as_deref())?;
        if let Some((_, _, hash)) = &file {
            assets::check_hash(upload.expected_hash.as_deref(), hash)?;
        }
        Ok(upload)
    });
    let upload = match checked {
        Ok(u) => u,
        Err(e) => {
            discard(&file);
            return Err(e);
        }
    };
    if let Err(e) = v2.claim(&key).await {
        discard(&file);
        return Err(e);
    }
    let Some((spooled, size, hash)) = file else {
        return Err(V2Error::internal("the spooled upload vanished"));
    };
    let row = AssetRow {
        record: AssetRecord {
            id: uuid::Uuid::new_v4().to_string(),
            hash: hash.clone(),
            size_bytes: size,
            content_type: upload.content_type,
            file_path: Some(upload.file_path),
            created_at: now_ms(),
            expires_at: Some(v2.expiry(upload.expires_in)),
            job_id: None,
        },
        node_id: None,
        name: None,
        kind: None,
    };
    let created_new = {
        let _blobs = v2.blob_lock.lock().await;
        let new = !v2.blobs.exists(&hash);
        v2.blobs
            .keep(&spooled, &hash)
            .await
            .map_err(V2Error::internal)?;
        let r = row.clone();
        v2.store.run(move |s| s.insert_asset(&r)).await?;
        new
    };
    tracing::info!(asset = %row.id, bytes = size, new = created_new, "asset stored");
    let status = if created_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(v2.asset_json(&row, Some(created_new), &v2.base(&headers))),
    )
        .into_response())
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct FromHash {
    hash: Option<String>,
    file_path: Option<String>,
    expires_in: Option<i64>,
}

/// `POST /api/v2/assets/from-hash`: a new asset over bytes the server has.
pub(super) async fn from_hash(
    State(v2): State<Arc<V2>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, V2Error> {
    let req: FromHash = serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            Code::InvalidRequest,
            format!("the body must be JSON {{\"hash\": ...}} ({e})"),
        )
    })?;
    let hash = req.hash.ok_or_else(|| {
        Refusal::new(
            Code::InvalidRequest,
            "the body has no `hash` (blake3:<hex>)",
        )
    })?;
    let not_found = || {
        V2Error::from(Refusal::new(
            Code::BlobNotFound,
            "no bytes with this hash here; upload them (POST /api/v2/assets)",
        ))
    };
    if !is_blake3(&hash) {
        return Err(not_found());
    }
    let expires_in = assets::expires_in(req.expires_in.map(|n| n.to_string()).as_deref())?;
    let expires_at = v2.expiry(expires_in);
    let _blobs = v2.blob_lock.lock().await;
    let h = hash.clone();
    let Some(existing) = v2.store.read(move |s| s.by_hash(&h)).await? else {
        return Err(not_found());
    };
    if !v2.blobs.exists(&hash) {
        return Err(not_found());
    }
    let row = AssetRow {
        record: AssetRecord {
            id: uuid::Uuid::new_v4().to_string(),
            hash,
            size_bytes: existing.size_bytes,
            content_type: existing.content_type.clone(),
            file_path: req.file_path.or(existing.record.file_path),
            created_at: now_ms(),
            expires_at: Some(expires_at),
            job_id: None,
        },
        node_id: None,
        name: None,
        kind: None,
    };
    let r = row.clone();
    v2.store.run(move |s| s.insert_asset(&r)).await?;
    Ok((
        StatusCode::CREATED,
        Json(v2.asset_json(&row, Some(false), &v2.base(&headers))),
    )
        .into_response())
}

/// `HEAD /api/v2/assets/by-hash/{hash}`: 200 when the server has the bytes.
pub(super) async fn by_hash(
    State(v2): State<Arc<V2>>,
    Path(hash): Path<String>,
) -> Result<Response, V2Error> {
    if !is_blake3(&hash) {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    let h = hash.clone();
    let known = v2.store.read(move |s| s.by_hash(&h)).await?.is_some() && v2.blobs.exists(&hash);
    Ok(if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response())
}

/// `GET /api/v2/assets/{id}`.
pub(super) async fn get(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    let a = v2.live_asset(&id).await?;
    Ok(Json(v2.asset_json(&a, None, &v2.base(&headers))).into_response())
}

/// `DELETE /api/v2/assets/{id}`: an uploaded asset (a job's outputs go with the job).
pub(super) async fn delete(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
) -> Result<Response, V2Error> {
    let a = v2.live_asset(&id).await?;
    if a.job_id.is_some() {
        return Err(Refusal::new(
            Code::AssetInUse,
            "this asset is an output of a job; it is deleted with the job's result",
        )
        .into());
    }
    if !v2.delete_asset(&id).await? {
        return Err(Refusal::not_found("asset").into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v2/assets/{id}/content`: the bytes, or the one range asked for.
pub(super) async fn content(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    let a = v2.live_asset(&id).await?;
    let path = v2.blobs.path(&a.hash);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| Refusal::not_found("asset content"))?;
    let len = file.metadata().await.map_err(V2Error::internal)?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, count) = match byte_range(range, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Err(RangeError::Unsatisfiable) => {
            let mut resp = V2Error::from(Refusal::new(
                Code::RangeNotSatisfiable,
                format!("the asset has {len} bytes; the range asked for is outside them"),
            ))
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    if first > 0 {
        file.seek(std::io::SeekFrom::Start(first))
            .await
            .map_err(V2Error::internal)?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(count),
        1 << 20,
    ));
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    let mut set = |k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, a.content_type.clone());
    set(header::CONTENT_LENGTH, count.to_string());
    set(header::ACCEPT_RANGES, "bytes".into());
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            format!("bytes {first}-{}/{len}", first + count - 1),
        );
    }
    if let Some(name) = a.name.as_deref().or(a.file_path.as_deref()) {
        let safe: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
            .collect();
        set(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{safe}\""),
        );
    }
    Ok(resp)
}
