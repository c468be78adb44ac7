//! `V2Front`: Comfy API v2's rules for the Modal web front, from the Rust
//! crates (as `Front` is for v1): the submit body and the graph against
//! the served workflow, the job's input container, a v1 view as a v2 job,
//! the result split into output files, the upload form, asset JSON,
//! ranges, keys and error answers. Errors are raised as `ApiError` whose
//! `body` is v2's envelope.

use std::collections::HashMap;

use comfy_remote_contract::graph::{self, GraphInput};
use comfy_remote_contract::{check_inputs, Workflow};
use comfy_remote_protocol::api::{JobView, PreviewEvent as V1Preview, Progress as V1Progress};
use comfy_remote_protocol::http::{byte_range, RangeError};
use comfy_remote_protocol::media::FileKind;
use comfy_remote_protocol::v2::assets::{self as v2assets, AssetRecord, FormReader, Part};
use comfy_remote_protocol::v2::outputs::{split, Naming};
use comfy_remote_protocol::v2::submit::{self, asset_ref, AssetFile};
use comfy_remote_protocol::v2::view::{self, blake3_hash, ContentHasher, OutputRecord};
use comfy_remote_protocol::v2::{Code, Refusal};
use comfy_remote_protocol::{encode, Limits, Payload};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A v2 answer as the Python `ApiError` (the one place, for v2).
pub fn to_py(r: Refusal) -> PyErr {
    let text = r.body().to_string();
    crate::front::to_api_error(
        &r.message,
        r.status(),
        &r.code.as_str(),
        text,
        r.code.retry_after(),
    )
}

fn json_err(what: &str) -> impl Fn(serde_json::Error) -> PyErr + '_ {
    move |e| PyValueError::new_err(format!("{what} is not valid JSON: {e}"))
}

/// A graph input, as the plan hands it to Python and back.
#[derive(Debug, Serialize, Deserialize)]
struct PlannedInput {
    input: String,
    declared: String,
    node_id: String,
    field: String,
    value: Value,
}

/// An output record as the front stores it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredOutput {
    asset_id: String,
    job_id: String,
    node_id: String,
    name: String,
    kind: FileKind,
    content_type: String,
    size_bytes: u64,
    hash: Option<String>,
}

/// Comfy API v2 of one web front serving one workflow.
#[pyclass(name = "V2Front", module = "comfy_remote._native", frozen)]
#[derive(Debug)]
struct PyV2Front {
    workflow: Workflow,
    limits: Limits,
    max_asset_bytes: u64,
    retention_ms: i64,
}

#[pymethods]
impl PyV2Front {
    /// The workflow (`text`, named `name`) as the worker parses it; assets
    /// up to `max_asset_bytes`; results and uploads kept `retention_s`.
    #[new]
    #[pyo3(signature = (name, text, *, max_body_bytes=None, max_asset_bytes=None, retention_s=None))]
    fn new(
        name: &str,
        text: &str,
        max_body_bytes: Option<u64>,
        max_asset_bytes: Option<u64>,
        retention_s: Option<u64>,
    ) -> PyResult<Self> {
        let workflow =
            Workflow::parse(name, text).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let max_body = max_body_bytes.unwrap_or(crate::front::DEFAULT_MAX_BODY_BYTES);
        Ok(PyV2Front {
            workflow,
            limits: Limits {
                max_total_bytes: max_body,
                ..Limits::default()
            },
            max_asset_bytes: max_asset_bytes.unwrap_or(v2assets::DEFAULT_MAX_ASSET_BYTES),
            retention_ms: (retention_s.unwrap_or(24 * 3600) * 1000) as i64,
        })
    }

    #[getter]
    fn max_asset_bytes(&self) -> u64 {
        self.max_asset_bytes
    }

    #[getter]
    fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// The served graph (JSON), for a job without a v2 record.
    fn served_graph(&self) -> String {
        Value::Object(self.workflow.prompt.clone()).to_string()
    }

    /// An `Idempotency-Key` by v2's rule (1 to 255 printable ASCII).
    fn key(&self, raw: &str) -> PyResult<String> {
        submit::idempotency_key(raw.as_bytes()).map_err(to_py)
    }

