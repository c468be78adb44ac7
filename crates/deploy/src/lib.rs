//! comfy-remote-deploy: turn a remote workflow into a Modal app, check it, deploy it, stop it.
//!
//! - [`config`]: `modal_config.json` (version 1), validated, defaults written out;
//! - [`stacks`]: the table of coherent torch stacks and the guard on overrides;
//! - [`workflow`], [`nodes`]: the pre-deploy check (node types, model files);
//! - [`scaffold`]: renders the project (`workflow.py`, the `utils` shim,
//!   constraints, the build-time stack check) from embedded minijinja templates;
//! - [`layout`]: what the generator owns in a project directory, and
//!   removal that never touches the user's files;
//! - [`wheels`]: the comfy-remote wheels an image installs (the package, and the server for the GPU image);
//! - [`runner`]: the one place `modal` and friends are run, logged and typed;
//! - [`lifecycle`]: deploy / force rebuild / clean build / delete / status.
//!
//! The code Modal runs inside the containers is Python
//! (`comfy_remote.modal_runtime`), shipped in the comfy-remote wheel the
//! project copies into its image.

pub mod config;
pub mod error;
pub mod layout;
pub mod lifecycle;
pub mod nodes;
pub mod runner;
pub mod scaffold;
pub mod stacks;
pub mod wheels;
pub mod workflow;

pub use config::DeployConfig;
pub use error::{DeployError, Result};
pub use lifecycle::{Options, Report};
pub use runner::Runner;
pub use scaffold::{scaffold, Project, ScaffoldRequest};
