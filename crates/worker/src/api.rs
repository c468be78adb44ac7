//! The HTTP API (protocol v1): routes, auth, submit with a streamed body,
//! status, SSE events, result download, cancel, info, health and metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use comfy_remote_protocol::api::{
    ErrorCode, Info, JobStatus, LimitsInfo, WorkflowInfo, CONTAINER_MEDIA_TYPE, FEATURE_RANGE,
    FEATURE_UPLOADS, FEATURE_WAIT, HEADER_CODECS, HEADER_IDEMPOTENCY_KEY, HEADER_IMAGES,
    HEADER_JOB, HEADER_PROTOCOL,
};
use comfy_remote_protocol::http::{self, BearerToken, SubmitMedia};
use comfy_remote_protocol::{PackOptions, PROTOCOL_VERSION};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Path, Query};
use crate::jobs::{Engine, SubmitBody, SubmitError, SubmitRequest, Submitted};
use crate::live::EventData;
use crate::store::JobRow;
use crate::uploads;

/// State shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The bearer token, when one is required.
    pub token: Option<BearerToken>,
    /// Base of the URLs in job views; derived from `Host` when `None`.
    pub public_url: Option<String>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, token: Option<&str>, public_url: Option<String>) -> Self {
        AppState {
            engine,
            token: token.and_then(BearerToken::new),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }
}

/// The worker's router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/jobs", post(submit).layer(DefaultBodyLimit::disable()))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/uploads", post(uploads::create))
        .route(
            "/v1/uploads/{id}",
            axum::routing::head(uploads::offset)
                .patch(uploads::append)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|| async { Json(comfy_remote_protocol::openapi::document()) }),
        )
        .merge(v1)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}", uri.path()),
    )
}

async fn common_headers(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(HEADER_PROTOCOL, HeaderValue::from_static(PROTOCOL_VERSION));
    if resp.status().is_client_error() {
        st.engine.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.admits(given) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    http::base_url(
        st.public_url.as_deref(),
        h("x-forwarded-host").or(h("host")),
        h("x-forwarded-proto"),
    )
}

async fn readyz(State(st): State<AppState>) -> Response {
    let comfy = &st.engine.comfy;
    let ready = *comfy.ready.borrow();
    // Public: whether, and why not; nothing about ComfyUI's address or process.
    let reason = if ready {
        "ComfyUI answers"
    } else if comfy.restarts.load(Ordering::Relaxed) > 0 {
        "ComfyUI is restarting"
    } else {
        "ComfyUI is not answering yet"
    };
    let body = serde_json::json!({ "ready": ready, "reason": reason });
    if ready {
        Json(body).into_response()
    } else {
        let e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, reason)
            .with_details(body);
        e.into_response()
    }
}

