//! What the image needs and where each piece comes from, decided before anything is written: the
//! node check (ComfyUI core, comfy-remote, declared packs, then the packs of the local ComfyUI,
//! which are added to the config), the model files ([`crate::models`]) and the resolved package
//! lock ([`crate::lock`]). `deploy --no-deploy` prints it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{CustomNodePack, DeployConfig, VolumeConfig, DEFAULT_VOLUME_MOUNT};
use crate::error::{DeployError, Result};
use crate::lock::{self, Lock, LockInputs, Requirements};
use crate::models::{self, ModelPlan, Origin};
use crate::nodes::{self, CoreSource, NodeResolution};
use crate::packs::{self, FoundPack};
use crate::runner::{Runner, Sink};
use crate::scaffold::ScaffoldRequest;
use crate::stacks::TorchStack;
use crate::workflow::Workflow;

/// The Volume a deploy creates for the model files it brings, when the config names none.
pub const DEFAULT_VOLUME: &str = "comfy-remote-models";

/// One custom node pack of the image and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackPlan {
    pub name: String,
    /// `git <url> @ <commit>` or `copied from <dir>`.
    pub source: String,
    /// The workflow's node types it provides (for packs found, not declared).
    pub nodes: Vec<String>,
    /// Found in the local ComfyUI (and saved into the config) by this run.
    pub found: bool,
    /// Its requirements are in the lock (else they install at build time, unresolved).
    pub locked: bool,
    /// Bytes copied into the project (local packs).
    pub bytes: Option<u64>,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub packs: Vec<PackPlan>,
    pub models: Vec<ModelPlan>,
    /// Bytes `modal volume put` moves at most.
    pub upload_bytes: u64,
    /// Bytes the first start fetches from URLs at most (the files whose size the config gives).
    pub fetch_bytes: u64,
    /// URL-fetched files whose size the config does not give.
    pub fetch_size_unknown: usize,
    /// Packages the lock pins (with hashes).
    pub locked_packages: usize,
    #[serde(skip)]
    pub lock: Lock,
    /// Settings the plan added to the config (`found pack ...: saved as ...`).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The node check: core + ours + declared packs, then the local ComfyUI's packs for the rest,
