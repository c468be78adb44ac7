//! `run_cli(argv)`: the `comfy-remote` CLI, callable from Python.

use pyo3::prelude::*;

/// Run the comfy-remote command line with `argv` (including the program
/// name) and return its exit code. The GIL is released while it runs.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| comfy_remote_cli::run(argv))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_cli, m)?)
}
