//! The contract between a comfy-remote worker and the remote workflow it
//! serves, shared by the worker, `deploy`, the native module the nodes use
//! and the Modal web front.
//!
//! - [`nodes`]: the node types of the pack, the types a Remote Input may
//!   declare and the rule for Remote Input/Output names;
//! - [`workflow`]: an API-format workflow parsed into its signature (the
//!   inputs and outputs a job takes and returns), checked against a
//!   ComfyUI's `/object_info`, and turned into the prompt of one job;
//! - [`layout`]: the job directory the nodes read and write
//!   (`docs/protocol.md` §6);
//! - [`inputs`]: the check of a job's inputs against the signature;
//! - [`ui`]: UI-format workflows converted to the API format as ComfyUI's frontend does it,
//!   and [`source`]: a workflow file of either format;
//! - [`models`]: the model files a workflow names, checked against a ComfyUI.
//! - [`graph`]: a Comfy API v2 graph against the served workflow: the
//!   input values it sets.
//!
//! It knows nothing of HTTP, processes or databases, so the module an
//! artist installs carries no server.

pub mod graph;
pub mod inputs;
pub mod layout;
pub mod models;
pub mod nodes;
pub mod source;
pub mod ui;
pub mod workflow;

pub use inputs::{check_inputs, closest, InputError};
pub use source::WorkflowFile;
pub use workflow::{Workflow, WorkflowError};
