//! A workflow file as read: the API format, ready to serve, or the UI format (what ComfyUI's
//! *Save* writes), converted once the `/object_info` of the ComfyUI that runs it is known.

use std::path::Path;

use serde_json::Value;

use crate::ui;
use crate::workflow::{Workflow, WorkflowError};

/// A parsed workflow file.
#[derive(Debug, Clone)]
pub enum WorkflowFile {
    /// API format, checked.
    Api(Workflow),
    /// UI format, to convert with [`WorkflowFile::resolve`].
    Ui { name: String, graph: Value },
}

fn err(name: &str, message: impl Into<String>) -> WorkflowError {
    WorkflowError {
        name: name.to_owned(),
        message: message.into(),
    }
}

impl WorkflowFile {
    /// Parse `text` (named `name` in messages): a UI workflow is kept for conversion, anything
    /// else gets the API format's checks.
    pub fn parse(name: &str, text: &str) -> Result<WorkflowFile, WorkflowError> {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            if ui::is_ui_format(&value) {
                return Ok(WorkflowFile::Ui {
                    name: name.to_owned(),
                    graph: value,
                });
            }
        }
        Workflow::parse(name, text).map(WorkflowFile::Api)
    }

    /// Read and parse a workflow file.
    pub fn load(path: &Path) -> Result<WorkflowFile, WorkflowError> {
        let (name, text) = crate::workflow::read_named(path)?;
        WorkflowFile::parse(&name, &text)
    }

    /// Whether this is a UI-format file.
    pub fn is_ui(&self) -> bool {
        matches!(self, WorkflowFile::Ui { .. })
    }

    /// The file's name.
    pub fn name(&self) -> &str {
        match self {
            WorkflowFile::Api(w) => &w.name,
            WorkflowFile::Ui { name, .. } => name,
        }
    }

    /// The API workflow: as read, or the UI workflow converted with the node definitions of
    /// `object_info` (then checked like an API file).
    pub fn resolve(self, object_info: &Value) -> Result<Workflow, WorkflowError> {
        match self {
            WorkflowFile::Api(w) => Ok(w),
            WorkflowFile::Ui { name, graph } => {
                let prompt =
                    ui::to_api(&graph, object_info).map_err(|e| err(&name, e.to_string()))?;
                let text = serde_json::to_string(&prompt).map_err(|e| err(&name, e.to_string()))?;
                Workflow::parse(&name, &text)
            }
        }
    }
}
