//! `Client` and `Job`: the native HTTP client for Python, GIL released during I/O.
//!
//! A job is followed by calling `Job.next_event(timeout)` in a loop: each call
//! waits at most `timeout` seconds (GIL released), so the caller can check
//! its own interrupt flag between calls and `Job.cancel()` the remote job.

use std::time::Duration;

use comfy_remote_client::blocking::{BlockingClient, BlockingJob};
use comfy_remote_client::{
    ClientError, ClientOptions, JobEvent, LocalInput, Mode, Signature, NAMED_INPUT_PREFIX,
};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};

pyo3::create_exception!(
    comfy_remote._native,
    RemoteError,
    PyException,
    "A remote call failed; `kind` says how (`http`, `unreachable`, `job_failed`, `canceled`, `timeout`, `signature`, ...)."
);

fn to_py_err(py: Python<'_>, e: ClientError) -> PyErr {
    let err = RemoteError::new_err(e.to_string());
    let value = err.value(py);
    let _ = value.setattr("kind", e.kind());
    let (status, input, job_id) = match &e {
        ClientError::Http { status, .. } => (Some(*status), None, None),
        ClientError::Signature { input, .. } => (None, input.clone(), None),
        ClientError::JobFailed { job_id, .. }
        | ClientError::Canceled { job_id }
        | ClientError::Timeout { job_id, .. } => (None, None, Some(job_id.clone())),
        _ => (None, None, None),
    };
    let code = match &e {
        ClientError::Http { code, .. } | ClientError::JobFailed { code, .. } => code.clone(),
        _ => None,
    };
    let _ = value.setattr("status", status);
    let _ = value.setattr("input", input);
    let _ = value.setattr("job_id", job_id);
    let _ = value.setattr("code", code);
    err
}

fn signature_dict<'py>(py: Python<'py>, sig: &Signature) -> PyResult<Bound<'py, PyDict>> {
    let items = |list: &[comfy_remote_client::SignatureItem]| -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for i in list {
            let d = PyDict::new(py);
            d.set_item("name", &i.name)?;
            d.set_item("type", &i.comfy_type)?;
            d.set_item("optional", i.optional)?;
            if let Some(v) = i.default.as_ref().and_then(|v| json_scalar(py, v)) {
                d.set_item("default", v)?;
            }
            out.append(d)?;
        }
        Ok(out)
    };
    let d = PyDict::new(py);
    d.set_item("protocol", &sig.protocol)?;
    d.set_item("inputs", items(&sig.inputs)?)?;
    d.set_item("outputs", items(&sig.outputs)?)?;
    d.set_item("codecs", &sig.codecs)?;
    d.set_item("features", &sig.features)?;
    Ok(d)
}

/// A JSON scalar as a Python value (None for arrays, objects and null).
fn json_scalar<'py>(py: Python<'py>, v: &serde_json::Value) -> Option<Bound<'py, PyAny>> {
    use pyo3::IntoPyObjectExt;
    match v {
        serde_json::Value::Bool(b) => b.into_bound_py_any(py).ok(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i.into_bound_py_any(py).ok(),
            None => n.as_f64()?.into_bound_py_any(py).ok(),
        },
        serde_json::Value::String(s) => s.into_bound_py_any(py).ok(),
        _ => None,
    }
}

/// An HTTP client bound to one endpoint (native protocol or the simple JSON shape).
#[pyclass(name = "Client", module = "comfy_remote._native", frozen)]
struct PyClient {
    inner: BlockingClient,
}

#[pymethods]
impl PyClient {
    #[new]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    #[pyo3(signature = (endpoint, *, headers=None, timeout=None, mode="auto", poll_interval=0.5, max_attempts=6, use_events=true, images_8bit=false, submit_wait=1.0, packing=None))]
    fn new(
        py: Python<'_>,
        endpoint: String,
        headers: Option<Vec<(String, String)>>,
        timeout: Option<f64>,
        mode: &str,
        poll_interval: f64,
        max_attempts: u32,
        use_events: bool,
        images_8bit: bool,
        submit_wait: f64,
        packing: Option<&str>,
    ) -> PyResult<Self> {
        let mut o = ClientOptions::new(endpoint);
        o.headers = headers.unwrap_or_default();
        o.job_timeout = timeout
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(Duration::from_secs_f64);
        o.mode = match mode {
            "auto" => Mode::Auto,
            "native" => Mode::Native,
            "json" => Mode::Json,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "mode must be 'auto', 'native' or 'json', not {other:?}"
                )))
            }
        };
        if poll_interval.is_finite() && poll_interval > 0.0 {
            o.poll_interval = Duration::from_secs_f64(poll_interval);
        }
        o.retry.max_attempts = max_attempts.max(1);
        o.use_events = use_events;
        o.images_8bit = images_8bit;
        o.packing = packing
            .map(comfy_remote_client::Packing::parse)
            .transpose()
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        o.submit_wait = (submit_wait.is_finite() && submit_wait > 0.0)
            .then(|| Duration::from_secs_f64(submit_wait));
        let inner = BlockingClient::new(o).map_err(|e| to_py_err(py, e))?;
        Ok(PyClient { inner })
    }

    /// The endpoint's signature (`GET /v1/info`) as a dict, or None for
    /// endpoints of the simple JSON shape. Cached by the client for 10 s
    /// (and forgotten when the endpoint refuses a payload).
    fn signature<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let sig = py
            .detach(|| self.inner.signature())
            .map_err(|e| to_py_err(py, e))?;
        sig.map(|s| signature_dict(py, &s)).transpose()
    }

    /// The packings to encode a submit with: those the endpoint reads,
    /// where tensors travel packed (not to this machine by default;
    /// `COMFY_REMOTE_PACK`), else none.
    fn upload_codecs(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.upload_codecs())
            .map_err(|e| to_py_err(py, e))
    }

    /// Check `[(local_name, comfy_type | None)]` against the signature
    /// (`input:<name>` by name, `valueN` by position); return the names to
    /// encode the inputs under.
    fn plan_inputs(
        &self,
        py: Python<'_>,
        inputs: Vec<(String, Option<String>)>,
    ) -> PyResult<Vec<String>> {
        let local: Vec<LocalInput> = inputs
            .into_iter()
            .map(|(name, comfy_type)| LocalInput { name, comfy_type })
            .collect();
        py.detach(|| self.inner.plan_inputs(&local))
            .map_err(|e| to_py_err(py, e))
    }

    /// Ask the endpoint to cancel its job `job_id` without following it
    /// (whoever follows the job sees how it ends). False when the endpoint
    /// has no way to cancel.
    fn cancel_job(&self, py: Python<'_>, job_id: &str) -> PyResult<bool> {
        py.detach(|| self.inner.cancel_job(job_id))
            .map_err(|e| to_py_err(py, e))
    }

    /// Submit container bytes and follow the job in the background. A
    /// `bytes` body is sent from its own memory (no copy).
    fn start(&self, py: Python<'_>, body: PyBackedBytes) -> PyResult<PyJob> {
        let body = bytes::Bytes::from_owner(body);
        let inner = py
            .detach(|| self.inner.start(body))
            .map_err(|e| to_py_err(py, e))?;
        Ok(PyJob { inner })
    }
}

