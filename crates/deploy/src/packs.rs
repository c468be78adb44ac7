//! Custom node packs found, not declared: for each node type of the workflow that neither ComfyUI
//! core, comfy-remote nor a declared pack provides, the local ComfyUI's pack that does.
//!
//! `/object_info` names each node's module (`custom_nodes.ComfyUI-Foo`): its directory is the pack.
//! Without node definitions each pack directory is scanned for the node names it registers. A
//! git checkout is pinned by its `origin` URL and `HEAD` commit (the image clones it); a pack
//! without git (or without a remote) is copied into the project with its requirements.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::local::LocalComfy;
use crate::nodes;
use crate::runner::{Runner, Sink};

/// Where a git checkout comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GitPin {
    pub url: String,
    pub commit: String,
}

/// A pack of the local ComfyUI that provides node types the workflow uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundPack {
    /// Its directory name under `custom_nodes/`.
    pub name: String,
    pub dir: PathBuf,
    /// The workflow's node types it provides.
    pub nodes: Vec<String>,
    /// Set when it is a git checkout with a remote: the image clones that commit.
    pub git: Option<GitPin>,
    /// What the user must know (`warning: ...`): uncommitted changes, an unpushed commit.
    pub warnings: Vec<String>,
}

/// The directory name a module of `/object_info` (`custom_nodes.ComfyUI-Foo.nodes`) lives in.
fn module_dir(module: &str) -> Option<&str> {
    let rest = module.strip_prefix("custom_nodes.")?;
    Some(rest.split('.').next().unwrap_or(rest)).filter(|d| !d.is_empty())
}

/// The packs (directories) under the local `custom_nodes/` directories, by name.
fn pack_dirs(local: &LocalComfy) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for base in &local.custom_nodes {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let name = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            out.entry(name).or_insert(d);
        }
    }
    out
}

/// Whether `dir` holds comfy-remote itself (its nodes are always in the image).
fn is_comfy_remote(dir: &Path) -> bool {
    let init = std::fs::read_to_string(dir.join("__init__.py")).unwrap_or_default();
    init.contains("comfy_remote")
}

/// Find the packs providing `missing` node types. Returns the packs and the types still missing.
pub fn find(
    missing: &[String],
    local: &LocalComfy,
    runner: &Runner,
    sink: Sink<'_>,
) -> (Vec<FoundPack>, Vec<String>) {
    let dirs = pack_dirs(local);
    let mut by_pack: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut still = Vec::new();
    let mut scanned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ty in missing {
        let from_info = local
            .object_info
            .as_ref()
            .and_then(|i| i.get(ty))
            .and_then(|d| d.get("python_module"))
            .and_then(Value::as_str)
            .and_then(module_dir)
            .filter(|d| dirs.contains_key(*d))
            .map(str::to_owned);
        let found = from_info.or_else(|| {
            dirs.iter()
                .filter(|(_, d)| !is_comfy_remote(d))
                .find(|(name, d)| {
                    scanned
                        .entry((*name).clone())
                        .or_insert_with(|| nodes::scan_pack(d).unwrap_or_default())
                        .contains(ty)
                })
                .map(|(name, _)| name.clone())
        });
        match found {
            Some(pack) => by_pack.entry(pack).or_default().push(ty.clone()),
            None => still.push(ty.clone()),
        }
    }
    let mut packs = Vec::new();
    for (name, types) in by_pack {
        let Some(dir) = dirs.get(&name).cloned() else {
            continue;
        };
        let (git, warnings) = git_pin(&name, &dir, runner, sink);
        packs.push(FoundPack {
            name,
            dir,
            nodes: types,
            git,
            warnings,
        });
    }
    (packs, still)
}

/// The checkout's remote URL and commit, with warnings about what the image would miss.
fn git_pin(
    name: &str,
    dir: &Path,
    runner: &Runner,
    sink: Sink<'_>,
) -> (Option<GitPin>, Vec<String>) {
    if !dir.join(".git").exists() {
        return (None, Vec::new());
    }
    let dir_s = dir.to_string_lossy().into_owned();
    let mut git = |args: &[&str]| -> Option<String> {
        let mut all = vec!["-C", dir_s.as_str()];
        all.extend_from_slice(args);
        let out = runner.run(&runner.cmd(&runner.git, &all), sink).ok()?;
        Some(out.stdout.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| c.len() >= 7) else {
        return (None, Vec::new());
    };
    let Some(url) = git(&["remote", "get-url", "origin"]).filter(|u| !u.is_empty()) else {
        return (
            None,
            vec![format!(
                "warning: custom node pack {name} is a git checkout without an `origin` remote: it is copied into the project instead of cloned"
            )],
        );
    };
    let mut warnings = Vec::new();
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
        warnings.push(format!(
            "warning: custom node pack {name} has uncommitted changes; the image clones commit {} of {url} without them (commit and push them)",
            &commit[..12.min(commit.len())]
        ));
    }
    if git(&["branch", "-r", "--contains", "HEAD"]).is_some_and(|s| s.is_empty()) {
        warnings.push(format!(
            "warning: custom node pack {name}: commit {} is on no branch of {url} that this checkout knows of; push it, or the image build cannot fetch it",
            &commit[..12.min(commit.len())]
        ));
    }
    (Some(GitPin { url, commit }), warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_name_their_pack_directory() {
        assert_eq!(module_dir("custom_nodes.ComfyUI-Foo"), Some("ComfyUI-Foo"));
        assert_eq!(module_dir("custom_nodes.pack.nodes.sub"), Some("pack"));
        assert_eq!(module_dir("comfy_extras.nodes_mask"), None);
        assert_eq!(module_dir("nodes"), None);
    }

    #[test]
    fn a_pack_without_definitions_is_found_by_scanning() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pack = tmp.path().join("custom_nodes").join("my-pack");
        std::fs::create_dir_all(&pack).expect("mkdir");
        std::fs::write(
            pack.join("__init__.py"),
            "NODE_CLASS_MAPPINGS = {\"Fancy\": object}\n",
        )
        .expect("write");
        let local = LocalComfy::from_base(tmp.path());
        let runner = Runner::from_env();
        let (packs, still) = find(
            &["Fancy".into(), "Nope".into()],
            &local,
            &runner,
            &mut |_| {},
        );
        assert_eq!(still, ["Nope"]);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].name, "my-pack");
        assert_eq!(packs[0].nodes, ["Fancy"]);
        assert_eq!(packs[0].git, None);
    }
}
