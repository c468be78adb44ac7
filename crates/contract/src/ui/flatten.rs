//! From configured graphs to the API prompt: the frontend's `graphToPrompt` with its
//! `ExecutableNodeDTO`s (one per node and subgraph instance path) and their input resolution
//! through links, reroutes, bypassed nodes and subgraph boundaries.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::configure::{self, ConfGraph, ConfNode, Kind};
use super::defs::NodeDefs;
use super::graph::{Workflow, MODE_BYPASS, MODE_NEVER, SUBGRAPH_INPUT_ID};
use super::UiError;

/// One executable node: a node of a graph at a path of subgraph instances.
#[derive(Debug, Clone)]
struct Dto {
    graph: usize,
    node: usize,
    /// Subgraph instance ids from the root to the graph holding the node.
    path: Vec<String>,
    id: String,
    /// The execution id of the subgraph instance holding the node.
    instance: Option<String>,
}

/// What an input resolves to: a node's output, or a widget value of a subgraph instance.
#[derive(Debug, Clone)]
enum Resolved {
    Link(String, usize),
    /// `None`: the widget's value is undefined.
    Widget(Option<Value>),
}

struct Flat<'c> {
    graphs: &'c [ConfGraph],
    dtos: Vec<Dto>,
    index: HashMap<String, usize>,
}

fn recursion(what: &str, id: &str) -> UiError {
    UiError::Invalid(format!(
        "has a circular {what} at node {id}; fix the links in ComfyUI and save it again"
    ))
}

fn broken(message: String) -> UiError {
    UiError::Invalid(format!(
        "{message}; open it in ComfyUI, fix the link and save it again"
    ))
}

/// `LiteGraph.isValidConnection`: equal types, a wildcard, or comma lists that share one.
pub fn valid_connection(a: &str, b: &str) -> bool {
    let wild = |t: &str| t.is_empty() || t == "*" || t == "0";
    if wild(a) || wild(b) || a == b {
        return true;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',')
        .any(|x| b.split(',').any(|y| valid_connection(x, y)))
}

