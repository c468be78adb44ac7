//! `modal_config.json`: the versioned, validated deployment settings, with every default spelled out.
//!
//! The file a user writes may hold any subset of the keys; the scaffold writes
//! the complete, resolved file into the project so the defaults are visible.
//! Unknown keys are refused by name (a typo must not silently deploy an H100
//! with defaults). The schema is documented in docs/deploy.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DeployError, Result};
use crate::stacks::TorchChoice;

/// The only schema version this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// Upstream ComfyUI, pinned; the tag the embedded node list was read from.
pub const DEFAULT_COMFYUI_REPO: &str = "https://github.com/comfyanonymous/ComfyUI.git";
pub const DEFAULT_COMFYUI_REF: &str = "v0.33.0";

/// GPU type names Modal accepts (an optional `:N` count may follow; `!` pins H100 exactly).
pub const MODAL_GPUS: &[&str] = &[
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H100!",
    "H200",
    "B200",
    "ANY",
];

/// One GPU type or a fallback list tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gpu {
    One(String),
    Fallback(Vec<String>),
}

impl Default for Gpu {
    fn default() -> Self {
        Gpu::One("H100".into())
    }
}

impl Gpu {
    pub fn names(&self) -> Vec<String> {
        match self {
            Gpu::One(g) => vec![g.clone()],
            Gpu::Fallback(v) => v.clone(),
        }
    }
}

/// Where ComfyUI comes from inside the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyUiSource {
    #[serde(default = "default_repo")]
    pub repo: String,
    /// A tag, branch or commit.
    #[serde(default = "default_ref", rename = "ref")]
    pub git_ref: String,
}

impl Default for ComfyUiSource {
    fn default() -> Self {
        ComfyUiSource {
            repo: default_repo(),
            git_ref: default_ref(),
        }
    }
}

fn default_repo() -> String {
    DEFAULT_COMFYUI_REPO.into()
}
fn default_ref() -> String {
    DEFAULT_COMFYUI_REF.into()
}

/// A custom node pack the image brings: a local directory or a git repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomNodePack {
    /// Directory name under ComfyUI/custom_nodes; default: last path/URL segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Local directory (relative to the config file), copied into the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Git URL, cloned at `ref` during the image build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    pub git_ref: Option<String>,
    /// Node types the pack provides (needed for git packs: they cannot be read offline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl CustomNodePack {
    /// The directory name under custom_nodes.
    pub fn dir_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let src = self
            .path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| self.git.clone())
            .unwrap_or_default();
        let last = src
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("pack");
        last.trim_end_matches(".git").to_string()
    }
}

/// A Modal Volume holding model weights, seen by ComfyUI through extra_model_paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Create the Volume on first deploy when missing.
    #[serde(default = "yes")]
    pub create: bool,
}

fn default_mount() -> String {
    "/models".into()
}
fn yes() -> bool {
    true
}

/// Who may call the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Modal checks `Modal-Key`/`Modal-Secret` headers (a proxy auth token) before any request reaches us.
    #[serde(default = "yes")]
    pub proxy_auth: bool,
    /// Name of a modal.Secret holding `COMFY_REMOTE_TOKEN`; requests must then send `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token_secret: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            proxy_auth: true,
            token_secret: None,
        }
    }
}

/// The complete deployment settings (`modal_config.json`, version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    pub version: u32,
    /// Modal app name; default: `comfy-remote-<workflow file stem>`.
    #[serde(default)]
    pub app_name: String,
    #[serde(default)]
    pub gpu: Gpu,
    /// Longest a job may run on the GPU, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// Longest ComfyUI + the worker may take to become ready, seconds.
    #[serde(default = "default_startup")]
    pub startup_timeout_s: u32,
    /// Idle seconds before a GPU container stops (you pay for them).
    #[serde(default = "default_scaledown")]
    pub scaledown_window_s: u32,
    /// GPU containers kept warm even when idle (billed all the time when > 0).
    #[serde(default)]
    pub min_containers: u32,
    #[serde(default)]
    pub max_containers: Option<u32>,
    /// Jobs one GPU container runs at once.
    #[serde(default = "one")]
    pub max_concurrent_jobs: u32,
    /// Snapshot the container after ComfyUI is ready (faster cold starts).
    #[serde(default)]
    pub memory_snapshot: bool,
    #[serde(default)]
    pub comfyui: ComfyUiSource,
    #[serde(default)]
    pub torch: TorchChoice,
    /// Extra pip requirements (installed under the torch constraints).
    #[serde(default)]
    pub pip: Vec<String>,
    /// Extra Debian packages.
    #[serde(default)]
    pub apt: Vec<String>,
    /// Extra environment variables of the GPU image.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub custom_nodes: Vec<CustomNodePack>,
    #[serde(default)]
    pub volume: Option<VolumeConfig>,
    /// Refuse to deploy a workflow that names model files when no Volume is configured.
    #[serde(default = "yes")]
    pub check_models: bool,
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_timeout() -> u32 {
    3600
}
fn default_startup() -> u32 {
    600
}
fn default_scaledown() -> u32 {
    300
}
fn one() -> u32 {
    1
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            version: CONFIG_VERSION,
            app_name: String::new(),
            gpu: Gpu::default(),
            timeout_s: default_timeout(),
            startup_timeout_s: default_startup(),
            scaledown_window_s: default_scaledown(),
            min_containers: 0,
            max_containers: None,
            max_concurrent_jobs: 1,
            memory_snapshot: false,
            comfyui: ComfyUiSource::default(),
            torch: TorchChoice::default(),
            pip: Vec::new(),
            apt: Vec::new(),
            env: BTreeMap::new(),
            custom_nodes: Vec::new(),
            volume: None,
            check_models: true,
            auth: AuthConfig::default(),
        }
    }
}