async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let e = &st.engine;
    let counts = e.store.read(|s| s.counts()).await?;
    let mut text = e.metrics.render(
        &counts,
        e.comfy.restarts.load(Ordering::Relaxed),
        *e.comfy.ready.borrow(),
    );
    text.push_str(&format!(
        "# HELP comfy_remote_comfyui_pid Process id of the ComfyUI child (0 when attached or down).\n\
         # TYPE comfy_remote_comfyui_pid gauge\ncomfy_remote_comfyui_pid {}\n",
        e.comfy.pid.load(Ordering::Relaxed)
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// What this worker serves beyond the core protocol (`features` in `/v1/info`).
const FEATURES: &[&str] = &[FEATURE_WAIT, FEATURE_RANGE, FEATURE_UPLOADS];

/// The signature and limits of this worker.
pub fn info_document(engine: &Engine) -> Info {
    let wf = &engine.workflow;
    let c = &engine.config;
    Info {
        protocol: PROTOCOL_VERSION.to_owned(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        workflow: WorkflowInfo {
            name: wf.name.clone(),
            sha256: wf.sha256.clone(),
        },
        inputs: wf.inputs.clone(),
        outputs: wf.outputs.clone(),
        limits: LimitsInfo {
            max_body_bytes: c.max_body_bytes,
            max_tensors: c.limits.max_tensors as u64,
            max_rank: c.limits.max_rank as u64,
            max_concurrent_jobs: c.max_active_jobs,
        },
        codecs: comfy_remote_protocol::packed::CODECS
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// The info document with its ETag; `If-None-Match` with it is a 304, so a
/// client revalidating a cached signature moves no body.
async fn info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let doc = info_document(&st.engine);
    let text = serde_json::to_string(&doc).unwrap_or_default();
    let etag = format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(text.as_bytes()))[..32]
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], text).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let engine = &st.engine;
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let media = SubmitMedia::of(header(header::CONTENT_TYPE))?;
    media.check_length(header(header::CONTENT_LENGTH), engine.config.max_body_bytes)?;
    let retryable = http::retry_query(query.get("retry").map(String::as_str))?;
    let idempotency_key = headers
        .get(HEADER_IDEMPOTENCY_KEY)
        .map(|v| http::idempotency_key(v.as_bytes()))
        .transpose()?;
    // `?upload=<id>`: the container is a finished resumable upload.
    let body = match query.get("upload") {
        Some(id) => SubmitBody::Upload(uploads::upload_path(&st, id)?),
        None => SubmitBody::Stream(body.into_data_stream()),
    };
    let submitted = engine
        .submit(SubmitRequest {
            media,
            retryable,
            idempotency_key,
            body,
        })
        .await
        .map_err(|e| match e {
            SubmitError::Refused(r) => ApiError::from(r),
            SubmitError::Internal(internal) => ApiError::internal(internal),
        })?;
    let base = base_url(&st, &headers);
    let row = match &submitted {
        Submitted::New(row) | Submitted::Replayed(row) => row,
    };
    if let Some(secs) = http::prefer_wait(
        headers.get("prefer").and_then(|v| v.to_str().ok()),
        http::MAX_WAIT_SECS,
    ) {
        if let Some(done) = engine.wait_terminal(&row.id, secs).await? {
            return answer_waited(&st, &done, &headers, &base, secs).await;
        }
    }
    match submitted {
        Submitted::New(row) => {
            let view = engine.view(&row, &base).await;
            let mut resp = (StatusCode::ACCEPTED, Json(&view)).into_response();
            if let Ok(v) = HeaderValue::from_str(&view.poll_url) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Submitted::Replayed(row) => {
            Ok((StatusCode::OK, Json(engine.view(&row, &base).await)).into_response())
        }
    }
}

/// The answer to a submit whose job ended while it waited: the result
/// itself for a succeeded job (200, the container, `Comfy-Remote-Job`), the
/// final JobView otherwise (200).
async fn answer_waited(
    st: &AppState,
    row: &JobRow,
    headers: &HeaderMap,
    base: &str,
    secs: u64,
) -> Result<Response, ApiError> {
    let view = st.engine.view(row, base).await;
    let mut resp = if row.status == JobStatus::Succeeded {
        serve_result(st, row, headers).await?
    } else {
        (StatusCode::OK, Json(&view)).into_response()
    };
    let hs = resp.headers_mut();
    for (k, v) in [
        (HEADER_JOB, row.id.clone()),
        ("location", view.poll_url.clone()),
        ("preference-applied", format!("wait={secs}")),
    ] {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            hs.insert(k, v);
        }
    }
    Ok(resp)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("job"));
    }
    Ok(())
}

/// The stored job with this id; a malformed id is "not found" too.
async fn stored_job(st: &AppState, id: &str) -> Result<JobRow, ApiError> {
    check_id(id)?;
    st.engine
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))
}

async fn status(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = stored_job(&st, &id).await?;
    Ok(Json(st.engine.view(&row, &base_url(&st, &headers)).await).into_response())
}

async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let row = st
        .engine
        .cancel(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(st.engine.view(&row, &base_url(&st, &headers)).await),
    )
        .into_response())
}

async fn result(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = stored_job(&st, &id).await?;
    match row.status {
        JobStatus::Succeeded => {}
        JobStatus::Expired => {
            return Err(ApiError::new(
                StatusCode::GONE,
                ErrorCode::Expired,
                "this job's result was deleted by the retention policy",
            ))
        }
        s if s.is_terminal() => {
            let e = ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                format!("the job {} and has no result", s.as_str()),
            );
            return Err(e.with_details(serde_json::to_value(&row.error).unwrap_or_default()));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "the job has not finished; follow its events or poll it",
            ))
        }
    }
    serve_result(&st, &row, &headers).await
}