    /// Check a submit body and take the served workflow's input values
    /// from its graph: `{"inputs": [...], "assets": [{"label", "id", "hash"}],
    /// "workflow": <the graph>}` (JSON).
    fn plan(&self, py: Python<'_>, body: &[u8]) -> PyResult<String> {
        py.detach(|| -> Result<String, Refusal> {
            // The front has no ComfyUI whose node definitions would convert a UI graph.
            let parsed = submit::parse_submit(body)?.api_only()?;
            let inputs = graph::graph_inputs(&self.workflow, &parsed.workflow)?;
            let mut assets = Vec::new();
            for i in &inputs {
                if let Some(r) = asset_ref(&i.value) {
                    let r = r.map_err(|why| Refusal::new(Code::MissingAsset, why))?;
                    assets.push(serde_json::json!({"label": r.label(), "id": r.id, "hash": r.hash}));
                }
            }
            let planned: Vec<PlannedInput> = inputs
                .into_iter()
                .map(|i| PlannedInput {
                    input: i.input,
                    declared: i.declared,
                    node_id: i.node_id,
                    field: i.field,
                    value: i.value,
                })
                .collect();
            Ok(serde_json::json!({"inputs": planned, "assets": assets, "workflow": parsed.workflow}).to_string())
        })
        .map_err(to_py)
    }

