//! The UI workflow as saved: the root graph, the subgraph definitions, their nodes and links.
//!
//! Node and link ids are kept as the strings the API format uses (`5`, not `5.0`). Links come in
//! two shapes: the root graph's `[id, origin, slot, target, slot, type]` arrays and the objects
//! of subgraph definitions (and of schema version 1 files).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::defs::{NodeDefs, MARKDOWN_NOTE, NOTE, PRIMITIVE_NODE, REROUTE};
use super::UiError;

/// The id of a subgraph's input node: a link from it enters the subgraph.
pub const SUBGRAPH_INPUT_ID: &str = "-10";

/// Node modes (`LGraphEventMode`) that change what reaches the prompt.
pub const MODE_NEVER: i64 = 2;
pub const MODE_BYPASS: i64 = 4;

/// One input slot as saved.
#[derive(Debug, Clone)]
pub struct SlotIn {
    pub name: String,
    /// The slot type; a list of types is joined with commas, as the frontend compares them.
    pub ty: String,
    pub link: Option<String>,
    /// The widget this input was converted from.
    pub widget: Option<String>,
}

/// One output slot as saved.
#[derive(Debug, Clone)]
pub struct SlotOut {
    pub ty: String,
    pub links: Vec<String>,
}

/// One node as saved.
#[derive(Debug, Clone)]
pub struct UiNode {
    pub id: String,
    pub ty: String,
    pub mode: i64,
    pub title: Option<String>,
    pub inputs: Vec<SlotIn>,
    pub outputs: Vec<SlotOut>,
    pub widgets_values: WidgetsValues,
    pub properties: Map<String, Value>,
}

/// `widgets_values` as saved: a list in widget order (the usual form), or an object by name.
#[derive(Debug, Clone, Default)]
pub enum WidgetsValues {
    #[default]
    None,
    List(Vec<Value>),
    Named(Map<String, Value>),
}

/// One link.
#[derive(Debug, Clone)]
pub struct Link {
    pub origin_id: String,
    pub origin_slot: usize,
    pub target_id: String,
}

/// A graph: the root workflow or one subgraph definition.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: Vec<UiNode>,
    pub by_id: HashMap<String, usize>,
    pub links: HashMap<String, Link>,
}

/// A subgraph's input or output slot: its name, type and the links inside the subgraph.
#[derive(Debug, Clone)]
pub struct SubgraphSlot {
    pub name: String,
    pub ty: String,
    pub link_ids: Vec<String>,
}

/// A subgraph definition (`definitions.subgraphs[]`).
#[derive(Debug, Clone)]
pub struct Subgraph {
    pub name: String,
    pub graph: Graph,
    pub inputs: Vec<SubgraphSlot>,
    pub outputs: Vec<SubgraphSlot>,
}

/// The whole UI workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub root: Graph,
    /// Subgraph definitions by id (a node whose type is such an id is an instance of it).
    pub subgraphs: BTreeMap<String, Subgraph>,
}

fn invalid(message: impl Into<String>) -> UiError {
    UiError::Invalid(message.into())
}

/// An id as the API format spells it: `5`, `"5"` and `5.0` are all `5`.
pub fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => (f as i64).to_string(),
            _ => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn slot_index(v: Option<&Value>) -> usize {
    v.and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().map(|f| f as u64))
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
    .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A slot type as the frontend compares it: strings as they are, lists joined with commas.
pub fn type_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn parse_link(v: &Value) -> Option<(String, Link)> {
    match v {
        Value::Array(a) => Some((
            id_string(a.first()?)?,
            Link {
                origin_id: id_string(a.get(1)?)?,
                origin_slot: slot_index(a.get(2)),
                target_id: id_string(a.get(3)?)?,
            },
        )),
        Value::Object(o) => Some((
            id_string(o.get("id")?)?,
            Link {
                origin_id: id_string(o.get("origin_id")?)?,
                origin_slot: slot_index(o.get("origin_slot")),
                target_id: id_string(o.get("target_id")?)?,
            },
        )),
        _ => None,
    }
}

