//! `modal_config.json`: the versioned, validated deployment settings, with every default spelled out.
//!
//! The file a user writes may hold any subset of the keys (a missing key or
//! `null` means the default); the scaffold writes the complete, resolved file
//! into the project so the defaults are visible. Unknown keys are refused by
//! name (a typo must not silently deploy an H100 with defaults), and every
//! error names the key's path and the forms it accepts ([`read`]). Numeric
//! settings have one table of allowed ranges ([`RANGES`]), checked when a file
//! is read and again before every scaffold, so a value Modal would refuse
//! fails before `modal deploy`. The schema is documented in docs/deploy.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DeployError, Result};
pub use crate::install::{InstallConfig, Source};
use crate::stacks::TorchChoice;

mod read;

pub use read::invalid;

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

/// The allowed values of one numeric setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub key: &'static str,
    pub min: u32,
    /// `None`: no upper bound of ours or Modal's.
    pub max: Option<u32>,
    /// `"seconds"`, or empty for a count.
    pub unit: &'static str,
    /// What `null` means, for settings that may be null.
    pub null: Option<&'static str>,
    /// Where the bound comes from, when it is not ours.
    pub source: &'static str,
}

/// Every numeric setting and its range. Modal's bounds were read in the
/// `modal` 1.6.4 client (`scaledown_window` 2..=3600, `max_containers` > 0,
/// `min_containers` >= 0) and its documentation (a function's `timeout` and
/// `startup_timeout`: 1 second to 24 hours).
pub const RANGES: &[Range] = &[
    Range {
        key: "timeout_s",
        min: 1,
        max: Some(86_400),
        unit: "seconds",
        null: None,
        source: "Modal's limit: 24 hours",
    },
    Range {
        key: "startup_timeout_s",
        min: 1,
        max: Some(86_400),
        unit: "seconds",
        null: None,
        source: "Modal's limit: 24 hours",
    },
    Range {
        key: "scaledown_window_s",
        min: 2,
        max: Some(3600),
        unit: "seconds",
        null: None,
        source: "Modal's limit",
    },
    Range {
        key: "min_containers",
        min: 0,
        max: None,
        unit: "",
        null: None,
        source: "",
    },
    Range {
        key: "max_containers",
        min: 1,
        max: None,
        unit: "",
        null: Some("no limit"),
        source: "",
    },
    Range {
        key: "max_concurrent_jobs",
        min: 1,
        max: None,
        unit: "",
        null: None,
        source: "",
    },
];

impl Range {
    /// The range of `key` (a key of [`RANGES`]).
    pub fn of(key: &str) -> &'static Range {
        RANGES
            .iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no range for {key}"))
    }

    /// The allowed values, as errors and docs/deploy.md say them:
    /// `a whole number of seconds from 2 to 3600 (Modal's limit)`,
    /// `null (no limit) or a whole number of 1 or more`.
    pub fn form(&self) -> String {
        let what = if self.unit.is_empty() {
            "a whole number".to_string()
        } else {
            format!("a whole number of {}", self.unit)
        };
        let span = match self.max {
            Some(max) => format!("from {} to {max}", self.min),
            None => format!("of {} or more", self.min),
        };
        let mut s = match self.null {
            Some(null) => format!("null ({null}) or {what} {span}"),
            None => format!("{what} {span}"),
        };
        if !self.source.is_empty() {
            s.push_str(&format!(" ({})", self.source));
        }
        s
    }

    /// Refuse a value outside the range, naming the key and the allowed values.
    pub fn check(&self, value: u32) -> Result<()> {
        if value >= self.min && self.max.map_or(true, |m| value <= m) {
            return Ok(());
        }
        Err(invalid(self.key, &self.form(), &value.into()))
    }
}

/// One GPU type or a fallback list tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

    /// As written in logs: `H100`, `H100,A100-80GB`.
    pub fn display(&self) -> String {
        self.names().join(",")
    }
}

/// Where ComfyUI comes from inside the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComfyUiSource {
    pub repo: String,
    /// A tag, branch or commit.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

impl Default for ComfyUiSource {
    fn default() -> Self {
        ComfyUiSource {
            repo: DEFAULT_COMFYUI_REPO.into(),
            git_ref: DEFAULT_COMFYUI_REF.into(),
        }
    }
}

/// A custom node pack the image brings: a local directory or a git repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CustomNodePack {
    /// Directory name under ComfyUI/custom_nodes; default: last path/URL segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Local directory (relative to the config file), copied into the project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Git URL, cloned at `ref` during the image build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "ref")]
    pub git_ref: Option<String>,
    /// Node types the pack provides (needed for git packs: they cannot be read offline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeConfig {
    pub name: String,
    pub mount: String,
    /// Create the Volume on first deploy when missing.
    pub create: bool,
}

