//! JSON bodies and header names of the jobs API (protocol v1).
//!
//! Status responses are a superset of the simple `status`/`progress`/
//! `poll_url`/`result` shape, so a client that knows only those fields still
//! reads them, and the status vocabulary matches Comfy API v2's.

use serde::{Deserialize, Serialize};

/// The port `comfy-remote serve` listens on by default.
pub const DEFAULT_PORT: u16 = 8189;
/// Where `comfy-remote serve` listens by default (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8189";
/// The endpoint a client (the Remote API node) calls by default: a worker
/// started with `comfy-remote serve` and its defaults, on this machine.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8189";

/// Header carrying the protocol version on every response.
pub const HEADER_PROTOCOL: &str = "Comfy-Remote-Protocol";
/// Request header of a result download (or a submit that waits): the
/// packings (§2.7) the client reads, comma-separated.
pub const HEADER_CODECS: &str = "Comfy-Remote-Codecs";
/// Request header of a result download: `8bit` lets IMAGE and MASK values
/// be rounded to 8 bits (§2.7, lossy).
pub const HEADER_IMAGES: &str = "Comfy-Remote-Images";
/// Response header of a submit answered with the result: the job's id.
pub const HEADER_JOB: &str = "Comfy-Remote-Job";

/// Header of a resumable upload (§4.9): where a piece starts (request),
/// the bytes held so far (response).
pub const HEADER_UPLOAD_OFFSET: &str = "Upload-Offset";
/// Header of `POST /v1/uploads`: the upload's total size, when known.
pub const HEADER_UPLOAD_LENGTH: &str = "Upload-Length";
/// An upload not submitted within this long is deleted (§4.9).
pub const UPLOAD_TTL_SECS: u64 = 24 * 3600;
/// The piece a client sends per `PATCH` (§4.9): what one broken
/// connection may cost.
pub const UPLOAD_PIECE_BYTES: u64 = 8 << 20;
/// Bodies from this size up go as a resumable upload when the server
/// offers one (smaller ones go in the submit itself).
pub const UPLOAD_MIN_BYTES: u64 = 16 << 20;

/// Header making a submit idempotent: the same key returns the same job.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Media type of the binary container.
pub const CONTAINER_MEDIA_TYPE: &str = "application/vnd.comfy-remote.container";
/// Name of the base64 JSON transport form, in its `format` field.
pub const JSON_FORM_FORMAT: &str = "comfy-remote/1+base64";

/// Lifecycle of a job. Terminal: `succeeded`, `canceled`, `failed`, `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Canceling,
    Canceled,
    Failed,
    Expired,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Canceled | JobStatus::Failed | JobStatus::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Failed => "failed",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// Where a job is in its run, finer than [`JobStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    Starting,
    Running,
    Collecting,
    Done,
}

/// A node of the remote workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub class_type: Option<String>,
}

/// A `value/max` step counter (e.g. sampler steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub value: u64,
    pub max: u64,
}

/// A complete progress snapshot. `value`/`max` keep the simple `{value,max}`
/// shape readable; `fraction` is the same number in 0..=1 and never goes
/// down during a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub value: f64,
    pub max: f64,
    pub fraction: f64,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// Jobs ahead of this one while `phase` is `queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// Nodes finished / nodes to run, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_total: Option<u64>,
    /// One human-readable line, e.g. `running KSampler (#3) step 12/20`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

impl Progress {
    /// The progress of a job that ended `status` (§4.2): phase `done`, no
    /// node, step or queue position, the status as text, and `fraction` 1
    /// for `succeeded` and `expired` (the last value otherwise).
    pub fn settle(&mut self, status: JobStatus) {
        self.phase = Phase::Done;
        self.node = None;
        self.step = None;
        self.queue_position = None;
        self.text = status.as_str().to_owned();
        self.max = 1.0;
        if matches!(status, JobStatus::Succeeded | JobStatus::Expired) {
            self.fraction = 1.0;
        }
        self.value = self.fraction;
    }

    /// A fresh progress snapshot at `fraction` 0 in `phase`.
    pub fn start(phase: Phase) -> Self {
        Progress {
            value: 0.0,
            max: 1.0,
            fraction: 0.0,
            phase,
            node: None,
            step: None,
            queue_position: None,
            nodes_done: None,
            nodes_total: None,
            text: String::new(),
        }
    }
}

/// Links a client follows instead of building URLs itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUrls {
    #[serde(rename = "self")]
    pub self_: String,
    pub events: String,
    pub result: String,
    pub cancel: String,
}

impl JobUrls {
    /// A job's links under `base` (the service's base URL without a
    /// trailing slash; empty for paths, which clients resolve against the
    /// URL they called): `{base}/v1/jobs/{id}`, then `/events`, `/result`,
    /// `/cancel`.
    pub fn under(base: &str, id: &str) -> JobUrls {
        let s = format!("{}/v1/jobs/{id}", base.trim_end_matches('/'));
        JobUrls {
            events: format!("{s}/events"),
            result: format!("{s}/result"),
            cancel: format!("{s}/cancel"),
            self_: s,
        }
    }
}

/// Times in job views: RFC 3339 in UTC with milliseconds
/// (`2026-01-01T00:00:00.000Z`), from milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in UTC (`Z` or
/// `+00:00`, any fraction digits), as [`rfc3339`] writes them; `None` for
/// another form.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = text.trim();
    let (date, rest) = t.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let rest = rest
        .strip_suffix(['Z', 'z'])
        .or_else(|| rest.strip_suffix("+00:00"))?;
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let mut h = hms.splitn(3, ':');
    let (hh, mm, ss): (i64, i64, i64) = (
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
        h.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis: i64 = if frac.is_empty() {
        0
    } else if frac.bytes().all(|b| b.is_ascii_digit()) {
        format!("{frac:0<3}")[..3].parse().ok()?
    } else {
        return None;
    };
    // Days-from-civil (Howard Hinnant), the inverse of `rfc3339`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

/// Description of one input or output of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub comfy_type: String,
}

