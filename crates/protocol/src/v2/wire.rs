//! The JSON bodies of Comfy API v2 (spec/openapi.yaml 2.0.0): what a v2
//! client (comfy-sdk) reads. Nullable fields are written as `null`, not
//! left out, where the contract requires them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::JobStatus;
use crate::media::FileKind;

/// One execution of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Until when the job (its record, outputs and links) is kept.
    pub expires_at: String,
    pub queue_position: Option<u64>,
    pub progress: Option<Progress>,
    pub outputs: Vec<Output>,
    pub error: Option<JobError>,
    /// `queue_ms` (created to started) and `execution_ms` (started to
    /// completed), null while unknown.
    pub metrics: BTreeMap<String, Option<i64>>,
    pub urls: JobUrls,
}

/// Follow-up links of a job: absolute, or host-relative (`/api/v2/...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUrls {
    #[serde(rename = "self")]
    pub self_: String,
    pub events: String,
    pub cancel: String,
}

impl JobUrls {
    /// The links of job `id` under `base` (no trailing slash; "" for host-relative links).
    pub fn under(base: &str, id: &str) -> JobUrls {
        let s = format!("{}{}/jobs/{id}", base.trim_end_matches('/'), super::PREFIX);
        JobUrls {
            events: format!("{s}/events"),
            cancel: format!("{s}/cancel"),
            self_: s,
        }
    }
}

/// A complete progress snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Overall fraction in 0..=1; never goes down while the job runs.
    pub value: f64,
    pub nodes_done: u64,
    pub nodes_total: u64,
    pub current_node: Option<String>,
    pub current_node_class: Option<String>,
    pub step: Option<u64>,
    pub steps: Option<u64>,
    pub message: Option<String>,
}

/// A committed output of a job: an asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub node_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub content_type: String,
    pub size_bytes: u64,
    /// The asset id.
    pub id: String,
    /// `blake3:<hex>`.
    pub hash: Option<String>,
    pub url: String,
    pub url_expires_at: String,
    pub job_id: Option<String>,
}

/// An asset: a record over content-addressed bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    pub id: String,
    pub hash: Option<String>,
    pub size_bytes: u64,
    pub content_type: String,
    pub file_path: Option<String>,
    /// On create answers: new bytes (true) or a dedup hit (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_new: Option<bool>,
    pub created_at: String,
    pub url: String,
    pub url_expires_at: String,
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Why a job failed (or was canceled, or expired).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub node_id: Option<String>,
    pub class_type: Option<String>,
    /// Always null: a traceback names the server's paths (it is logged).
    pub traceback: Option<String>,
}

/// SSE `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub status: JobStatus,
    pub queue_position: Option<u64>,
}

/// SSE `preview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewEvent {
    /// The node that sent it; "" when unknown.
    pub node_id: String,
    pub content_type: String,
    pub data_base64: String,
}

/// `GET /api/v2/jobs/{id}/workflow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobWorkflow {
    pub workflow: serde_json::Value,
    /// Always `api`: the graph as it was submitted.
    pub format: String,
}
