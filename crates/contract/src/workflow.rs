//! The remote workflow: parsing, validation against ComfyUI, the signature,
//! and the per-job prompt with the job's paths set in its Remote Input/Output
//! nodes (under [`JOB_KEY`]).
//!
//! Signature order: Remote Inputs (and, separately, Remote Outputs) sorted by
//! node id (numerically when the id is a number, numbers before other ids),
//! then by name. Clients map positional values by this order.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use comfy_remote_protocol::api::SignatureItem;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::layout;
use crate::nodes::{io_name, INPUT_TYPES, JOB_KEY, REMOTE_INPUT, REMOTE_OUTPUT};

/// Why a workflow cannot be served; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow {name}: {message}")]
pub struct WorkflowError {
    /// The workflow's file name.
    pub name: String,
    pub message: String,
}

/// A validated remote workflow (ComfyUI API format).
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    /// SHA-256 of the canonical JSON (keys sorted, no whitespace).
    pub sha256: String,
    pub prompt: Map<String, Value>,
    pub inputs: Vec<SignatureItem>,
    pub outputs: Vec<SignatureItem>,
}

fn err(name: &str, message: impl Into<String>) -> WorkflowError {
    WorkflowError {
        name: name.to_owned(),
        message: message.into(),
    }
}

fn id_key(id: &str) -> (u8, u64, String) {
    match id.parse::<u64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) => (1, 0, id.to_owned()),
    }
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The constant a Remote Input's `default` link gives it, if it gives one.
fn constant_default(prompt: &Map<String, Value>, link: &Value) -> Option<Value> {
    let [Value::String(source), slot] = link.as_array()?.as_slice() else {
        return None;
    };
    let node = prompt.get(source)?;
    let class = node.get("class_type")?.as_str()?;
    let inputs = node.get("inputs")?.as_object()?;
    crate::graph::constant_value(class, inputs, slot.as_u64()?).cloned()
}