/// Present on a succeeded job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Download URL of the outputs container (same as `urls.result`).
    pub url: String,
    pub outputs: Vec<ValueInfo>,
    pub bytes: u64,
    /// The outputs in the base64 JSON form, only when small (see limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<JsonForm>,
}

/// The base64 JSON transport form of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonForm {
    /// Always [`JSON_FORM_FORMAT`].
    pub format: String,
    /// Standard base64 (with padding) of the container bytes.
    pub data: String,
}

/// A job as returned by submit, status, cancel and the `status`/`done` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub status: JobStatus,
    pub progress: Progress,
    /// URL to poll for this job's status (same as `urls.self`).
    pub poll_url: String,
    pub urls: JobUrls,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub updated_at: String,
    /// When ComfyUI began executing the job (absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the job reached a terminal status (absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl JobView {
    /// Point every link of the view (`urls`, `poll_url`, `result.url`) under `base`.
    pub fn rebase(&mut self, base: &str) {
        self.urls = JobUrls::under(base, &self.id);
        self.poll_url = self.urls.self_.clone();
        if let Some(r) = &mut self.result {
            r.url = self.urls.result.clone();
        }
    }
}

/// Machine-readable error codes. Stable: clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    InvalidInput,
    InvalidPayload,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
    /// 416: a `Range` outside the resource.
    RangeNotSatisfiable,
    NotReady,
    Internal,
    // Job failures (in `JobView.error`).
    ValidationFailed,
    ExecutionFailed,
    ComfyuiUnavailable,
    WorkerRestarted,
    Canceled,
    Expired,
}

/// `{code, message, details}`: the error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    /// One sentence a user can act on.
    pub message: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// The error body of every non-2xx response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

/// One input or output of the deployed workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureItem {
    pub name: String,
    #[serde(rename = "type")]
    pub comfy_type: String,
    /// Inputs only: the job may omit it (the Remote Input has a default).
    #[serde(default)]
    pub optional: bool,
    /// The Remote Input / Remote Output node id in the workflow.
    pub node_id: String,
    /// Inputs only: the value an omitted input takes, when the workflow
    /// gives it as a constant (a Primitive node linked to the Remote
    /// Input's `default`); absent for any other default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// Limits the server enforces, published so clients can check first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsInfo {
    pub max_body_bytes: u64,
    pub max_tensors: u64,
    pub max_rank: u64,
    pub max_concurrent_jobs: u64,
}

/// `GET /v1/info`: what the deployed workflow takes and returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub protocol: String,
    pub server_version: String,
    /// File name of the workflow and the SHA-256 of its canonical JSON.
    pub workflow: WorkflowInfo,
    /// In order: the Remote API node maps its inputs by this order.
    pub inputs: Vec<SignatureItem>,
    pub outputs: Vec<SignatureItem>,
    pub limits: LimitsInfo,
    /// The packings (§2.7) the server reads in a submit and writes in a
    /// result for a client that asks; empty for a server without any.
    #[serde(default)]
    pub codecs: Vec<String>,
    /// Submit-and-wait (`Prefer: wait=N`, §4.1) and resumable result
    /// downloads (`Range`, §4.4) are served.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `features` of a server that waits on `Prefer: wait=N`.
pub const FEATURE_WAIT: &str = "wait";
/// `features` of a server that serves result bytes by `Range`.
pub const FEATURE_RANGE: &str = "range";
/// `features` of a server with resumable uploads (`/v1/uploads`, §4.9).
pub const FEATURE_UPLOADS: &str = "uploads";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowInfo {
    pub name: String,
    pub sha256: String,
}

/// A preview image produced by the remote workflow (SSE `preview` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewEvent {
    /// `image/png` or `image/jpeg`.
    pub mime: String,
    /// Standard base64 of the image bytes.
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_as_snake_case() {
        for s in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Canceling,
            JobStatus::Canceled,
            JobStatus::Failed,
            JobStatus::Expired,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("completed"), None);
    }

    #[test]
    fn the_default_endpoint_is_where_serve_listens_by_default() {
        assert_eq!(DEFAULT_LISTEN, format!("127.0.0.1:{DEFAULT_PORT}"));
        assert_eq!(DEFAULT_ENDPOINT, format!("http://{DEFAULT_LISTEN}"));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn rfc3339_parses_back_what_it_writes() {
        for ms in [0, 1_700_000_000_123, 951_782_400_000, -86_400_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20+00:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20+02:00"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn urls_live_under_the_base_or_are_paths() {
        let u = JobUrls::under("https://h:8189/", "j");
        assert_eq!(u.self_, "https://h:8189/v1/jobs/j");
        assert_eq!(u.cancel, "https://h:8189/v1/jobs/j/cancel");
        assert_eq!(JobUrls::under("", "j").events, "/v1/jobs/j/events");
    }

    #[test]
    fn progress_keeps_the_simple_value_max_shape() {
        let p = Progress::start(Phase::Queued);
        let json = serde_json::to_value(&p).expect("serialize");
        assert_eq!(json["value"], 0.0);
        assert_eq!(json["max"], 1.0);
        assert_eq!(json["phase"], "queued");
    }
}
