//! `Front`: the protocol rules the Modal web front needs, from the Rust crates.
//!
//! The web front is Python only because Modal's primitives are. What the
//! worker already knows it takes from here rather than restating it: the
//! info document, the check of a submit body (media type, size, decoding,
//! the workflow's signature), error bodies and their HTTP status, bearer
//! auth, the job view's shape and URL layout. Errors are raised as
//! `ApiError`, whose `status` and `body` are the response to send.

use std::collections::HashMap;

use comfy_remote_contract::{check_inputs, Workflow};
use comfy_remote_protocol::api::{
    ErrorCode, ErrorInfo, Info, JobResult, JobStatus, JobUrls, JobView, LimitsInfo, Phase,
    Progress, SignatureItem, ValueInfo, WorkflowInfo, CONTAINER_MEDIA_TYPE, HEADER_CODECS,
    HEADER_IMAGES,
};
use comfy_remote_protocol::http::{self, BearerToken, Refusal, SubmitMedia};
use comfy_remote_protocol::{Limits, PackOptions, PROTOCOL_VERSION};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What the web front serves beyond the core protocol (`features` in `/v1/info`).
const FEATURES: &[&str] = &["wait", "range"];

/// An HTTP answer for the Python front: status, headers, body.
type Answer<'py> = (u16, Vec<(String, String)>, Bound<'py, PyBytes>);

/// The worker's default body limit (`comfy-remote serve --max-body-bytes`).
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 2 << 30;

pyo3::create_exception!(
    comfy_remote._native,
    ApiError,
    PyException,
    "An HTTP error answer: `status` (int), `code` (str), `body` (the JSON error envelope), `retry_after` (int or None)."
);

fn parse_code(code: &str) -> PyResult<ErrorCode> {
    ErrorCode::parse(code)
        .ok_or_else(|| PyValueError::new_err(format!("unknown error code {code:?}")))
}

/// The one place an HTTP error answer becomes the Python `ApiError` (v1 and v2).
pub(crate) fn to_api_error(
    message: &str,
    status: u16,
    code: &str,
    body: String,
    retry_after: Option<u64>,
) -> PyErr {
    let err = ApiError::new_err(message.to_owned());
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("status", status);
        let _ = v.setattr("code", code);
        let _ = v.setattr("body", body);
        let _ = v.setattr("retry_after", retry_after);
    });
    err
}

/// A v1 answer as the Python `ApiError`.
fn to_py(r: Refusal) -> PyErr {
    let text = serde_json::to_string(&r.body()).unwrap_or_else(|_| "{}".into());
    to_api_error(
        &r.message,
        r.status(),
        &r.code.as_str(),
        text,
        r.code.retry_after(),
    )
}

/// `ApiError` for `code` (its HTTP status from the protocol's table) with
/// `message` and optional `details` (JSON text).
#[pyfunction]
#[pyo3(signature = (code, message, details=None))]
fn api_error(code: &str, message: &str, details: Option<&str>) -> PyResult<PyErr> {
    let mut r = Refusal::new(parse_code(code)?, message);
    if let Some(d) = details {
        let v: serde_json::Value = serde_json::from_str(d)
            .map_err(|err| PyValueError::new_err(format!("details are not JSON: {err}")))?;
        r = r.with_details(v);
    }
    Ok(to_py(r))
}

/// The `Idempotency-Key` header: 1 to 200 visible ASCII characters.
#[pyfunction]
fn check_idempotency_key(key: &str) -> PyResult<()> {
    http::idempotency_key(key.as_bytes())
        .map(drop)
        .map_err(to_py)
}

/// The `retry` query of a submit: True for `true`/`1`, False when absent or `false`/`0`.
#[pyfunction]
#[pyo3(signature = (value=None))]
fn parse_retry_query(value: Option<&str>) -> PyResult<bool> {
    http::retry_query(value).map_err(to_py)
}

/// The OpenAPI document the worker serves, as JSON.
#[pyfunction]
fn openapi_json() -> String {
    comfy_remote_protocol::openapi::document().to_string()
}

/// A job's state as the front stores it: a `JobView` the GPU side mirrored
/// from its worker, or a partial one the front wrote (`status`, `error`).
#[derive(Debug, Deserialize)]
struct Stored {
    status: JobStatus,
    #[serde(default)]
    progress: Option<Progress>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    finished_at: Option<String>,
    #[serde(default)]
    result: Option<StoredResult>,
    #[serde(default)]
    error: Option<ErrorInfo>,
}

