//! Reading job documents leniently: the native `JobView` and the seed's
//! simple `status`/`progress`/`poll_url`/`result` shape, with its synonyms.

use base64::Engine as _;
use comfy_remote_protocol::api::{
    JobStatus, JobView, NodeRef, Phase, Progress, Step, JSON_FORM_FORMAT,
};
use serde::Deserialize as _;
use serde_json::{Map, Value as Json};

/// Map a status word of any common API to a [`JobStatus`]. Case, `-` and
/// spaces do not matter. `None` for words no API we know uses.
pub fn parse_status(word: &str) -> Option<JobStatus> {
    let w: String = word
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    Some(match w.as_str() {
        "pending" | "queued" | "in_queue" | "inqueue" | "submitted" | "waiting" | "created"
        | "accepted" | "scheduled" => JobStatus::Queued,
        "running" | "in_progress" | "inprogress" | "processing" | "started" | "executing"
        | "starting" => JobStatus::Running,
        "completed" | "complete" | "succeeded" | "success" | "successful" | "done" | "finished"
        | "ok" => JobStatus::Succeeded,
        "failed" | "failure" | "error" | "errored" => JobStatus::Failed,
        "cancelled" | "canceled" | "aborted" => JobStatus::Canceled,
        "canceling" | "cancelling" => JobStatus::Canceling,
        "expired" | "timed_out" | "timeout" => JobStatus::Expired,
        _ => return None,
    })
}

/// Where a finished job's outputs are.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultRef {
    /// Container bytes carried inline (the base64 JSON form).
    Inline(Vec<u8>),
    /// Container bytes to download.
    Url(String),
    /// A plain JSON value (seed-shape endpoints that return e.g. a string).
    Plain(Json),
}

/// A job document as far as the client understands it. Every field is
/// optional: endpoints of the seed's shape send only some of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobDoc {
    pub id: Option<String>,
    pub status: Option<JobStatus>,
    /// The status word as sent, for messages.
    pub status_word: Option<String>,
    pub progress: Option<Progress>,
    pub poll_url: Option<String>,
    pub events_url: Option<String>,
    pub result_url: Option<String>,
    pub cancel_url: Option<String>,
    pub result: Option<ResultRef>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The whole document, when it is a native `JobView` (a comfy-remote
    /// server's status, `status`/`done` event or submit answer).
    pub view: Option<Box<JobView>>,
}

