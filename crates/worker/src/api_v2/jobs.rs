//! `/api/v2/jobs`: submit, get, list, workflow, cancel.
//!
//! A submitted graph that is the served workflow with other input values
//! becomes a job of that workflow (its inputs in a container, admitted by
//! `Engine::submit` like a v1 job); with `--allow-any-workflow` any other
//! API-format graph becomes a job that runs it (`Engine::submit_prompt`),
//! its assets placed in ComfyUI's input directory.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use comfy_remote_contract::graph;
use comfy_remote_protocol::api::rfc3339;
use comfy_remote_protocol::http::{SubmitMedia, MAX_JSON_BODY};
use comfy_remote_protocol::v2::submit::{self, asset_refs, AssetFile, AssetRef};
use comfy_remote_protocol::v2::wire::{Job, JobWorkflow};
use comfy_remote_protocol::v2::{view, Code, Refusal};
use comfy_remote_protocol::{encode, Payload};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::store::{AssetRow, V2Job};
use super::{check_id, V2Error, V2};
use crate::error::Path;
use crate::jobs::{PromptJob, SubmitBody, SubmitError, SubmitRequest, Submitted, Upload};
use crate::store::{now_ms, JobRow};

/// The subfolder of ComfyUI's input directory a job's assets are put in.
pub const INPUT_SUBFOLDER: &str = "comfy-remote";

impl V2 {
    /// The v2 job of a stored row, links under `base`.
    pub(super) async fn job_of(&self, row: &JobRow, base: &str) -> Result<Job, V2Error> {
        let v = self.engine.status_view(row).await;
        let outputs = self.outputs_of(row).await?;
        // Outputs (and their links) are kept as long as the job's result.
        let expires = rfc3339(row.finished_at.unwrap_or_else(now_ms) + self.retention_ms());
        let outputs = outputs.iter().map(|o| o.output(base, &expires)).collect();
        Ok(view::job(&v, outputs, expires, base))
    }

    pub(super) async fn stored(&self, id: &str) -> Result<JobRow, V2Error> {
        check_id(id, "job")?;
        self.engine
            .job(id)
            .await?
            .ok_or_else(|| Refusal::not_found("job").into())
    }

