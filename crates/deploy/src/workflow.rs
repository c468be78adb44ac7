//! The remote workflow as the deploy check sees it: API format, or UI format converted with the
//! local ComfyUI's node definitions; its node types, the model files it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use comfy_remote_contract::models::{ModelRef, MODEL_INPUTS};
use comfy_remote_contract::WorkflowFile;
use serde_json::{Map, Value};

use crate::error::{DeployError, Result};

/// An API-format workflow: node id -> `{class_type, inputs}`.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub path: PathBuf,
    pub nodes: Map<String, Value>,
    /// The API workflow the project gets: the file's bytes as given, or the conversion of a
    /// UI-format file.
    pub text: String,
    /// The file was in the UI format (and was converted).
    pub converted: bool,
}

/// What to do about a UI-format workflow when no node definitions were given.
pub const UI_NEEDS_OBJECT_INFO: &str = "is in ComfyUI's UI format (what Save writes); converting it needs the node definitions of the ComfyUI it was made in: pass --object-info http://127.0.0.1:8188 (a running ComfyUI) or --object-info FILE (a saved copy of its /object_info), or save it with Workflow > Export (API)";

impl Workflow {
    /// Read a workflow file; a UI-format one is converted with `object_info`.
    pub fn load(path: &Path, object_info: Option<&Value>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, text, object_info)
    }

    /// Parse with the worker's own check (`comfy-remote serve` refuses the same
    /// files with the same message): Remote Output present, unique and plain
    /// Remote Input/Output names. A UI-format file is converted with
    /// `object_info` first (as `serve` converts it with its ComfyUI's).
    pub fn parse(path: &Path, text: String, object_info: Option<&Value>) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let wf_err = |e: comfy_remote_contract::WorkflowError| DeployError::Workflow {
            message: e.to_string(),
        };
        let file = WorkflowFile::parse(&name, &text).map_err(wf_err)?;
        let converted = file.is_ui();
        let checked = match (file, object_info) {
            (WorkflowFile::Api(w), _) => w,
            (ui @ WorkflowFile::Ui { .. }, Some(info)) => ui.resolve(info).map_err(wf_err)?,
            (WorkflowFile::Ui { .. }, None) => {
                return Err(DeployError::Workflow {
                    message: format!("workflow {name} {UI_NEEDS_OBJECT_INFO}"),
                })
            }
        };
        let text = if converted {
            let mut t = serde_json::to_string_pretty(&Value::Object(checked.prompt.clone()))
                .unwrap_or_default();
            t.push('\n');
            t
        } else {
            text
        };
        Ok(Workflow {
            path: path.to_path_buf(),
            nodes: checked.prompt,
            text,
            converted,
        })
    }

    /// Distinct node types, with the node ids using each.
    pub fn node_types(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if let Some(t) = node.get("class_type").and_then(Value::as_str) {
                out.entry(t.to_string()).or_default().push(id.clone());
            }
        }
        out
    }

    /// Model files named by literal (not linked) inputs (the contract's rule).
    pub fn model_files(&self) -> Vec<ModelRef> {
        comfy_remote_contract::models::model_refs(&self.nodes)
    }

    /// The file name the workflow gets inside the project.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "remote_workflow.json".into())
    }

    /// Default app name: `comfy-remote-<stem>`, sanitised (see [`default_app_name`]).
    pub fn default_app_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        default_app_name(&stem)
    }
}

/// Prefix of every default app name.
pub const APP_PREFIX: &str = "comfy-remote-";
/// What the default name ends in when the file name leaves nothing usable.
pub const APP_FALLBACK: &str = "workflow";