impl<'c> Flat<'c> {
    fn node(&self, d: &Dto) -> &'c ConfNode {
        &self.graphs[d.graph].nodes[d.node]
    }

    fn set(&mut self, dto: Dto) {
        match self.index.get(&dto.id) {
            Some(&i) => self.dtos[i] = dto,
            None => {
                self.index.insert(dto.id.clone(), self.dtos.len());
                self.dtos.push(dto);
            }
        }
    }

    fn get(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// `SubgraphNode.getInnerNodes`: the instance and every node inside it, nested instances expanded.
    fn expand(&mut self, instance: Dto, visited: &mut Vec<usize>) -> Result<(), UiError> {
        let node = self.node(&instance);
        let Kind::Subgraph(sub) = node.kind else {
            return Ok(());
        };
        if visited.contains(&sub) {
            return Err(recursion("subgraph", &instance.id));
        }
        visited.push(sub);
        let mut path = instance.path.clone();
        path.push(node.id.clone());
        self.set(instance.clone());
        for (n, inner) in self.graphs[sub].nodes.iter().enumerate() {
            let dto = Dto {
                graph: sub,
                node: n,
                path: path.clone(),
                id: format!("{}:{}", path.join(":"), inner.id),
                instance: Some(instance.id.clone()),
            };
            if matches!(inner.kind, Kind::Subgraph(_)) {
                self.expand(dto, &mut visited.clone())?;
            } else {
                self.set(dto);
            }
        }
        Ok(())
    }

    fn resolve_input(
        &self,
        d: usize,
        slot: usize,
        visited: &mut HashSet<String>,
        ty: Option<&str>,
    ) -> Result<Option<Resolved>, UiError> {
        let dto = &self.dtos[d];
        let node = self.node(dto);
        if !visited.insert(format!("{}:{}[I]{slot}", dto.graph, dto.id)) {
            return Err(recursion("link", &dto.id));
        }
        let Some(input) = node.inputs.get(slot) else {
            return Err(broken(format!("node {} has no input {slot}", dto.id)));
        };
        let Some(link_id) = &input.link else {
            return Ok(None);
        };
        let graph = &self.graphs[dto.graph];
        let Some(link) = graph.links.get(link_id) else {
            return Err(broken(format!(
                "node {} input {:?} names link {link_id}, which the workflow does not have",
                dto.id, input.name
            )));
        };
        if let (Some(instance_id), true) = (&dto.instance, link.origin_id == SUBGRAPH_INPUT_ID) {
            let Some(i) = self.get(instance_id) else {
                return Err(broken(format!("no subgraph instance {instance_id}")));
            };
            let instance = self.node(&self.dtos[i]);
            let Some(outer) = instance.inputs.get(link.origin_slot) else {
                return Err(broken(format!(
                    "subgraph instance {instance_id} has no input {}",
                    link.origin_slot
                )));
            };
            let Some(outer_link) = &outer.link else {
                return Ok(instance
                    .promoted
                    .get(link.origin_slot)
                    .cloned()
                    .flatten()
                    .map(Resolved::Widget));
            };
            if !self.graphs[self.dtos[i].graph]
                .links
                .contains_key(outer_link)
            {
                return Err(broken(format!(
                    "subgraph instance {instance_id} names a link the workflow does not have"
                )));
            }
            // The instance's input `origin_slot` is the one its outer link arrives at.
            return self.resolve_input(i, link.origin_slot, visited, None);
        }
        let Some(&origin) = graph.by_id.get(&link.origin_id) else {
            return Err(broken(format!(
                "node {} input {:?} is linked from node {}, which the workflow does not have",
                dto.id, input.name, link.origin_id
            )));
        };
        let origin_id = match dto.path.is_empty() {
            true => graph.nodes[origin].id.clone(),
            false => format!("{}:{}", dto.path.join(":"), graph.nodes[origin].id),
        };
        let Some(o) = self.get(&origin_id) else {
            return Err(broken(format!("no node {origin_id}")));
        };
        let ty = ty.unwrap_or(&input.ty);
        self.resolve_output(o, link.origin_slot, ty, visited)
    }

    fn resolve_output(
        &self,
        d: usize,
        slot: usize,
        ty: &str,
        visited: &mut HashSet<String>,
    ) -> Result<Option<Resolved>, UiError> {
        let dto = &self.dtos[d];
        let node = self.node(dto);
        if !visited.insert(format!("{}:{}[O]{slot}", dto.graph, dto.id)) {
            return Err(recursion("link", &dto.id));
        }
        if node.mode == MODE_NEVER {
            return Ok(None);
        }
        if node.mode == MODE_BYPASS {
            return match bypass_slot(node, slot, ty) {
                Some(i) => self.resolve_input(d, i, visited, None),
                None => Ok(None),
            };
        }
        match &node.kind {
            Kind::Subgraph(sub) => {
                let sg = &self.graphs[*sub];
                let Some(out) = sg.outputs.get(slot) else {
                    return Err(broken(format!(
                        "subgraph instance {} has no output {slot}",
                        dto.id
                    )));
                };
                let Some(inner) = out.first().and_then(|l| sg.links.get(l)) else {
                    return Ok(None);
                };
                let Some(&n) = sg.by_id.get(&inner.origin_id) else {
                    return Err(broken(format!(
                        "subgraph instance {}: output {slot} has no node inside",
                        dto.id
                    )));
                };
                let inner_id = format!("{}:{}", dto.id, sg.nodes[n].id);
                let Some(i) = self.get(&inner_id) else {
                    return Err(broken(format!("no node {inner_id}")));
                };
                self.resolve_output(i, inner.origin_slot, ty, visited)
            }
            Kind::Virtual => match node.inputs.get(slot) {
                Some(input) if input.link.is_some() => {
                    self.resolve_input(d, slot, visited, Some(ty))
                }
                _ => Ok(None),
            },
            Kind::Regular { .. } => Ok(Some(Resolved::Link(dto.id.clone(), slot))),
        }
    }
}