#[derive(Debug, Deserialize)]
struct StoredResult {
    #[serde(default)]
    outputs: Vec<ValueInfo>,
    #[serde(default)]
    bytes: u64,
}

/// The protocol rules of one web front serving one workflow.
#[pyclass(name = "Front", module = "comfy_remote._native", frozen)]
#[derive(Debug)]
struct PyFront {
    workflow: Workflow,
    limits: Limits,
    max_body_bytes: u64,
    token: Option<BearerToken>,
    public_url: Option<String>,
    trust_forwarded: bool,
}

#[pymethods]
impl PyFront {
    /// Parse the workflow (`text`, named `name`) as the worker does; raises
    /// ValueError with the worker's message for one it would refuse.
    /// `max_body_bytes` defaults to the worker's; `token` makes `check_auth`
    /// require `Authorization: Bearer <token>`; `public_url` fixes the base
    /// of job URLs; `trust_forwarded` lets `X-Forwarded-Host` choose it
    /// (only behind a proxy that sets that header itself).
    #[new]
    #[pyo3(signature = (name, text, *, max_body_bytes=None, token=None, public_url=None, trust_forwarded=false))]
    fn new(
        name: &str,
        text: &str,
        max_body_bytes: Option<u64>,
        token: Option<&str>,
        public_url: Option<&str>,
        trust_forwarded: bool,
    ) -> PyResult<Self> {
        let workflow =
            Workflow::parse(name, text).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let max_body_bytes = max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let limits = Limits {
            max_total_bytes: max_body_bytes,
            ..Limits::default()
        };
        Ok(PyFront {
            workflow,
            limits,
            max_body_bytes,
            token: token.and_then(BearerToken::new),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            trust_forwarded,
        })
    }

    /// The `GET /v1/info` document (JSON). `published` is the info a GPU
    /// container's worker serves (JSON): its signature has the output types
    /// it read from ComfyUI (the workflow alone gives `*`), and is used when
    /// it is for this same workflow. `max_concurrent_jobs` is 0: the front
    /// refuses no job for being busy (Modal queues the calls).
    #[pyo3(signature = (published=None))]
    fn info_json(&self, published: Option<&str>) -> String {
        let published = published
            .and_then(|text| serde_json::from_str::<Info>(text).ok())
            .filter(|i| i.workflow.sha256 == self.workflow.sha256);
        let (inputs, outputs) = match published {
            Some(i) => (i.inputs, i.outputs),
            None => (self.workflow.inputs.clone(), self.workflow.outputs.clone()),
        };
        let info = Info {
            protocol: PROTOCOL_VERSION.to_owned(),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            workflow: WorkflowInfo {
                name: self.workflow.name.clone(),
                sha256: self.workflow.sha256.clone(),
            },
            inputs,
            outputs,
            limits: LimitsInfo {
                max_body_bytes: self.max_body_bytes,
                max_tensors: self.limits.max_tensors as u64,
                max_rank: self.limits.max_rank as u64,
                max_concurrent_jobs: 0,
            },
            codecs: comfy_remote_protocol::packed::CODECS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        };
        serde_json::to_string(&info).unwrap_or_else(|_| "{}".into())
    }

    /// The workflow's outputs, as `[{"name", "type"}]` JSON (a result's `outputs`).
    fn outputs_json(&self) -> String {
        let outs: Vec<ValueInfo> = self
            .workflow
            .outputs
            .iter()
            .map(|o: &SignatureItem| ValueInfo {
                name: o.name.clone(),
                comfy_type: o.comfy_type.clone(),
            })
            .collect();
        serde_json::to_string(&outs).unwrap_or_else(|_| "[]".into())
    }

    /// Raise `ApiError` 401 unless the `Authorization` header carries the
    /// token (compared as SHA-256 digests in constant time, as the worker does).
    #[pyo3(signature = (authorization=None))]
    fn check_auth(&self, authorization: Option<&str>) -> PyResult<()> {
        match &self.token {
            Some(t) if !t.admits(authorization) => Err(to_py(Refusal::unauthorized())),
            _ => Ok(()),
        }
    }

