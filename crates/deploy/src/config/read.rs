//! Reading `modal_config.json`: each key by its path, errors in the file's own words.
//!
//! Every error names the key's path (`timeout_s`, `custom_nodes[1].ref`) and
//! the forms it accepts, never a type name of this crate. A missing key and
//! `null` both mean the default. Values are checked for their form here and
//! for their range in [`DeployConfig::validate`], with the same words.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    gpu_form, AuthConfig, ComfyUiSource, CustomNodePack, DeployConfig, Gpu, InstallConfig,
    ModelSource, Range, Source, VolumeConfig, APP_NAME_FORM, CONFIG_VERSION, DEFAULT_VOLUME_MOUNT,
};
use crate::error::{DeployError, Result};
use crate::stacks::{self, TorchChoice};

const TOP_KEYS: &[&str] = &[
    "version",
    "app_name",
    "gpu",
    "timeout_s",
    "startup_timeout_s",
    "scaledown_window_s",
    "min_containers",
    "max_containers",
    "max_concurrent_jobs",
    "memory_snapshot",
    "comfyui",
    "torch",
    "pip",
    "apt",
    "env",
    "custom_nodes",
    "volume",
    "models",
    "check_models",
    "auth",
    "comfy_remote",
];
const COMFYUI_KEYS: &[&str] = &["repo", "ref"];
const TORCH_KEYS: &[&str] = &[
    "stack",
    "torch",
    "torchvision",
    "torchaudio",
    "xformers",
    "index_url",
];
const PACK_KEYS: &[&str] = &["name", "path", "git", "ref", "nodes"];
const VOLUME_KEYS: &[&str] = &["name", "mount", "create"];
const MODEL_KEYS: &[&str] = &["url", "hf", "file", "revision", "sha256", "size"];
const AUTH_KEYS: &[&str] = &["proxy_auth", "token_secret"];
const INSTALL_KEYS: &[&str] = &["source", "index_url"];

const TEXT: &str = "a string";
const TEXTS: &str = "a list of strings";

/// The error for a value of the wrong form: `"timeout_s" must be a whole number ...; got "600"`.
pub fn invalid(path: &str, form: &str, got: &Value) -> DeployError {
    let mut shown = got.to_string();
    if shown.chars().count() > 80 {
        shown = shown.chars().take(77).collect::<String>() + "...";
    }
    DeployError::Config {
        message: format!("\"{path}\" must be {form}; got {shown}"),
    }
}

/// The whole document.
pub(super) fn document(text: &str) -> Result<DeployConfig> {
    let value: Value = serde_json::from_str(text).map_err(|e| DeployError::Config {
        message: format!("not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(DeployError::Config {
            message: format!(
                "must be a JSON object such as {{\"version\": {CONFIG_VERSION}}}; got {}",
                kind(&value)
            ),
        });
    }
    match value.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(CONFIG_VERSION)) => {}
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
    let doc = Obj::new(&value, "", "", TOP_KEYS)?;
    let d = DeployConfig::default();
    let number = |key: &str, default: u32| -> Result<u32> {
        Ok(doc.number(Range::of(key))?.unwrap_or(default))
    };
    Ok(DeployConfig {
        version: CONFIG_VERSION,
        app_name: doc
            .string("app_name", &format!("null or {APP_NAME_FORM}"))?
            .unwrap_or_default(),
        gpu: gpu(&doc)?,
        timeout_s: number("timeout_s", d.timeout_s)?,
        startup_timeout_s: number("startup_timeout_s", d.startup_timeout_s)?,
        scaledown_window_s: number("scaledown_window_s", d.scaledown_window_s)?,
        min_containers: number("min_containers", d.min_containers)?,
        max_containers: doc.number(Range::of("max_containers"))?,
        max_concurrent_jobs: number("max_concurrent_jobs", d.max_concurrent_jobs)?,
        memory_snapshot: doc.bool("memory_snapshot")?.unwrap_or(d.memory_snapshot),
        comfyui: comfyui(&doc)?,
        torch: torch(doc.get("torch"))?,
        pip: doc.strings("pip", "a list of pip requirement strings")?,
        apt: doc.strings("apt", "a list of Debian package names")?,
        env: env(&doc)?,
        custom_nodes: custom_nodes(&doc)?,
        volume: volume(&doc)?,
        models: models(&doc)?,
        check_models: doc.bool("check_models")?.unwrap_or(d.check_models),
        auth: auth(&doc)?,
        comfy_remote: install(&doc)?,
    })
}

fn gpu(doc: &Obj<'_>) -> Result<Gpu> {
    let path = doc.path("gpu");
    match doc.get("gpu") {
        None => Ok(Gpu::default()),
        Some(Value::String(s)) => Ok(Gpu::One(s.clone())),
        Some(Value::Array(items)) => {
            let names = items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(&format!("{path}[{i}]"), &gpu_form(), other)),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Gpu::Fallback(names))
        }
        Some(other) => Err(invalid(&path, &gpu_form(), other)),
    }
}