fn parse_node(v: &Value, where_: &str) -> Result<UiNode, UiError> {
    let o = v
        .as_object()
        .ok_or_else(|| invalid(format!("{where_}: a node is not an object")))?;
    let id = o
        .get("id")
        .and_then(id_string)
        .ok_or_else(|| invalid(format!("{where_}: a node has no id")))?;
    let ty = o
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{where_}: node {id} has no string `type`")))?
        .to_owned();
    let inputs = o
        .get("inputs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(|i| SlotIn {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    ty: type_string(i.get("type")),
                    link: i.get("link").and_then(id_string),
                    widget: i
                        .get("widget")
                        .and_then(|w| w.get("name"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default();
    let outputs = o
        .get("outputs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(|out| SlotOut {
                    ty: type_string(out.get("type")),
                    links: out
                        .get("links")
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(id_string).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let widgets_values = match o.get("widgets_values") {
        Some(Value::Array(a)) => WidgetsValues::List(a.clone()),
        Some(Value::Object(m)) => WidgetsValues::Named(m.clone()),
        _ => WidgetsValues::None,
    };
    Ok(UiNode {
        id,
        ty,
        mode: o.get("mode").and_then(Value::as_i64).unwrap_or(0),
        title: o
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        inputs,
        outputs,
        widgets_values,
        properties: o
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

fn parse_graph(nodes: &Value, links: Option<&Value>, where_: &str) -> Result<Graph, UiError> {
    let list = nodes
        .as_array()
        .ok_or_else(|| invalid(format!("{where_}: `nodes` is not a list")))?;
    let mut graph = Graph::default();
    for n in list {
        let node = parse_node(n, where_)?;
        graph.by_id.insert(node.id.clone(), graph.nodes.len());
        graph.nodes.push(node);
    }
    if let Some(Value::Array(links)) = links {
        for l in links {
            if let Some((id, link)) = parse_link(l) {
                graph.links.insert(id, link);
            }
        }
    }
    Ok(graph)
}

fn parse_slots(v: Option<&Value>) -> Vec<SubgraphSlot> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_object)
                .map(|s| SubgraphSlot {
                    name: s
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    ty: type_string(s.get("type")),
                    link_ids: s
                        .get("linkIds")
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(id_string).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The frontend's `deduplicateSubgraphNodeIds`: a node of a subgraph definition whose id another
/// node already has (in the root graph, or in a definition before it) gets the next free id after
/// the workflow's last one, and the definition's links follow. Execution ids (`18:53`) use the
/// new ids.
fn dedupe_node_ids(
    root: &Graph,
    order: &[String],
    subgraphs: &mut BTreeMap<String, Subgraph>,
    mut last: i64,
) {
    let numeric = |id: &str| id.parse::<i64>().ok().filter(|n| n.to_string() == id);
    let mut used_keys: HashSet<String> = HashSet::new();
    let mut used_nums: HashSet<i64> = HashSet::new();
    for node in &root.nodes {
        if let Some(n) = numeric(&node.id) {
            used_nums.insert(n);
            used_keys.insert(node.id.clone());
        }
    }
    for id in order {
        let Some(sub) = subgraphs.get_mut(id) else {
            continue;
        };
        let mut remap: HashMap<String, String> = HashMap::new();
        for node in &mut sub.graph.nodes {
            if used_keys.contains(&node.id) {
                loop {
                    last += 1;
                    if !used_nums.contains(&last) {
                        break;
                    }
                }
                remap.insert(node.id.clone(), last.to_string());
                node.id = last.to_string();
                used_nums.insert(last);
                used_keys.insert(node.id.clone());
            } else {
                used_keys.insert(node.id.clone());
                if let Some(n) = numeric(&node.id) {
                    used_nums.insert(n);
                    last = last.max(n);
                }
            }
        }
        if remap.is_empty() {
            continue;
        }
        sub.graph.by_id = sub
            .graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        for link in sub.graph.links.values_mut() {
            if let Some(n) = remap.get(&link.origin_id) {
                link.origin_id = n.clone();
            }
            if let Some(n) = remap.get(&link.target_id) {
                link.target_id = n.clone();
            }
        }
    }
}

impl Workflow {
    /// Parse a UI workflow; legacy group nodes are refused.
    pub fn parse(ui: &Value) -> Result<Workflow, UiError> {
        let groups = ui
            .get("extra")
            .and_then(|e| e.get("groupNodes"))
            .and_then(Value::as_object)
            .filter(|g| !g.is_empty());
        if let Some(groups) = groups {
            return Err(UiError::GroupNodes(groups.keys().cloned().collect()));
        }
        let nodes = ui
            .get("nodes")
            .ok_or_else(|| invalid("has no `nodes` list"))?;
        let root = parse_graph(nodes, ui.get("links"), "the workflow")?;
        let mut subgraphs = BTreeMap::new();
        let mut order = Vec::new();
        let defs = ui
            .get("definitions")
            .and_then(|d| d.get("subgraphs"))
            .and_then(Value::as_array);
        for s in defs.into_iter().flatten() {
            let Some(id) = s.get("id").and_then(Value::as_str) else {
                return Err(invalid("a subgraph definition has no `id`"));
            };
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned();
            let where_ = format!("subgraph {name:?}");
            let empty = Value::Array(Vec::new());
            let graph = parse_graph(s.get("nodes").unwrap_or(&empty), s.get("links"), &where_)?;
            order.push(id.to_owned());
            subgraphs.insert(
                id.to_owned(),
                Subgraph {
                    name,
                    graph,
                    inputs: parse_slots(s.get("inputs")),
                    outputs: parse_slots(s.get("outputs")),
                },
            );
        }
        let last_node_id = ui
            .get("state")
            .and_then(|s| s.get("lastNodeId"))
            .or_else(|| ui.get("last_node_id"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0);
        dedupe_node_ids(&root, &order, &mut subgraphs, last_node_id);
        Ok(Workflow { root, subgraphs })
    }

    /// Every graph: the root first, then each subgraph definition.
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        std::iter::once(&self.root).chain(self.subgraphs.values().map(|s| &s.graph))
    }

    /// Node types neither the ComfyUI nor the frontend knows, `Type (nodes 3, 7)`, sorted.
    pub fn missing_types(&self, defs: &NodeDefs<'_>) -> Vec<String> {
        let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for graph in self.graphs() {
            for node in &graph.nodes {
                let t = node.ty.as_str();
                let known = defs.get(t).is_some()
                    || self.subgraphs.contains_key(t)
                    || [REROUTE, PRIMITIVE_NODE, NOTE, MARKDOWN_NOTE].contains(&t);
                if !known {
                    missing.entry(t).or_default().push(&node.id);
                }
            }
        }
        missing
            .into_iter()
            .map(|(t, ids)| {
                let word = if ids.len() == 1 { "node" } else { "nodes" };
                format!("{t} ({word} {})", ids.join(", "))
            })
            .collect()
    }
}
