//! comfy-remote-deploy: turn a remote workflow into a Modal app, check it, deploy it, stop it.
//!
//! - [`config`]: `modal_config.json` (version 1), validated, defaults written out;
//! - [`stacks`]: the table of coherent torch stacks and the guard on overrides;
//! - [`workflow`], [`nodes`]: the pre-deploy check (node types, model files; a UI-format
//!   workflow is converted with [`local`]'s node definitions);
//! - [`plan`]: what the image needs and where each piece comes from: [`packs`] found in the
//!   local ComfyUI, [`models`] matched to local files or URLs (and [`fetch`]ed by the container),
//!   the package [`lock`] resolved before the image builds;
//! - [`scaffold`]: renders the project (`workflow.py`, the `utils` shim,
//!   constraints, the build-time stack check) from embedded minijinja templates;
//! - [`layout`]: what the generator owns in a project directory, and
//!   removal that never touches the user's files;
//! - [`install`]: where the images get comfy-remote (the registry, wheels, or an sdist built in the image);
//! - [`wheels`]: the comfy-remote wheel and sdist files an image may install (the package, and the server for the GPU image);
//! - [`runner`]: the one place `modal` and friends are run, logged and typed;
//! - [`lifecycle`]: deploy / force rebuild / clean build / delete / status.
//!
//! The code Modal runs inside the containers is Python
//! (`comfy_remote.modal_runtime`), shipped in the comfy-remote package the
//! image installs.

pub mod config;
pub mod error;
pub mod fetch;
pub mod install;
pub mod layout;
pub mod lifecycle;
pub mod local;
pub mod lock;
pub mod models;
pub mod nodes;
pub mod packs;
pub mod plan;
pub mod runner;
pub mod scaffold;
pub mod stacks;
pub mod wheels;
pub mod workflow;

pub use config::DeployConfig;
pub use error::{DeployError, Result};
pub use lifecycle::{Options, Report};
pub use local::LocalComfy;
pub use runner::Runner;
pub use scaffold::{scaffold, Project, ScaffoldRequest};