    /// The inputs container of a plan, checked against the workflow's
    /// signature as a v1 submit is; `files` maps each asset label to
    /// `(file_path, content_type, bytes)`; labels without one are refused
    /// with `missing_asset`.
    fn container<'py>(
        &self,
        py: Python<'py>,
        plan: &str,
        files: HashMap<String, (Option<String>, String, Vec<u8>)>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let plan: Value = serde_json::from_str(plan).map_err(json_err("the plan"))?;
        let planned: Vec<PlannedInput> = serde_json::from_value(plan["inputs"].clone())
            .map_err(json_err("the plan's inputs"))?;
        let inputs: Vec<GraphInput> = planned
            .into_iter()
            .map(|p| GraphInput {
                input: p.input,
                declared: p.declared,
                node_id: p.node_id,
                field: p.field,
                value: p.value,
            })
            .collect();
        let bytes = py
            .detach(|| -> Result<Vec<u8>, Refusal> {
                let entries = graph::entries(
                    &inputs,
                    &self.workflow.prompt,
                    |r| {
                        files.get(&r.label()).map(|(path, ct, bytes)| AssetFile {
                            file_path: path.as_deref(),
                            content_type: ct,
                            bytes,
                        })
                    },
                    &self.limits,
                )?;
                let payload = Payload { entries };
                // The checks a v1 submit gets (required inputs given, ...), said in v2.
                check_inputs(&self.workflow.inputs, &payload).map_err(|e| {
                    Refusal::new(Code::InvalidWorkflow, e.message)
                        .with_details(serde_json::json!({ "input": e.input }))
                })?;
                let bytes = encode(&payload).map_err(|e| {
                    Refusal::new(
                        Code::InvalidWorkflow,
                        format!("the input values cannot travel: {e}"),
                    )
                })?;
                if bytes.len() as u64 > self.limits.max_total_bytes {
                    return Err(comfy_remote_protocol::http::Refusal::too_large(
                        self.limits.max_total_bytes,
                        false,
                    )
                    .into());
                }
                Ok(bytes)
            })
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The v2 job (JSON) of a v1 job view (JSON, as `Front.job_view` gives
    /// it) with its stored output records (JSON list), links under `base`.
    fn job(&self, view: &str, outputs: &str, base: &str) -> PyResult<String> {
        let v: JobView = serde_json::from_str(view).map_err(json_err("the job view"))?;
        let stored: Vec<StoredOutput> =
            serde_json::from_str(outputs).map_err(json_err("the outputs"))?;
        let now = now_ms();
        let kept_from = v
            .finished_at
            .as_deref()
            .and_then(comfy_remote_protocol::api::parse_rfc3339)
            .unwrap_or(now);
        // Outputs (and their links) are kept as long as the job's result.
        let expires = comfy_remote_protocol::api::rfc3339(kept_from + self.retention_ms);
        let outs = stored
            .into_iter()
            .map(|o| {
                OutputRecord {
                    asset_id: o.asset_id,
                    job_id: o.job_id,
                    node_id: o.node_id,
                    name: o.name,
                    kind: o.kind,
                    content_type: o.content_type,
                    size_bytes: o.size_bytes,
                    hash: o.hash,
                }
                .output(base, &expires)
            })
            .collect();
        serde_json::to_string(&view::job(&v, outs, expires, base))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The SSE `status` (JSON) of a v1 job view.
    fn status_event(&self, view: &str) -> PyResult<String> {
        let v: JobView = serde_json::from_str(view).map_err(json_err("the job view"))?;
        Ok(serde_json::to_string(&view::status_event(&v)).unwrap_or_default())
    }

    /// The SSE `progress` (JSON) of a v1 progress snapshot.
    fn progress(&self, progress: &str) -> PyResult<String> {
        let p: V1Progress = serde_json::from_str(progress).map_err(json_err("the progress"))?;
        Ok(serde_json::to_string(&view::progress(&p)).unwrap_or_default())
    }

    /// The SSE `preview` (JSON) of a v1 preview.
    fn preview(&self, preview: &str) -> PyResult<String> {
        let p: V1Preview = serde_json::from_str(preview).map_err(json_err("the preview"))?;
        Ok(serde_json::to_string(&view::preview(&p)).unwrap_or_default())
    }

    /// A job's result container as output files:
    /// `[(node_id, name, kind, content_type, bytes, hash)]`.
    #[allow(clippy::type_complexity)]
    fn split<'py>(
        &self,
        py: Python<'py>,
        result: &[u8],
    ) -> PyResult<Vec<(String, String, String, String, Bound<'py, PyBytes>, String)>> {
        let files = py
            .detach(|| -> Result<Vec<_>, String> {
                let limits = Limits {
                    max_total_bytes: 1 << 40,
                    ..Limits::default()
                };
                let payload =
                    comfy_remote_protocol::decode(result, &limits).map_err(|e| e.to_string())?;
                let files = split(&payload, Naming::Signature(&self.workflow.outputs))
                    .map_err(|e| e.to_string())?;
                Ok(files
                    .into_iter()
                    .map(|f| {
                        let h = blake3_hash(&f.bytes);
                        (f, h)
                    })
                    .collect())
            })
            .map_err(|e| {
                PyValueError::new_err(format!("the result cannot be split into files: {e}"))
            })?;
        Ok(files
            .into_iter()
            .map(|(f, h)| {
                (
                    f.node_id,
                    f.name,
                    f.kind.as_str().to_owned(),
                    f.content_type,
                    PyBytes::new(py, &f.bytes),
                    h,
                )
            })
            .collect())
    }

    /// The JSON of an asset record (JSON: id, hash, size_bytes,
    /// content_type, file_path, created_at and expires_at in ms, job_id).
    #[pyo3(signature = (record, base, created_new=None))]
    fn asset(&self, record: &str, base: &str, created_new: Option<bool>) -> PyResult<String> {
        #[derive(Deserialize)]
        struct R {
            id: String,
            hash: String,
            size_bytes: u64,
            content_type: String,
            file_path: Option<String>,
            created_at: i64,
            expires_at: Option<i64>,
            job_id: Option<String>,
        }
        let r: R = serde_json::from_str(record).map_err(json_err("the asset record"))?;
        let rec = AssetRecord {
            id: r.id,
            hash: r.hash,
            size_bytes: r.size_bytes,
            content_type: r.content_type,
            file_path: r.file_path,
            created_at: r.created_at,
            expires_at: r.expires_at,
            job_id: r.job_id,
        };
        Ok(
            serde_json::to_string(&rec.asset(created_new, base, now_ms() + self.retention_ms))
                .unwrap_or_default(),
        )
    }

    /// An upload form's text fields checked: `(file_path, content_type,
    /// expected_hash, expires_in)`.
    #[pyo3(signature = (fields, has_file, part_type=None))]
    fn upload_fields(
        &self,
        fields: HashMap<String, String>,
        has_file: bool,
        part_type: Option<&str>,
    ) -> PyResult<(String, String, Option<String>, Option<i64>)> {
        let u = v2assets::upload_fields(&fields, has_file, part_type).map_err(to_py)?;
        Ok((u.file_path, u.content_type, u.expected_hash, u.expires_in))
    }

    /// `expires_in` by the upload's rule (60 to 604800 seconds).
    #[pyo3(signature = (raw=None))]
    fn expires_in(&self, raw: Option<&str>) -> PyResult<Option<i64>> {
        v2assets::expires_in(raw).map_err(to_py)
    }

    /// Raise 409 `hash_mismatch` unless the declared hash is the computed one.
    #[pyo3(signature = (expected, actual))]
    fn check_hash(&self, expected: Option<&str>, actual: &str) -> PyResult<()> {
        v2assets::check_hash(expected, actual).map_err(to_py)
    }

    /// The one byte range (`(first, last)`) of a `Range` header for `len`
    /// bytes, None for the whole; raises 416.
    #[pyo3(signature = (header, len))]
    fn byte_range(&self, header: Option<&str>, len: u64) -> PyResult<Option<(u64, u64)>> {
        byte_range(header, len).map_err(|RangeError::Unsatisfiable| {
            to_py(Refusal::new(
                Code::RangeNotSatisfiable,
                format!("the asset has {len} bytes; the range asked for is outside them"),
            ))
        })
    }

    /// `ApiError` for a v2 `code` with `message` and optional `details` (JSON).
    #[pyo3(signature = (code, message, details=None))]
    fn error(&self, code: &str, message: &str, details: Option<&str>) -> PyResult<PyErr> {
        let code: Code = serde_json::from_value(Value::String(code.to_owned()))
            .map_err(|_| PyValueError::new_err(format!("unknown v2 error code {code:?}")))?;
        let mut r = Refusal::new(code, message);
        if let Some(d) = details {
            r = r.with_details(serde_json::from_str(d).map_err(json_err("details"))?);
        }
        Ok(to_py(r))
    }

    /// 413 for an asset over the limit.
    fn too_large(&self) -> PyErr {
        to_py(v2assets::too_large(self.max_asset_bytes))
    }

    /// 422 `idempotency_key_reuse`.
    fn key_reused(&self) -> PyErr {
        to_py(submit::key_reused())
    }

    /// 422 `missing_asset` for these labels.
    fn missing_assets(&self, labels: Vec<String>) -> PyErr {
        to_py(submit::missing_assets(&labels))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An incremental `multipart/form-data` reader (the worker's own).
#[pyclass(name = "FormReader", module = "comfy_remote._native")]
#[derive(Debug)]
struct PyFormReader(FormReader);

#[pymethods]
impl PyFormReader {
    /// A reader for a body of `content_type`; raises 415 for another type.
    #[new]
    #[pyo3(signature = (content_type=None))]
    fn new(content_type: Option<&str>) -> PyResult<Self> {
        FormReader::new(content_type)
            .map(PyFormReader)
            .map_err(to_py)
    }

    /// The parts `chunk` completes: `("field", name, value)`,
    /// `("file", name, filename, content_type)`, `("data", bytes)`, `("end",)`.
    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let parts = self.0.feed(chunk).map_err(to_py)?;
        parts
            .into_iter()
            .map(|p| -> PyResult<Bound<'py, PyAny>> {
                Ok(match p {
                    Part::Field { name, value } => {
                        ("field", name, value).into_pyobject(py)?.into_any()
                    }
                    Part::FileStart {
                        name,
                        filename,
                        content_type,
                    } => ("file", name, filename, content_type)
                        .into_pyobject(py)?
                        .into_any(),
                    Part::FileData(d) => {
                        ("data", PyBytes::new(py, &d)).into_pyobject(py)?.into_any()
                    }
                    Part::FileEnd => ("end",).into_pyobject(py)?.into_any(),
                })
            })
            .collect()
    }

    /// Raise unless the form was complete.
    fn finish(&mut self) -> PyResult<()> {
        self.0.finish().map_err(to_py)
    }
}

/// `blake3:<hex>` of bytes fed in pieces.
#[pyclass(name = "ContentHasher", module = "comfy_remote._native")]
#[derive(Debug, Default)]
struct PyContentHasher(ContentHasher);

#[pymethods]
impl PyContentHasher {
    #[new]
    fn new() -> Self {
        PyContentHasher::default()
    }

    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        py.detach(|| self.0.update(data));
    }

    fn finish(&self) -> String {
        self.0.finish()
    }
}

/// Is `s` a `blake3:<64 lower-case hex>` hash?
#[pyfunction]
fn is_blake3(s: &str) -> bool {
    view::is_blake3(s)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyV2Front>()?;
    m.add_class::<PyFormReader>()?;
    m.add_class::<PyContentHasher>()?;
    m.add_function(wrap_pyfunction!(is_blake3, m)?)?;
    Ok(())
}