/// `_getBypassSlotIndex`: the input a bypassed node passes to its output `slot`.
fn bypass_slot(node: &ConfNode, slot: usize, ty: &str) -> Option<usize> {
    let inputs = &node.inputs;
    if ty == "*" || ty.is_empty() {
        return match inputs.len() {
            0 => Some(0).filter(|_| false),
            n if n > slot => Some(slot),
            _ => Some(0),
        };
    }
    let out_ty = node.outputs.get(slot).map_or("", String::as_str);
    if let Some(opposite) = inputs.get(slot) {
        if valid_connection(&opposite.ty, out_ty) && valid_connection(&opposite.ty, ty) {
            return Some(slot);
        }
    }
    if let Some(i) = inputs.iter().position(|i| i.ty == ty) {
        return Some(i);
    }
    inputs
        .iter()
        .position(|i| valid_connection(&i.ty, out_ty) && valid_connection(&i.ty, ty))
}

/// A widget value as the prompt carries it: lists are wrapped so they are not read as links.
fn wrap(value: Value, curve: bool) -> Value {
    match value {
        Value::Array(a) if curve => {
            let mut m = Map::new();
            m.insert("__type__".into(), "CURVE".into());
            m.insert("__value__".into(), Value::Array(a));
            Value::Object(m)
        }
        Value::Array(a) => {
            let mut m = Map::new();
            m.insert("__value__".into(), Value::Array(a));
            Value::Object(m)
        }
        other => other,
    }
}

/// The API prompt of a parsed UI workflow.
pub fn to_api(wf: &Workflow, defs: &NodeDefs<'_>) -> Result<Map<String, Value>, UiError> {
    let graphs = configure::configure(wf, defs)?;
    let mut flat = Flat {
        graphs: &graphs,
        dtos: Vec::new(),
        index: HashMap::new(),
    };
    for (n, node) in graphs[0].nodes.iter().enumerate() {
        let dto = Dto {
            graph: 0,
            node: n,
            path: Vec::new(),
            id: node.id.clone(),
            instance: None,
        };
        flat.set(dto.clone());
        if node.mode == MODE_NEVER || node.mode == MODE_BYPASS {
            continue;
        }
        flat.expand(dto, &mut Vec::new())?;
    }
    let mut output = Map::new();
    for (d, dto) in flat.dtos.iter().enumerate() {
        let node = flat.node(dto);
        let Kind::Regular { class } = &node.kind else {
            continue;
        };
        if node.mode == MODE_NEVER || node.mode == MODE_BYPASS {
            continue;
        }
        let mut inputs = Map::new();
        for w in &node.widgets {
            if w.name.is_empty() || !w.sent {
                continue;
            }
            if let Some(v) = configure::sent_value(w, &graphs) {
                inputs.insert(w.name.clone(), wrap(v, w.curve));
            }
        }
        for (i, input) in node.inputs.iter().enumerate() {
            match flat.resolve_input(d, i, &mut HashSet::new(), None)? {
                None => {}
                Some(Resolved::Widget(Some(v))) => {
                    inputs.insert(input.name.clone(), wrap(v, false));
                }
                Some(Resolved::Widget(None)) => {
                    inputs.remove(&input.name);
                }
                Some(Resolved::Link(origin, slot)) => {
                    inputs.insert(
                        input.name.clone(),
                        Value::Array(vec![Value::String(origin), Value::from(slot)]),
                    );
                }
            }
        }
        let mut entry = Map::new();
        entry.insert("inputs".into(), Value::Object(inputs));
        entry.insert("class_type".into(), Value::String(class.clone()));
        let mut meta = Map::new();
        meta.insert("title".into(), Value::String(node.title.clone()));
        entry.insert("_meta".into(), Value::Object(meta));
        output.insert(dto.id.clone(), Value::Object(entry));
    }
    // Inputs linked to nodes that are not in the prompt (muted, dropped) go.
    let ids: HashSet<String> = output.keys().cloned().collect();
    for entry in output.values_mut() {
        if let Some(Value::Object(inputs)) = entry.get_mut("inputs") {
            inputs.retain(|_, v| match v.as_array().map(Vec::as_slice) {
                Some([Value::String(origin), _]) => ids.contains(origin),
                _ => true,
            });
        }
    }
    Ok(output)
}
