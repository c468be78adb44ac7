//! A Comfy API v2 graph against the served workflow (docs/protocol.md
//! §5.1): a v2 client submits the whole graph, and a server that runs one
//! workflow takes from it only the values of that workflow's inputs.
//!
//! A graph may differ from the served workflow only where an input's value
//! is set: a Remote Input's `default` given as a literal or an asset, or
//! the value widget of the node that feeds a Remote Input's `default` and
//! nothing else (a `Primitive*` node's `value`, `LoadImage`'s `image`,
//! `LoadAudio`'s `audio`): what ComfyUI's "Export (API)" of the workflow
//! holds and `wf.set_input(node, field, value)` changes. `remote_job`
//! (set by the server) and node titles are ignored. Any other difference
//! is refused with `invalid_workflow`, naming the node and the field.

use std::collections::{BTreeMap, HashMap};

use comfy_remote_protocol::v2::submit::{self, asset_ref, AssetFile, AssetRef, Given};
use comfy_remote_protocol::v2::{Code, Refusal};
use comfy_remote_protocol::{Entry, Limits};
use serde_json::{Map, Value};

use crate::nodes::{JOB_KEY, REMOTE_INPUT, REMOTE_OUTPUT};
use crate::workflow::Workflow;

/// Node types whose one widget is the value they output, and which output
/// slot carries it: set in a graph, it is the input their output feeds.
pub const VALUE_SOURCES: &[(&str, &str, u64)] = &[
    ("PrimitiveInt", "value", 0),
    ("PrimitiveFloat", "value", 0),
    ("PrimitiveString", "value", 0),
    ("PrimitiveStringMultiline", "value", 0),
    ("PrimitiveBoolean", "value", 0),
    ("LoadImage", "image", 0),
    ("LoadAudio", "audio", 0),
];

/// The value a node of `class` outputs on `slot` when it is one of the
/// constant [`VALUE_SOURCES`] (a Primitive node, not a file loader) with a
/// literal value: what a Remote Input linked to it defaults to.
pub fn constant_value<'a>(
    class: &str,
    inputs: &'a Map<String, Value>,
    slot: u64,
) -> Option<&'a Value> {
    let (_, field, out) = VALUE_SOURCES
        .iter()
        .find(|(c, _, _)| *c == class && c.starts_with("Primitive"))?;
    let value = inputs.get(*field)?;
    (*out == slot && !value.is_array() && !value.is_object() && !value.is_null()).then_some(value)
}

/// The field the server sets in Remote Input/Output nodes.
const SERVER_FIELD: &str = JOB_KEY;

/// Where a graph sets one of the workflow's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputField {
    /// The input (the Remote Input's name).
    pub input: String,
    pub node_id: String,
    pub field: String,
}

/// A value a graph gives one of the workflow's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphInput {
    pub input: String,
    /// The type the Remote Input declares.
    pub declared: String,
    pub node_id: String,
    pub field: String,
    /// A literal, or a `core/ASSET` reference.
    pub value: Value,
}

impl GraphInput {
    /// `node 3 (PrimitiveInt) field "value"`, for messages.
    pub fn place(&self, graph: &Map<String, Value>) -> String {
        place(graph, &self.node_id, &self.field)
    }
}

fn class_of<'a>(prompt: &'a Map<String, Value>, id: &str) -> &'a str {
    prompt
        .get(id)
        .and_then(|n| n.get("class_type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn place(prompt: &Map<String, Value>, id: &str, field: &str) -> String {
    format!("node {id} ({}) field {field:?}", class_of(prompt, id))
}

fn inputs_of<'a>(prompt: &'a Map<String, Value>, id: &str) -> Option<&'a Map<String, Value>> {
    prompt.get(id)?.get("inputs")?.as_object()
}

fn link(v: &Value) -> Option<(&str, u64)> {
    match v.as_array()?.as_slice() {
        [Value::String(src), slot] => Some((src.as_str(), slot.as_u64()?)),
        _ => None,
    }
}

