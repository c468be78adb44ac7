//! The workflow contract and the protocol's rules for the Python side: the
//! node types of the pack, the names and types a Remote Input/Output may
//! have, the type rule a Remote Input applies to what a job sent, the
//! signature of a workflow, the default endpoint and every environment
//! variable's name. The nodes and the Modal runtime read them from here
//! rather than restating them.

use comfy_remote_contract::{layout, nodes, Workflow};
use comfy_remote_protocol::api::DEFAULT_ENDPOINT;
use comfy_remote_protocol::{env, types, ComfyType, Entry, Value};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Parse an API-format workflow (`text`, named `name` in messages) and return
/// its signature as JSON: `{"inputs": [...], "outputs": [...]}` with the
/// items of `GET /v1/info`. Raises ValueError with the worker's message for a
/// workflow the worker would refuse.
#[pyfunction]
fn workflow_signature(name: &str, text: &str) -> PyResult<String> {
    let wf = Workflow::parse(name, text).map_err(|e| PyValueError::new_err(e.to_string()))?;
    serde_json::to_string(&serde_json::json!({
        "inputs": wf.inputs,
        "outputs": wf.outputs,
    }))
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The API workflow (JSON text) ComfyUI's frontend makes of the UI-format workflow `text`
/// (named `name` in messages), with the node definitions of `object_info` (the JSON text of a
/// ComfyUI's `/object_info`). ValueError saying why it cannot be converted.
#[pyfunction]
fn ui_to_api(name: &str, text: &str, object_info: &str) -> PyResult<String> {
    let bad = |m: String| PyValueError::new_err(format!("workflow {name}: {m}"));
    let ui: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("is not valid JSON ({e})")))?;
    let info: serde_json::Value = serde_json::from_str(object_info)
        .map_err(|e| bad(format!("object_info is not valid JSON ({e})")))?;
    if !comfy_remote_contract::ui::is_ui_format(&ui) {
        return Err(bad(
            "is not in ComfyUI's UI format (no `nodes` and `links` lists)".into(),
        ));
    }
    let api = comfy_remote_contract::ui::to_api(&ui, &info).map_err(|e| bad(e.to_string()))?;
    serde_json::to_string(&api).map_err(|e| bad(e.to_string()))
}

/// The name of a Remote Input or Output, trimmed; ValueError saying why a
/// name is unusable (`node` names the node in the message).
#[pyfunction]
fn io_name(node: &str, name: &str) -> PyResult<String> {
    nodes::io_name(name).map_err(|why| PyValueError::new_err(format!("{node} {why}")))
}

/// The file the Remote Output named `name` writes in the job directory
/// `job_dir` (`docs/protocol.md` §6).
#[pyfunction]
fn job_output_file(job_dir: std::path::PathBuf, name: &str) -> std::path::PathBuf {
    layout::output_file(&job_dir, name)
}

/// Whether an input declared `declared` takes a value of type `actual`.
#[pyfunction]
fn accepts(declared: &str, actual: &str) -> bool {
    types::accepts(declared, actual)
}

/// A scalar a job sent (`int`, `float`, `bool`, `str`, None) brought to the
/// type `declared` of the Remote Input `name` (an int for a FLOAT becomes the
/// same float); other values pass unchanged when `declared` takes their
/// type `actual`. ValueError naming the input otherwise.
#[pyfunction]
fn conform_input<'py>(
    py: Python<'py>,
    name: &str,
    declared: &str,
    actual: &str,
    value: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fail = |e: types::TypeError| {
        PyValueError::new_err(format!("Remote Input {name:?}: the job's value {e}"))
    };
    let scalar = if value.is_none() {
        Some(Value::None)
    } else if let Ok(b) = value.cast::<pyo3::types::PyBool>() {
        Some(Value::Bool(b.is_true()))
    } else if let Ok(i) = value.extract::<i64>() {
        value
            .cast::<pyo3::types::PyInt>()
            .ok()
            .map(|_| Value::Int(i))
    } else if let Ok(f) = value.cast::<pyo3::types::PyFloat>() {
        Some(Value::Float(f.value()))
    } else {
        value.extract::<String>().ok().map(Value::Str)
    };
    let Some(scalar) = scalar else {
        if !types::accepts(declared, actual) {
            return Err(fail(types::TypeError::Mismatch {
                declared: declared.to_owned(),
                actual: actual.to_owned(),
            }));
        }
        return Ok(value);
    };
    let entry = Entry {
        name: name.to_owned(),
        comfy_type: Some(ComfyType::new(actual)),
        value: scalar,
    };
    let conformed = types::conform(declared, entry).map_err(fail)?;
    Ok(match conformed.value {
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
        _ => value,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NODE_TYPES", nodes::NODE_TYPES.to_vec())?;
    m.add("INPUT_TYPES", nodes::INPUT_TYPES.to_vec())?;
    m.add("REMOTE_API", nodes::REMOTE_API)?;
    m.add("REMOTE_RESULT_PICK", nodes::REMOTE_RESULT_PICK)?;
    m.add("REMOTE_INPUT", nodes::REMOTE_INPUT)?;
    m.add("REMOTE_OUTPUT", nodes::REMOTE_OUTPUT)?;
    m.add("MODAL_DEPLOYMENT", nodes::MODAL_DEPLOYMENT)?;
    m.add("JOB_KEY", nodes::JOB_KEY)?;
    m.add("DEFAULT_ENDPOINT", DEFAULT_ENDPOINT)?;
    // `ENV["TOKEN"]` is "COMFY_REMOTE_TOKEN": every variable's name by its role.
    let vars = PyDict::new(py);
    for v in env::ALL {
        vars.set_item(v.key, v.name)?;
    }
    m.add("ENV", vars)?;
    m.add_function(wrap_pyfunction!(workflow_signature, m)?)?;
    m.add_function(wrap_pyfunction!(ui_to_api, m)?)?;
    m.add_function(wrap_pyfunction!(io_name, m)?)?;
    m.add_function(wrap_pyfunction!(job_output_file, m)?)?;
    m.add_function(wrap_pyfunction!(accepts, m)?)?;
    m.add_function(wrap_pyfunction!(conform_input, m)?)
}
