//! `modal_deploy`, `modal_stop`, `modal_status`: the Modal lifecycle for the Modal Deployment node.
//!
//! The lifecycle runs with the GIL released; each log line is handed to the
//! optional `log` callable (the node's progress text) as it comes.

use std::path::PathBuf;

use comfy_remote_deploy::{lifecycle, DeployError, LocalComfy, Options, Runner};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(
    comfy_remote._native,
    ModalDeployError,
    PyException,
    "Scaffolding, checking or deploying a Modal app failed; the message says what to do."
);

fn to_py_err(e: DeployError) -> PyErr {
    ModalDeployError::new_err(e.to_string())
}

/// A sink that forwards lines to a Python callable (errors in the callable are ignored).
fn sink(log: Option<Py<PyAny>>) -> impl FnMut(&str) {
    move |line: &str| {
        if let Some(cb) = &log {
            Python::attach(|py| {
                let _ = cb.call1(py, (line,));
            });
        }
    }
}

/// Generate the Modal project for `workflow` and run the lifecycle switches; returns the report as JSON.
/// `gpu` may be a comma-separated fallback list ("H100,A100-80GB").
/// `object_info` (the JSON text of the running ComfyUI's `/object_info`), `custom_nodes` (its
/// custom node directories) and `model_dirs` (model folder -> directories, its `folder_paths`)
/// describe the ComfyUI the node runs in: UI-format workflows are converted with its node
/// definitions, and the packs and model files the workflow needs are found there. `uv` is the
/// resolver to run (default: `$COMFY_REMOTE_UV`, else `uv` on PATH).
#[pyfunction]
#[pyo3(signature = (workflow, out_dir=None, *, config=None, app_name=None, gpu=None, pip=Vec::new(), apt=Vec::new(), torch_stack=None, wheel=None, sdist=None, source=None, comfyui_dir=None, object_info=None, custom_nodes=Vec::new(), model_dirs=std::collections::BTreeMap::new(), uv=None, deploy=false, clean=false, force_rebuild=false, delete_remote=false, log=None))]
#[allow(clippy::too_many_arguments)]
fn modal_deploy(
    py: Python<'_>,
    workflow: PathBuf,
    out_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    app_name: Option<String>,
    gpu: Option<String>,
    pip: Vec<String>,
    apt: Vec<String>,
    torch_stack: Option<String>,
    wheel: Option<PathBuf>,
    sdist: Option<PathBuf>,
    source: Option<String>,
    comfyui_dir: Option<PathBuf>,
    object_info: Option<String>,
    custom_nodes: Vec<PathBuf>,
    model_dirs: std::collections::BTreeMap<String, Vec<PathBuf>>,
    uv: Option<PathBuf>,
    deploy: bool,
    clean: bool,
    force_rebuild: bool,
    delete_remote: bool,
    log: Option<Py<PyAny>>,
) -> PyResult<String> {
    let overrides = lifecycle::Overrides {
        app_name: app_name.filter(|a| !a.trim().is_empty()),
        gpu: gpu
            .map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        pip,
        apt,
        torch_stack: torch_stack.filter(|s| !s.is_empty()),
        source: source.filter(|s| !s.is_empty()),
    };
    let opts = Options {
        deploy,
        clean,
        force_rebuild,
        delete_remote,
    };
    py.detach(move || {
        let mut local = LocalComfy {
            custom_nodes,
            model_dirs,
            ..LocalComfy::default()
        };
        if let Some(text) = &object_info {
            local
                .set_object_info(text, "this ComfyUI")
                .map_err(to_py_err)?;
        }
        let req = lifecycle::request(
            &workflow,
            config.as_deref(),
            out_dir.as_deref(),
            &overrides,
            comfy_remote_deploy::install::Given { wheel, sdist },
            comfyui_dir,
            local,
        )
        .map_err(to_py_err)?;
        let mut log = sink(log);
        let mut runner = Runner::from_env();
        if let Some(uv) = uv {
            runner.uv = uv;
        }
        let report = lifecycle::run(&req, opts, &runner, &mut log).map_err(to_py_err)?;
        Ok(serde_json::to_string(&report).unwrap_or_default())
    })
}

/// `modal app stop -y <app>`; False when there was no such app.
#[pyfunction]
#[pyo3(signature = (app, *, log=None))]
fn modal_stop(py: Python<'_>, app: String, log: Option<Py<PyAny>>) -> PyResult<bool> {
    py.detach(move || {
        let mut log = sink(log);
        lifecycle::stop(&Runner::from_env(), &app, &mut log).map_err(to_py_err)
    })
}

/// The app's state from `modal app list --json`, as JSON (`state` is null when not listed).
#[pyfunction]
fn modal_status(py: Python<'_>, app: String) -> PyResult<String> {
    py.detach(move || {
        let st = lifecycle::status(&Runner::from_env(), &app, &mut |_| {}).map_err(to_py_err)?;
        Ok(serde_json::to_string(&st).unwrap_or_default())
    })
}

/// Fetch the model files of a project's `build/models.json` (`plan`) that the Volume mounted at
/// `mount` lacks, each checked against its SHA-256; returns the paths fetched as JSON. Run by the
/// GPU container at its start.
#[pyfunction]
#[pyo3(signature = (plan, mount, *, log=None))]
fn fetch_models(
    py: Python<'_>,
    plan: PathBuf,
    mount: PathBuf,
    log: Option<Py<PyAny>>,
) -> PyResult<String> {
    py.detach(move || {
        let wanted = comfy_remote_deploy::fetch::read_plan(&plan).map_err(to_py_err)?;
        let mut log = sink(log);
        let fetched =
            comfy_remote_deploy::fetch::fetch_all(&wanted, &mount, &mut log).map_err(to_py_err)?;
        Ok(serde_json::to_string(&fetched).unwrap_or_default())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ModalDeployError", m.py().get_type::<ModalDeployError>())?;
    m.add_function(wrap_pyfunction!(modal_deploy, m)?)?;
    m.add_function(wrap_pyfunction!(fetch_models, m)?)?;
    m.add_function(wrap_pyfunction!(modal_stop, m)?)?;
    m.add_function(wrap_pyfunction!(modal_status, m)?)
}