impl DeployConfig {
    /// Parse a config document; unknown keys and a wrong `version` are refused.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| DeployError::Config {
                message: format!("not valid JSON: {e}"),
            })?;
        match value.get("version") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(CONFIG_VERSION)) => {
            }
            Some(other) => {
                return Err(DeployError::Config {
                    message: format!(
                        "\"version\" is {other}; this comfy-remote reads version {CONFIG_VERSION}"
                    ),
                })
            }
            None => {
                return Err(DeployError::Config {
                    message: format!("missing \"version\": {CONFIG_VERSION}"),
                })
            }
        }
        serde_json::from_value(value).map_err(|e| {
            let msg = e.to_string();
            match msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split_once('`'))
            {
                Some((key, rest)) => DeployError::UnknownKey {
                    key: key.to_string(),
                    hint: rest.replace(", expected", "; expected").to_string(),
                },
                None => DeployError::Config { message: msg },
            }
        })
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let in_file = |e: DeployError| match e {
            DeployError::Config { message } => DeployError::ConfigFile {
                path: path.to_path_buf(),
                message,
            },
            DeployError::UnknownKey { key, hint } => DeployError::ConfigFile {
                path: path.to_path_buf(),
                message: format!("unknown key `{key}`{hint}"),
            },
            other => other,
        };
        let cfg = Self::from_json(&text).map_err(in_file)?;
        // Check the values now, so a bad one is blamed on this file (the app
        // name may be left empty here: it defaults to the workflow's).
        let mut probe = cfg.clone();
        if probe.app_name.is_empty() {
            probe.app_name = "app".into();
        }
        probe.validate().map_err(in_file)?;
        Ok(cfg)
    }

    /// The complete document with every default written out.
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Check values serde cannot: names, GPU strings, ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DeployError::Config { message });
        if !valid_app_name(&self.app_name) {
            return bad(format!(
                "\"app_name\" {:?} must be 1-63 characters of letters, digits, '-', '_' or '.'",
                self.app_name
            ));
        }
        let gpus = self.gpu.names();
        if gpus.is_empty() {
            return bad("\"gpu\" is an empty list; give a GPU type such as \"H100\"".into());
        }
        for g in &gpus {
            if !valid_gpu(g) {
                return bad(format!(
                    "\"gpu\" {g:?} is not a Modal GPU type; use one of {} (optionally with :N for N GPUs)",
                    MODAL_GPUS.join(", ")
                ));
            }
        }
        if self.timeout_s == 0 || self.timeout_s > 24 * 3600 {
            return bad("\"timeout_s\" must be between 1 and 86400 (Modal's limit)".into());
        }
        if self.max_concurrent_jobs == 0 {
            return bad("\"max_concurrent_jobs\" must be at least 1".into());
        }
        if let Some(max) = self.max_containers {
            if max == 0 || max < self.min_containers {
                return bad(format!(
                    "\"max_containers\" ({max}) must be at least 1 and at least \"min_containers\" ({})",
                    self.min_containers
                ));
            }
        }
        for (i, pack) in self.custom_nodes.iter().enumerate() {
            match (&pack.path, &pack.git) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return bad(format!(
                        "custom_nodes[{i}] needs exactly one of \"path\" (a local directory) or \"git\" (a URL)"
                    ))
                }
            }
            if pack.git.is_some() && pack.git_ref.is_none() {
                return bad(format!(
                    "custom_nodes[{i}] ({}) needs a \"ref\" (tag or commit) so builds are reproducible",
                    pack.dir_name()
                ));
            }
            let name = pack.dir_name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(format!(
                    "custom_nodes[{i}] has an unusable directory name {name:?}; set \"name\""
                ));
            }
        }
        for pkg in self.pip.iter().chain(&self.apt) {
            if pkg.trim().is_empty() || pkg.contains(['\n', '\'', '"', '`', '$', ';', '&', '|']) {
                return bad(format!(
                    "package spec {pkg:?} contains characters not allowed in a requirement"
                ));
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(format!("\"env\" key {key:?} is not a valid variable name"));
            }
        }
        if let Some(v) = &self.volume {
            if !valid_app_name(&v.name) || !v.mount.starts_with('/') {
                return bad(format!(
                    "\"volume\" needs a name of letters, digits, '-', '_' or '.' and an absolute mount path (got {:?} at {:?})",
                    v.name, v.mount
                ));
            }
        }
        for s in [&self.comfyui.repo, &self.comfyui.git_ref] {
            if s.is_empty() || s.contains([' ', '\'', '"', ';', '&', '|', '$', '`']) {
                return bad(format!("\"comfyui\" value {s:?} is not a plain URL or ref"));
            }
        }
        Ok(())
    }
}