/// added to `config`. Errors list what nothing provides.
pub fn resolve_nodes(
    workflow: &Workflow,
    config: &mut DeployConfig,
    req: &ScaffoldRequest,
    core: &BTreeSet<String>,
    core_from: &CoreSource,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<(NodeResolution, Vec<FoundPack>)> {
    let mut declared = BTreeMap::new();
    for pack in &config.custom_nodes {
        let mut names: BTreeSet<String> = pack.nodes.iter().cloned().collect();
        if let Some(p) = &pack.path {
            let dir = req.config_dir.join(p);
            if !dir.is_dir() {
                return Err(DeployError::Config {
                    message: format!("custom node pack {} is not a directory", dir.display()),
                });
            }
            names.extend(nodes::scan_pack(&dir)?);
        }
        declared.insert(pack.dir_name(), names);
    }
    let mut resolution = nodes::resolve(workflow.node_types().into_keys(), core, &declared);
    let mut found = Vec::new();
    if !resolution.missing.is_empty() && !req.local.custom_nodes.is_empty() {
        let (packs, still) = packs::find(&resolution.missing, &req.local, runner, sink);
        for p in &packs {
            for ty in &p.nodes {
                resolution
                    .resolved
                    .insert(ty.clone(), format!("custom_nodes/{}", p.name));
            }
            let entry = match &p.git {
                Some(pin) => CustomNodePack {
                    name: Some(p.name.clone()),
                    git: Some(pin.url.clone()),
                    git_ref: Some(pin.commit.clone()),
                    nodes: p.nodes.clone(),
                    ..CustomNodePack::default()
                },
                None => CustomNodePack {
                    name: Some(p.name.clone()),
                    path: Some(p.dir.clone()),
                    ..CustomNodePack::default()
                },
            };
            config.custom_nodes.retain(|c| c.dir_name() != p.name);
            config.custom_nodes.push(entry);
        }
        resolution.missing = still;
        found = packs;
    }
    if !resolution.missing.is_empty() {
        let source = match core_from {
            CoreSource::Checkout(p) => format!("the ComfyUI checkout at {}", p.display()),
            CoreSource::Embedded => {
                "ComfyUI 0.33.0 (pass --comfyui DIR to check against your version)".into()
            }
        };
        let local = if req.local.custom_nodes.is_empty() {
            "no local custom_nodes folder (pass --comfyui DIR or --base-directory DIR to find the packs there)".to_owned()
        } else {
            format!(
                "the packs in {}",
                req.local
                    .custom_nodes
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(DeployError::UnresolvedNodes {
            missing: resolution.missing.clone(),
            hint: format!(
                "checked against {source}, comfy-remote's nodes, {} declared custom node pack(s) and {local}; install the pack that provides them in that ComfyUI, or add it to \"custom_nodes\" in modal_config.json (a local \"path\", or \"git\" + \"ref\" with the \"nodes\" it provides)",
                config.custom_nodes.len()
            ),
        });
    }
    Ok((resolution, found))
}

/// The model plan; a Volume is added to `config` when files are brought and none is named.
pub fn models(
    workflow: &Workflow,
    config: &mut DeployConfig,
    req: &ScaffoldRequest,
    notes: &mut Vec<String>,
) -> Result<Vec<ModelPlan>> {
    let refs = workflow.model_files();
    let plan = models::plan(&refs, &req.local, config, &req.cache_dir)?;
    let brought = plan.iter().any(|m| !matches!(m.origin, Origin::Volume));
    if brought && config.volume.is_none() {
        config.volume = Some(VolumeConfig {
            name: DEFAULT_VOLUME.into(),
            mount: DEFAULT_VOLUME_MOUNT.into(),
            create: true,
        });
        notes.push(format!(
            "model files: saved \"volume\": {{\"name\": \"{DEFAULT_VOLUME}\"}} in {}; the files go there",
            req.out_dir.join("modal_config.json").display()
        ));
    }
    if config.check_models && config.volume.is_none() && !plan.is_empty() {
        return Err(DeployError::ModelsWithoutVolume {
            files: plan.iter().map(ModelPlan::key).collect(),
        });
    }
    Ok(plan)
}

/// A local directory for pack `p`: its own `path`, or a checkout of the same name in the local
/// ComfyUI (where a found git pack's requirements are read).
fn local_dir(p: &CustomNodePack, req: &ScaffoldRequest) -> Option<PathBuf> {
    if let Some(path) = &p.path {
        return Some(req.config_dir.join(path));
    }
    req.local
        .custom_nodes
        .iter()
        .map(|d| d.join(p.dir_name()))
        .find(|d| d.is_dir())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != ".git" && e.file_name() != "__pycache__")
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// The packs of the image, as the plan shows them, and which of them have their requirements
/// in the lock.
pub fn packs(config: &DeployConfig, found: &[FoundPack], req: &ScaffoldRequest) -> Vec<PackPlan> {
    config
        .custom_nodes
        .iter()
        .map(|p| {
            let name = p.dir_name();
            let dir = local_dir(p, req);
            let source = match (&p.git, &p.git_ref) {
                (Some(url), Some(r)) => format!("git {url} @ {r}"),
                _ => format!(
                    "copied from {}",
                    dir.as_ref()
                        .map_or_else(String::new, |d| d.display().to_string())
                ),
            };
            PackPlan {
                nodes: found
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.nodes.clone())
                    .unwrap_or_default(),
                found: found.iter().any(|f| f.name == name),
                locked: dir.is_some(),
                bytes: p.path.as_ref().and(dir.as_deref()).map(dir_bytes),
                name,
                source,
            }
        })
        .collect()
}

/// `Requires-Dist` of a wheel (those without an `extra` marker): comfy-remote's own dependencies.
pub fn wheel_requires(wheel: &Path) -> Result<Vec<String>> {
    let bad = |message: String| DeployError::Wheel {
        version: crate::scaffold::VERSION.into(),
        message: format!("{}: {message}", wheel.display()),
    };
    let f = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
        .find(|n| n.ends_with(".dist-info/METADATA"))
        .ok_or_else(|| bad("no METADATA".into()))?;
    let mut text = String::new();
    zip.by_name(&name)
        .map_err(|e| bad(e.to_string()))?
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("Requires-Dist:"))
        .map(str::trim)
        .filter(|r| !r.contains("extra =="))
        .map(str::to_owned)
        .collect())
}

