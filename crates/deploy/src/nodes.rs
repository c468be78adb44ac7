//! Which node types a deployment will have: ComfyUI core (read from a checkout, or the embedded 0.33.0 list), ours, and the custom node packs it brings.
//!
//! Core names are read with a plain text scan (the keys of
//! `NODE_CLASS_MAPPINGS` and V3 `node_id="..."` strings) so the check needs
//! neither ComfyUI's Python environment nor the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{DeployError, Result};

const EMBEDDED_CORE: &str = include_str!("../data/comfyui-core-nodes.txt");

/// The node types of this package, always present in the image.
pub const OUR_NODES: &[&str] = comfy_remote_contract::nodes::NODE_TYPES;

/// Where a set of core node names came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSource {
    Checkout(PathBuf),
    Embedded,
}

/// The embedded list (upstream ComfyUI 0.33.0).
pub fn embedded_core_nodes() -> BTreeSet<String> {
    EMBEDDED_CORE
        .lines()
        // Not trimmed: ComfyUI has a node type named "ConditioningAverage " (trailing space).
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Core node names of a ComfyUI checkout: nodes.py, comfy_extras/, comfy_api_nodes/.
/// (Its custom_nodes/ is left out on purpose: what is installed locally is not in the image.)
pub fn scan_comfyui(dir: &Path) -> Result<BTreeSet<String>> {
    let nodes_py = dir.join("nodes.py");
    if !nodes_py.is_file() {
        let what = if dir.is_dir() {
            "has no nodes.py"
        } else {
            "is not a directory"
        };
        return Err(DeployError::Flag {
            message: format!(
                "--comfyui {}: {what}; --comfyui (or COMFYUI_DIR) must point at a ComfyUI checkout",
                dir.display()
            ),
        });
    }
    let mut files = vec![nodes_py];
    for sub in ["comfy_extras", "comfy_api_nodes"] {
        collect_py(&dir.join(sub), &mut files)?;
    }
    let mut names = BTreeSet::new();
    for f in files {
        let text = read(&f)?;
        scan_source(&text, &mut names);
    }
    Ok(names)
}

/// Node names a custom node pack directory defines.
pub fn scan_pack(dir: &Path) -> Result<BTreeSet<String>> {
    let mut files = Vec::new();
    collect_py(dir, &mut files)?;
    let mut names = BTreeSet::new();
    for f in files {
        scan_source(&read(&f)?, &mut names);
    }
    Ok(names)
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn collect_py(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| DeployError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_dir() {
            if !name.starts_with('.') && name != "__pycache__" && name != "tests" {
                collect_py(&p, out)?;
            }
        } else if name.ends_with(".py") {
            out.push(p);
        }
    }
    Ok(())
}

/// Add the node names one Python source defines.
pub fn scan_source(text: &str, names: &mut BTreeSet<String>) {
    // V3: node_id="Name"
    let mut rest = text;
    while let Some(i) = rest.find("node_id") {
        rest = &rest[i + "node_id".len()..];
        let t = rest.trim_start();
        if let Some(t) = t.strip_prefix('=') {
            if let Some(s) = quoted(t.trim_start()) {
                names.insert(s.to_string());
            }
        }
    }
    // V1: NODE_CLASS_MAPPINGS = { "Name": Class, ... } and .update({...})
    let mut rest = text;
    while let Some(i) = rest.find("NODE_CLASS_MAPPINGS") {
        rest = &rest[i + "NODE_CLASS_MAPPINGS".len()..];
        let t = rest.trim_start();
        let t = if let Some(t) = t.strip_prefix(".update(") {
            t
        } else if let Some(t) = t.strip_prefix('=') {
            t
        } else if let Some(t) = t.strip_prefix('[') {
            // NODE_CLASS_MAPPINGS["Name"] = Class
            if let Some(s) = quoted(t.trim_start()) {
                names.insert(s.to_string());
            }
            continue;
        } else {
            continue;
        };
        let Some(body) = t.trim_start().strip_prefix('{') else {
            continue;
        };
        let mut depth = 1usize;
        let mut end = body.len();
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        for line in body[..end].lines() {
            let l = line.trim_start();
            if let Some(key) = quoted(l) {
                let after = &l[key.len() + 2..];
                if after.trim_start().starts_with(':') {
                    names.insert(key.to_string());
                }
            }
        }
    }
}

/// The content of a string literal at the start of `s` ('...' or "...").
fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = &s[1..];
    let end = body.find(q)?;
    let v = &body[..end];
    (!v.is_empty() && !v.contains('\n')).then_some(v)
}