/// Where a graph sets each input of `wf`: the Remote Input's `default`,
/// and the value widget of a node feeding only that `default`.
pub fn input_fields(wf: &Workflow) -> Vec<InputField> {
    let prompt = &wf.prompt;
    // How many inputs of the prompt link to each node.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for node in prompt.values() {
        if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
            for v in inputs.values() {
                if let Some((src, _)) = link(v) {
                    *uses.entry(src).or_default() += 1;
                }
            }
        }
    }
    let mut fields = Vec::new();
    for item in &wf.inputs {
        fields.push(InputField {
            input: item.name.clone(),
            node_id: item.node_id.clone(),
            field: "default".into(),
        });
        let Some((src, slot)) = inputs_of(prompt, &item.node_id)
            .and_then(|i| i.get("default"))
            .and_then(link)
        else {
            continue;
        };
        let class = class_of(prompt, src);
        if let Some((_, field, _)) = VALUE_SOURCES
            .iter()
            .find(|(c, _, s)| *c == class && *s == slot)
        {
            if uses.get(src) == Some(&1) {
                fields.push(InputField {
                    input: item.name.clone(),
                    node_id: src.to_owned(),
                    field: (*field).to_owned(),
                });
            }
        }
    }
    fields
}

/// The values `graph` gives `wf`'s inputs, or why it is not `wf` with
/// other input values (`invalid_workflow`, naming each difference).
pub fn graph_inputs(wf: &Workflow, graph: &Map<String, Value>) -> Result<Vec<GraphInput>, Refusal> {
    let served = &wf.prompt;
    let fields = input_fields(wf);
    let by_place: HashMap<(&str, &str), &InputField> = fields
        .iter()
        .map(|f| ((f.node_id.as_str(), f.field.as_str()), f))
        .collect();
    let declared: HashMap<&str, &str> = wf
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.comfy_type.as_str()))
        .collect();
    let mut differences: Vec<String> = Vec::new();
    for id in graph.keys() {
        if !served.contains_key(id) {
            differences.push(format!("node {id} ({}) is not in it", class_of(graph, id)));
        }
    }
    for id in served.keys() {
        if !graph.contains_key(id) {
            differences.push(format!("node {id} ({}) is missing", class_of(served, id)));
        }
    }
    let mut given: BTreeMap<String, GraphInput> = BTreeMap::new();
    for (id, s_node) in served {
        let Some(g_node) = graph.get(id) else {
            continue;
        };
        let (s_class, g_class) = (class_of(served, id), class_of(graph, id));
        if s_class != g_class {
            differences.push(format!("node {id} is {g_class:?}, not {s_class:?}"));
            continue;
        }
        let empty = Map::new();
        let s_inputs = s_node
            .get("inputs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let Some(g_inputs) = g_node.get("inputs").and_then(Value::as_object) else {
            differences.push(format!("node {id} ({g_class}) has no `inputs` object"));
            continue;
        };
        let io_node = s_class == REMOTE_INPUT || s_class == REMOTE_OUTPUT;
        let mut names: Vec<&String> = s_inputs.keys().chain(g_inputs.keys()).collect();
        names.sort();
        names.dedup();
        for field in names {
            if io_node && field == SERVER_FIELD {
                continue;
            }
            let (s, g) = (s_inputs.get(field), g_inputs.get(field));
            if s == g {
                continue;
            }
            let Some(f) = by_place.get(&(id.as_str(), field.as_str())) else {
                differences.push(format!("{} differs", place(served, id, field)));
                continue;
            };
            let Some(g) = g else {
                // A Remote Input's default left out: the input is not set.
                if field == "default" {
                    continue;
                }
                differences.push(format!("{} is missing", place(served, id, field)));
                continue;
            };
            if link(g).is_some() {
                differences.push(format!(
                    "{} links elsewhere; give it a value (a literal or an asset)",
                    place(served, id, field)
                ));
                continue;
            }
            if field != "default"
                && class_of(served, id).starts_with("Load")
                && asset_ref(g).is_none()
            {
                differences.push(format!(
                    "{} names a file on this server; give an asset instead (upload it with POST /api/v2/assets, comfy-sdk: c.assets.from_file)",
                    place(served, id, field)
                ));
                continue;
            }
            if let Some(prev) = given.get(&f.input) {
                differences.push(format!(
                    "input {:?} is set twice ({} and {})",
                    f.input,
                    prev.place(served),
                    place(served, id, field)
                ));
                continue;
            }
            given.insert(
                f.input.clone(),
                GraphInput {
                    input: f.input.clone(),
                    declared: declared
                        .get(f.input.as_str())
                        .copied()
                        .unwrap_or("*")
                        .to_owned(),
                    node_id: id.clone(),
                    field: field.clone(),
                    value: g.clone(),
                },
            );
        }
    }
    if differences.is_empty() {
        // In the workflow's signature order.
        let mut out = Vec::with_capacity(given.len());
        for item in &wf.inputs {
            if let Some(g) = given.remove(&item.name) {
                out.push(g);
            }
        }
        return Ok(out);
    }
    let settable: Vec<String> = fields
        .iter()
        .map(|f| format!("{} ({})", f.input, place(served, &f.node_id, &f.field)))
        .collect();
    // What differs comes first: clients show a bounded head of the message
    // (comfy-sdk keeps 256 characters).
    let shown: Vec<&String> = differences.iter().take(5).collect();
    let more = differences.len().saturating_sub(shown.len());
    Err(Refusal::new(
        Code::InvalidWorkflow,
        format!(
            "the graph differs from the workflow this server runs ({}): {}{}. A job may change only its inputs: {}. \
             Submit the workflow the server serves (GET /v1/info), or start the server with --allow-any-workflow to run any graph",
            wf.name,
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
            if more > 0 { format!(" (and {more} more)") } else { String::new() },
            if settable.is_empty() { "none".to_owned() } else { settable.join(", ") },
        ),
    )
    .with_details(serde_json::json!({
        "workflow": wf.name,
        "differences": differences,
        "inputs": fields.iter().map(|f| serde_json::json!({"input": f.input, "node_id": f.node_id, "field": f.field})).collect::<Vec<_>>(),
    })))
}