/// The result of a succeeded job as the request asks for it: the base64
/// JSON form for `Accept: application/json`; else the container, packed as
/// far as `Comfy-Remote-Codecs`/`Comfy-Remote-Images` allow (§2.7), whole
/// or the one `Range` asked for (206, `If-Range` honoured), with an ETag.
async fn serve_result(
    st: &AppState,
    row: &JobRow,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let wants_json = h("accept")
        .is_some_and(|a| a.contains("application/json") && !a.contains(CONTAINER_MEDIA_TYPE));
    if wants_json {
        let path = st.engine.result_file(row, &PackOptions::default()).await?;
        let bytes = tokio::fs::read(&path).await.map_err(ApiError::internal)?;
        return Ok(
            Json(comfy_remote_protocol::api::JsonForm::from_container(&bytes)).into_response(),
        );
    }
    let packing = http::result_packing(h(HEADER_CODECS), h(HEADER_IMAGES));
    let path = st.engine.result_file(row, &packing).await?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let etag = http::result_etag(&row.id, &packing, len);
    let range = http::result_range(h("range"), h("if-range"), &etag, len)?;
    let (status, start, end) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
        None => (StatusCode::OK, 0, len),
    };
    if start > 0 {
        use tokio::io::AsyncSeekExt as _;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(ApiError::internal)?;
    }
    use tokio::io::AsyncReadExt as _;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(end - start),
        1 << 20,
    ));
    let mut resp = (status, body).into_response();
    let hs = resp.headers_mut();
    let set = |hs: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            hs.insert(k, v);
        }
    };
    set(hs, header::CONTENT_TYPE, CONTAINER_MEDIA_TYPE.to_owned());
    set(hs, header::CONTENT_LENGTH, (end - start).to_string());
    set(hs, header::ETAG, etag);
    set(hs, header::ACCEPT_RANGES, "bytes".to_owned());
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            hs,
            header::CONTENT_RANGE,
            http::content_range(start, end, len),
        );
    }
    Ok(resp)
}

fn sse_event(seq: u64, data: &EventData, base: &str) -> Event {
    let json = match data {
        EventData::Status(v) | EventData::Done(v) => {
            let mut v = (**v).clone();
            v.rebase(base);
            serde_json::to_string(&v)
        }
        EventData::Progress(p) => serde_json::to_string(p),
        EventData::Preview(p) => serde_json::to_string(p),
    }
    .unwrap_or_else(|_| "{}".into());
    Event::default()
        .id(seq.to_string())
        .event(data.name())
        .data(json)
}

async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = stored_job(&st, &id).await?;
    let engine = st.engine.clone();
    let base = base_url(&st, &headers);
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let live = engine.live(&id);
    if live.is_some() {
        engine.freshen_place(&row).await;
    }
    let shutdown = engine.shutdown.clone();
    let stream = async_stream::stream! {
        let Some(live) = live else {
            // Not live (finished before this process started): the final
            // state, with ids of this process (above any earlier one's).
            let view = Box::new(engine.view(&row, "").await);
            let b = engine.event_base();
            yield Ok::<_, std::convert::Infallible>(sse_event(b + 1, &EventData::Status(view.clone()), &base));
            if row.status.is_terminal() {
                yield Ok(sse_event(b + 2, &EventData::Done(view), &base));
            }
            return;
        };
        let sub = live.subscribe(after);
        let (replay, mut rx) = (sub.replay, sub.rx);
        let mut last = sub.after;
        if sub.snapshot {
            if let Ok(Some(row)) = engine.job(&id).await {
                yield Ok(sse_event(sub.snapshot_seq, &EventData::Status(Box::new(engine.view(&row, "").await)), &base));
            }
        }
        for ev in replay {
            last = ev.seq;
            let done = matches!(ev.data, EventData::Done(_));
            yield Ok(sse_event(ev.seq, &ev.data, &base));
            if done { return; }
        }
        loop {
            let next = tokio::select! {
                r = rx.recv() => Some(r),
                _ = shutdown.cancelled() => None,
            };
            let Some(next) = next else {
                let body = serde_json::json!({"error": {"code": "not_ready",
                    "message": "the worker is shutting down; reconnect with Last-Event-ID"}});
                yield Ok(Event::default().event("error").data(body.to_string()));
                return;
            };
            match next {
                Ok(ev) => {
                    if ev.seq <= last { continue; }
                    last = ev.seq;
                    let done = matches!(ev.data, EventData::Done(_));
                    yield Ok(sse_event(ev.seq, &ev.data, &base));
                    if done { return; }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow a reader: resync with a full status.
                    if let Ok(Some(row)) = engine.job(&id).await {
                        yield Ok(sse_event(last, &EventData::Status(Box::new(engine.view(&row, "").await)), &base));
                    }
                }
                Err(_) => return,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
