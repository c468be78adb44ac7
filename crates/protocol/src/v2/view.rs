//! A protocol v1 job view as a v2 job: status and times, the progress
//! snapshot, the error, the links; previews; and the output records of a
//! job's files.

use std::collections::BTreeMap;

use super::wire::{Job, JobError, JobUrls, Output, PreviewEvent, Progress, StatusEvent};
use crate::api::{parse_rfc3339, ErrorInfo, JobStatus, JobView, Progress as V1Progress};
use crate::media::FileKind;

/// v1 progress as a v2 snapshot (the same numbers; the line of text is the message).
pub fn progress(p: &V1Progress) -> Progress {
    Progress {
        value: p.fraction.clamp(0.0, 1.0),
        nodes_done: p.nodes_done.unwrap_or(0),
        nodes_total: p.nodes_total.unwrap_or(0),
        current_node: p.node.as_ref().map(|n| n.id.clone()),
        current_node_class: p.node.as_ref().and_then(|n| n.class_type.clone()),
        step: p.step.map(|s| s.value),
        steps: p.step.map(|s| s.max),
        message: (!p.text.is_empty()).then(|| p.text.clone()),
    }
}

/// A v1 job error as v2's: the node lifted out of `details.node`; never a traceback.
pub fn job_error(e: &ErrorInfo) -> JobError {
    let node = e.details.get("node");
    let text = |k: &str| {
        node.and_then(|n| n.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    JobError {
        code: e.code.as_str(),
        message: e.message.clone(),
        node_id: text("id"),
        class_type: text("type"),
        traceback: None,
    }
}

/// The SSE `status` of a view.
pub fn status_event(v: &JobView) -> StatusEvent {
    StatusEvent {
        status: v.status,
        queue_position: queue_position(v),
    }
}

fn queue_position(v: &JobView) -> Option<u64> {
    (v.status == JobStatus::Queued)
        .then_some(v.progress.queue_position)
        .flatten()
}

/// A v1 preview as v2's.
pub fn preview(p: &crate::api::PreviewEvent) -> PreviewEvent {
    PreviewEvent {
        node_id: p.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
        content_type: p.mime.clone(),
        data_base64: p.data.clone(),
    }
}

/// The v2 job of a v1 view, with its `outputs` and its retention
/// deadline, links under `base` ("" for host-relative ones).
pub fn job(v: &JobView, outputs: Vec<Output>, expires_at: String, base: &str) -> Job {
    let ms = |t: &Option<String>| t.as_deref().and_then(parse_rfc3339);
    let created = parse_rfc3339(&v.created_at);
    let (started, completed) = (ms(&v.started_at), ms(&v.finished_at));
    let mut metrics = BTreeMap::new();
    metrics.insert(
        "queue_ms".to_owned(),
        started.zip(created).map(|(s, c)| (s - c).max(0)),
    );
    metrics.insert(
        "execution_ms".to_owned(),
        completed.zip(started).map(|(e, s)| (e - s).max(0)),
    );
    Job {
        id: v.id.clone(),
        status: v.status,
        created_at: v.created_at.clone(),
        started_at: v.started_at.clone(),
        completed_at: v.finished_at.clone(),
        expires_at,
        queue_position: queue_position(v),
        progress: Some(progress(&v.progress)),
        outputs: if v.status == JobStatus::Succeeded {
            outputs
        } else {
            Vec::new()
        },
        error: v.error.as_ref().map(job_error),
        metrics,
        urls: JobUrls::under(base, &v.id),
    }
}

/// An asset's content link under `base`.
pub fn content_url(base: &str, asset_id: &str) -> String {
    format!(
        "{}{}/assets/{asset_id}/content",
        base.trim_end_matches('/'),
        super::PREFIX
    )
}

/// A stored output file, as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub asset_id: String,
    pub job_id: String,
    pub node_id: String,
    pub name: String,
    pub kind: FileKind,
    pub content_type: String,
    pub size_bytes: u64,
    pub hash: Option<String>,
}

impl OutputRecord {
    /// Its v2 form; links under `base`, valid until `url_expires_at`.
    pub fn output(&self, base: &str, url_expires_at: &str) -> Output {
        Output {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            content_type: self.content_type.clone(),
            size_bytes: self.size_bytes,
            id: self.asset_id.clone(),
            hash: self.hash.clone(),
            url: content_url(base, &self.asset_id),
            url_expires_at: url_expires_at.to_owned(),
            job_id: Some(self.job_id.clone()),
        }
    }
}

/// `blake3:<hex>` of `bytes`.
pub fn blake3_hash(bytes: &[u8]) -> String {
    let mut h = ContentHasher::default();
    h.update(bytes);
    h.finish()
}

/// The content hash of bytes that arrive in pieces: `blake3:<hex>`.
#[derive(Debug, Default, Clone)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> String {
        format!("blake3:{}", self.0.finalize().to_hex())
    }
}