/// Modal app (and Volume/Secret) names.
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A Modal GPU type, optionally `:N` (1-8).
pub fn valid_gpu(g: &str) -> bool {
    let (base, count) = match g.split_once(':') {
        Some((b, n)) => (b, Some(n)),
        None => (g, None),
    };
    let count_ok = count.map_or(true, |n| {
        n.parse::<u8>().is_ok_and(|n| (1..=8).contains(&n))
    });
    count_ok && MODAL_GPUS.iter().any(|k| k.eq_ignore_ascii_case(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_document_gets_defaults() {
        let cfg = DeployConfig::from_json(r#"{"version": 1}"#).expect("parse");
        assert_eq!(cfg.gpu, Gpu::One("H100".into()));
        assert_eq!(cfg.scaledown_window_s, 300);
        assert!(cfg.auth.proxy_auth);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            DeployConfig::from_json(r#"{"version": 1, "gpus": "A10G"}"#).expect_err("unknown");
        assert!(err.to_string().contains("unknown key `gpus`"), "{err}");
        let err = DeployConfig::from_json(r#"{"version": 1, "volume": {"name": "m", "size": 3}}"#)
            .expect_err("nested unknown");
        assert!(err.to_string().contains("`size`"), "{err}");
    }

    #[test]
    fn version_is_required_and_checked() {
        assert!(DeployConfig::from_json("{}")
            .expect_err("missing")
            .to_string()
            .contains("version"));
        assert!(DeployConfig::from_json(r#"{"version": 2}"#).is_err());
    }

    #[test]
    fn gpu_strings_and_lists_are_validated() {
        let mut cfg = DeployConfig {
            app_name: "x".into(),
            ..Default::default()
        };
        cfg.gpu = Gpu::Fallback(vec!["H100".into(), "A100-80GB".into(), "l4:2".into()]);
        cfg.validate().expect("valid");
        cfg.gpu = Gpu::One("RTX4090".into());
        assert!(cfg
            .validate()
            .expect_err("bad gpu")
            .to_string()
            .contains("RTX4090"));
    }

    #[test]
    fn round_trips_with_all_defaults_written() {
        let cfg = DeployConfig {
            app_name: "demo".into(),
            ..Default::default()
        };
        let text = cfg.to_json_pretty();
        assert!(text.contains("\"scaledown_window_s\": 300"));
        assert_eq!(DeployConfig::from_json(&text).expect("reparse"), cfg);
    }

    /// Every setting is written, unset ones as null, and the file reads back.
    #[test]
    fn every_setting_is_written_and_the_file_reads_back() {
        let cfg = DeployConfig {
            app_name: "demo".into(),
            ..Default::default()
        };
        let text = cfg.to_json_pretty();
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["max_containers"], serde_json::Value::Null);
        assert_eq!(v["volume"], serde_json::Value::Null);
        assert_eq!(v["auth"]["token_secret"], serde_json::Value::Null);
        for key in [
            "stack",
            "torch",
            "torchvision",
            "torchaudio",
            "xformers",
            "index_url",
        ] {
            assert!(v["torch"].get(key).is_some(), "torch.{key} missing: {text}");
        }
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("modal_config.json");
        std::fs::write(&p, &text).expect("write");
        assert_eq!(DeployConfig::load(&p).expect("reload"), cfg);
    }

    #[test]
    fn a_bad_value_in_a_named_file_names_that_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("badcfg.json");
        std::fs::write(&p, r#"{"version": 1, "gpu": "H1000"}"#).expect("write");
        let err = DeployConfig::load(&p).expect_err("bad gpu").to_string();
        assert!(
            err.starts_with(&format!("{}: \"gpu\"", p.display())),
            "{err}"
        );
        std::fs::write(&p, r#"{"version": 1, "gpus": "A10G"}"#).expect("write");
        let err = DeployConfig::load(&p).expect_err("unknown").to_string();
        assert!(err.contains("badcfg.json: unknown key `gpus`"), "{err}");
    }
}
