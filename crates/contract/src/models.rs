//! The model files a workflow names, and the check that a ComfyUI has them.
//!
//! A model file is the value of a loader's combo input: an input whose name says which models
//! folder it lists ([`MODEL_INPUTS`], `model_name` of [`MODEL_NAME_NODES`]), or any combo whose
//! value is a file with a model extension ([`MODEL_EXTENSIONS`]; custom packs' loaders name their
//! inputs freely). `serve` refuses to start when its ComfyUI lists no such file; `deploy` looks
//! each one up in the local ComfyUI's model folders.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

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
pub const MODEL_NAME_NODES: &[(&str, &str)] = &[
    ("UpscaleModelLoader", "upscale_models"),
    ("CLIPVisionLoader", "clip_vision"),
];

/// File extensions of model weights (ComfyUI's `supported_pt_extensions` and friends).
pub const MODEL_EXTENSIONS: &[&str] = &[
    ".safetensors",
    ".sft",
    ".ckpt",
    ".pt",
    ".pt2",
    ".pth",
    ".bin",
    ".pkl",
    ".gguf",
    ".onnx",
];

/// A model file the workflow names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ModelRef {
    /// ComfyUI models folder (`checkpoints`, `loras`, ...); `None` when only the extension says
    /// it is a model (any folder may hold it).
    pub folder: Option<String>,
    /// The name as the workflow gives it (may hold a subfolder: `sdxl/base.safetensors`).
    pub file: String,
    /// `<node id>:<input>` where it is named.
    pub used_by: String,
}

impl ModelRef {
    /// `checkpoints/sd15.safetensors`, or the bare name when the folder is unknown.
    pub fn display(&self) -> String {
        match &self.folder {
            Some(f) => format!("{f}/{}", self.file),
            None => self.file.clone(),
        }
    }
}

/// Whether `name` has a model file extension.
pub fn has_model_extension(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MODEL_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// The models folder a named input lists, if its name (or its node type) says so.
pub fn folder_of(class: &str, input: &str) -> Option<&'static str> {
    MODEL_INPUTS
        .iter()
        .find(|(k, _)| *k == input)
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
        })
}

/// Model files named by literal (not linked) inputs of an API prompt, sorted.
pub fn model_refs(prompt: &Map<String, Value>) -> Vec<ModelRef> {
    let mut out = BTreeSet::new();
    for (id, node) in prompt {
        let class = node.get("class_type").and_then(Value::as_str).unwrap_or("");
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for (input, value) in inputs {
            let Some(file) = value.as_str() else { continue };
            let folder = folder_of(class, input);
            if folder.is_none() && !has_model_extension(file) {
                continue;
            }
            out.insert(ModelRef {
                folder: folder.map(str::to_owned),
                file: file.to_owned(),
                used_by: format!("{id}:{input}"),
            });
        }
    }
    out.into_iter().collect()
}

/// The options of combo input `input` of node type `class` in `/object_info`.
fn combo_options<'a>(object_info: &'a Value, class: &str, input: &str) -> Option<&'a Vec<Value>> {
    let def = object_info.get(class)?.get("input")?;
    let spec = ["required", "optional"]
        .iter()
        .find_map(|g| def.get(*g).and_then(|m| m.get(input)))?
        .as_array()?;
    match spec.first()? {
        Value::Array(options) => Some(options),
        Value::String(t) if t == "COMBO" => spec.get(1)?.get("options")?.as_array(),
        _ => None,
    }
}

/// The model files of `prompt` that the ComfyUI of `object_info` does not list for their input
/// (as `checkpoints/x.safetensors (node 4 ckpt_name)`). Only combo inputs are checked: a model
/// name typed into a text input is the node's business.
pub fn missing_models(prompt: &Map<String, Value>, object_info: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in model_refs(prompt) {
        let (id, input) = m.used_by.split_once(':').unwrap_or((&m.used_by, ""));
        let class = prompt
            .get(id)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(options) = combo_options(object_info, class, input) else {
            continue;
        };
        if !options.iter().any(|o| o.as_str() == Some(m.file.as_str())) {
            out.push(format!("{} (node {id} {input})", m.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn model_files_are_found_by_input_name_or_extension() {
        let prompt = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.safetensors", "model": ["1", 0]}},
            "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
            "4": {"class_type": "FooLoader", "inputs": {"weights": "tiny.safetensors", "text": "hello"}}
        });
        let refs: Vec<_> = model_refs(prompt.as_object().expect("object"))
            .iter()
            .map(ModelRef::display)
            .collect();
        assert_eq!(
            refs,
            [
                "tiny.safetensors",
                "checkpoints/sd15.safetensors",
                "loras/x.safetensors",
                "upscale_models/4x.pth"
            ]
        );
    }

    #[test]
    fn missing_models_are_those_the_combo_does_not_list() {
        let prompt = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
            "4": {"class_type": "FooLoader", "inputs": {"weights": "tiny.safetensors"}}
        });
        let info = json!({
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["other.safetensors"]]}}},
            "FooLoader": {"input": {"required": {"weights": ["COMBO", {"options": ["tiny.safetensors"]}]}}}
        });
        let missing = missing_models(prompt.as_object().expect("object"), &info);
        assert_eq!(missing, ["checkpoints/sd15.safetensors (node 1 ckpt_name)"]);
    }
}