/// A running remote job.
#[pyclass(name = "Job", module = "comfy_remote._native", frozen)]
struct PyJob {
    inner: BlockingJob,
}

#[pymethods]
impl PyJob {
    /// Wait up to `timeout` seconds for the next event. Returns None on
    /// timeout (or after the end), else `(kind, data)`:
    /// `("submitted", {"id", "status"})`, `("status", str)`,
    /// `("progress", {"fraction", "value", "max", "phase", "text", "node",
    /// "node_type", "step", "step_max", "queue_position"})`,
    /// `("preview", (mime, bytes, node_id))`, `("done", container)` where
    /// `container` is a `bytearray`: `codec.decode` builds tensors over it
    /// without copying.
    /// A failed, canceled or timed-out job raises `RemoteError`.
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<(&'static str, Bound<'py, PyAny>)>> {
        let wait = Duration::from_secs_f64(if timeout.is_finite() {
            timeout.max(0.0)
        } else {
            0.1
        });
        let ev = py
            .detach(|| self.inner.next_event(wait))
            .map_err(|e| to_py_err(py, e))?;
        let Some(ev) = ev else { return Ok(None) };
        Ok(Some(match ev {
            JobEvent::Submitted { id, status } => {
                let d = PyDict::new(py);
                d.set_item("id", id)?;
                d.set_item("status", status.as_str())?;
                ("submitted", d.into_any())
            }
            JobEvent::Status { status } => {
                ("status", status.as_str().into_pyobject(py)?.into_any())
            }
            JobEvent::Progress(p) => {
                let d = PyDict::new(py);
                d.set_item("json", serde_json::to_string(&p).ok())?;
                d.set_item("fraction", p.fraction)?;
                d.set_item("value", p.value)?;
                d.set_item("max", p.max)?;
                d.set_item(
                    "phase",
                    serde_json::to_value(p.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned)),
                )?;
                d.set_item("text", p.text)?;
                d.set_item("node", p.node.as_ref().map(|n| n.id.clone()))?;
                d.set_item("node_type", p.node.and_then(|n| n.class_type))?;
                d.set_item("step", p.step.map(|s| s.value))?;
                d.set_item("step_max", p.step.map(|s| s.max))?;
                d.set_item("queue_position", p.queue_position)?;
                ("progress", d.into_any())
            }
            JobEvent::Preview { mime, data, node } => (
                "preview",
                (mime, PyBytes::new(py, &data), node)
                    .into_pyobject(py)?
                    .into_any(),
            ),
            JobEvent::Done(bytes) => {
                let out = PyByteArray::new(py, &bytes);
                drop(bytes); // free the download now, not after the conversion
                ("done", out.into_any())
            }
            JobEvent::Error(e) => return Err(to_py_err(py, e)),
        }))
    }

    /// Cancel the job (remote cancel included). Returns at once; the job
    /// then ends by raising `RemoteError` with `kind == "canceled"`.
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// True after the last event was delivered.
    #[getter]
    fn finished(&self) -> bool {
        self.inner.is_finished()
    }

    /// The latest JobView (JSON) a comfy-remote endpoint sent for this job:
    /// the submit answer, then each `status`/`done` event or poll; None for
    /// endpoints of the simple JSON shape. After a `status` or `done` event
    /// it is that document or a later one.
    fn view_json(&self) -> Option<String> {
        self.inner
            .view()
            .and_then(|v| serde_json::to_string(&v).ok())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClient>()?;
    m.add_class::<PyJob>()?;
    m.add("RemoteError", m.py().get_type::<RemoteError>())?;
    m.add("NAMED_INPUT_PREFIX", NAMED_INPUT_PREFIX)?;
    Ok(())
}