/// The `dependencies` of comfy-remote's pyproject.toml, for the images that install it from the
/// registry, a URL or an sdist (a local wheel says its own); a test holds the two equal.
pub const PACKAGE_REQUIRES: &[&str] = &["numpy>=1.25", "uv>=0.9,<1"];

/// What comfy-remote needs in the image: the local wheel's `Requires-Dist`, else
/// [`PACKAGE_REQUIRES`] (the same release's, installed from elsewhere).
pub fn package_requires(local_wheel: Option<&Path>) -> Result<Vec<String>> {
    match local_wheel {
        Some(wheel) => wheel_requires(wheel),
        None => Ok(PACKAGE_REQUIRES.iter().map(|r| (*r).to_owned()).collect()),
    }
}

/// Resolve the image's packages into the lock; `package_requires` are comfy-remote's own.
pub fn lock(
    config: &DeployConfig,
    stack: &TorchStack,
    req: &ScaffoldRequest,
    package_requires: Vec<String>,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<Lock> {
    let mut requirements = vec![lock::comfyui_requirements(
        &config.comfyui.git_ref,
        req.comfyui_dir.as_deref(),
    )?];
    for p in &config.custom_nodes {
        let Some(dir) = local_dir(p, req) else {
            continue;
        };
        let file = dir.join("requirements.txt");
        if let Ok(text) = std::fs::read_to_string(&file) {
            requirements.push(Requirements {
                source: format!("custom node pack {} ({})", p.dir_name(), file.display()),
                lines: lock::requirement_lines(&text),
            });
        }
    }
    if !config.pip.is_empty() {
        requirements.push(Requirements {
            source: "\"pip\" of modal_config.json".into(),
            lines: config.pip.clone(),
        });
    }
    requirements.push(Requirements {
        source: format!("comfy-remote {}", crate::scaffold::VERSION),
        lines: package_requires,
    });
    let inputs = LockInputs {
        requirements,
        stack: stack.clone(),
    };
    lock::resolve(&inputs, &req.cache_dir, runner, sink)
}

/// The plan's lines as `deploy` prints them.
pub fn describe(plan: &Plan, volume: Option<&VolumeConfig>) -> Vec<String> {
    let mut out = Vec::new();
    for p in &plan.packs {
        let provides = if p.nodes.is_empty() {
            String::new()
        } else {
            format!(" (provides {})", p.nodes.join(", "))
        };
        let size = p
            .bytes
            .map(|b| format!(", {}", models::human_bytes(b)))
            .unwrap_or_default();
        let found = if p.found {
            "found in the local ComfyUI; "
        } else {
            ""
        };
        let req = if p.locked {
            ""
        } else {
            "; its requirements install at build time, outside the lock"
        };
        out.push(format!(
            "pack {}: {found}{}{size}{provides}{req}",
            p.name, p.source
        ));
    }
    let vol = volume.map_or_else(|| "the Volume".to_owned(), |v| format!("Volume {}", v.name));
    for m in &plan.models {
        let hash = m
            .sha256
            .as_deref()
            .map(|h| format!(", sha256 {}", &h[..16.min(h.len())]))
            .unwrap_or_default();
        let line = match &m.origin {
            Origin::Local { path } => format!(
                "model {} (node {}): {} ({}{hash}) -> {vol}:{} (uploaded unless it is there with the same size and hash)",
                m.key(),
                m.used_by,
                path.display(),
                models::human_bytes(m.size.unwrap_or(0)),
                m.remote()
            ),
            Origin::Url { url } => format!(
                "model {} (node {}): {url} ({}{hash}) -> {vol}:{}, fetched at the first start unless it is there with the same hash",
                m.key(),
                m.used_by,
                m.size.map_or_else(|| "size unknown".to_owned(), models::human_bytes),
                m.remote()
            ),
            Origin::Volume => format!(
                "model {} (node {}): not found locally; expected on {vol} at {}",
                m.key(),
                m.used_by,
                m.remote()
            ),
        };
        out.push(line);
    }
    let urls = plan
        .models
        .iter()
        .filter(|m| matches!(m.origin, Origin::Url { .. }))
        .count();
    let unknown = plan.fetch_size_unknown;
    let fetched = if urls == 0 {
        String::new()
    } else if unknown == 0 {
        format!(
            "; model fetches at the first start: up to {}",
            models::human_bytes(plan.fetch_bytes)
        )
    } else if unknown == urls {
        format!("; model fetches at the first start: size unknown ({unknown} file(s) without a \"size\" in modal_config.json)")
    } else {
        format!(
            "; model fetches at the first start: up to {} plus {unknown} file(s) of unknown size (no \"size\" in modal_config.json)",
            models::human_bytes(plan.fetch_bytes)
        )
    };
    out.push(format!(
        "image packages: {} locked with hashes; model uploads: up to {}{fetched}",
        plan.locked_packages,
        models::human_bytes(plan.upload_bytes)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(file: &str, origin: Origin, size: Option<u64>) -> ModelPlan {
        ModelPlan {
            folder: "checkpoints".into(),
            file: file.into(),
            used_by: "4:ckpt_name".into(),
            origin,
            size,
            sha256: Some("ab".repeat(32)),
        }
    }

    fn plan_of(models_: Vec<ModelPlan>) -> Plan {
        let (fetch_bytes, fetch_size_unknown) = models::fetch_bytes(&models_);
        Plan {
            packs: Vec::new(),
            upload_bytes: models::upload_bytes(&models_),
            fetch_bytes,
            fetch_size_unknown,
            models: models_,
            locked_packages: 3,
            lock: Lock {
                text: String::new(),
                packages: 3,
                cached: true,
            },
            notes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn url(u: &str) -> Origin {
        Origin::Url { url: u.into() }
    }

    #[test]
    fn the_plan_counts_the_bytes_url_models_move_or_says_their_size_is_unknown() {
        let vol = VolumeConfig {
            name: "m".into(),
            mount: "/models".into(),
            create: true,
        };
        let local = model(
            "a.safetensors",
            Origin::Local {
                path: "/c/a.safetensors".into(),
            },
            Some(2048),
        );
        let sized = model("b.safetensors", url("https://x/b"), Some(3 << 30));
        let unsized_ = model("c.safetensors", url("https://x/c"), None);

        let lines = describe(&plan_of(vec![local.clone(), sized.clone()]), Some(&vol));
        assert!(
            lines[1].starts_with("model checkpoints/b.safetensors (node 4:ckpt_name): https://x/b (3.0 GiB, sha256 abababababababab) -> Volume m:/checkpoints/b.safetensors, fetched at the first start"),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("image packages: 3 locked with hashes; model uploads: up to 2.0 KiB; model fetches at the first start: up to 3.0 GiB")
        );

        let lines = describe(&plan_of(vec![unsized_.clone()]), Some(&vol));
        assert!(
            lines[0].contains("https://x/c (size unknown, sha256 "),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("image packages: 3 locked with hashes; model uploads: up to 0 B; model fetches at the first start: size unknown (1 file(s) without a \"size\" in modal_config.json)")
        );

        let lines = describe(&plan_of(vec![sized, unsized_]), Some(&vol));
        assert!(
            lines
                .last()
                .is_some_and(|l| l.ends_with("model fetches at the first start: up to 3.0 GiB plus 1 file(s) of unknown size (no \"size\" in modal_config.json)")),
            "{lines:?}"
        );

        let lines = describe(&plan_of(vec![local]), Some(&vol));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("image packages: 3 locked with hashes; model uploads: up to 2.0 KiB"),
            "no fetch clause without URL models"
        );
    }
}
