//! The async client: resolve the endpoint, submit, follow (SSE, then
//! polling), fetch the result, cancel.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use comfy_remote_protocol::api::{
    JobStatus, JobView, Phase, PreviewEvent, Progress, CONTAINER_MEDIA_TYPE,
    HEADER_IDEMPOTENCY_KEY, JSON_FORM_FORMAT,
};
use futures::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{RequestBuilder, Response, Url};
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch, Mutex};

use crate::error::{ClientError, Result};
use crate::retry::{is_retryable_error, is_retryable_status, RetryPolicy};
use crate::signature::{plan_inputs, LocalInput, Signature};
use crate::sse::SseParser;
use crate::status::{JobDoc, ResultRef};

/// Which protocol the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Ask `GET /v1/info`; native if it answers, the simple JSON shape otherwise.
    #[default]
    Auto,
    /// comfy-remote protocol v1: binary container to `/v1/jobs`, SSE events.
    Native,
    /// The seed's shape: JSON to the URL as given, then poll `poll_url`.
    Json,
}

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

/// Everything a [`Client`] needs; build with [`ClientOptions::new`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The endpoint URL as the user gave it.
    pub endpoint: String,
    /// Extra headers on every request (auth: `Authorization`, `Modal-Key`, ...).
    pub headers: Vec<(String, String)>,
    /// Limit of a whole job, submit to result; the job is canceled past it.
    pub job_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// Limit of one non-streaming request (uploads and downloads included).
    pub request_timeout: Duration,
    /// Silence after which an event stream is considered dead and reopened.
    pub stream_idle_timeout: Duration,
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    pub mode: Mode,
    /// Follow the SSE stream when the endpoint offers one (else poll).
    pub use_events: bool,
    /// How long the endpoint's protocol and signature (`GET /v1/info`) are
    /// trusted before they are asked again; a client reused for many jobs
    /// asks at most this often.
    pub signature_ttl: Duration,
}

impl ClientOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientOptions {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            job_timeout: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            mode: Mode::Auto,
            use_events: true,
            signature_ttl: Duration::from_secs(10),
        }
    }
}

/// What a running job reports, in order. Exactly one of `Done` or `Error`
/// comes last.
#[derive(Debug)]
pub enum JobEvent {
    /// The endpoint accepted the job.
    Submitted { id: String, status: JobStatus },
    /// The status changed.
    Status { status: JobStatus },
    /// Progress moved (monotonic: `fraction` never goes down) or its text changed.
    Progress(Progress),
    /// A preview image from the remote workflow.
    Preview {
        mime: String,
        data: Vec<u8>,
        node: Option<String>,
    },
    /// The job succeeded: the outputs as container bytes.
    Done(Vec<u8>),
    /// The job failed, was canceled or timed out, or the endpoint misbehaved.
    Error(ClientError),
}

#[derive(Debug, Clone)]
enum Resolved {
    Native(Option<Signature>),
    Json,
}

/// What is known about the endpoint, and since when (`None`: fixed by [`Mode`]).
#[derive(Debug)]
struct Known {
    resolved: Resolved,
    fetched: Option<Instant>,
}

/// An HTTP client bound to one endpoint. Cheap to share (`Arc`); reuse it
/// for many jobs so they share its connections and its cached signature.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    opts: ClientOptions,
    endpoint: Url,
    /// `endpoint` with `/v1/...` stripped and a trailing slash, for joins.
    base: Url,
    resolved: Mutex<Option<Known>>,
    /// The status `GET /v1/info` answered when it had no info document
    /// (0 while it had one or was not asked).
    info_status: std::sync::atomic::AtomicU16,
}

type ConnectSlot = Arc<std::sync::Mutex<Option<ClientError>>>;

tokio::task_local! {
    /// The last connection failure while driving a job, so a job that runs
    /// out of time before anything was submitted reports why.
    static LAST_CONNECT_ERROR: ConnectSlot;
}

fn remember_connect_error(err: Option<ClientError>) {
    let _ = LAST_CONNECT_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.lock() {
            *s = err;
        }
    });
}