/// Where a model file the local ComfyUI lacks comes from: a URL (plain HTTP(S), or a file of a
/// Hugging Face repository), fetched onto the Volume at the first start and checked against its
/// SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSource {
    /// An `https://` (or `http://`) URL of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Hugging Face repository (`org/name`); with `file` (and `revision`, default `main`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The file's SHA-256 (64 hex digits): a download that does not match is refused.
    pub sha256: String,
    /// The file's size in bytes, when known: the plan counts it in the bytes a deploy moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl ModelSource {
    /// The URL the file is fetched from.
    pub fn fetch_url(&self) -> String {
        match (&self.url, &self.hf) {
            (Some(u), _) => u.clone(),
            (None, Some(repo)) => format!(
                "https://huggingface.co/{repo}/resolve/{}/{}",
                self.revision.as_deref().unwrap_or("main"),
                self.file.as_deref().unwrap_or_default()
            ),
            (None, None) => String::new(),
        }
    }
}

/// Default mount point of the model Volume.
pub const DEFAULT_VOLUME_MOUNT: &str = "/models";

/// Who may call the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    /// Modal checks `Modal-Key`/`Modal-Secret` headers (a proxy auth token) before any request reaches us.
    pub proxy_auth: bool,
    /// Name of a modal.Secret holding `COMFY_REMOTE_TOKEN`; requests must then send `Authorization: Bearer <token>`.
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeployConfig {
    pub version: u32,
    /// Modal app name; default: `comfy-remote-<workflow file stem>`.
    pub app_name: String,
    pub gpu: Gpu,
    /// Longest a job may run on the GPU, seconds.
    pub timeout_s: u32,
    /// Longest ComfyUI + the worker may take to become ready, seconds.
    pub startup_timeout_s: u32,
    /// Idle seconds before a GPU container stops (you pay for them).
    pub scaledown_window_s: u32,
    /// GPU containers kept warm even when idle (billed all the time when > 0).
    pub min_containers: u32,
    pub max_containers: Option<u32>,
    /// Jobs one GPU container runs at once.
    pub max_concurrent_jobs: u32,
    /// Snapshot the container after ComfyUI is ready (faster cold starts).
    pub memory_snapshot: bool,
    pub comfyui: ComfyUiSource,
    pub torch: TorchChoice,
    /// Extra pip requirements (installed under the torch constraints).
    pub pip: Vec<String>,
    /// Extra Debian packages.
    pub apt: Vec<String>,
    /// Extra environment variables of the GPU image.
    pub env: BTreeMap<String, String>,
    pub custom_nodes: Vec<CustomNodePack>,
    pub volume: Option<VolumeConfig>,
    /// Model files fetched from a URL (`"<folder>/<file>"` -> source) rather than uploaded.
    pub models: BTreeMap<String, ModelSource>,
    /// Refuse to deploy a workflow that names model files when no Volume is configured.
    pub check_models: bool,
    pub auth: AuthConfig,
    /// Where the images get comfy-remote from.
    pub comfy_remote: InstallConfig,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            version: CONFIG_VERSION,
            app_name: String::new(),
            gpu: Gpu::default(),
            timeout_s: 3600,
            startup_timeout_s: 600,
            scaledown_window_s: 300,
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
            models: BTreeMap::new(),
            check_models: true,
            auth: AuthConfig::default(),
            comfy_remote: InstallConfig::default(),
        }
    }
}

/// What an app name may be, in an error's words.
pub const APP_NAME_FORM: &str = "1-63 characters of letters, digits, '-', '_' or '.'";