    /// The base of job URLs: the public URL when set, else `scheme://host`
    /// from `Host` (or `X-Forwarded-Host` when trusted) and
    /// `X-Forwarded-Proto` (or the connection's scheme); "" (relative URLs)
    /// when the host is not a plain `host[:port]`, so a header cannot inject
    /// a URL.
    #[pyo3(signature = (host=None, forwarded_host=None, forwarded_proto=None, scheme="http"))]
    fn base_url(
        &self,
        host: Option<&str>,
        forwarded_host: Option<&str>,
        forwarded_proto: Option<&str>,
        scheme: &str,
    ) -> String {
        let host = if self.trust_forwarded {
            forwarded_host.or(host)
        } else {
            host
        };
        http::base_url(
            self.public_url.as_deref(),
            host,
            Some(forwarded_proto.unwrap_or(scheme)),
        )
    }

    /// How a submit body of `content_type` is read: `"container"` or
    /// `"json"`; raises `ApiError` 415 for anything else.
    #[pyo3(signature = (content_type=None))]
    fn media_kind(&self, content_type: Option<&str>) -> PyResult<&'static str> {
        match SubmitMedia::of(content_type).map_err(to_py)? {
            SubmitMedia::Container => Ok("container"),
            SubmitMedia::Json => Ok("json"),
        }
    }

    /// The largest body of `kind` (`"container"` or `"json"`).
    fn body_limit(&self, kind: &str) -> u64 {
        media(kind).limit(self.max_body_bytes)
    }

    /// `ApiError` 413 for a body of `kind` over its limit.
    fn too_large(&self, kind: &str) -> PyErr {
        to_py(media(kind).too_large(self.max_body_bytes))
    }

    /// Check a declared `Content-Length` before reading the body: 400 when it
    /// is not a number, 413 when it is over the limit of `kind`.
    #[pyo3(signature = (kind, content_length=None))]
    fn check_content_length(&self, kind: &str, content_length: Option<&str>) -> PyResult<()> {
        media(kind)
            .check_length(content_length, self.max_body_bytes)
            .map(drop)
            .map_err(to_py)
    }

    /// Check a whole submit body of `kind` the way the worker does: decode it
    /// with the limits (400 `invalid_payload` with `details.kind`; a JSON body
    /// that is neither form is 400 `bad_request`) and check it against the
    /// workflow's signature (422 `invalid_input` with `details.input`).
    /// Returns `(container, body_sha256)`: the container to run (None when
    /// the body is one already) and the SHA-256 of the body as sent, which
    /// idempotency keys compare.
    fn check_submit<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        body: &[u8],
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, String)> {
        let media = media(kind);
        if body.len() as u64 > media.limit(self.max_body_bytes) {
            return Err(to_py(media.too_large(self.max_body_bytes)));
        }
        let checked = py.detach(|| -> Result<(Option<Vec<u8>>, String), Refusal> {
            let sha = hex::encode(Sha256::digest(body));
            let converted = match media {
                SubmitMedia::Json => Some(
                    http::json_body_container(body, &self.limits)
                        .map_err(|e| Refusal::bad_payload(&e))?,
                ),
                SubmitMedia::Container => None,
            };
            let container = converted.as_deref().unwrap_or(body);
            let payload = comfy_remote_protocol::decode(container, &self.limits)
                .map_err(|e| Refusal::bad_payload(&e))?;
            check_inputs(&self.workflow.inputs, &payload).map_err(|e| {
                Refusal::new(ErrorCode::InvalidInput, e.message)
                    .with_details(serde_json::json!({"input": e.input}))
            })?;
            drop(payload);
            Ok((converted, sha))
        });
        let (converted, sha) = checked.map_err(to_py)?;
        Ok((converted.map(|c| PyBytes::new(py, &c)), sha))
    }

    /// The JobView (JSON) of job `job_id`, created at `created_at`, from its
    /// stored state (None: no GPU container has picked it up yet), with URLs
    /// under `base`. `canceling`: a cancel was asked for and has not landed.
    #[pyo3(signature = (state, *, job_id, created_at, base, canceling=false))]
    fn job_view(
        &self,
        state: Option<&str>,
        job_id: &str,
        created_at: &str,
        base: &str,
        canceling: bool,
    ) -> PyResult<String> {
        let stored = match state {
            Some(text) => Some(serde_json::from_str::<Stored>(text).map_err(|e| {
                PyValueError::new_err(format!("stored job state is not a job view: {e}"))
            })?),
            None => None,
        };
        let view = build_view(stored, job_id, created_at, base, canceling);
        serde_json::to_string(&view).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The seconds a submit may wait for its job (`Prefer: wait=N`, §4.1,
    /// at most the reference's limit); None when the client does not ask.
    fn prefer_wait(&self, headers: HashMap<String, String>) -> Option<u64> {
        http::prefer_wait(header(&headers, "prefer"), http::MAX_WAIT_SECS)
    }

    /// The answer to a result download (§4.4) of job `job_id`, whose
    /// container is `container`, for a request with these headers:
    /// `(status, headers, body)` (`headers`: the request's, by lower-case
    /// name), the container packed as far as
    /// `Comfy-Remote-Codecs`/`Comfy-Remote-Images` allow, whole (200) or
    /// the `Range` asked for (206, `If-Range` honoured), with an ETag.
    /// A range past the end raises ApiError (416). The GIL is released
    /// while packing.
    #[pyo3(signature = (container, *, job_id, headers))]
    fn result_answer<'py>(
        &self,
        py: Python<'py>,
        container: &[u8],
        job_id: &str,
        headers: HashMap<String, String>,
    ) -> PyResult<Answer<'py>> {
        let h = |name: &str| header(&headers, name);
        let packing = http::result_packing(h(HEADER_CODECS), h(HEADER_IMAGES));
        let packed = py.detach(|| repacked(container, &packing));
        let packed = packed.map_err(PyException::new_err)?;
        let body = packed.as_deref().unwrap_or(container);
        let len = body.len() as u64;
        let etag = http::result_etag(job_id, &packing, len);
        let part = http::result_range(h("range"), h("if-range"), &etag, len).map_err(to_py)?;
        let mut answer = vec![
            ("content-type".to_owned(), CONTAINER_MEDIA_TYPE.to_owned()),
            ("etag".to_owned(), etag),
            ("accept-ranges".to_owned(), "bytes".to_owned()),
        ];
        let (status, start, end) = match part {
            Some((a, b)) => {
                answer.push(("content-range".to_owned(), http::content_range(a, b, len)));
                (206, a, b)
            }
            None => (200, 0, len),
        };
        let slice = &body[start as usize..end as usize];
        Ok((status, answer, PyBytes::new(py, slice)))
    }

    /// The base64 JSON form of a container (a result asked for with
    /// `Accept: application/json`), its tensors plain: such a client
    /// announced no packing.
    fn json_form(&self, py: Python<'_>, container: &[u8]) -> PyResult<String> {
        let plain = py.detach(|| repacked(container, &PackOptions::default()));
        let plain = plain.map_err(PyException::new_err)?;
        Ok(
            serde_json::to_string(&comfy_remote_protocol::api::JsonForm::from_container(
                plain.as_deref().unwrap_or(container),
            ))
            .unwrap_or_else(|_| "{}".into()),
        )
    }
}