/// The job inputs `inputs` are: literals by their declared type, assets
/// (looked up with `file`) by their format. Unknown assets are refused
/// together with `missing_asset`.
pub fn entries<'f>(
    inputs: &[GraphInput],
    served: &Map<String, Value>,
    mut file: impl FnMut(&AssetRef) -> Option<AssetFile<'f>>,
    limits: &Limits,
) -> Result<Vec<Entry<'static>>, Refusal> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut missing = Vec::new();
    for i in inputs {
        let place = i.place(served);
        let given = match asset_ref(&i.value) {
            Some(Ok(r)) => match file(&r) {
                Some(f) => Given::File(f),
                None => {
                    missing.push(r.label());
                    continue;
                }
            },
            Some(Err(why)) => {
                return Err(Refusal::new(Code::MissingAsset, format!("{place}: {why}")))
            }
            None => Given::Literal(&i.value),
        };
        out.push(submit::input_entry(
            &i.input,
            &i.declared,
            given,
            &place,
            limits,
        )?);
    }
    if !missing.is_empty() {
        return Err(submit::missing_assets(&missing));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WF: &str = r#"{
      "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE", "default": ["11", 0]}},
      "2": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["3", 0]}},
      "3": {"class_type": "PrimitiveInt", "inputs": {"value": 2}},
      "4": {"class_type": "RemoteInput", "inputs": {"name": "scale", "type": "FLOAT", "default": ["5", 0]}},
      "5": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
      "6": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": ["5", 0], "sigma": 1.0}},
      "10": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["6", 0]}},
      "11": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    }"#;

    fn wf() -> Workflow {
        Workflow::parse("wf.json", WF).expect("wf")
    }

    fn graph() -> Map<String, Value> {
        serde_json::from_str(WF).expect("graph")
    }

    fn set(g: &mut Map<String, Value>, node: &str, field: &str, v: Value) {
        g[node]["inputs"][field] = v;
    }

    #[test]
    fn where_inputs_are_set_follows_the_graph() {
        let f: Vec<(String, String, String)> = input_fields(&wf())
            .into_iter()
            .map(|f| (f.input, f.node_id, f.field))
            .collect();
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        // PrimitiveFloat 5 also feeds the blur: setting it is no input.
        assert_eq!(
            f,
            [
                s("image", "1", "default"),
                s("image", "11", "image"),
                s("steps", "2", "default"),
                s("steps", "3", "value"),
                s("scale", "4", "default"),
            ]
        );
    }

    #[test]
    fn the_served_graph_itself_sets_nothing() {
        let mut g = graph();
        // What the server sets, and titles, do not count.
        set(&mut g, "1", "remote_job", json!(""));
        g["6"]["_meta"] = json!({"title": "Blur"});
        assert_eq!(graph_inputs(&wf(), &g).expect("same"), vec![]);
    }

    #[test]
    fn changed_inputs_are_taken_in_signature_order() {
        let mut g = graph();
        set(&mut g, "3", "value", json!(7));
        let asset = json!({"__type": "core/ASSET", "info": {"id": "a-1"}});
        set(&mut g, "11", "image", asset.clone());
        set(&mut g, "4", "default", json!(0.25));
        let got = graph_inputs(&wf(), &g).expect("inputs");
        let names: Vec<_> = got
            .iter()
            .map(|i| (i.input.as_str(), i.declared.as_str(), i.value.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("image", "IMAGE", asset),
                ("steps", "INT", json!(7)),
                ("scale", "FLOAT", json!(0.25))
            ]
        );
    }

    #[test]
    fn other_differences_are_refused_naming_each() {
        let mut g = graph();
        set(&mut g, "6", "sigma", json!(2.0));
        set(&mut g, "5", "value", json!(0.9));
        g.insert(
            "99".into(),
            json!({"class_type": "SaveImage", "inputs": {}}),
        );
        let r = graph_inputs(&wf(), &g).expect_err("refused");
        assert_eq!(r.code, Code::InvalidWorkflow);
        assert!(
            r.message
                .contains("node 6 (ImageBlur) field \"sigma\" differs"),
            "{}",
            r.message
        );
        assert!(
            r.message
                .contains("node 5 (PrimitiveFloat) field \"value\" differs"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("node 99 (SaveImage) is not in it"),
            "{}",
            r.message
        );
        assert!(r.message.contains("--allow-any-workflow"), "{}", r.message);
        // The first difference within the head a client shows.
        let head: String = r.message.chars().take(256).collect();
        let first = r.details["differences"][0].as_str().unwrap_or("none");
        assert!(head.contains(first), "{}", r.message);
        assert_eq!(r.details["differences"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn entries_take_literals_by_type_and_refuse_unknown_assets() {
        let mut g = graph();
        set(&mut g, "3", "value", json!(7));
        set(
            &mut g,
            "11",
            "image",
            json!({"__type": "core/ASSET", "info": {"id": "nope"}}),
        );
        let got = graph_inputs(&wf(), &g).expect("inputs");
        let r = entries(&got, &wf().prompt, |_| None, &Limits::default()).expect_err("missing");
        assert_eq!(
            (r.code, r.details["missing_ids"][0].as_str()),
            (Code::MissingAsset, Some("nope"))
        );
        let e = entries(&got[1..], &wf().prompt, |_| None, &Limits::default()).expect("steps");
        assert_eq!(
            (e[0].name.as_str(), &e[0].value),
            ("steps", &comfy_remote_protocol::Value::Int(7))
        );
    }

    #[test]
    fn files_links_and_double_sets_are_refused() {
        let mut g = graph();
        set(&mut g, "11", "image", json!("other.png"));
        let r = graph_inputs(&wf(), &g).expect_err("a file name");
        assert!(r.message.contains("give an asset instead"), "{}", r.message);
        let mut g = graph();
        set(&mut g, "2", "default", json!(["5", 0]));
        assert!(graph_inputs(&wf(), &g)
            .expect_err("link")
            .message
            .contains("links elsewhere"));
        let mut g = graph();
        set(&mut g, "2", "default", json!(4));
        set(&mut g, "3", "value", json!(5));
        assert!(graph_inputs(&wf(), &g)
            .expect_err("twice")
            .message
            .contains("is set twice"));
    }
}