impl DeployConfig {
    /// Parse a config document; unknown keys, a wrong `version` and values of
    /// the wrong form are refused, naming the key.
    pub fn from_json(text: &str) -> Result<Self> {
        read::document(text)
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

    /// The value of a numeric setting of [`RANGES`].
    fn number(&self, key: &str) -> Option<u32> {
        match key {
            "timeout_s" => Some(self.timeout_s),
            "startup_timeout_s" => Some(self.startup_timeout_s),
            "scaledown_window_s" => Some(self.scaledown_window_s),
            "min_containers" => Some(self.min_containers),
            "max_containers" => self.max_containers,
            "max_concurrent_jobs" => Some(self.max_concurrent_jobs),
            _ => None,
        }
    }

    /// What a user must know about these settings before deploying (each line
    /// starts with `warning: `). Today: a service anyone may call.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.auth.proxy_auth && self.auth.token_secret.is_none() {
            out.push(format!(
                "warning: app {} is public: \"auth\" has \"proxy_auth\": false and no \"token_secret\", so anyone with the service URL can run jobs on your GPU (billed to you); set \"proxy_auth\": true or a \"token_secret\" in modal_config.json",
                self.app_name
            ));
        }
        out
    }

    /// Check values the reader cannot: names, GPU strings, ranges, combinations.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(DeployError::Config { message });
        if !valid_app_name(&self.app_name) {
            return Err(invalid(
                "app_name",
                APP_NAME_FORM,
                &self.app_name.clone().into(),
            ));
        }
        let gpus = self.gpu.names();
        if gpus.is_empty() {
            return bad("\"gpu\" is an empty list; give a GPU type such as \"H100\"".into());
        }
        for g in &gpus {
            if !valid_gpu(g) {
                return Err(invalid("gpu", &gpu_form(), &g.clone().into()));
            }
        }
        for range in RANGES {
            if let Some(v) = self.number(range.key) {
                range.check(v)?;
            }
        }
        if let Some(max) = self.max_containers {
            if max < self.min_containers {
                return bad(format!(
                    "\"max_containers\" ({max}) must be at least \"min_containers\" ({})",
                    self.min_containers
                ));
            }
        }
        for (i, pack) in self.custom_nodes.iter().enumerate() {
            match (&pack.path, &pack.git) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return bad(format!(
                        "\"custom_nodes[{i}]\" needs exactly one of \"path\" (a local directory) or \"git\" (a URL)"
                    ))
                }
            }
            if pack.git.is_some() && pack.git_ref.is_none() {
                return bad(format!(
                    "\"custom_nodes[{i}]\" ({}) needs a \"ref\" (tag or commit) so builds are reproducible",
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
                    "\"custom_nodes[{i}]\" has an unusable directory name {name:?}; set \"name\" (letters, digits, '-', '_' or '.')"
                ));
            }
        }
        for (key, list) in [("pip", &self.pip), ("apt", &self.apt)] {
            for (i, pkg) in list.iter().enumerate() {
                if pkg.trim().is_empty() || pkg.contains(['\n', '\'', '"', '`', '$', ';', '&', '|'])
                {
                    return Err(invalid(
                        &format!("{key}[{i}]"),
                        "a package spec without quotes, newlines or shell characters ('\"`$;&|)",
                        &pkg.clone().into(),
                    ));
                }
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(format!(
                    "\"env\" key {key:?} is not a valid variable name (letters, digits and '_')"
                ));
            }
        }
        if let Some(v) = &self.volume {
            if !valid_app_name(&v.name) {
                return Err(invalid(
                    "volume.name",
                    APP_NAME_FORM,
                    &v.name.clone().into(),
                ));
            }
            if !v.mount.starts_with('/') {
                return Err(invalid(
                    "volume.mount",
                    "an absolute path such as \"/models\"",
                    &v.mount.clone().into(),
                ));
            }
        }
        for (key, m) in &self.models {
            let at = |field: &str| format!("models.{key}.{field}");
            if !key.contains('/') || key.starts_with('/') || key.contains("..") {
                return bad(format!(
                    "\"models\" key {key:?} must be a models folder and a file, such as \"checkpoints/sd15.safetensors\""
                ));
            }
            if m.sha256.len() != 64 || !m.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    &at("sha256"),
                    "the file's SHA-256 (64 hex digits)",
                    &m.sha256.clone().into(),
                ));
            }
            match (&m.url, &m.hf) {
                (Some(u), None) if u.starts_with("https://") || u.starts_with("http://") => {}
                (Some(u), None) => {
                    return Err(invalid(&at("url"), "an http:// or https:// URL", &u.clone().into()))
                }
                (None, Some(repo)) if repo.split('/').count() == 2 && m.file.is_some() => {}
                (None, Some(_)) => {
                    return bad(format!(
                        "\"models\" entry {key:?} needs \"hf\": \"org/repo\" and \"file\": \"path/in/the/repo\""
                    ))
                }
                _ => {
                    return bad(format!(
                        "\"models\" entry {key:?} needs exactly one of \"url\" or \"hf\" (with \"file\")"
                    ))
                }
            }
        }
        if let Some(s) = &self.auth.token_secret {
            if !valid_app_name(s) {
                return Err(invalid(
                    "auth.token_secret",
                    &format!("null or a Modal Secret name ({APP_NAME_FORM})"),
                    &s.clone().into(),
                ));
            }
        }
        for (key, s) in [
            ("comfyui.repo", &self.comfyui.repo),
            ("comfyui.ref", &self.comfyui.git_ref),
        ] {
            if s.is_empty() || s.contains([' ', '\'', '"', ';', '&', '|', '$', '`']) {
                return Err(invalid(
                    key,
                    "a plain git URL or ref (no spaces, quotes or shell characters)",
                    &s.clone().into(),
                ));
            }
        }
        Ok(())
    }
}

/// What `"gpu"` may be, in an error's words.
pub fn gpu_form() -> String {
    format!(
        "a Modal GPU type ({}), optionally with \":N\" for N GPUs (1-8), or a list of them tried in order",
        MODAL_GPUS.join(", ")
    )
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
mod tests;