impl Workflow {
    /// Parse and check the structure of an API-format workflow. Needs no ComfyUI.
    pub fn parse(name: &str, text: &str) -> Result<Workflow, WorkflowError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err(name, format!("is not valid JSON ({e})")))?;
        let Value::Object(prompt) = value else {
            return Err(err(
                name,
                "must be a JSON object of node id -> {class_type, inputs} (ComfyUI API format)",
            ));
        };
        if prompt.contains_key("nodes") && prompt.contains_key("links") {
            return Err(err(
                name,
                "is in ComfyUI's UI (editor) format; open it in ComfyUI and use \
                 Workflow > Export (API) to save the API format the worker runs",
            ));
        }
        if prompt.is_empty() {
            return Err(err(name, "has no nodes"));
        }
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (id, node) in &prompt {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(
                        name,
                        format!("node {id} has no string `class_type` (is this the API format?)"),
                    )
                })?;
            let node_inputs = node
                .get("inputs")
                .and_then(Value::as_object)
                .ok_or_else(|| err(name, format!("node {id} ({class}) has no `inputs` object")))?;
            if class != REMOTE_INPUT && class != REMOTE_OUTPUT {
                continue;
            }
            let item_name = match node_inputs.get("name") {
                Some(Value::String(s)) => {
                    io_name(s).map_err(|why| err(name, format!("{class} node {id} {why}")))?
                }
                _ => {
                    return Err(err(
                        name,
                        format!(
                        "{class} node {id} needs a non-empty `name` widget (a literal, not a link)"
                    ),
                    ))
                }
            };
            if class == REMOTE_INPUT {
                let ty = match node_inputs.get("type") {
                    None => "*".to_owned(),
                    Some(Value::String(s)) if INPUT_TYPES.contains(&s.as_str()) => s.clone(),
                    Some(other) => {
                        return Err(err(
                            name,
                            format!(
                            "RemoteInput node {id} ({item_name}) has type {other}; use one of {}",
                            INPUT_TYPES.join(", ")
                        ),
                        ))
                    }
                };
                let default = node_inputs.get("default");
                inputs.push(SignatureItem {
                    name: item_name,
                    comfy_type: ty,
                    optional: matches!(default, Some(Value::Array(_))),
                    node_id: id.clone(),
                    default: default.and_then(|link| constant_default(&prompt, link)),
                });
            } else {
                outputs.push(SignatureItem {
                    name: item_name,
                    comfy_type: "*".to_owned(),
                    optional: false,
                    node_id: id.clone(),
                    default: None,
                });
            }
        }
        if outputs.is_empty() {
            return Err(err(
                name,
                "has no RemoteOutput node; add one (comfy-remote > Remote Output) for each value the job returns",
            ));
        }
        for (kind, items) in [("RemoteInput", &inputs), ("RemoteOutput", &outputs)] {
            let mut seen = HashSet::new();
            for item in items.iter() {
                if !seen.insert(item.name.as_str()) {
                    let ids: Vec<_> = items
                        .iter()
                        .filter(|i| i.name == item.name)
                        .map(|i| i.node_id.as_str())
                        .collect();
                    return Err(err(
                        name,
                        format!(
                            "two {kind} nodes are named {:?} (nodes {}); give each a unique name",
                            item.name,
                            ids.join(", ")
                        ),
                    ));
                }
            }
        }
        let sort = |v: &mut Vec<SignatureItem>| {
            v.sort_by(|a, b| {
                id_key(&a.node_id)
                    .cmp(&id_key(&b.node_id))
                    .then(a.name.cmp(&b.name))
            })
        };
        sort(&mut inputs);
        sort(&mut outputs);
        let canon = serde_json::to_vec(&canonical(&Value::Object(prompt.clone())))
            .map_err(|e| err(name, e.to_string()))?;
        Ok(Workflow {
            name: name.to_owned(),
            sha256: hex::encode(Sha256::digest(&canon)),
            prompt,
            inputs,
            outputs,
        })
    }

    /// Read and parse a workflow file.
    pub fn load(path: &Path) -> Result<Workflow, WorkflowError> {
        let (name, text) = read_named(path)?;
        Workflow::parse(&name, &text)
    }

    /// Check node types and model files against ComfyUI's `/object_info` and fill in the
    /// Remote Outputs' types from the node feeding each one.
    pub fn check_against(&mut self, object_info: &Value) -> Result<(), WorkflowError> {
        let mut missing: Vec<String> = Vec::new();
        for (id, node) in &self.prompt {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if object_info.get(class).is_none() {
                missing.push(format!("{class} (node {id})"));
            }
        }
        if !missing.is_empty() {
            missing.sort();
            let hint = if missing
                .iter()
                .any(|m| m.starts_with(REMOTE_INPUT) || m.starts_with(REMOTE_OUTPUT))
            {
                " The comfy-remote node pack is not loaded in this ComfyUI: install the comfy_remote package into ComfyUI's Python and link the repository into custom_nodes."
            } else {
                " Install the custom nodes that provide them in this ComfyUI."
            };
            return Err(err(
                &self.name,
                format!(
                    "uses node types this ComfyUI does not have: {}.{hint}",
                    missing.join(", ")
                ),
            ));
        }
        let models = crate::models::missing_models(&self.prompt, object_info);
        if !models.is_empty() {
            return Err(err(
                &self.name,
                format!(
                    "names model files this ComfyUI does not have: {}. Put them in ComfyUI's models folders (or a folder of its extra_model_paths.yaml) and start again",
                    models.join(", ")
                ),
            ));
        }
        for out in &mut self.outputs {
            let link = self
                .prompt
                .get(&out.node_id)
                .and_then(|n| n.get("inputs"))
                .and_then(|i| i.get("value"))
                .and_then(Value::as_array);
            let Some([Value::String(src), slot]) = link.map(Vec::as_slice) else {
                continue;
            };
            let Some(slot) = slot.as_u64() else { continue };
            let class = self
                .prompt
                .get(src)
                .and_then(|n| n.get("class_type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ty = object_info
                .get(class)
                .and_then(|c| c.get("output"))
                .and_then(Value::as_array)
                .and_then(|o| o.get(slot as usize))
                .and_then(Value::as_str);
            if let Some(ty) = ty {
                if !ty.contains(',') && !ty.is_empty() {
                    out.comfy_type = ty.to_owned();
                }
            }
        }
        Ok(())
    }

    /// The prompt for one job: every Remote Input reads `<job_dir>/inputs.crc`,
    /// every Remote Output writes into `<job_dir>/outputs/`, each told so by
    /// the [`JOB_KEY`] entry of its `inputs` (replacing any the saved
    /// workflow holds). The paths are
    /// absolute (ComfyUI would resolve relative ones against its own
    /// directory); a relative `job_dir` is taken against the current one.
    pub fn prompt_for_job(&self, job_dir: &Path) -> Value {
        let job_dir = std::path::absolute(job_dir).unwrap_or_else(|_| job_dir.to_path_buf());
        let inputs_path = layout::inputs_file(&job_dir).to_string_lossy().into_owned();
        let job_dir = job_dir.to_string_lossy().into_owned();
        let mut prompt = self.prompt.clone();
        for node in prompt.values_mut() {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let value = match class {
                REMOTE_INPUT => inputs_path.clone(),
                REMOTE_OUTPUT => job_dir.clone(),
                _ => continue,
            };
            if let Some(Value::Object(inputs)) = node.get_mut("inputs") {
                inputs.insert(JOB_KEY.to_owned(), Value::String(value));
            }
        }
        Value::Object(prompt)
    }
}

/// A workflow file's name (as errors name it) and text.
pub(crate) fn read_named(path: &Path) -> Result<(String, String), WorkflowError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            &name,
            format!("cannot be read from {}: {e}", path.display()),
        )
    })?;
    Ok((name, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WF: &str = r#"{
      "10": {"class_type": "RemoteOutput", "inputs": {"name": "result", "value": ["3", 0]}},
      "2": {"class_type": "RemoteInput", "inputs": {"name": "b", "type": "INT"}},
      "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE", "default": ["5", 0]}},
      "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    }"#;

    #[test]
    fn an_optional_input_fed_by_a_constant_publishes_its_default() {
        let wf = Workflow::parse(
            "wf.json",
            r#"{
              "1": {"class_type": "RemoteInput", "inputs": {"name": "sigma", "type": "FLOAT", "default": ["4", 0]}},
              "2": {"class_type": "RemoteInput", "inputs": {"name": "seed", "type": "INT", "default": ["5", 0]}},
              "3": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE", "default": ["6", 0]}},
              "4": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
              "5": {"class_type": "PrimitiveInt", "inputs": {"value": ["7", 0]}},
              "6": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "7": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
              "9": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["1", 0]}}
            }"#,
        )
        .expect("parse");
        let defaults: Vec<_> = wf
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.optional, i.default.clone()))
            .collect();
        // A constant gives its value; a link into a constant, or a file loader, gives none.
        assert_eq!(
            defaults,
            [
                ("sigma", true, Some(serde_json::json!(0.5))),
                ("seed", true, None),
                ("image", true, None),
            ]
        );
        let info = serde_json::to_value(&wf.inputs[1]).expect("json");
        assert!(info.get("default").is_none(), "{info}");
    }

    #[test]
    fn signature_is_ordered_by_numeric_node_id() {
        let wf = Workflow::parse("wf.json", WF).expect("parse");
        let names: Vec<_> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["image", "b"]);
        assert!(wf.inputs[0].optional);
        assert!(!wf.inputs[1].optional);
        assert_eq!(wf.outputs[0].name, "result");
    }

    #[test]
    fn ui_format_is_refused_with_the_export_hint() {
        let e = Workflow::parse("ui.json", r#"{"nodes": [], "links": []}"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("Export (API)"), "{e}");
    }

    #[test]
    fn duplicate_names_and_missing_output_are_refused() {
        let dup = r#"{"1": {"class_type": "RemoteInput", "inputs": {"name": "x"}},
                      "2": {"class_type": "RemoteInput", "inputs": {"name": "x"}},
                      "3": {"class_type": "RemoteOutput", "inputs": {"name": "y", "value": ["1", 0]}}}"#;
        let e = Workflow::parse("d.json", dup).expect_err("must be refused");
        assert!(e.to_string().contains("\"x\""), "{e}");
        let none = r#"{"1": {"class_type": "RemoteInput", "inputs": {"name": "x"}}}"#;
        let e = Workflow::parse("n.json", none).expect_err("must be refused");
        assert!(e.to_string().contains("no RemoteOutput"), "{e}");
    }

    #[test]
    fn unknown_class_types_are_listed_and_output_types_filled() {
        let mut wf = Workflow::parse("wf.json", WF).expect("parse");
        let info = serde_json::json!({"RemoteInput": {}, "RemoteOutput": {}, "ImageInvert": {"output": ["IMAGE"]}});
        wf.check_against(&info).expect("known");
        assert_eq!(wf.outputs[0].comfy_type, "IMAGE");
        let info = serde_json::json!({"ImageInvert": {"output": ["IMAGE"]}});
        let e = wf
            .check_against(&info)
            .expect_err("must be refused")
            .to_string();
        assert!(
            e.contains("RemoteInput (node 1)") && e.contains("node pack"),
            "{e}"
        );
    }

    #[test]
    fn job_prompt_sets_the_job_key_of_remote_nodes_only() {
        let wf = Workflow::parse("wf.json", WF).expect("parse");
        let p = wf.prompt_for_job(Path::new("/spool/j1"));
        assert_eq!(p["1"]["inputs"][JOB_KEY], "/spool/j1/inputs.crc");
        assert_eq!(p["10"]["inputs"][JOB_KEY], "/spool/j1");
        assert!(p["3"]["inputs"].get(JOB_KEY).is_none());
        // Two jobs give the nodes different inputs: ComfyUI's cache keys on them.
        let q = wf.prompt_for_job(Path::new("/spool/j2"));
        assert_ne!(p["1"]["inputs"], q["1"]["inputs"]);
        assert_ne!(p["10"]["inputs"], q["10"]["inputs"]);
        assert_eq!(p["3"]["inputs"], q["3"]["inputs"]);
    }

    #[test]
    fn a_saved_job_key_is_replaced() {
        let saved = r#"{"1": {"class_type": "RemoteInput", "inputs": {"name": "x", "remote_job": "/old"}},
                        "2": {"class_type": "RemoteOutput", "inputs": {"name": "y", "value": ["1", 0], "remote_job": ""}}}"#;
        let wf = Workflow::parse("s.json", saved).expect("parse");
        let p = wf.prompt_for_job(Path::new("/spool/j3"));
        assert_eq!(p["1"]["inputs"][JOB_KEY], "/spool/j3/inputs.crc");
        assert_eq!(p["2"]["inputs"][JOB_KEY], "/spool/j3");
    }
}