/// A stored result re-encoded with `packing` (§2.7), or None when it can
/// go as it is: a GPU container keeps results packed for every codec, and a
/// client gets only the packings it announced.
fn repacked(container: &[u8], packing: &PackOptions) -> Result<Option<Vec<u8>>, String> {
    let header = container
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|n| container.get(8..8usize.saturating_add(usize::try_from(n).ok()?)))
        .unwrap_or(container);
    // The tree is a JSON string inside the header: look for the key itself
    // (a string that merely contains it costs one needless re-encode).
    let key = comfy_remote_protocol::tree::PACKED_KEY.as_bytes();
    let is_packed = header.windows(key.len()).any(|w| w == key);
    if packing.is_empty() && !is_packed {
        return Ok(None);
    }
    // Our own container: only sanity bounds apply.
    let limits = Limits {
        max_total_bytes: 1 << 40,
        ..Limits::default()
    };
    let payload = comfy_remote_protocol::decode(container, &limits)
        .map_err(|e| format!("the stored result is unreadable: {e}"))?;
    comfy_remote_protocol::encode_with(&payload, packing)
        .map(Some)
        .map_err(|e| format!("packing the result: {e}"))
}

/// A request header by name, from a map keyed by lower-case names.
fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers.get(&name.to_ascii_lowercase()).map(String::as_str)
}