fn comfyui(doc: &Obj<'_>) -> Result<ComfyUiSource> {
    let form = "an object {\"repo\": GIT_URL, \"ref\": TAG_OR_COMMIT}";
    let Some(v) = doc.get("comfyui") else {
        return Ok(ComfyUiSource::default());
    };
    let o = Obj::new(v, "comfyui", form, COMFYUI_KEYS)?;
    let d = ComfyUiSource::default();
    Ok(ComfyUiSource {
        repo: o.string("repo", "a git URL")?.unwrap_or(d.repo),
        git_ref: o
            .string("ref", "a tag, branch or commit")?
            .unwrap_or(d.git_ref),
    })
}

/// What `"torch"` may be, in an error's words (from the stacks table).
pub fn torch_form() -> String {
    let presets = stacks::presets();
    let names: Vec<&str> = presets.keys().map(String::as_str).collect();
    let versions: Vec<&str> = presets.values().map(|s| s.torch.as_str()).collect();
    format!(
        "a preset name ({}), a torch version of one ({}), an object {{\"stack\": ..., \"torch\": ..., \"torchvision\": ..., \"torchaudio\": ..., \"xformers\": ..., \"index_url\": ...}}, or null for the default ({})",
        names.join(", "),
        versions.join(", "),
        stacks::default_stack_name()
    )
}

fn torch(value: Option<&Value>) -> Result<TorchChoice> {
    match value {
        None => Ok(TorchChoice::default()),
        Some(Value::String(s)) => TorchChoice::shorthand(s)
            .ok_or_else(|| invalid("torch", &torch_form(), &s.clone().into())),
        Some(v @ Value::Object(_)) => {
            let o = Obj::new(v, "torch", &torch_form(), TORCH_KEYS)?;
            let s = |key: &str, form: &str| o.string(key, &format!("null or {form}"));
            Ok(TorchChoice {
                stack: s("stack", "a preset name")?,
                torch: s("torch", "a version string such as \"2.11.0\"")?,
                torchvision: s("torchvision", "a version string such as \"0.26.0\"")?,
                torchaudio: s("torchaudio", "a version string such as \"2.11.0\"")?,
                xformers: s(
                    "xformers",
                    "a version string, or \"none\" to leave xformers out",
                )?,
                index_url: s("index_url", "a wheel index URL")?,
            })
        }
        Some(other) => Err(invalid("torch", &torch_form(), other)),
    }
}

fn env(doc: &Obj<'_>) -> Result<BTreeMap<String, String>> {
    let form = "an object of variable names to string values, {\"NAME\": \"value\"}";
    let Some(v) = doc.get("env") else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err(invalid("env", form, v));
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(invalid(
                &format!("env.{k}"),
                "a string (quote numbers: \"1\")",
                other,
            )),
        })
        .collect()
}

fn custom_nodes(doc: &Obj<'_>) -> Result<Vec<CustomNodePack>> {
    let form = "a list of packs, each {\"path\": DIR} or {\"git\": URL, \"ref\": TAG_OR_COMMIT, \"nodes\": [...]}";
    let Some(v) = doc.get("custom_nodes") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(invalid("custom_nodes", form, v));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("custom_nodes[{i}]");
        let o = Obj::new(item, &path, form, PACK_KEYS)?;
        out.push(CustomNodePack {
            name: o.string("name", "a directory name")?,
            path: o
                .string("path", "a directory path (relative to the config file)")?
                .map(Into::into),
            git: o.string("git", "a git URL")?,
            git_ref: o.string("ref", "a tag or commit")?,
            nodes: o.strings("nodes", "a list of the node type names the pack provides")?,
        });
    }
    Ok(out)
}

fn volume(doc: &Obj<'_>) -> Result<Option<VolumeConfig>> {
    let form = "null (no Volume) or an object {\"name\": VOLUME, \"mount\": \"/models\", \"create\": true}";
    let Some(v) = doc.get("volume") else {
        return Ok(None);
    };
    let o = Obj::new(v, "volume", form, VOLUME_KEYS)?;
    let Some(name) = o.string("name", APP_NAME_FORM)? else {
        return Err(DeployError::Config {
            message: "\"volume\" needs a \"name\" (the Modal Volume holding the models, e.g. \"comfy-models\")".into(),
        });
    };
    Ok(Some(VolumeConfig {
        name,
        mount: o
            .string("mount", "an absolute path such as \"/models\"")?
            .unwrap_or_else(|| DEFAULT_VOLUME_MOUNT.into()),
        create: o.bool("create")?.unwrap_or(true),
    }))
}