/// Is `s` a well-formed `blake3:<64 hex>` hash (lower-case hex)?
pub fn is_blake3(s: &str) -> bool {
    s.strip_prefix("blake3:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobUrls as V1Urls, NodeRef, Phase, Step};

    fn view(status: JobStatus) -> JobView {
        let mut p = V1Progress::start(Phase::Running);
        p.fraction = 0.5;
        p.node = Some(NodeRef {
            id: "8".into(),
            class_type: Some("CRTestSlow".into()),
        });
        p.step = Some(Step { value: 2, max: 4 });
        p.nodes_done = Some(3);
        p.nodes_total = Some(10);
        p.text = "running CRTestSlow (#8) step 2/4".into();
        p.queue_position = Some(2);
        JobView {
            id: "j".into(),
            status,
            progress: p,
            poll_url: String::new(),
            urls: V1Urls::under("", "j"),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:02.000Z".into(),
            started_at: Some("2026-01-01T00:00:01.000Z".into()),
            finished_at: None,
            result: None,
            error: None,
        }
    }

    #[test]
    fn a_running_view_is_a_v2_job_with_its_snapshot() {
        let j = job(
            &view(JobStatus::Running),
            vec![],
            "2026-01-02T00:00:00.000Z".into(),
            "http://h:1",
        );
        assert_eq!(j.urls.self_, "http://h:1/api/v2/jobs/j");
        assert_eq!(j.urls.cancel, "http://h:1/api/v2/jobs/j/cancel");
        assert_eq!(j.queue_position, None, "only a queued job has a place");
        let p = j.progress.expect("progress");
        assert_eq!((p.value, p.nodes_done, p.nodes_total), (0.5, 3, 10));
        assert_eq!(
            (p.current_node.as_deref(), p.current_node_class.as_deref()),
            (Some("8"), Some("CRTestSlow"))
        );
        assert_eq!((p.step, p.steps), (Some(2), Some(4)));
        assert_eq!(j.metrics["queue_ms"], Some(1000));
        assert_eq!(j.metrics["execution_ms"], None);
        let q = job(&view(JobStatus::Queued), vec![], String::new(), "");
        assert_eq!(
            (q.queue_position, q.urls.events.as_str()),
            (Some(2), "/api/v2/jobs/j/events")
        );
    }

    #[test]
    fn errors_lift_the_node_and_never_carry_a_traceback() {
        let e = ErrorInfo {
            code: crate::api::ErrorCode::ExecutionFailed,
            message: "boom".into(),
            details: serde_json::json!({"node": {"id": "9", "type": "CRTestFail"}}),
        };
        let j = job_error(&e);
        assert_eq!(
            (
                j.code.as_str(),
                j.node_id.as_deref(),
                j.class_type.as_deref()
            ),
            ("execution_failed", Some("9"), Some("CRTestFail"))
        );
        assert!(j.traceback.is_none());
        let json = serde_json::to_value(&j).expect("json");
        assert!(json["traceback"].is_null() && json.get("traceback").is_some());
    }

    #[test]
    fn hashes_are_blake3() {
        let h = blake3_hash(b"abc");
        assert!(is_blake3(&h), "{h}");
        assert!(!is_blake3("blake3:xyz") && !is_blake3("sha256:00"));
    }
}