fn join(base: &Url, path: &str) -> Result<Url> {
    base.join(path).map_err(|e| ClientError::InvalidUrl {
        url: format!("{base}{path}"),
        reason: e.to_string(),
    })
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let raw = opts.endpoint.trim();
        let endpoint = Url::parse(raw).map_err(|e| ClientError::InvalidUrl {
            url: raw.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(ClientError::InvalidUrl {
                url: raw.to_owned(),
                reason: "only http and https URLs with a host are supported".into(),
            });
        }
        let mut base = endpoint.clone();
        base.set_query(None);
        base.set_fragment(None);
        let mut path = base.path().trim_end_matches('/').to_owned();
        for suffix in ["/v1/jobs", "/v1/info", "/v1"] {
            if let Some(p) = path.strip_suffix(suffix) {
                path = p.to_owned();
                break;
            }
        }
        base.set_path(&format!("{path}/"));

        let mut headers = HeaderMap::new();
        for (name, value) in &opts.headers {
            let invalid = |reason: String| ClientError::InvalidUrl {
                url: raw.to_owned(),
                reason: format!("header {name:?}: {reason}"),
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let mut v = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("comfy-remote/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(opts.connect_timeout)
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: raw.to_owned(),
                reason: format!("HTTP client setup failed: {e}"),
            })?;
        let resolved = match opts.mode {
            Mode::Auto => None,
            Mode::Native => Some(Resolved::Native(None)),
            Mode::Json => Some(Resolved::Json),
        }
        .map(|resolved| Known {
            resolved,
            fetched: None,
        });
        Ok(Client {
            http,
            opts,
            endpoint,
            base,
            resolved: Mutex::new(resolved),
            info_status: std::sync::atomic::AtomicU16::new(0),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Send a request built by `build`, retrying connection errors, 429 and
    /// 5xx with backoff (honouring `Retry-After`). Non-2xx after that is an error.
    async fn send(
        &self,
        method: &'static str,
        url: &Url,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        self.send_with(method, url, || std::future::ready(Ok(build())))
            .await
    }

    /// [`Client::send`] with a request that takes work to build (a file
    /// body reopened for each attempt); a failure to build is not retried.
    async fn send_with<F, Fut>(&self, method: &'static str, url: &Url, build: F) -> Result<Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<RequestBuilder>>,
    {
        let policy = &self.opts.retry;
        let max = policy.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = build().await?.send().await;
            if sent.is_ok() {
                remember_connect_error(None);
            }
            match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if is_retryable_status(resp.status()) && attempt < max => {
                    let delay = policy.delay(attempt - 1, Some(resp.headers()));
                    tracing::debug!(%url, status = %resp.status(), ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => return Err(http_error(method, url, resp).await),
                Err(e) if is_retryable_error(&e) && attempt < max => {
                    let delay = policy.backoff(attempt - 1);
                    tracing::debug!(%url, error = %e, ?delay, "retrying");
                    remember_connect_error(Some(ClientError::Unreachable {
                        url: url.to_string(),
                        attempts: attempt,
                        source: e,
                    }));
                    tokio::time::sleep(delay).await;
                }
                Err(source) => {
                    return Err(ClientError::Unreachable {
                        url: url.to_string(),
                        attempts: attempt,
                        source,
                    })
                }
            }
        }
    }

    async fn get_json(&self, url: &Url) -> Result<(Url, Json)> {
        let resp = self
            .send("GET", url, || {
                self.http
                    .get(url.clone())
                    .header(ACCEPT, "application/json")
                    .timeout(self.opts.request_timeout)
            })
            .await?;
        read_json(url, resp).await
    }

    /// Find out which protocol the endpoint speaks and its signature
    /// (asked again after [`ClientOptions::signature_ttl`]).
    pub async fn signature(&self) -> Result<Option<Signature>> {
        let mut guard = self.resolved.lock().await;
        if let Some(k) = guard.as_ref() {
            let fresh = k
                .fetched
                .map_or(true, |at| at.elapsed() < self.opts.signature_ttl);
            if fresh {
                return Ok(match &k.resolved {
                    Resolved::Native(s) => s.clone(),
                    Resolved::Json => None,
                });
            }
        }
        let url = join(&self.base, "v1/info")?;
        let resolved = match self
            .send("GET", &url, || {
                self.http
                    .get(url.clone())
                    .header(ACCEPT, "application/json")
                    .timeout(self.opts.request_timeout)
            })
            .await
        {
            Ok(resp) => {
                let body = read_body(&url, resp).await?;
                match serde_json::from_slice::<Signature>(&body) {
                    Ok(sig) if sig.protocol.starts_with("comfy-remote/") => {
                        Resolved::Native(Some(sig))
                    }
                    _ => Resolved::Json,
                }
            }
            // No info document: an endpoint of the simple JSON shape.
            Err(ClientError::Http {
                status: status @ (404 | 405 | 400),
                ..
            }) => {
                self.info_status
                    .store(status, std::sync::atomic::Ordering::Relaxed);
                Resolved::Json
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(endpoint = %self.endpoint, ?resolved, "endpoint resolved");
        let sig = match &resolved {
            Resolved::Native(s) => s.clone(),
            Resolved::Json => None,
        };
        *guard = Some(Known {
            resolved,
            fetched: Some(Instant::now()),
        });
        Ok(sig)
    }

    /// Forget a fetched signature so the next call asks again (after the
    /// endpoint refused a payload planned with it).
    async fn forget_signature(&self) {
        let mut guard = self.resolved.lock().await;
        if guard.as_ref().is_some_and(|k| k.fetched.is_some()) {
            *guard = None;
        }
    }

    /// Check local inputs against the endpoint's signature (cached for
    /// [`ClientOptions::signature_ttl`]) and return the names to send them under.
    pub async fn plan_inputs(&self, local: &[LocalInput]) -> Result<Vec<String>> {
        let sig = self.signature().await?;
        plan_inputs(sig.as_ref(), local)
    }

    async fn is_native(&self) -> Result<bool> {
        self.signature().await?;
        Ok(matches!(
            self.resolved.lock().await.as_ref(),
            Some(Known {
                resolved: Resolved::Native(_),
                ..
            })
        ))
    }

    /// Submit container bytes once (retried with one idempotency key).
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

    /// Ask the endpoint to cancel a job. `Ok(false)` when it has no way to.
    pub async fn cancel(&self, at: &Url, doc: &JobDoc) -> Result<bool> {
        let url = match (&doc.cancel_url, &doc.poll_url, &doc.id) {
            (Some(c), _, _) => join(at, c)?,
            (None, Some(p), _) => join(at, &format!("{}/cancel", p.trim_end_matches('/')))?,
            (None, None, Some(id)) if self.is_native().await? => {
                join(&self.base, &format!("v1/jobs/{id}/cancel"))?
            }
            _ => return Ok(false),
        };
        self.send("POST", &url, || {
            self.http
                .post(url.clone())
                .header(ACCEPT, "application/json")
                .timeout(Duration::from_secs(10))
        })
        .await?;
        Ok(true)
    }

    /// Start a job on the current tokio runtime. Events arrive on
    /// [`Job::next`]; dropping the [`Job`] cancels it.
    pub fn spawn_job(self: &Arc<Self>, body: Bytes) -> Job {
        self.spawn_upload(Upload::Bytes(body))
    }

    /// [`Client::spawn_job`] with the container in memory or in a file
    /// ([`Upload::File`] is streamed; the file must stay until the job
    /// ends, since a retried submit reads it again).
    pub fn spawn_upload(self: &Arc<Self>, upload: Upload) -> Job {
        let (tx, rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let client = Arc::clone(self);
        let view = ViewSlot::default();
        let slot = Arc::clone(&view);
        let task = tokio::spawn(async move {
            let outcome = client.run_job(upload, &tx, cancel_rx, &slot).await;
            let last = match outcome {
                Ok(bytes) => JobEvent::Done(bytes),
                Err(e) => JobEvent::Error(e),
            };
            let _ = tx.send(last);
        });
        Job {
            events: rx,
            cancel: cancel_tx,
            task,
            finished: false,
            view,
        }
    }

    async fn run_job(
        &self,
        body: Upload,
        tx: &mpsc::UnboundedSender<JobEvent>,
        mut cancel: watch::Receiver<bool>,
        view: &ViewSlot,
    ) -> Result<Vec<u8>> {
        let key = uuid::Uuid::new_v4().to_string();
        let (job_tx, mut job_rx) = watch::channel::<Option<(Url, JobDoc)>>(None);
        let drive = self.drive(body, &key, tx, &job_tx, view);
        // A zero timeout means no limit.
        let limit = self.opts.job_timeout.filter(|t| !t.is_zero());
        let connect_error = ConnectSlot::default();
        let drive = LAST_CONNECT_ERROR.scope(connect_error.clone(), drive);
        tokio::pin!(drive);
        let deadline = async {
            match limit {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let timed_out = tokio::select! {
            r = &mut drive => return r,
            _ = cancel.wait_for(|c| *c) => false,
            _ = &mut deadline => true,
        };
        // The submit may still be in flight: give it a moment so the job we
        // cancel is the one it creates, rather than leaving it orphaned.
        if job_rx.borrow().is_none() {
            let grace = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    r = &mut drive => { if job_rx.borrow().is_none() { return r; } break; }
                    c = job_rx.changed() => { if c.is_err() || job_rx.borrow().is_some() { break; } }
                    _ = &mut grace => break,
                }
            }
        }
        let job = job_rx.borrow().clone();
        if timed_out && job.is_none() {
            // Nothing was submitted: if the endpoint could not be reached,
            // that (not the timeout) is what went wrong.
            let unreachable = connect_error.lock().ok().and_then(|mut e| e.take());
            if let Some(err) = unreachable {
                return Err(err);
            }
        }
        let id = job
            .as_ref()
            .and_then(|(_, d)| d.id.clone())
            .unwrap_or_else(|| "(not yet submitted)".to_owned());
        if let Some((at, doc)) = &job {
            if let Err(e) = self.cancel(at, doc).await {
                tracing::warn!(error = %e, "could not cancel the remote job");
                if !timed_out {
                    return Err(e);
                }
            }
        }
        let _ = tx.send(JobEvent::Status {
            status: JobStatus::Canceled,
        });
        if timed_out {
            return Err(ClientError::Timeout {
                job_id: id,
                timeout: limit.unwrap_or_default(),
            });
        }
        Err(ClientError::Canceled { job_id: id })
    }

    async fn drive(
        &self,
        body: Upload,
        key: &str,
        tx: &mpsc::UnboundedSender<JobEvent>,
        job_tx: &watch::Sender<Option<(Url, JobDoc)>>,
        view: &ViewSlot,
    ) -> Result<Vec<u8>> {
        let (at, doc) = self.submit_upload(body, key).await?;
        let _ = tx.send(JobEvent::Submitted {
            id: doc.id.clone().unwrap_or_default(),
            status: doc.status.unwrap_or(JobStatus::Queued),
        });
        job_tx.send_replace(Some((at.clone(), doc.clone())));
        let mut f = Follower {
            tx,
            status: doc.status,
            last: None,
            view,
        };
        f.observe(&doc);
        let mut at = at;
        let mut doc = doc;
        let mut sse_ok = self.opts.use_events && doc.events_url.is_some();
        let mut last_event_id: Option<String> = None;
        let mut sse_failures = 0u32;
        while !doc.status.is_some_and(JobStatus::is_terminal) {
            if sse_ok {
                match self.follow_sse(&at, &doc, &mut f, &mut last_event_id).await {
                    Ok(Some(d)) => {
                        doc = merge(doc, d);
                        continue;
                    }
                    Ok(None) => sse_failures += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "event stream unavailable; polling");
                        sse_ok = false;
                    }
                }
                if sse_failures > 5 {
                    sse_ok = false;
                }
                tokio::time::sleep(self.opts.retry.backoff(sse_failures)).await;
                // Poll once between reconnects so a missed terminal state is seen.
            }
            let poll = self.poll_url(&at, &doc).await?;
            let (new_at, json) = self.get_json(&poll).await?;
            let d = JobDoc::parse(&json).map_err(|r| ClientError::protocol(new_at.as_str(), r))?;
            f.observe(&d);
            doc = merge(doc, d);
            at = new_at;
            if !doc.status.is_some_and(JobStatus::is_terminal) && !sse_ok {
                tokio::time::sleep(self.opts.poll_interval).await;
            }
        }
        job_tx.send_replace(Some((at.clone(), doc.clone())));
        self.finish(&at, doc).await
    }

    async fn poll_url(&self, at: &Url, doc: &JobDoc) -> Result<Url> {
        if let Some(p) = &doc.poll_url {
            return join(at, p);
        }
        match &doc.id {
            Some(id) if self.is_native().await? => join(&self.base, &format!("v1/jobs/{id}")),
            _ => Err(ClientError::protocol(
                at.as_str(),
                "the job is not finished and the endpoint gave no poll_url to follow it",
            )),
        }
    }

    /// Follow the SSE stream until a terminal document (`Some`), a clean
    /// end of stream (`None`, reconnect), or an error (fall back to polling).
    async fn follow_sse(
        &self,
        at: &Url,
        doc: &JobDoc,
        f: &mut Follower<'_>,
        last_event_id: &mut Option<String>,
    ) -> Result<Option<JobDoc>> {
        let Some(events) = &doc.events_url else {
            return Ok(None);
        };
        let url = join(at, events)?;
        let mut req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id.as_deref() {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.to_string(),
                attempts: 1,
                source,
            })?;
        let is_stream = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !resp.status().is_success() || !is_stream {
            return Err(http_error("GET", &url, resp).await);
        }
        let mut parser = SseParser::default();
        let mut stream = resp.bytes_stream();
        loop {
            let chunk =
                match tokio::time::timeout(self.opts.stream_idle_timeout, stream.next()).await {
                    Err(_) | Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                    Ok(Some(Ok(c))) => c,
                };
            for ev in parser.push(&chunk) {
                if ev.id.is_some() {
                    *last_event_id = ev.id.clone();
                }
                let json: Json = match serde_json::from_str(&ev.data) {
                    Ok(j) => j,
                    Err(_) => continue,
                };
                match ev.event.as_str() {
                    "progress" => {
                        let p = json.get("progress").unwrap_or(&json);
                        if let Some(p) = crate::status::parse_progress(p, f.status) {
                            f.progress(p);
                        }
                    }
                    "preview" => {
                        if let Ok(p) = serde_json::from_value::<PreviewEvent>(json) {
                            if let Ok(data) =
                                base64::engine::general_purpose::STANDARD.decode(p.data.trim())
                            {
                                let _ = f.tx.send(JobEvent::Preview {
                                    mime: p.mime,
                                    data,
                                    node: p.node.map(|n| n.id),
                                });
                            }
                        }
                    }
                    _ => {
                        // status, done, message: a job document.
                        let d = JobDoc::parse(&json)
                            .map_err(|r| ClientError::protocol(url.as_str(), r))?;
                        f.observe(&d);
                        if d.status.is_some_and(JobStatus::is_terminal) {
                            return Ok(Some(d));
                        }
                    }
                }
            }
        }
    }

    async fn finish(&self, at: &Url, doc: JobDoc) -> Result<Vec<u8>> {
        let job_id = doc.id.clone().unwrap_or_default();
        match doc.status {
            Some(JobStatus::Succeeded) => {}
            Some(JobStatus::Canceled) => return Err(ClientError::Canceled { job_id }),
            Some(JobStatus::Expired) => {
                return Err(ClientError::JobFailed {
                    job_id,
                    code: Some(doc.error_code.unwrap_or_else(|| "expired".into())),
                    message: doc
                        .error_message
                        .unwrap_or_else(|| "the job expired before it ran".into()),
                })
            }
            _ => {
                return Err(ClientError::JobFailed {
                    job_id,
                    code: doc.error_code,
                    message: doc
                        .error_message
                        .or(doc.status_word)
                        .unwrap_or_else(|| "no error message".into()),
                })
            }
        }
        let result = match doc.result {
            Some(r) => r,
            None => match doc.result_url {
                Some(u) => ResultRef::Url(u),
                None => {
                    return Err(ClientError::protocol(
                        at.as_str(),
                        "the job succeeded but the endpoint sent no result",
                    ))
                }
            },
        };
        match result {
            ResultRef::Inline(bytes) => Ok(bytes),
            ResultRef::Url(u) => {
                let url = join(at, &u)?;
                let resp = self
                    .send("GET", &url, || {
                        self.http
                            .get(url.clone())
                            .header(ACCEPT, CONTAINER_MEDIA_TYPE)
                            .timeout(self.opts.request_timeout)
                    })
                    .await?;
                read_body(&url, resp).await
            }
            ResultRef::Plain(json) => {
                let value = crate::plain::json_to_value(&json);
                let entry = comfy_remote_protocol::Entry {
                    name: "result".to_owned(),
                    comfy_type: Some(comfy_remote_protocol::ComfyType::infer(&value)),
                    value,
                };
                Ok(comfy_remote_protocol::encode(
                    &comfy_remote_protocol::Payload {
                        entries: vec![entry],
                    },
                )?)
            }
        }
    }
}

/// Combine a newer partial document with what we knew: simple endpoints
/// often send links only once.
fn merge(old: JobDoc, new: JobDoc) -> JobDoc {
    JobDoc {
        id: new.id.or(old.id),
        status: new.status.or(old.status),
        status_word: new.status_word.or(old.status_word),
        progress: new.progress.or(old.progress),
        poll_url: new.poll_url.or(old.poll_url),
        events_url: new.events_url.or(old.events_url),
        result_url: new.result_url.or(old.result_url),
        cancel_url: new.cancel_url.or(old.cancel_url),
        result: new.result.or(old.result),
        error_code: new.error_code.or(old.error_code),
        error_message: new.error_message.or(old.error_message),
        view: new.view.or(old.view),
    }
}

/// The latest `JobView` a native endpoint sent for a job.
pub(crate) type ViewSlot = Arc<std::sync::Mutex<Option<Box<JobView>>>>;

/// Turns documents into events: status changes and monotonic progress.
struct Follower<'a> {
    tx: &'a mpsc::UnboundedSender<JobEvent>,
    status: Option<JobStatus>,
    last: Option<Progress>,
    view: &'a ViewSlot,
}

impl Follower<'_> {
    fn observe(&mut self, d: &JobDoc) {
        // Before the events, so a reader of an event sees this view or a later one.
        if let Some(v) = &d.view {
            *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.clone());
        }
        if let Some(s) = d.status {
            if self.status != Some(s) {
                self.status = Some(s);
                let _ = self.tx.send(JobEvent::Status { status: s });
            }
        }
        if let Some(p) = &d.progress {
            self.progress(p.clone());
        } else if d.status == Some(JobStatus::Succeeded) {
            let mut p = Progress::start(Phase::Done);
            p.fraction = 1.0;
            p.value = 1.0;
            self.progress(p);
        }
    }

    fn progress(&mut self, mut p: Progress) {
        if let Some(last) = &self.last {
            if p.fraction < last.fraction {
                p.fraction = last.fraction;
            }
        }
        if p.text.is_empty() {
            p.text = describe_progress(self.status, &p);
        }
        if self.last.as_ref() != Some(&p) {
            self.last = Some(p.clone());
            let _ = self.tx.send(JobEvent::Progress(p));
        }
    }
}

/// One line for the progress text: phase, queue position, node and step.
pub fn describe_progress(status: Option<JobStatus>, p: &Progress) -> String {
    let pct = (p.fraction * 100.0).round();
    match p.phase {
        Phase::Queued => match p.queue_position {
            Some(0) => "queued (next)".to_owned(),
            Some(n) => format!("queued (position {n})"),
            None => "queued".to_owned(),
        },
        Phase::Starting => "starting".to_owned(),
        Phase::Collecting => "collecting outputs".to_owned(),
        Phase::Done => match status {
            Some(s) => s.as_str().to_owned(),
            None => "done".to_owned(),
        },
        Phase::Running => {
            let mut s = "running".to_owned();
            if let Some(n) = &p.node {
                match &n.class_type {
                    Some(t) => s.push_str(&format!(" {t} (#{})", n.id)),
                    None => s.push_str(&format!(" node #{}", n.id)),
                }
            }
            if let Some(step) = &p.step {
                s.push_str(&format!(" step {}/{}", step.value, step.max));
            }
            s.push_str(&format!(" {pct}%"));
            s
        }
    }
}

/// A job started by [`Client::spawn_job`].
#[derive(Debug)]
pub struct Job {
    events: mpsc::UnboundedReceiver<JobEvent>,
    cancel: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    finished: bool,
    view: ViewSlot,
}

impl Job {
    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<JobEvent> {
        let ev = self.events.recv().await;
        self.note(&ev);
        ev
    }

    fn note(&mut self, ev: &Option<JobEvent>) {
        if matches!(ev, Some(JobEvent::Done(_) | JobEvent::Error(_)) | None) {
            self.finished = true;
        }
    }

    /// Ask for the job to be canceled; the remote cancel is sent and the
    /// job then ends with [`ClientError::Canceled`].
    pub fn cancel(&self) {
        let _ = self.cancel.send(true);
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The latest `JobView` the endpoint sent for this job (native endpoints
    /// only): the submit answer, then each `status`/`done` event or poll.
    /// Set before the events it causes, so after a `Status` or `Done` event
    /// it is that document or a later one.
    pub fn view(&self) -> Option<JobView> {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .cloned()
    }

    /// The slot behind [`Job::view`], for readers that do not hold the job.
    pub(crate) fn view_slot(&self) -> ViewSlot {
        Arc::clone(&self.view)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // An abandoned job must not keep a GPU busy: cancel it remotely.
        if !self.finished && !self.task.is_finished() {
            let _ = self.cancel.send(true);
        }
    }
}

async fn http_error(method: &'static str, url: &Url, resp: Response) -> ClientError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<Json>(&text) {
        Ok(j) => {
            let e = j.get("error").unwrap_or(&j);
            let code = e.get("code").and_then(Json::as_str).map(str::to_owned);
            let msg = e
                .get("message")
                .or_else(|| e.get("detail"))
                .and_then(Json::as_str)
                .map(str::to_owned)
                .or_else(|| e.as_str().map(str::to_owned));
            (code, msg)
        }
        Err(_) => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        let t = shorten_body(&text);
        if t.is_empty() {
            status.canonical_reason().unwrap_or("no body").to_owned()
        } else {
            t
        }
    });
    ClientError::Http {
        method,
        url: url.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// A non-JSON error body for a message: HTML tags (and `<head>`, scripts,
/// styles) dropped, whitespace collapsed, at most about 200 characters.
fn shorten_body(text: &str) -> String {
    let mut plain = String::with_capacity(text.len().min(4096));
    if text.trim_start().starts_with('<') {
        let lower = text.to_ascii_lowercase();
        let mut i = 0;
        while i < text.len() {
            let rest = &lower[i..];
            if rest.starts_with('<') {
                let skip_to = ["head", "script", "style"].iter().find_map(|tag| {
                    rest[1..].starts_with(tag).then(|| {
                        rest.find(&format!("</{tag}"))
                            .map_or(text.len(), |end| i + end)
                    })
                });
                let from = skip_to.unwrap_or(i);
                i = lower[from..]
                    .find('>')
                    .map_or(text.len(), |end| from + end + 1);
                plain.push(' ');
            } else {
                let next = rest.find('<').map_or(text.len(), |n| i + n);
                plain.push_str(&text[i..next]);
                i = next;
            }
        }
    } else {
        plain.push_str(text);
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    let joined = words.join(" ");
    if joined.chars().count() > 200 {
        let cut: String = joined.chars().take(200).collect();
        format!("{cut}...")
    } else {
        joined
    }
}

/// The whole body, copied once into a buffer sized by `Content-Length`
/// (`Response::bytes` gathers the chunks and copies them again).
async fn read_body(url: &Url, mut resp: Response) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(len) = resp.content_length().and_then(|l| usize::try_from(l).ok()) {
        // A size the server announces but does not send costs address space only.
        let _ = out.try_reserve_exact(len);
    }
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(ClientError::Unreachable {
                    url: url.to_string(),
                    attempts: 1,
                    source,
                })
            }
        }
    }
}

async fn read_json(url: &Url, resp: Response) -> Result<(Url, Json)> {
    let at = resp.url().clone();
    let bytes = read_body(url, resp).await?;
    let json = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::protocol(url.as_str(), format!("body is not JSON ({e})")))?;
    Ok((at, json))
}