/// The media of a `kind` name (`"json"`, else the container).
fn media(kind: &str) -> SubmitMedia {
    if kind == "json" {
        SubmitMedia::Json
    } else {
        SubmitMedia::Container
    }
}

/// A view from a stored state, with the worker's rules for the progress of
/// queued and finished jobs.
fn build_view(
    stored: Option<Stored>,
    job_id: &str,
    created_at: &str,
    base: &str,
    canceling: bool,
) -> JobView {
    let mut view = match stored {
        Some(s) => {
            let progress = s.progress.unwrap_or_else(|| Progress::start(Phase::Queued));
            let urls = JobUrls::under(base, job_id);
            JobView {
                id: job_id.to_owned(),
                status: s.status,
                progress,
                poll_url: String::new(),
                urls: urls.clone(),
                created_at: created_at.to_owned(),
                updated_at: s.updated_at.unwrap_or_else(|| created_at.to_owned()),
                started_at: s.started_at,
                finished_at: s.finished_at,
                result: s.result.map(|r| JobResult {
                    url: urls.result.clone(),
                    outputs: r.outputs,
                    bytes: r.bytes,
                    inline: None,
                }),
                error: s.error,
            }
        }
        None => {
            let mut p = Progress::start(Phase::Queued);
            // Modal is queueing the call or starting a container (a cold
            // start boots ComfyUI first).
            p.text = "waiting for a GPU container".into();
            JobView {
                id: job_id.to_owned(),
                status: JobStatus::Queued,
                progress: p,
                poll_url: String::new(),
                urls: JobUrls::under(base, job_id),
                created_at: created_at.to_owned(),
                updated_at: created_at.to_owned(),
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
            }
        }
    };
    if canceling && !view.status.is_terminal() {
        view.status = JobStatus::Canceling;
        view.progress.text = "canceling".into();
    }
    if view.status.is_terminal() {
        view.progress.settle(view.status);
        if view.finished_at.is_none() {
            // A record the front wrote for a call that ended without one.
            view.finished_at = Some(view.updated_at.clone());
        }
    }
    if view.status != JobStatus::Succeeded {
        view.result = None;
    }
    if view.status == JobStatus::Expired && view.error.is_none() {
        view.error = Some(ErrorInfo {
            code: ErrorCode::Expired,
            message: "the result was deleted by the deployment's retention".into(),
            details: serde_json::Value::Null,
        });
    }
    view.rebase(base);
    view
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFront>()?;
    m.add("ApiError", m.py().get_type::<ApiError>())?;
    m.add_function(wrap_pyfunction!(api_error, m)?)?;
    m.add_function(wrap_pyfunction!(check_idempotency_key, m)?)?;
    m.add_function(wrap_pyfunction!(parse_retry_query, m)?)?;
    m.add_function(wrap_pyfunction!(openapi_json, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_view_is_rebased_and_done() {
        let stored: Stored = serde_json::from_value(serde_json::json!({
            "id": "local", "status": "succeeded", "poll_url": "http://127.0.0.1:1/v1/jobs/local",
            "progress": {"value": 0.5, "max": 1.0, "fraction": 0.5, "phase": "running",
                         "node": {"id": "3"}, "step": {"value": 1, "max": 2}},
            "result": {"url": "http://127.0.0.1:1/x", "outputs": [{"name": "image", "type": "IMAGE"}], "bytes": 7},
        }))
        .expect("stored");
        let v = build_view(Some(stored), "j", "t0", "https://h:8", false);
        assert_eq!(v.poll_url, "https://h:8/v1/jobs/j");
        assert_eq!(v.urls.self_, v.poll_url);
        assert_eq!(
            v.result.as_ref().map(|r| r.url.as_str()),
            Some("https://h:8/v1/jobs/j/result")
        );
        assert_eq!((v.progress.phase, v.progress.fraction), (Phase::Done, 1.0));
        assert!(v.progress.node.is_none() && v.progress.step.is_none());
    }

    #[test]
    fn canceling_only_overrides_an_unfinished_job() {
        let v = build_view(None, "j", "t0", "", true);
        assert_eq!(v.status, JobStatus::Canceling);
        assert_eq!(v.poll_url, "/v1/jobs/j");
        let done: Stored =
            serde_json::from_value(serde_json::json!({"status": "canceled"})).expect("stored");
        let v = build_view(Some(done), "j", "t0", "", true);
        assert_eq!(v.status, JobStatus::Canceled);
    }
}
