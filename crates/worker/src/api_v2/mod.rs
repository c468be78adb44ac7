//! Comfy API v2 (`/api/v2`), served beside protocol v1 on the same engine
//! (docs/protocol.md §5.1): a v2 job is a v1 job (one id, one record, the
//! same durability, limits and token), with what v2 adds kept in `v2.db`.
//!
//! - [`store`]: the graph a job was submitted as, single-use idempotency
//!   keys, assets;
//! - [`blobs`]: asset bytes in the spool, named by their blake3 hash;
//! - `assets`: upload (multipart, streamed and hashed), from-hash, the
//!   by-hash probe, metadata, delete, content with `Range`;
//! - `jobs`: submit (the served workflow with other input values, or,
//!   with `--allow-any-workflow`, any API-format graph), get, list,
//!   workflow, cancel;
//! - `outputs`: a succeeded job's result as output assets;
//! - `events`: the SSE stream (snapshots, previews, outputs).

mod assets;
pub mod blobs;
mod events;
mod jobs;
mod outputs;
pub mod store;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::Router;
use comfy_remote_protocol::http::{self, BearerToken};
use comfy_remote_protocol::v2::{Code, Refusal, PREFIX};

use crate::error::WorkerError;
use crate::jobs::Engine;
use blobs::Blobs;
use store::V2Store;

/// The defaults of [`V2Config`], which `comfy-remote serve` shows as its flags' defaults.
pub mod defaults {
    /// `--max-asset-bytes`.
    pub const MAX_ASSET_BYTES: u64 = comfy_remote_protocol::v2::assets::DEFAULT_MAX_ASSET_BYTES;
    /// `--max-event-streams`.
    pub const MAX_EVENT_STREAMS: usize = 1024;
}

/// What the v2 surface allows.
#[derive(Debug, Clone)]
pub struct V2Config {
    /// Run any API-format graph, not only the served workflow.
    pub allow_any_workflow: bool,
    /// Largest asset upload.
    pub max_asset_bytes: u64,
    /// Event streams open at once (429 `too_many_streams` beyond).
    pub max_event_streams: usize,
}

impl Default for V2Config {
    fn default() -> Self {
        V2Config {
            allow_any_workflow: false,
            max_asset_bytes: defaults::MAX_ASSET_BYTES,
            max_event_streams: defaults::MAX_EVENT_STREAMS,
        }
    }
}

/// The state of the v2 surface.
#[derive(Debug)]
pub struct V2 {
    pub engine: Arc<Engine>,
    pub config: V2Config,
    store: Arc<V2Store>,
    blobs: Blobs,
    token: Option<BearerToken>,
    public_url: Option<String>,
    streams: AtomicUsize,
    /// Stores outputs as assets (also the engine's output sink).
    keeper: outputs::Keeper,
    /// The keeper's: held while a blob and the record that refers to it
    /// are written or removed.
    blob_lock: Arc<tokio::sync::Mutex<()>>,
    /// Held while a job's outputs are made assets (once per job).
    split_lock: tokio::sync::Mutex<()>,
    /// ComfyUI's `/object_info` of its current start (ComfyUI generation).
    object_info: tokio::sync::Mutex<Option<(u64, Arc<serde_json::Value>)>>,
}