impl JobDoc {
    /// Parse a job document; `Err` names what is wrong.
    pub fn parse(doc: &Json) -> Result<JobDoc, String> {
        let obj = doc
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, got {}", kind(doc)))?;
        // Some APIs wrap the job: {"job": {...}} or {"data": {...}}.
        for wrapper in ["job", "data"] {
            if let Some(inner @ Json::Object(o)) = obj.get(wrapper) {
                if !obj.contains_key("status") && o.contains_key("status") {
                    return JobDoc::parse(inner);
                }
            }
        }
        let mut out = JobDoc {
            id: str_field(obj, &["id", "job_id", "jobId", "request_id", "prompt_id"]),
            ..JobDoc::default()
        };
        if let Some(word) = obj.get("status").and_then(Json::as_str) {
            out.status = Some(parse_status(word).ok_or_else(|| {
                format!(
                    "unknown job status {word:?} (expected one of pending, queued, running, \
                     in_progress, processing, completed, succeeded, failed, error, canceled)"
                )
            })?);
            out.status_word = Some(word.to_owned());
        }
        let urls = obj.get("urls").and_then(Json::as_object);
        let url = |names: &[&str], link: &str| {
            str_field(obj, names).or_else(|| urls.and_then(|u| str_field(u, &[link])))
        };
        out.poll_url = url(&["poll_url", "pollUrl", "status_url", "statusUrl"], "self");
        out.events_url = url(&["events_url", "stream_url"], "events");
        out.result_url = url(&["result_url"], "result");
        out.cancel_url = url(&["cancel_url", "cancelUrl"], "cancel");
        if let Some(p) = obj.get("progress") {
            out.progress = parse_progress(p, out.status);
        }
        if let (Some(p), Some(pos)) = (
            out.progress.as_mut(),
            obj.get("queue_position").and_then(Json::as_u64),
        ) {
            p.queue_position = Some(pos);
        }
        if let Some(r) = obj.get("result").filter(|r| !r.is_null()) {
            out.result = Some(parse_result(r)?);
        } else if let Some(r) = obj.get("output").or_else(|| obj.get("outputs")) {
            if !r.is_null() {
                out.result = Some(parse_result(r)?);
            }
        }
        match obj.get("error") {
            Some(Json::String(s)) => out.error_message = Some(s.clone()),
            Some(Json::Object(e)) => {
                out.error_code = str_field(e, &["code", "type"]);
                out.error_message = str_field(e, &["message", "detail", "msg"])
                    .or_else(|| Some(Json::Object(e.clone()).to_string()));
            }
            _ => {}
        }
        // No status but a result: the job is done (simple endpoints).
        if out.status.is_none() && out.result.is_some() {
            out.status = Some(JobStatus::Succeeded);
        }
        out.view = JobView::deserialize(doc).ok().map(Box::new);
        Ok(out)
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn str_field(obj: &Map<String, Json>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match obj.get(*n) {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn num(obj: &Map<String, Json>, name: &str) -> Option<f64> {
    obj.get(name)
        .and_then(Json::as_f64)
        .filter(|f| f.is_finite())
}

/// Read any of the progress shapes: a number (0..1 or 0..100), `{value,max}`,
/// `{percent}`, `{ratio}`, or a full native [`Progress`].
pub fn parse_progress(p: &Json, status: Option<JobStatus>) -> Option<Progress> {
    let phase = match status {
        Some(JobStatus::Queued) => Phase::Queued,
        Some(s) if s.is_terminal() => Phase::Done,
        _ => Phase::Running,
    };
    let mut out = Progress::start(phase);
    match p {
        Json::Number(n) => {
            let v = n.as_f64().filter(|f| f.is_finite())?;
            let f = if v > 1.0 { v / 100.0 } else { v };
            out.fraction = f.clamp(0.0, 1.0);
            out.value = out.fraction;
        }
        Json::Object(o) => {
            if o.contains_key("fraction") && o.contains_key("phase") {
                if let Ok(full) = serde_json::from_value::<Progress>(p.clone()) {
                    return Some(full);
                }
            }
            if let (Some(v), Some(m)) = (
                num(o, "value").or_else(|| num(o, "current")),
                num(o, "max").or_else(|| num(o, "total")),
            ) {
                out.value = v;
                out.max = m;
                out.fraction = if m > 0.0 {
                    (v / m).clamp(0.0, 1.0)
                } else {
                    0.0
                };
            } else if let Some(pc) = num(o, "percent").or_else(|| num(o, "percentage")) {
                out.fraction = (pc / 100.0).clamp(0.0, 1.0);
                out.value = out.fraction;
            } else if let Some(r) = num(o, "ratio").or_else(|| num(o, "fraction")) {
                out.fraction = r.clamp(0.0, 1.0);
                out.value = out.fraction;
            } else {
                return None;
            }
            if let Some(t) = o
                .get("text")
                .or_else(|| o.get("message"))
                .and_then(Json::as_str)
            {
                out.text = t.to_owned();
            }
            if let Some(node) = o.get("node") {
                out.node = match node {
                    Json::String(id) => Some(NodeRef {
                        id: id.clone(),
                        class_type: None,
                    }),
                    other => serde_json::from_value(other.clone()).ok(),
                };
            }
            if let Some(step) = o.get("step") {
                out.step = serde_json::from_value::<Step>(step.clone()).ok();
            }
            out.queue_position = o.get("queue_position").and_then(Json::as_u64);
        }
        _ => return None,
    }
    Some(out)
}

fn parse_result(r: &Json) -> Result<ResultRef, String> {
    if let Json::Object(o) = r {
        if let (Some(Json::String(format)), Some(Json::String(data))) =
            (o.get("format"), o.get("data"))
        {
            if format != JSON_FORM_FORMAT {
                return Err(format!(
                    "result has format {format:?}; this client reads {JSON_FORM_FORMAT:?}"
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("result data is not valid base64: {e}"))?;
            return Ok(ResultRef::Inline(bytes));
        }
        // Native JobResult: inline form when small, download URL otherwise.
        if let Some(Json::String(url)) = o.get("url") {
            if let Some(inline @ Json::Object(_)) = o.get("inline") {
                return parse_result(inline);
            }
            return Ok(ResultRef::Url(url.clone()));
        }
    }
    Ok(ResultRef::Plain(r.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_synonyms() {
        use JobStatus::*;
        let cases = [
            ("pending", Queued),
            ("QUEUED", Queued),
            ("IN_QUEUE", Queued),
            ("in-queue", Queued),
            ("running", Running),
            ("in_progress", Running),
            ("IN PROGRESS", Running),
            ("processing", Running),
            ("completed", Succeeded),
            ("succeeded", Succeeded),
            ("success", Succeeded),
            ("done", Succeeded),
            ("failed", Failed),
            ("error", Failed),
            ("cancelled", Canceled),
            ("canceled", Canceled),
            ("canceling", Canceling),
            ("expired", Expired),
        ];
        for (word, want) in cases {
            assert_eq!(parse_status(word), Some(want), "{word}");
        }
        assert_eq!(parse_status("bogus"), None);
    }

    #[test]
    fn unknown_status_is_an_error_naming_it() {
        let err = JobDoc::parse(&json!({"status": "hatching"})).expect_err("unknown");
        assert!(err.contains("\"hatching\""), "{err}");
    }

    #[test]
    fn progress_shapes() {
        let f = |p: Json| parse_progress(&p, None).map(|p| p.fraction);
        assert_eq!(f(json!(0.25)), Some(0.25));
        assert_eq!(f(json!(40)), Some(0.4));
        assert_eq!(f(json!(100)), Some(1.0));
        assert_eq!(f(json!(1)), Some(1.0));
        assert_eq!(f(json!({"value": 3, "max": 12})), Some(0.25));
        assert_eq!(f(json!({"value": 3, "max": 0})), Some(0.0));
        assert_eq!(f(json!({"percent": 50})), Some(0.5));
        assert_eq!(f(json!({"ratio": 0.75})), Some(0.75));
        assert_eq!(f(json!({"ratio": 7.5})), Some(1.0));
        assert_eq!(f(json!("half")), None);
        assert_eq!(f(json!({"eta": 3})), None);
        let full = json!({"value": 2.0, "max": 4.0, "fraction": 0.5, "phase": "running",
                          "node": {"id": "3", "type": "KSampler"}, "step": {"value": 2, "max": 4},
                          "text": "running KSampler (#3) step 2/4"});
        let p = parse_progress(&full, None).expect("native progress");
        assert_eq!(p.step, Some(Step { value: 2, max: 4 }));
        assert_eq!(
            p.node.as_ref().and_then(|n| n.class_type.as_deref()),
            Some("KSampler")
        );
    }

    #[test]
    fn seed_shape_document() {
        let d = JobDoc::parse(&json!({
            "status": "in_progress", "progress": {"percent": 30},
            "poll_url": "/jobs/7", "cancel_url": "/jobs/7/cancel", "id": 7
        }))
        .expect("parses");
        assert_eq!(d.status, Some(JobStatus::Running));
        assert_eq!(d.id.as_deref(), Some("7"));
        assert_eq!(d.poll_url.as_deref(), Some("/jobs/7"));
        assert_eq!(d.cancel_url.as_deref(), Some("/jobs/7/cancel"));
        assert_eq!(d.progress.map(|p| p.fraction), Some(0.3));
    }

    #[test]
    fn results_inline_url_and_plain() {
        let data = base64::engine::general_purpose::STANDARD.encode(b"container");
        let d = JobDoc::parse(&json!({"status": "completed",
            "result": {"format": JSON_FORM_FORMAT, "data": data}}))
        .expect("parses");
        assert_eq!(d.result, Some(ResultRef::Inline(b"container".to_vec())));
        let d = JobDoc::parse(&json!({"status": "succeeded",
            "result": {"url": "/v1/jobs/1/result", "outputs": [], "bytes": 9}}))
        .expect("parses");
        assert_eq!(d.result, Some(ResultRef::Url("/v1/jobs/1/result".into())));
        let d = JobDoc::parse(&json!({"result": "hello"})).expect("parses");
        assert_eq!(d.status, Some(JobStatus::Succeeded));
        assert_eq!(d.result, Some(ResultRef::Plain(json!("hello"))));
        let err = JobDoc::parse(&json!({"result": {"format": "pickle+base64", "data": "x"}}))
            .expect_err("foreign format");
        assert!(err.contains("pickle+base64"), "{err}");
    }

    #[test]
    fn native_job_view_links_and_errors() {
        let d = JobDoc::parse(&json!({
            "id": "j1", "status": "failed", "poll_url": "http://h/v1/jobs/j1",
            "urls": {"self": "http://h/v1/jobs/j1", "events": "http://h/v1/jobs/j1/events",
                     "result": "http://h/v1/jobs/j1/result", "cancel": "http://h/v1/jobs/j1/cancel"},
            "progress": {"value": 0.0, "max": 1.0, "fraction": 0.0, "phase": "done"},
            "error": {"code": "execution_failed", "message": "node 3 (KSampler) raised"}
        }))
        .expect("parses");
        assert_eq!(d.events_url.as_deref(), Some("http://h/v1/jobs/j1/events"));
        assert_eq!(d.cancel_url.as_deref(), Some("http://h/v1/jobs/j1/cancel"));
        assert_eq!(d.error_code.as_deref(), Some("execution_failed"));
        assert_eq!(d.error_message.as_deref(), Some("node 3 (KSampler) raised"));
    }
}