/// Where each node type of a workflow will come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeResolution {
    /// type -> "core" | "comfy-remote" | "custom_nodes/<pack>"
    pub resolved: BTreeMap<String, String>,
    pub missing: Vec<String>,
}

/// Resolve `types` against core, ours and the packs (`pack name -> node names`).
pub fn resolve(
    types: impl IntoIterator<Item = String>,
    core: &BTreeSet<String>,
    packs: &BTreeMap<String, BTreeSet<String>>,
) -> NodeResolution {
    let mut resolved = BTreeMap::new();
    let mut missing = Vec::new();
    for t in types {
        let from = if OUR_NODES.contains(&t.as_str()) {
            Some("comfy-remote".to_string())
        } else if core.contains(&t) {
            Some("core".to_string())
        } else {
            packs
                .iter()
                .find(|(_, names)| names.contains(&t))
                .map(|(p, _)| format!("custom_nodes/{p}"))
        };
        match from {
            Some(f) => {
                resolved.insert(t, f);
            }
            None => missing.push(t),
        }
    }
    NodeResolution { resolved, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_v1_mappings_and_v3_ids() {
        let src = r#"
class A: pass
NODE_CLASS_MAPPINGS = {
    "Alpha": A,
    'Beta': B,  # comment
}
NODE_CLASS_MAPPINGS.update({"Gamma": C})
NODE_CLASS_MAPPINGS["Delta"] = D
NODE_DISPLAY_NAME_MAPPINGS = {"Alpha": "Alpha node"}
class E(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="Epsilon", category="x")
"#;
        let mut names = BTreeSet::new();
        scan_source(src, &mut names);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["Alpha", "Beta", "Delta", "Epsilon", "Gamma"]
        );
    }

    #[test]
    fn embedded_list_has_the_weight_free_test_nodes() {
        let core = embedded_core_nodes();
        for n in [
            "EmptyImage",
            "ImageInvert",
            "KSampler",
            "SaveImage",
            "StringConcatenate",
            "PreviewAny",
        ] {
            assert!(core.contains(n), "{n}");
        }
    }

    /// With COMFYUI_DIR set, the scanner reproduces the embedded list (or rewrites it with UPDATE_CORE_NODES=1).
    #[test]
    fn core_node_list_matches_a_checkout() {
        let Some(dir) = std::env::var_os(comfy_remote_protocol::env::COMFYUI_DIR) else {
            eprintln!("SKIPPED core_node_list_matches_a_checkout: set COMFYUI_DIR");
            return;
        };
        let scanned = scan_comfyui(Path::new(&dir)).expect("scan");
        if std::env::var_os(comfy_remote_protocol::env::UPDATE_CORE_NODES).is_some() {
            let mut text = EMBEDDED_CORE
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            for n in &scanned {
                text.push_str(n);
                text.push('\n');
            }
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/comfyui-core-nodes.txt");
            std::fs::write(out, text).expect("write list");
            return;
        }
        let embedded = embedded_core_nodes();
        let only_scanned: Vec<_> = scanned.difference(&embedded).collect();
        let only_embedded: Vec<_> = embedded.difference(&scanned).collect();
        assert!(
            only_scanned.is_empty() && only_embedded.is_empty(),
            "checkout only: {only_scanned:?}; embedded only: {only_embedded:?}"
        );
    }

    #[test]
    fn resolution_names_the_source_and_the_missing() {
        let core: BTreeSet<String> = ["EmptyImage".to_string()].into();
        let packs =
            BTreeMap::from([("my-pack".to_string(), BTreeSet::from(["Fancy".to_string()]))]);
        let r = resolve(
            ["EmptyImage", "RemoteInput", "Fancy", "Nope"].map(String::from),
            &core,
            &packs,
        );
        assert_eq!(r.resolved["Fancy"], "custom_nodes/my-pack");
        assert_eq!(r.resolved["RemoteInput"], "comfy-remote");
        assert_eq!(r.missing, ["Nope"]);
    }
}