impl V2 {
    /// Open the v2 store in the engine's spool.
    pub fn open(
        engine: Arc<Engine>,
        config: V2Config,
        token: Option<&str>,
        public_url: Option<String>,
    ) -> Result<Arc<V2>, WorkerError> {
        let spool = engine.config.spool_dir.clone();
        let store = V2Store::open(&spool.join("v2.db"))?;
        let blobs = Blobs::new(&spool, engine.tmp_dir()).map_err(|e| {
            WorkerError::io(format!("creating {}", spool.join("blobs").display()), e)
        })?;
        let keeper = outputs::Keeper {
            store: Arc::new(store),
            blobs,
            blob_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        engine.set_output_sink(Arc::new(keeper.clone()));
        Ok(Arc::new(V2 {
            engine,
            config,
            store: keeper.store.clone(),
            blobs: keeper.blobs.clone(),
            token: token.and_then(BearerToken::new),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            streams: AtomicUsize::new(0),
            blob_lock: keeper.blob_lock.clone(),
            keeper,
            split_lock: tokio::sync::Mutex::new(()),
            object_info: tokio::sync::Mutex::new(None),
        }))
    }

    /// The base of links (as v1's: `--public-url`, else the request's host).
    fn base(&self, headers: &HeaderMap) -> String {
        let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        http::base_url(
            self.public_url.as_deref(),
            h("x-forwarded-host").or(h("host")),
            h("x-forwarded-proto"),
        )
    }

    /// How long results, outputs and uploads are kept.
    fn retention_ms(&self) -> i64 {
        self.engine.config.retention.as_millis() as i64
    }

    /// Drop uploaded assets past their expiry, the outputs of jobs whose
    /// results expired, and keys older than 24 h; until shutdown.
    pub async fn janitor(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sweep().await {
                tracing::error!("v2 retention sweep: {e}");
            }
            tokio::select! {
                _ = self.engine.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.engine.config.sweep_interval) => {}
            }
        }
    }

    async fn sweep(&self) -> Result<(), WorkerError> {
        for id in self.store.run(|s| s.expired_assets()).await? {
            self.delete_asset(&id).await?;
        }
        let with_outputs = self.store.read(|s| s.jobs_with_outputs()).await?;
        // Read in one trip to the job store, however many jobs there are.
        let gone = self
            .engine
            .store
            .read(move |s| s.expired_or_unknown(&with_outputs))
            .await?;
        for job in gone {
            for a in self.store.read(move |s| s.outputs(&job)).await? {
                self.delete_asset(&a.id).await?;
            }
        }
        self.store.run(|s| s.forget_old_keys()).await
    }

    /// Delete an asset record, and its bytes when nothing else refers to them.
    async fn delete_asset(&self, id: &str) -> Result<bool, WorkerError> {
        let _guard = self.blob_lock.lock().await;
        let key = id.to_owned();
        let existed = self.store.run({
            let key = key.clone();
            move |s| s.asset(&key).map(|a| a.is_some())
        });
        let existed = existed.await?;
        if let Some(hash) = self.store.run(move |s| s.delete_asset(&key)).await? {
            self.blobs.remove(&hash).await;
        }
        Ok(existed)
    }
}

/// An error answer of the v2 surface; internals are logged, never sent.
#[derive(Debug)]
pub struct V2Error(Box<Failure>);

#[derive(Debug)]
struct Failure {
    refusal: Refusal,
    internal: Option<String>,
}

impl V2Error {
    fn internal(e: impl std::fmt::Display) -> Self {
        V2Error(Box::new(Failure {
            refusal: Refusal::internal(),
            internal: Some(e.to_string()),
        }))
    }
}

impl From<Refusal> for V2Error {
    fn from(refusal: Refusal) -> Self {
        V2Error(Box::new(Failure {
            refusal,
            internal: None,
        }))
    }
}

impl From<WorkerError> for V2Error {
    fn from(e: WorkerError) -> Self {
        V2Error::internal(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let Failure { refusal, internal } = *self.0;
        if let Some(internal) = &internal {
            tracing::error!(code = ?refusal.code, "{internal}");
        } else {
            tracing::debug!(code = ?refusal.code, "{}", refusal.message);
        }
        let status =
            StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(refusal.body())).into_response();
        if let Some(secs) = refusal.code.retry_after() {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A job or asset id: a UUID, else not found (a path never reaches a query).
fn check_id(id: &str, what: &str) -> Result<(), V2Error> {
    uuid::Uuid::parse_str(id)
        .map(drop)
        .map_err(|_| Refusal::not_found(what).into())
}

async fn auth(State(v2): State<Arc<V2>>, req: Request, next: Next) -> Response {
    if let Some(token) = &v2.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.admits(given) {
            return V2Error::from(Refusal::unauthorized()).into_response();
        }
    }
    let resp = next.run(req).await;
    if resp.status().is_client_error() {
        v2.engine
            .metrics
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    resp
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> V2Error {
    Refusal::new(
        Code::MethodNotAllowed,
        format!("{} does not take {method}", uri.path()),
    )
    .into()
}

/// The v2 routes (merge them into the worker's router).
pub fn router(v2: Arc<V2>) -> Router {
    let p = |path: &str| format!("{PREFIX}{path}");
    let guarded = Router::new()
        .route(&p("/jobs"), post(jobs::submit).get(jobs::list))
        .route(&p("/jobs/{id}"), get(jobs::get))
        .route(&p("/jobs/{id}/workflow"), get(jobs::workflow))
        .route(&p("/jobs/{id}/cancel"), post(jobs::cancel))
        .route(&p("/jobs/{id}/events"), get(events::events))
        .route(
            &p("/assets"),
            post(assets::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(&p("/assets/from-hash"), post(assets::from_hash))
        .route(&p("/assets/by-hash/{hash}"), head(assets::by_hash))
        .route(&p("/assets/{id}"), get(assets::get).delete(assets::delete))
        .route(&p("/assets/{id}/content"), get(assets::content))
        .route_layer(middleware::from_fn_with_state(v2.clone(), auth));
    Router::new()
        .route(
            &p("/health"),
            get(|| async { axum::Json(serde_json::json!({"status": "healthy"})) }),
        )
        .merge(guarded)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(v2)
}

/// Seconds between keep-alive comments of an idle event stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