fn models(doc: &Obj<'_>) -> Result<BTreeMap<String, ModelSource>> {
    let form = "an object of \"<folder>/<file>\" -> {\"url\": URL, \"sha256\": HEX, \"size\": BYTES} or {\"hf\": \"org/repo\", \"file\": PATH, \"revision\": REV, \"sha256\": HEX, \"size\": BYTES}";
    let Some(v) = doc.get("models") else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err(invalid("models", form, v));
    };
    let mut out = BTreeMap::new();
    for (key, entry) in map {
        let path = format!("models.{key}");
        let o = Obj::new(entry, &path, form, MODEL_KEYS)?;
        let Some(sha256) = o.string("sha256", "the file's SHA-256 (64 hex digits)")? else {
            return Err(DeployError::Config {
                message: format!(
                    "\"{path}\" needs a \"sha256\": the download is checked against it"
                ),
            });
        };
        out.insert(
            key.clone(),
            ModelSource {
                url: o.string("url", "an http:// or https:// URL")?,
                hf: o.string("hf", "a Hugging Face repository, org/name")?,
                file: o.string("file", "a path in the repository")?,
                revision: o.string("revision", "a branch, tag or commit")?,
                sha256,
                size: o.bytes("size", "the file's size in bytes (a whole number)")?,
            },
        );
    }
    Ok(out)
}

fn auth(doc: &Obj<'_>) -> Result<AuthConfig> {
    let form = "an object {\"proxy_auth\": true, \"token_secret\": null}";
    let Some(v) = doc.get("auth") else {
        return Ok(AuthConfig::default());
    };
    let o = Obj::new(v, "auth", form, AUTH_KEYS)?;
    let d = AuthConfig::default();
    Ok(AuthConfig {
        proxy_auth: o.bool("proxy_auth")?.unwrap_or(d.proxy_auth),
        token_secret: o.string("token_secret", "null or a Modal Secret name")?,
    })
}

fn install(doc: &Obj<'_>) -> Result<InstallConfig> {
    let form = "an object {\"source\": \"auto\", \"index_url\": null}";
    let Some(v) = doc.get("comfy_remote") else {
        return Ok(InstallConfig::default());
    };
    let o = Obj::new(v, "comfy_remote", form, INSTALL_KEYS)?;
    let source = match o.get("source") {
        None => Source::default(),
        Some(Value::String(s)) if Source::parse(s).is_some() => {
            Source::parse(s).unwrap_or_default()
        }
        Some(other) => return Err(invalid(&o.path("source"), &Source::form(), other)),
    };
    let index_url = o.string("index_url", "null or an http(s) URL of a package index")?;
    if let Some(url) = index_url.as_ref().filter(|u| !crate::wheels::is_url(u)) {
        return Err(invalid(
            &o.path("index_url"),
            "null or an http(s) URL of a package index",
            &Value::String(url.clone()),
        ));
    }
    Ok(InstallConfig { source, index_url })
}

/// `an object`, `a string`, ...: what a value is, for the top-level error.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One JSON object of the document and where it sits (`""` at the top, `volume`, `custom_nodes[1]`).
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// `value` as an object whose keys are all in `keys`.
    fn new(value: &'a Value, path: &str, form: &str, keys: &[&str]) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(invalid(path, form, value));
        };
        if let Some(k) = map.keys().find(|k| !keys.contains(&k.as_str())) {
            let known: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            return Err(DeployError::UnknownKey {
                key: join(path, k),
                hint: format!("; expected one of {}", known.join(", ")),
            });
        }
        Ok(Obj {
            path: path.to_string(),
            map,
        })
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `None` when it is missing or null (both mean the default).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str, form: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(&self.path(key), form_or(form, TEXT), other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(invalid(&self.path(key), "true or false", other)),
        }
    }

    /// A whole number of bytes.
    fn bytes(&self, key: &str, form: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(&self.path(key), form, v)),
        }
    }

    /// A list of strings; missing or null is the empty list.
    fn strings(&self, key: &str, form: &str) -> Result<Vec<String>> {
        let path = self.path(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(&format!("{path}[{i}]"), TEXT, other)),
                })
                .collect(),
            Some(other) => Err(invalid(&path, form_or(form, TEXTS), other)),
        }
    }

    /// A whole number of `range.key`, checked against the range.
    fn number(&self, range: &Range) -> Result<Option<u32>> {
        let Some(v) = self.get(range.key) else {
            return Ok(None);
        };
        let n = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid(&self.path(range.key), &range.form(), v))?;
        range.check(n)?;
        Ok(Some(n))
    }
}

fn form_or<'f>(form: &'f str, fallback: &'f str) -> &'f str {
    if form.is_empty() {
        fallback
    } else {
        form
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
