//! The remote workflow as the deploy check sees it: API format only, its node types, the model files it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{DeployError, Result};

/// Inputs whose value is a model file name, and the ComfyUI models folder it is looked up in.
pub const MODEL_INPUTS: &[(&str, &str)] = &[
    ("ckpt_name", "checkpoints"),
    ("lora_name", "loras"),
    ("vae_name", "vae"),
    ("unet_name", "diffusion_models"),
    ("clip_name", "text_encoders"),
    ("clip_name1", "text_encoders"),
    ("clip_name2", "text_encoders"),
    ("clip_name3", "text_encoders"),
    ("clip_name4", "text_encoders"),
    ("control_net_name", "controlnet"),
    ("upscale_model", "upscale_models"),
    ("style_model_name", "style_models"),
    ("gligen_name", "gligen"),
    ("hypernetwork_name", "hypernetworks"),
    ("audio_encoder_name", "audio_encoders"),
];

/// Node types that read a model name from a generic `model_name` input.
const MODEL_NAME_NODES: &[(&str, &str)] = &[
    ("UpscaleModelLoader", "upscale_models"),
    ("CLIPVisionLoader", "clip_vision"),
];

/// A model file the workflow names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ModelRef {
    /// ComfyUI models folder (`checkpoints`, `loras`, ...).
    pub folder: String,
    pub file: String,
    /// `<node id>:<input>` where it is named.
    pub used_by: String,
}

/// An API-format workflow: node id -> `{class_type, inputs}`.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub path: PathBuf,
    pub nodes: Map<String, Value>,
    /// The file's bytes as given (copied verbatim into the project).
    pub text: String,
}

impl Workflow {
    /// Read a workflow file, refusing the UI format with the fix.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, text)
    }

    /// Parse with the worker's own check (`comfy-remote serve` refuses the same
    /// files with the same message): API format, Remote Output present, unique
    /// and plain Remote Input/Output names.
    pub fn parse(path: &Path, text: String) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let checked = comfy_remote_contract::Workflow::parse(&name, &text).map_err(|e| {
            DeployError::Workflow {
                message: e.to_string(),
            }
        })?;
        Ok(Workflow {
            path: path.to_path_buf(),
            nodes: checked.prompt,
            text,
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

    /// Model files named by literal (not linked) inputs.
    pub fn model_files(&self) -> Vec<ModelRef> {
        let mut out = BTreeSet::new();
        for (id, node) in &self.nodes {
            let class = node.get("class_type").and_then(Value::as_str).unwrap_or("");
            let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
                continue;
            };
            for (input, value) in inputs {
                let Some(file) = value.as_str() else { continue };
                let folder = MODEL_INPUTS
                    .iter()
                    .find(|(k, _)| k == input)
                    .map(|(_, f)| *f)
                    .or_else(|| {
                        (input == "model_name")
                            .then(|| {
                                MODEL_NAME_NODES
                                    .iter()
                                    .find(|(c, _)| *c == class)
                                    .map(|(_, f)| *f)
                            })
                            .flatten()
                    });
                if let Some(folder) = folder {
                    out.insert(ModelRef {
                        folder: folder.into(),
                        file: file.into(),
                        used_by: format!("{id}:{input}"),
                    });
                }
            }
        }
        out.into_iter().collect()
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
        Workflow::parse(Path::new("w.json"), text.to_string())
    }

    #[test]
    fn ui_format_is_refused_with_the_fix() {
        let err = wf(r#"{"nodes": [], "links": [], "version": 0.4}"#).expect_err("ui");
        assert!(err.to_string().contains("Export (API)"), "{err}");
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
        let files: Vec<_> = w
            .model_files()
            .into_iter()
            .map(|m| format!("{}/{}", m.folder, m.file))
            .collect();
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
