//! The ComfyUI a workflow was made in, as `deploy` sees it: its node definitions
//! (`/object_info`, needed for UI-format workflows and to tell which pack provides a node), its
//! custom node packs and its model folders.
//!
//! The CLI builds it from `--comfyui` / `--base-directory` (ComfyUI's own layout: `custom_nodes/`,
//! `models/<folder>/`) and `--object-info` (a running ComfyUI's URL, or a saved copy); the Modal
//! Deployment node from the ComfyUI it runs in (its `folder_paths` and its own `/object_info`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DeployError, Result};

/// ComfyUI's model folders (`folder_paths.py`) and the directories under `models/` each reads.
pub const MODEL_FOLDERS: &[(&str, &[&str])] = &[
    ("checkpoints", &["checkpoints"]),
    ("loras", &["loras"]),
    ("vae", &["vae"]),
    ("text_encoders", &["text_encoders", "clip"]),
    ("diffusion_models", &["unet", "diffusion_models"]),
    ("clip_vision", &["clip_vision"]),
    ("style_models", &["style_models"]),
    ("embeddings", &["embeddings"]),
    ("diffusers", &["diffusers"]),
    ("vae_approx", &["vae_approx"]),
    ("controlnet", &["controlnet", "t2i_adapter"]),
    ("gligen", &["gligen"]),
    ("upscale_models", &["upscale_models"]),
    ("latent_upscale_models", &["latent_upscale_models"]),
    ("hypernetworks", &["hypernetworks"]),
    ("photomaker", &["photomaker"]),
    ("classifiers", &["classifiers"]),
    ("model_patches", &["model_patches"]),
    ("audio_encoders", &["audio_encoders"]),
];

/// What the local ComfyUI offers.
#[derive(Debug, Clone, Default)]
pub struct LocalComfy {
    /// Its `/object_info`.
    pub object_info: Option<Value>,
    /// Where `object_info` came from (a URL or a file), for messages.
    pub object_info_from: Option<String>,
    /// Directories holding custom node packs.
    pub custom_nodes: Vec<PathBuf>,
    /// Model folder name -> the directories it reads, in ComfyUI's order.
    pub model_dirs: BTreeMap<String, Vec<PathBuf>>,
}

impl LocalComfy {
    /// A ComfyUI base directory as ComfyUI lays it out: `custom_nodes/`, and `models/<folder>/` for
    /// each of ComfyUI's folders (and every other directory under `models/`, which custom packs
    /// register as folders of their own).
    pub fn from_base(base: &Path) -> LocalComfy {
        let mut local = LocalComfy::default();
        let nodes = base.join("custom_nodes");
        if nodes.is_dir() {
            local.custom_nodes.push(nodes);
        }
        let models = base.join("models");
        for (folder, dirs) in MODEL_FOLDERS {
            local.model_dirs.insert(
                (*folder).to_owned(),
                dirs.iter().map(|d| models.join(d)).collect(),
            );
        }
        let known: Vec<&str> = MODEL_FOLDERS
            .iter()
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        if let Ok(entries) = std::fs::read_dir(&models) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !known.contains(&name.as_str()) && !name.starts_with('.') {
                    local.model_dirs.insert(name, vec![e.path()]);
                }
            }
        }
        local
    }

    /// Read the node definitions from `source`: an `http(s)://` URL of a running ComfyUI (its
    /// `/object_info` is fetched) or a file holding a saved copy.
    pub fn with_object_info(mut self, source: &str) -> Result<LocalComfy> {
        let flag = |message: String| DeployError::Flag {
            message: format!("--object-info {source}: {message}"),
        };
        let text = if source.starts_with("http://") || source.starts_with("https://") {
            let url = format!(
                "{}/object_info",
                source
                    .trim_end_matches('/')
                    .trim_end_matches("/object_info")
            );
            let client = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .map_err(|e| flag(e.to_string()))?;
            client
                .get(&url)
                .send()
                .and_then(reqwest::blocking::Response::error_for_status)
                .and_then(reqwest::blocking::Response::text)
                .map_err(|e| {
                    flag(format!(
                        "could not read {url} ({e}); is ComfyUI running there?"
                    ))
                })?
        } else {
            std::fs::read_to_string(source).map_err(|e| {
                flag(format!(
                    "cannot be read ({e}); give a saved /object_info or a ComfyUI URL"
                ))
            })?
        };
        self.set_object_info(&text, source)?;
        Ok(self)
    }

    /// Use `text` (the JSON of `/object_info`) as the node definitions; `from` names it in messages.
    pub fn set_object_info(&mut self, text: &str, from: &str) -> Result<()> {
        let value: Value = serde_json::from_str(text).map_err(|e| DeployError::Flag {
            message: format!("--object-info {from}: not the JSON of ComfyUI's /object_info ({e})"),
        })?;
        if !value.is_object() {
            return Err(DeployError::Flag {
                message: format!("--object-info {from}: not the JSON of ComfyUI's /object_info (an object of node types)"),
            });
        }
        self.object_info = Some(value);
        self.object_info_from = Some(from.to_owned());
        Ok(())
    }

    /// Whether anything local is known (a directory or node definitions).
    pub fn is_empty(&self) -> bool {
        self.object_info.is_none() && self.custom_nodes.is_empty() && self.model_dirs.is_empty()
    }

    /// The model folders searched, for messages (`checkpoints: /a/models/checkpoints, ...`).
    pub fn describe_models(&self) -> String {
        if self.model_dirs.is_empty() {
            return "none given".to_owned();
        }
        let first = self
            .model_dirs
            .values()
            .flatten()
            .next()
            .and_then(|p| p.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!("{} folders under {first}", self.model_dirs.len())
    }
}
