//! UI-format workflows (what ComfyUI's *Save* writes) converted to the API format the worker runs,
//! the way ComfyUI's own frontend does it in `graphToPrompt`.
//!
//! The conversion needs the `/object_info` of the ComfyUI that will run the workflow: a UI file keeps
//! widget values as a list in widget order, and that order (with the `control_after_generate`
//! entries that never reach the prompt) follows from the node definitions. What is covered, each
//! as the frontend does it:
//!
//! - widget values mapped by input order ([`defs`]), widgets converted to inputs, links;
//! - `Reroute` passed through, `PrimitiveNode` values copied into the widgets they feed, the
//!   `Primitive*` nodes kept (they are real nodes), `Note` and `MarkdownNote` dropped;
//! - muted nodes (mode 2) dropped with what they feed, bypassed nodes (mode 4) passed through by
//!   type;
//! - subgraphs expanded into their nodes with ids such as `18:17:3`, promoted widgets included;
//! - dynamic prompts (`{a|b}`, comments) and `%Node.widget%` / `%date:...%` in output file names.
//!
//! Legacy group nodes (`extra.groupNodes`) are refused: ComfyUI converts them to subgraphs when the
//! workflow is opened and saved again. The frontend is the oracle: `scripts/ui_oracle.py` and
//! `tests/test_ui_format.py` hold this module to the API workflows it produces.

mod configure;
mod defs;
mod dynamic_prompt;
mod flatten;
mod graph;
mod replace;

use serde_json::{Map, Value};

pub use configure::{new_node_widgets, NewWidget};
pub use defs::{is_widget_type, NodeDefs};

/// Why a UI-format workflow cannot be converted; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UiError {
    /// The file's structure is not that of a UI workflow.
    #[error("{0}")]
    Invalid(String),
    /// Node types the ComfyUI does not have, with the node ids using each (`Foo (nodes 3, 7)`).
    #[error("uses node types this ComfyUI does not have: {}. Install the custom nodes that provide them in this ComfyUI", .0.join(", "))]
    MissingNodeTypes(Vec<String>),
    /// Legacy group nodes, which only the frontend can expand.
    #[error("uses legacy group nodes ({}); open the workflow in ComfyUI (which converts them to subgraphs) and save it again", .0.join(", "))]
    GroupNodes(Vec<String>),
}

/// Whether `value` is a UI-format workflow (`nodes` and `links` lists) rather than the API format.
pub fn is_ui_format(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(comfy_remote_protocol::v2::submit::is_ui_format)
}

/// The API workflow (node id -> `{inputs, class_type, _meta}`) the frontend makes of the UI
/// workflow `ui`, with the node definitions of `object_info`.
pub fn to_api(ui: &Value, object_info: &Value) -> Result<Map<String, Value>, UiError> {
    let defs = NodeDefs::new(object_info);
    let workflow = graph::Workflow::parse(ui)?;
    let missing = workflow.missing_types(&defs);
    if !missing.is_empty() {
        return Err(UiError::MissingNodeTypes(missing));
    }
    flatten::to_api(&workflow, &defs)
}

#[cfg(test)]
mod tests;