/// The default app name for a workflow file stem (docs/deploy.md, "App names"):
/// lowercased; every character other than an ASCII letter, digit or `-` made
/// `-`; `-` trimmed from both ends; `workflow` when nothing is left;
/// prefixed with `comfy-remote-` and cut to 63 characters (never ending in `-`).
pub fn default_app_name(stem: &str) -> String {
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches('-');
    let mut name = format!(
        "{APP_PREFIX}{}",
        if clean.is_empty() {
            APP_FALLBACK
        } else {
            clean
        }
    );
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(text: &str) -> Result<Workflow> {
        Workflow::parse(Path::new("w.json"), text.to_string(), None)
    }

    #[test]
    fn ui_format_without_node_definitions_says_how_to_give_them() {
        let err = wf(r#"{"nodes": [], "links": [], "version": 0.4}"#).expect_err("ui");
        assert!(err.to_string().contains("--object-info"), "{err}");
    }

    #[test]
    fn ui_format_is_converted_with_node_definitions() {
        let ui = serde_json::json!({"nodes": [
            {"id": 1, "type": "RemoteInput", "mode": 0, "outputs": [{"links": [1]}], "widgets_values": ["image", "IMAGE"]},
            {"id": 2, "type": "RemoteOutput", "mode": 0, "inputs": [{"name": "value", "type": "*", "link": 1}], "widgets_values": ["result"]}
        ], "links": [[1, 1, 0, 2, 0, "*"]]});
        let info = serde_json::json!({
            "RemoteInput": {"input": {"required": {"name": ["STRING", {}], "type": [["*", "IMAGE"]]}}, "output": ["*"]},
            "RemoteOutput": {"input": {"required": {"name": ["STRING", {}], "value": ["*", {}]}}, "output": []}
        });
        let w =
            Workflow::parse(Path::new("ui.json"), ui.to_string(), Some(&info)).expect("converted");
        assert!(w.converted);
        assert_eq!(w.nodes["2"]["inputs"]["value"], serde_json::json!(["1", 0]));
        assert_eq!(w.nodes["1"]["inputs"]["type"], "IMAGE");
        let again: Value = serde_json::from_str(&w.text).expect("the project gets the API form");
        assert_eq!(again["2"]["class_type"], "RemoteOutput");
    }

    #[test]
    fn model_files_are_listed_with_their_folder() {
        let w = wf(r#"{
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
            "9": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["3", 0]}},
            "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.safetensors", "model": ["1", 0]}},
            "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}
        }"#)
        .expect("api");
        let files: Vec<_> = w.model_files().iter().map(ModelRef::display).collect();
        assert_eq!(
            files,
            [
                "checkpoints/sd15.safetensors",
                "loras/x.safetensors",
                "upscale_models/4x.pth"
            ]
        );
    }

    #[test]
    fn nodes_without_class_type_are_refused() {
        assert!(wf(r#"{"1": {"inputs": {}}}"#).is_err());
    }

    /// The worker's check, word for word: what `serve` refuses, deploy refuses.
    #[test]
    fn workflows_the_worker_refuses_are_refused_with_its_message() {
        let out = |id: &str, name: &str| {
            format!(
                r#""{id}": {{"class_type": "RemoteOutput", "inputs": {{"name": "{name}", "value": ["1", 0]}}}}"#
            )
        };
        let input = |id: &str, name: &str| {
            format!(
                r#""{id}": {{"class_type": "RemoteInput", "inputs": {{"name": "{name}", "type": "IMAGE"}}}}"#
            )
        };
        let cases = [
            format!("{{{}}}", input("1", "image")),
            format!(
                "{{{}, {}, {}}}",
                input("1", "a"),
                out("2", "image"),
                out("3", "image")
            ),
            format!(
                "{{{}, {}, {}}}",
                input("1", "a"),
                input("2", "a"),
                out("3", "image")
            ),
            format!("{{{}, {}}}", input("1", "../x"), out("3", "image")),
            format!("{{{}, {}}}", input("1", " "), out("3", "image")),
        ];
        for text in cases {
            let ours = wf(&text).expect_err(&text).to_string();
            let worker = comfy_remote_contract::Workflow::parse("w.json", &text)
                .expect_err(&text)
                .to_string();
            assert_eq!(ours, worker);
            assert!(ours.starts_with("workflow w.json: "), "{ours}");
        }
        let ok = format!("{{{}, {}}}", input("1", "a"), out("2", "image"));
        wf(&ok).expect("a valid workflow");
    }

    #[test]
    fn default_app_names_are_valid_modal_names() {
        for (stem, name) in [
            ("invert_blur", "comfy-remote-invert-blur"),
            ("___", "comfy-remote-workflow"),
            ("", "comfy-remote-workflow"),
            ("-My Flow (v2)-", "comfy-remote-my-flow--v2"),
            ("café", "comfy-remote-caf"),
        ] {
            assert_eq!(default_app_name(stem), name, "{stem:?}");
        }
        let long = default_app_name(&format!("{}_{}", "a".repeat(49), "b".repeat(20)));
        assert_eq!(long, format!("comfy-remote-{}", "a".repeat(49)));
        for stem in ["___", "x".repeat(200).as_str(), "ä-ö", "a_b_c"] {
            let n = default_app_name(stem);
            assert!(
                crate::config::valid_app_name(&n) && !n.ends_with('-'),
                "{n}"
            );
        }
    }
}