    /// The assets `refs` name (by id, else by hash), or the refusal that
    /// lists those this server does not hold.
    async fn resolve(&self, refs: Vec<AssetRef>) -> Result<HashMap<String, AssetRow>, V2Error> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for r in refs {
            let label = r.label();
            let row = self
                .store
                .read(move |s| match (&r.id, &r.hash) {
                    (Some(id), _) => s.asset(id),
                    (None, Some(h)) => s.by_hash(h),
                    (None, None) => Ok(None),
                })
                .await?;
            match row {
                Some(a) if self.blobs.exists(&a.hash) => {
                    found.insert(label, a);
                }
                _ => missing.push(label),
            }
        }
        if !missing.is_empty() {
            return Err(submit::missing_assets(&missing).into());
        }
        Ok(found)
    }

    /// A job of the served workflow from the input values `graph` gives it.
    async fn served_container(&self, inputs: Vec<graph::GraphInput>) -> Result<Vec<u8>, V2Error> {
        let refs: Vec<AssetRef> = inputs
            .iter()
            .filter_map(|i| submit::asset_ref(&i.value).and_then(Result::ok))
            .collect();
        let assets = self.resolve(refs).await?;
        let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
        for (label, a) in &assets {
            let data = tokio::fs::read(self.blobs.path(&a.hash))
                .await
                .map_err(V2Error::internal)?;
            bytes.insert(label.clone(), data);
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, V2Error> {
            let entries = graph::entries(
                &inputs,
                &engine.workflow.prompt,
                |r| {
                    let label = r.label();
                    let a = assets.get(&label)?;
                    Some(AssetFile {
                        file_path: a.file_path.as_deref(),
                        content_type: &a.content_type,
                        bytes: bytes.get(&label)?,
                    })
                },
                &engine.config.limits,
            )?;
            encode(&Payload { entries }).map_err(|e| {
                Refusal::new(
                    Code::InvalidWorkflow,
                    format!("the input values cannot travel: {e}"),
                )
                .into()
            })
        })
        .await
        .map_err(V2Error::internal)?
    }

    /// The graph a job that runs its own graph queues: every asset
    /// reference replaced by the name its file gets in ComfyUI's input
    /// directory, and those files.
    async fn own_graph(
        &self,
        mut g: Map<String, Value>,
    ) -> Result<(Map<String, Value>, Vec<Upload>), V2Error> {
        self.check_nodes(&g).await?;
        let refs = asset_refs(&g).map_err(V2Error::from)?;
        let assets = self
            .resolve(refs.iter().map(|(_, _, r)| r.clone()).collect())
            .await?;
        let mut uploads: Vec<Upload> = Vec::new();
        for (node, field, r) in refs {
            let Some(a) = assets.get(&r.label()) else {
                continue;
            };
            let hex = a.hash.trim_start_matches("blake3:");
            let ext = a
                .file_path
                .as_deref()
                .and_then(|p| p.rsplit_once('.'))
                .map(|(_, e)| e.to_ascii_lowercase())
                .filter(|e| {
                    !e.is_empty() && e.len() <= 10 && e.chars().all(|c| c.is_ascii_alphanumeric())
                })
                .unwrap_or_else(|| "bin".into());
            let filename = format!("{}.{ext}", &hex[..32.min(hex.len())]);
            if !uploads.iter().any(|u| u.filename == filename) {
                uploads.push(Upload {
                    source: self.blobs.path(&a.hash),
                    subfolder: INPUT_SUBFOLDER.into(),
                    filename: filename.clone(),
                });
            }
            if let Some(inputs) = g
                .get_mut(&node)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            {
                inputs.insert(
                    field,
                    Value::String(format!("{INPUT_SUBFOLDER}/{filename}")),
                );
            }
        }
        Ok((g, uploads))
    }

    /// Every node has a `class_type` this ComfyUI knows and an `inputs`
    /// object, and every link names a node of the graph.
    async fn check_nodes(&self, g: &Map<String, Value>) -> Result<(), V2Error> {
        let known = self.object_info().await;
        let mut problems = Vec::new();
        for (id, node) in g {
            let Some(class) = node.get("class_type").and_then(Value::as_str) else {
                problems.push(format!("node {id} has no string `class_type`"));
                continue;
            };
            if let Some(info) = &known {
                if info.get(class).is_none() {
                    problems.push(format!(
                        "node {id}: this ComfyUI has no node type {class:?}"
                    ));
                }
            }
            let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
                problems.push(format!("node {id} ({class}) has no `inputs` object"));
                continue;
            };
            for (field, v) in inputs {
                if let Some([Value::String(src), Value::Number(_)]) =
                    v.as_array().map(Vec::as_slice)
                {
                    if !g.contains_key(src) {
                        problems.push(format!("node {id} ({class}) input {field} links to node {src}, which is not in the graph"));
                    }
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Refusal::new(
            Code::InvalidWorkflow,
            format!("the workflow cannot run: {}", problems.join("; ")),
        )
        .with_details(serde_json::json!({ "problems": problems }))
        .into())
    }

    /// ComfyUI's node types, fetched once per ComfyUI start; `None` while
    /// it does not answer (ComfyUI checks the graph when it is queued).
    /// A UI-format graph converted to the API format, as ComfyUI's frontend
    /// would, with this ComfyUI's node definitions.
    async fn api_graph(&self, ui: &Map<String, Value>) -> Result<Map<String, Value>, V2Error> {
        let Some(info) = self.object_info().await else {
            return Err(Refusal::new(
                Code::DeploymentNotReady,
                "this UI-format workflow is converted with ComfyUI's node definitions, and \
                 ComfyUI is not answering yet; retry shortly",
            )
            .into());
        };
        let ui = Value::Object(ui.clone());
        let g = tokio::task::spawn_blocking(move || comfy_remote_contract::ui::to_api(&ui, &info))
            .await
            .map_err(V2Error::internal)?
            .map_err(|e| {
                Refusal::new(
                    Code::InvalidWorkflow,
                    format!("this UI-format workflow cannot be run: {e}"),
                )
            })?;
        if g.is_empty() {
            return Err(submit::no_nodes_refusal().into());
        }
        Ok(g)
    }

    async fn object_info(&self) -> Option<Arc<Value>> {
        let generation = *self.engine.comfy.generation.borrow();
        let mut cached = self.object_info.lock().await;
        if let Some((g, info)) = cached.as_ref() {
            if *g == generation {
                return Some(info.clone());
            }
        }
        if !*self.engine.comfy.ready.borrow() {
            return None;
        }
        let info = Arc::new(self.engine.comfy.client.object_info().await.ok()?);
        *cached = Some((generation, info.clone()));
        Some(info)
    }
}

