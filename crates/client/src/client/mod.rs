//! The async client: resolve the endpoint (`GET /v1/info`, cached), send
//! requests with retries, cancel. Submitting is in [`upload`] (a large body
//! in pieces in [`resumable`]), following a
//! job to its result in [`job`] and [`follow`].

mod follow;
mod job;
mod resumable;
mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::{RequestBuilder, Response, Url};
use serde_json::Value as Json;
use tokio::sync::Mutex;

use crate::error::{ClientError, Result};
use crate::http::{http_error, read_body, read_json};
use crate::packing::Packing;
use crate::retry::{is_retryable_error, is_retryable_status, RetryPolicy};
use crate::signature::{plan_inputs, LocalInput, Signature};
use crate::status::JobDoc;

pub use follow::describe_progress;
pub use job::{Job, JobEvent};
pub use upload::Upload;

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
    /// trusted before they are asked again (with its ETag: an unchanged
    /// signature costs an empty 304); a client reused for many jobs asks at
    /// most this often.
    pub signature_ttl: Duration,
    /// How long a submit waits for the job to end (`Prefer: wait`), so a
    /// short job costs one round trip; its progress shows only after this.
    /// `None` or zero: never wait.
    pub submit_wait: Option<Duration>,
    /// Let IMAGE and MASK results be rounded to 8 bits (§2.7; lossy: only
    /// for results that will be saved as 8-bit images).
    pub images_8bit: bool,
    /// Whether tensors travel packed (§2.7); [`Packing::from_env`] by default.
    pub packing: Option<Packing>,
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
            submit_wait: Some(Duration::from_secs(1)),
            images_8bit: false,
            packing: None,
        }
    }
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
    /// The info document's ETag, to revalidate it for the price of a 304.
    etag: Option<String>,
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
    /// Whether tensors to and from this endpoint travel packed.
    packs: bool,
}

type ConnectSlot = Arc<std::sync::Mutex<Option<ClientError>>>;

/// The latest `JobView` a native endpoint sent for a job.
pub(crate) type ViewSlot = Arc<std::sync::Mutex<Option<Box<comfy_remote_protocol::api::JobView>>>>;

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
        let packing = match opts.packing {
            Some(p) => p,
            None => Packing::from_env()?,
        };
        let packs = packing.applies_to(&endpoint);
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
            etag: None,
        });
        Ok(Client {
            http,
            opts,
            endpoint,
            base,
            resolved: Mutex::new(resolved),
            info_status: std::sync::atomic::AtomicU16::new(0),
            packs,
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
        let etag = guard.as_ref().and_then(|k| k.etag.clone());
        let mut new_etag = None;
        let resolved = match self
            .send("GET", &url, || {
                let r = self
                    .http
                    .get(url.clone())
                    .header(ACCEPT, "application/json")
                    .timeout(self.opts.request_timeout);
                match &etag {
                    Some(tag) => r.header("If-None-Match", tag.as_str()),
                    None => r,
                }
            })
            .await
        {
            // Unchanged: what we know is fresh again.
            Err(ClientError::Http { status: 304, .. }) if guard.is_some() => {
                if let Some(k) = guard.as_mut() {
                    k.fetched = Some(Instant::now());
                    return Ok(match &k.resolved {
                        Resolved::Native(s) => s.clone(),
                        Resolved::Json => None,
                    });
                }
                return Ok(None);
            }
            Ok(resp) => {
                new_etag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
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
            etag: new_etag,
        });
        Ok(sig)
    }

    /// The headers of a request whose answer may be a result: the packings
    /// this client reads (all of them: the codec is the protocol's) where
    /// tensors travel packed, and the 8-bit transfer when asked for (§2.7,
    /// which travels packed wherever the endpoint is).
    pub(crate) fn result_headers(&self, r: RequestBuilder) -> RequestBuilder {
        if !self.packs && !self.opts.images_8bit {
            return r;
        }
        let r = r.header(
            comfy_remote_protocol::api::HEADER_CODECS,
            comfy_remote_protocol::packed::CODECS.join(", "),
        );
        if self.opts.images_8bit {
            r.header(comfy_remote_protocol::api::HEADER_IMAGES, "8bit")
        } else {
            r
        }
    }

    /// The packings to encode a submit with: those the endpoint reads where
    /// tensors travel packed ([`Packing`]), else none.
    pub async fn upload_codecs(&self) -> Result<Vec<String>> {
        if !self.packs {
            return Ok(Vec::new());
        }
        Ok(self
            .signature()
            .await?
            .map(|s| s.codecs)
            .unwrap_or_default())
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
}
