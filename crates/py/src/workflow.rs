//! `workflow_signature`: a remote workflow's inputs and outputs, computed by
//! the worker's own parser so every front (the worker, the Modal web front)
//! publishes the same order, types and optional flags.

use comfy_remote_contract::Workflow;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(workflow_signature, m)?)
}