/// Read a JSON body of at most [`MAX_JSON_BODY`] bytes.
async fn json_body(headers: &HeaderMap, body: Body) -> Result<Bytes, V2Error> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if SubmitMedia::of(ctype).ok() != Some(SubmitMedia::Json) {
        return Err(Refusal::new(
            Code::UnsupportedMediaType,
            format!(
                "send the body as application/json; got {:?}",
                ctype.unwrap_or("")
            ),
        )
        .into());
    }
    let too_large = || {
        Refusal::new(
            Code::PayloadTooLarge,
            format!("JSON bodies are limited to {MAX_JSON_BODY} bytes"),
        )
        .with_details(serde_json::json!({ "max_body_bytes": MAX_JSON_BODY }))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BODY) {
        return Err(too_large().into());
    }
    let mut buf = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refusal::new(
                Code::InvalidRequest,
                format!("reading the body failed: {e}"),
            )
        })?;
        if (buf.len() + chunk.len()) as u64 > MAX_JSON_BODY {
            return Err(too_large().into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// `POST /api/v2/jobs`.
pub(super) async fn submit(
    State(v2): State<Arc<V2>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V2Error> {
    let key = headers
        .get("idempotency-key")
        .map(|v| submit::idempotency_key(v.as_bytes()))
        .transpose()?
        .map(|k| format!("jobs:{k}"));
    let raw = json_body(&headers, body).await?;
    let mut parsed = submit::parse_submit(&raw)?;
    if parsed.ui_format {
        parsed.workflow = v2.api_graph(&parsed.workflow).await?;
    }
    let graph_text = serde_json::to_string(&parsed.workflow).map_err(V2Error::internal)?;
    // The served workflow with other input values, else (when allowed) its own graph.
    let served = graph::graph_inputs(&v2.engine.workflow, &parsed.workflow);
    enum Plan {
        Served(Vec<u8>),
        Own(Map<String, Value>, Vec<Upload>),
    }
    let plan = match served {
        Ok(inputs) => Plan::Served(v2.served_container(inputs).await?),
        Err(refusal) if !v2.config.allow_any_workflow => return Err(refusal.into()),
        Err(_) => {
            let (g, uploads) = v2.own_graph(parsed.workflow).await?;
            Plan::Own(g, uploads)
        }
    };
    if let Some(k) = &key {
        let claim = k.clone();
        if !v2.store.run(move |s| s.claim_key(&claim)).await? {
            return Err(submit::key_reused().into());
        }
    }
    let own_graph = matches!(plan, Plan::Own(..));
    let admitted = match plan {
        Plan::Served(container) => v2
            .engine
            .submit(SubmitRequest {
                media: SubmitMedia::Container,
                retryable: false,
                idempotency_key: None,
                body: SubmitBody::Stream(
                    futures::stream::once(async move {
                        Ok::<_, std::convert::Infallible>(Bytes::from(container))
                    })
                    .boxed(),
                ),
            })
            .await
            .map(|s| match s {
                Submitted::New(row) | Submitted::Replayed(row) => row,
            }),
        Plan::Own(prompt, uploads) => {
            v2.engine
                .submit_prompt(PromptJob {
                    prompt,
                    uploads,
                    retryable: false,
                    extra_data: parsed.extra_data.map(Value::Object),
                })
                .await
        }
    };
    let row = match admitted {
        Ok(row) => row,
        Err(e) => {
            // No job was made: the key is free for a retry.
            if let Some(k) = key.clone() {
                v2.store.run(move |s| s.release_key(&k)).await?;
            }
            return Err(match e {
                SubmitError::Refused(r) => Refusal::from(r).into(),
                SubmitError::Internal(msg) => V2Error::internal(msg),
            });
        }
    };
    let record = V2Job {
        id: row.id.clone(),
        own_graph,
        workflow: graph_text,
        outputs_ready: false,
    };
    v2.store
        .run(move |s| s.insert_job(&record, key.as_deref()))
        .await?;
    let base = v2.base(&headers);
    let job = v2.job_of(&row, &base).await?;
    let mut resp = (StatusCode::CREATED, Json(&job)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&job.urls.self_) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /api/v2/jobs/{id}`.
pub(super) async fn get(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    let row = v2.stored(&id).await?;
    Ok(Json(v2.job_of(&row, &v2.base(&headers)).await?).into_response())
}

/// `POST /api/v2/jobs/{id}/cancel`: `canceling`, or the job as it ended.
pub(super) async fn cancel(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    v2.stored(&id).await?;
    let row = v2
        .engine
        .cancel(&id)
        .await?
        .ok_or_else(|| V2Error::from(Refusal::not_found("job")))?;
    Ok(Json(v2.job_of(&row, &v2.base(&headers)).await?).into_response())
}

/// `GET /api/v2/jobs/{id}/workflow`: the graph as submitted (a job
/// submitted through v1 ran the served workflow).
pub(super) async fn workflow(
    State(v2): State<Arc<V2>>,
    Path(id): Path<String>,
) -> Result<Response, V2Error> {
    v2.stored(&id).await?;
    let key = id.clone();
    let graph = match v2.store.read(move |s| s.job(&key)).await? {
        Some(j) if j.workflow != "{}" => {
            serde_json::from_str(&j.workflow).map_err(V2Error::internal)?
        }
        _ => Value::Object(v2.engine.workflow.prompt.clone()),
    };
    Ok(Json(JobWorkflow {
        workflow: graph,
        format: "api".into(),
    })
    .into_response())
}

/// `GET /api/v2/jobs`: the newest v2 jobs (`limit` 1..=100, default 50;
/// `status`: a comma-separated filter).
pub(super) async fn list(
    State(v2): State<Arc<V2>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, V2Error> {
    let limit = match query.get("limit") {
        None => 50,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(Refusal::new(
                    Code::InvalidRequest,
                    "`limit` must be an integer from 1 to 100",
                )
                .into())
            }
        },
    };
    let wanted: Option<Vec<String>> = query.get("status").map(|s| {
        s.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    });
    if let Some(bad) = wanted
        .iter()
        .flatten()
        .find(|s| comfy_remote_protocol::api::JobStatus::parse(s).is_none())
    {
        return Err(Refusal::new(
            Code::InvalidRequest,
            format!("unknown status {bad:?} in `status`"),
        )
        .into());
    }
    let base = v2.base(&headers);
    let mut jobs = Vec::new();
    // Newest first; a status filter reads a few pages' worth at most.
    let scan = if wanted.is_some() { 500 } else { limit };
    let ids = v2.store.read(move |s| s.recent_jobs(scan)).await?;
    for id in ids {
        if jobs.len() >= limit as usize {
            break;
        }
        let Some(row) = v2.engine.job(&id).await? else {
            continue;
        };
        let job = v2.job_of(&row, &base).await?;
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|s| s == job.status.as_str()))
        {
            continue;
        }
        jobs.push(job);
    }
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}
