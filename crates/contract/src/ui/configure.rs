//! Each saved node configured as the frontend configures it on load: its slots from the node
//! definition (links kept by input name), its widget values read from `widgets_values` in widget
//! order, `PrimitiveNode` values applied to the widgets they feed, and the widgets a subgraph
//! instance promotes.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::defs::{
    add_inputs_one_by_one, dynamic_children, layout, NodeDefs, SocketSpec, WidgetSpec,
    MARKDOWN_NOTE, NOTE, PRIMITIVE_NODE, REROUTE,
};
use super::graph::{Graph, Link, UiNode, WidgetsValues, Workflow};
use super::UiError;
use super::{dynamic_prompt, replace};

/// Nodes whose `filename_prefix` goes through the frontend's text replacements.
const SAVE_NODES: &[&str] = &[
    "SaveImage",
    "SaveImageAdvanced",
    "SaveSVGNode",
    "SaveVideo",
    "SaveAnimatedWEBP",
    "SaveWEBM",
    "SaveAudio",
    "SaveAudioMP3",
    "SaveAudioOpus",
    "SaveAudioAdvanced",
    "SaveGLB",
    "Save3DAdvanced",
    "SaveGaussianSplat",
    "SavePointCloud",
    "SaveAnimatedPNG",
    "CLIPSave",
    "VAESave",
    "ModelSave",
    "LoraSave",
    "SaveLatent",
];

/// The frontend's combo whose options are texts of the node itself.
const CUSTOM_COMBO: &str = "CustomCombo";

fn text_widget(name: &str, value: Value) -> Widget {
    Widget {
        name: name.to_owned(),
        value: Some(value),
        saved: true,
        sent: true,
        dynamic_prompts: false,
        curve: false,
        replace_text: false,
        dynamic: None,
    }
}

/// A CustomCombo gets a new empty option text when its last one is given a value.
fn grow_custom_combo(class: &str, widgets: &mut Vec<Widget>, i: usize) {
    if class != CUSTOM_COMBO || i + 1 != widgets.len() || i < 2 {
        return;
    }
    let filled = widgets[i]
        .value
        .as_ref()
        .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)) && v != "" && v != 0);
    if filled {
        widgets.push(text_widget(&format!("option{i}"), "".into()));
    }
}

/// The property that makes a `PrimitiveNode` run text replacements on its value.
const REPLACE_PROPERTY: &str = "Run widget replace on values";

/// What a configured node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A node ComfyUI runs, of this class.
    Regular { class: String },
    /// An instance of the subgraph at this graph index.
    Subgraph(usize),
    /// A frontend-only node: Reroute, PrimitiveNode, Note, MarkdownNote.
    Virtual,
}

/// One input slot of a configured node.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub ty: String,
    pub link: Option<String>,
    pub widget: Option<String>,
}

/// One widget of a configured node, with its value (`None`: undefined).
#[derive(Debug, Clone)]
pub struct Widget {
    pub name: String,
    pub value: Option<Value>,
    pub saved: bool,
    pub sent: bool,
    pub dynamic_prompts: bool,
    pub curve: bool,
    /// `filename_prefix` of a save node: `%Node.widget%` and `%date:...%` are replaced when sent.
    pub replace_text: bool,
    dynamic: Option<Map<String, Value>>,
}

/// A node as the frontend holds it after loading.
#[derive(Debug, Clone)]
pub struct ConfNode {
    pub id: String,
    pub ty: String,
    pub kind: Kind,
    pub mode: i64,
    pub title: String,
    pub inputs: Vec<Input>,
    pub outputs: Vec<String>,
    pub widgets: Vec<Widget>,
    pub properties: Map<String, Value>,
    /// Per input of a subgraph instance: `Some(value)` when it promotes a widget (`value` as
    /// `Widget::value`), `None` otherwise.
    pub promoted: Vec<Option<Option<Value>>>,
    /// The subgraph slot each input of an instance is bound to.
    bound: Vec<usize>,
    ui_outputs: Vec<Vec<String>>,
}

/// A configured graph: the root (index 0) or a subgraph definition.
#[derive(Debug, Clone, Default)]
pub struct ConfGraph {
    pub nodes: Vec<ConfNode>,
    pub by_id: HashMap<String, usize>,
    pub links: HashMap<String, Link>,
    /// For a subgraph: the link ids of each of its outputs (inside it).
    pub outputs: Vec<Vec<String>>,
    /// For a subgraph: its inputs' names, types and link ids (inside it).
    inputs: Vec<(String, String, Vec<String>)>,
}

fn widget(spec: &WidgetSpec, replace_text: bool) -> Widget {
    Widget {
        name: spec.name.clone(),
        value: spec.default.clone(),
        saved: spec.saved,
        sent: spec.sent,
        dynamic_prompts: spec.dynamic_prompts,
        curve: spec.curve,
        replace_text: replace_text && spec.name == "filename_prefix",
        dynamic: spec.dynamic.clone(),
    }
}

/// The frontend's widgets and sockets of a node, as they stand while values are read in.
struct Slots {
    sockets: Vec<SocketSpec>,
    widgets: Vec<Widget>,
    replace_text: bool,
    /// Autogrow inputs a dynamic combo added (their saved sockets are kept by name).
    autogrow: Vec<String>,
}

impl Slots {
    /// Set widget `i`'s value; a dynamic combo then replaces the widgets and sockets of its
    /// previous option with those of the new one, right after itself.
    fn set(&mut self, i: usize, value: Value) {
        self.widgets[i].value = Some(value);
        self.update_dynamic(i);
    }

    fn update_dynamic(&mut self, i: usize) {
        let Some(options) = self.widgets[i].dynamic.clone() else {
            return;
        };
        let name = self.widgets[i].name.clone();
        let group = format!("{name}.");
        self.widgets.retain(|w| !w.name.starts_with(&group));
        self.sockets.retain(|s| !s.name.starts_with(&group));
        self.autogrow.retain(|a| !a.starts_with(&group));
        let Some(w_at) = self.widgets.iter().position(|w| w.name == name) else {
            return;
        };
        let chosen = self.widgets[w_at]
            .value
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|k| options.get(k))
            .cloned();
        let Some(inputs) = chosen else { return };
        let children = dynamic_children(&name, &inputs);
        let (sockets, specs, autogrow) = add_inputs_one_by_one(&children);
        let mut added: Vec<Widget> = Vec::new();
        for spec in &specs {
            added.push(widget(spec, self.replace_text));
        }
        // A child that is a dynamic combo itself expands in place.
        let mut nested = Slots {
            sockets,
            widgets: added,
            replace_text: self.replace_text,
            autogrow,
        };
        let mut j = 0;
        while j < nested.widgets.len() {
            if nested.widgets[j].dynamic.is_some() {
                nested.update_dynamic(j);
            }
            j += 1;
        }
        let s_at = self
            .sockets
            .iter()
            .position(|s| s.name == name)
            .map_or(self.sockets.len(), |p| p + 1);
        self.sockets.splice(s_at..s_at, nested.sockets);
        self.widgets.splice(w_at + 1..w_at + 1, nested.widgets);
        self.autogrow.extend(nested.autogrow);
    }
}

fn regular(ui: &UiNode, defs: &NodeDefs<'_>) -> Option<ConfNode> {
    let def = defs.get(&ui.ty)?;
    let replace_text = SAVE_NODES.contains(&def.name);
    let (sockets, specs) = layout(&def.inputs);
    let mut slots = Slots {
        sockets,
        widgets: specs.iter().map(|s| widget(s, replace_text)).collect(),
        replace_text,
        autogrow: Vec::new(),
    };
    if def.name == CUSTOM_COMBO {
        // Its extension adds a hidden index and one text per option (plus an empty last one).
        slots.widgets.push(text_widget("index", Value::from(-1)));
        slots.widgets.push(text_widget("option1", "".into()));
    }
    // A new node's dynamic combos show their first option's inputs.
    let mut i = 0;
    while i < slots.widgets.len() {
        if slots.widgets[i].dynamic.is_some() {
            slots.update_dynamic(i);
        }
        i += 1;
    }
    match &ui.widgets_values {
        WidgetsValues::List(values) => {
            let mut next = values.iter();
            let mut i = 0;
            while i < slots.widgets.len() {
                if slots.widgets[i].saved {
                    let Some(v) = next.next() else { break };
                    slots.set(i, v.clone());
                    grow_custom_combo(def.name, &mut slots.widgets, i);
                }
                i += 1;
            }
        }
        WidgetsValues::Named(values) => {
            let mut i = 0;
            while i < slots.widgets.len() {
                let w = &slots.widgets[i];
                if w.saved {
                    if let Some(v) = values.get(&w.name) {
                        slots.set(i, v.clone());
                    }
                }
                i += 1;
            }
        }
        WidgetsValues::None => {}
    }
    if def.name == CUSTOM_COMBO {
        // `index` is computed: the chosen option's position among the options.
        let choice = slots.widgets.first().and_then(|w| w.value.clone());
        let index = slots
            .widgets
            .iter()
            .skip(2)
            .position(|w| w.value.is_some() && w.value == choice)
            .map_or(-1, |p| p as i64);
        if let Some(w) = slots.widgets.get_mut(1) {
            w.value = Some(Value::from(index));
        }
    }
    let dynamic_groups: Vec<String> = slots
        .widgets
        .iter()
        .filter(|w| w.dynamic.is_some())
        .map(|w| format!("{}.", w.name))
        .collect();
    let autogrow: Vec<String> = slots.autogrow.iter().map(|a| format!("{a}.")).collect();
    let link_of = |name: &str| {
        ui.inputs
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.link.clone())
    };
    let mut inputs: Vec<Input> = slots
        .sockets
        .iter()
        .map(|s| Input {
            name: s.name.clone(),
            ty: s.ty.clone(),
            link: link_of(&s.name),
            widget: s.widget.clone(),
        })
        .collect();
    for extra in &ui.inputs {
        let defined = inputs.iter().any(|i| i.name == extra.name);
        let grouped = dynamic_groups.iter().any(|g| extra.name.starts_with(g))
            && !autogrow.iter().any(|a| extra.name.starts_with(a));
        if !defined && !grouped {
            inputs.push(Input {
                name: extra.name.clone(),
                ty: extra.ty.clone(),
                link: extra.link.clone(),
                widget: extra.widget.clone(),
            });
        }
    }
    let mut outputs: Vec<String> = def
        .outputs
        .iter()
        .map(|t| {
            if t == "COMFY_MATCHTYPE_V3" {
                "*".to_owned()
            } else {
                t.clone()
            }
        })
        .collect();
    for extra in ui.outputs.iter().skip(outputs.len()) {
        outputs.push(extra.ty.clone());
    }
    Some(ConfNode {
        id: ui.id.clone(),
        ty: ui.ty.clone(),
        kind: Kind::Regular {
            class: def.name.to_owned(),
        },
        mode: ui.mode,
        title: ui.title.clone().unwrap_or(def.display_name),
        inputs,
        outputs,
        widgets: slots.widgets,
        properties: ui.properties.clone(),
        promoted: Vec::new(),
        bound: Vec::new(),
        ui_outputs: ui.outputs.iter().map(|o| o.links.clone()).collect(),
    })
}

fn plain(ui: &UiNode, kind: Kind, title: &str) -> ConfNode {
    ConfNode {
        id: ui.id.clone(),
        ty: ui.ty.clone(),
        kind,
        mode: ui.mode,
        title: ui.title.clone().unwrap_or_else(|| title.to_owned()),
        inputs: ui
            .inputs
            .iter()
            .map(|i| Input {
                name: i.name.clone(),
                ty: i.ty.clone(),
                link: i.link.clone(),
                widget: i.widget.clone(),
            })
            .collect(),
        outputs: ui.outputs.iter().map(|o| o.ty.clone()).collect(),
        widgets: Vec::new(),
        properties: ui.properties.clone(),
        promoted: Vec::new(),
        bound: Vec::new(),
        ui_outputs: ui.outputs.iter().map(|o| o.links.clone()).collect(),
    }
}

/// A subgraph instance: one input per subgraph input, in the subgraph's order, each with the
/// link of the saved input bound to it (the first free one of its name and type, else of its
/// name); saved inputs bound to none are dropped. (The frontend ends with the same inputs once it
/// has loaded the graph, whatever order the saved ones had.)
fn instance(
    ui: &UiNode,
    sub: usize,
    name: &str,
    slots: &[(String, String, Vec<String>)],
) -> ConfNode {
    let mut node = plain(ui, Kind::Subgraph(sub), name);
    let mut links: Vec<Option<String>> = vec![None; slots.len()];
    let mut taken = vec![false; slots.len()];
    for saved in &node.inputs {
        let free = |by_type: bool| {
            slots.iter().enumerate().position(|(k, (n, t, _))| {
                !taken[k] && *n == saved.name && (!by_type || *t == saved.ty)
            })
        };
        if let Some(k) = free(true).or_else(|| free(false)) {
            taken[k] = true;
            links[k] = saved.link.clone();
        }
    }
    node.inputs = slots
        .iter()
        .zip(links)
        .map(|((n, t, _), link)| Input {
            name: n.clone(),
            ty: t.clone(),
            link,
            widget: None,
        })
        .collect();
    node.bound = (0..slots.len()).collect();
    node
}

fn conf_graph(
    graph: &Graph,
    defs: &NodeDefs<'_>,
    subgraph_index: &HashMap<&str, usize>,
    wf: &Workflow,
) -> Result<ConfGraph, UiError> {
    let mut out = ConfGraph {
        links: graph.links.clone(),
        ..ConfGraph::default()
    };
    for ui in &graph.nodes {
        let node = if let Some(&sub) = subgraph_index.get(ui.ty.as_str()) {
            let (name, slots) = wf
                .subgraphs
                .get(&ui.ty)
                .map(|s| {
                    (
                        s.name.clone(),
                        s.inputs
                            .iter()
                            .map(|i| (i.name.clone(), i.ty.clone(), i.link_ids.clone()))
                            .collect::<Vec<_>>(),
                    )
                })
                .unwrap_or_default();
            instance(ui, sub, &name, &slots)
        } else if [REROUTE, PRIMITIVE_NODE, NOTE, MARKDOWN_NOTE].contains(&ui.ty.as_str()) {
            let mut node = plain(ui, Kind::Virtual, &ui.ty);
            if ui.ty == PRIMITIVE_NODE {
                // Its one widget holds the value it gives the widgets it feeds.
                node.widgets.push(Widget {
                    name: "value".into(),
                    value: match &ui.widgets_values {
                        WidgetsValues::List(v) => v.first().cloned(),
                        _ => None,
                    },
                    saved: true,
                    sent: true,
                    dynamic_prompts: false,
                    curve: false,
                    replace_text: false,
                    dynamic: None,
                });
            }
            node
        } else {
            match regular(ui, defs) {
                Some(n) => n,
                None => {
                    return Err(UiError::MissingNodeTypes(vec![format!(
                        "{} (node {})",
                        ui.ty, ui.id
                    )]))
                }
            }
        };
        out.by_id.insert(node.id.clone(), out.nodes.len());
        out.nodes.push(node);
    }
    Ok(out)
}

/// The value of the widget a subgraph input feeds inside subgraph `g` (through nested instances),
/// as `Some(widget value)`; `None` when it feeds no widget.
fn interior_widget(
    graphs: &[ConfGraph],
    g: usize,
    slot: usize,
    depth: usize,
) -> Option<Option<Value>> {
    if depth > 64 {
        return None;
    }
    let graph = &graphs[g];
    let (_, _, link_ids) = graph.inputs.get(slot)?;
    for link_id in link_ids {
        let Some(link) = graph.links.get(link_id) else {
            continue;
        };
        let Some(&t) = graph.by_id.get(&link.target_id) else {
            continue;
        };
        let target = &graph.nodes[t];
        let Some(k) = target
            .inputs
            .iter()
            .position(|i| i.link.as_ref() == Some(link_id))
        else {
            continue;
        };
        let input = &target.inputs[k];
        if let Some(name) = &input.widget {
            if let Some(w) = target.widgets.iter().find(|w| &w.name == name) {
                return Some(w.value.clone());
            }
        }
        if let Kind::Subgraph(inner) = target.kind {
            if let Some(&inner_slot) = target.bound.get(k) {
                if let Some(v) = interior_widget(graphs, inner, inner_slot, depth + 1) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Configure every graph of `wf`: index 0 is the root, then the subgraph definitions in id order.
pub fn configure(wf: &Workflow, defs: &NodeDefs<'_>) -> Result<Vec<ConfGraph>, UiError> {
    let subgraph_index: HashMap<&str, usize> = wf
        .subgraphs
        .keys()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i + 1))
        .collect();
    let mut graphs = vec![conf_graph(&wf.root, defs, &subgraph_index, wf)?];
    for sub in wf.subgraphs.values() {
        let mut g = conf_graph(&sub.graph, defs, &subgraph_index, wf)?;
        g.outputs = sub.outputs.iter().map(|o| o.link_ids.clone()).collect();
        g.inputs = sub
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.ty.clone(), i.link_ids.clone()))
            .collect();
        graphs.push(g);
    }
    // Promoted widgets: registered with the interior widget's value, then the instance's own
    // `widgets_values`, one per promoting input in order.
    let mut promoted: Vec<Vec<Vec<Option<Option<Value>>>>> = Vec::new();
    for graph in &graphs {
        let mut per_node = Vec::new();
        for node in &graph.nodes {
            let Kind::Subgraph(sub) = node.kind else {
                per_node.push(Vec::new());
                continue;
            };
            per_node.push(
                node.bound
                    .iter()
                    .map(|&slot| interior_widget(&graphs, sub, slot, 0))
                    .collect(),
            );
        }
        promoted.push(per_node);
    }
    for (g, per_node) in promoted.into_iter().enumerate() {
        for (n, values) in per_node.into_iter().enumerate() {
            let node = &mut graphs[g].nodes[n];
            // One stored value per subgraph input, shared by the instance inputs bound to it.
            let mut store: HashMap<usize, Option<Value>> = HashMap::new();
            for (k, v) in node.bound.iter().zip(&values) {
                if let Some(v) = v {
                    store.entry(*k).or_insert_with(|| v.clone());
                }
            }
            if let Some(saved) = saved_values(wf, g, n, &subgraph_index) {
                let mut next = saved.iter();
                for (k, v) in node.bound.iter().zip(&values) {
                    if v.is_some() {
                        if let Some(s) = next.next() {
                            store.insert(*k, Some(s.clone()));
                        }
                    }
                }
            }
            node.promoted = node
                .bound
                .iter()
                .zip(&values)
                .map(|(k, v)| v.as_ref().map(|_| store.get(k).cloned().flatten()))
                .collect();
        }
    }
    for graph in &mut graphs {
        apply_primitives(graph);
    }
    Ok(graphs)
}

/// The saved `widgets_values` list of node `n` of graph `g`.
fn saved_values<'w>(
    wf: &'w Workflow,
    g: usize,
    n: usize,
    subgraph_index: &HashMap<&str, usize>,
) -> Option<&'w Vec<Value>> {
    let graph = if g == 0 {
        &wf.root
    } else {
        let id = subgraph_index.iter().find(|(_, &i)| i == g)?.0;
        &wf.subgraphs.get(*id)?.graph
    };
    match &graph.nodes.get(n)?.widgets_values {
        WidgetsValues::List(v) => Some(v),
        _ => None,
    }
}

/// `PrimitiveNode.applyToGraph`: its value goes into the widget of every input it feeds.
fn apply_primitives(graph: &mut ConfGraph) {
    let mut writes: Vec<(usize, String, Value)> = Vec::new();
    for node in &graph.nodes {
        if node.ty != PRIMITIVE_NODE {
            continue;
        }
        let links = node.ui_outputs.first().cloned().unwrap_or_default();
        // The widget exists only when the first link reaches an input with a widget.
        let Some(first) = links.first().and_then(|l| graph.links.get(l)) else {
            continue;
        };
        let Some(target) = graph.by_id.get(&first.target_id).map(|&t| &graph.nodes[t]) else {
            continue;
        };
        let Some(input) = target
            .inputs
            .iter()
            .find(|i| i.link.as_ref() == links.first())
        else {
            continue;
        };
        if input.widget.is_none() && !super::defs::is_widget_type(&input.ty) {
            continue;
        }
        let own = node.widgets.first().and_then(|w| w.value.clone());
        let value = own.or_else(|| {
            input
                .widget
                .as_ref()
                .and_then(|n| target.widgets.iter().find(|w| &w.name == n))
                .and_then(|w| w.value.clone())
        });
        let Some(mut value) = value else { continue };
        if node.properties.get(REPLACE_PROPERTY) == Some(&Value::Bool(true)) {
            if let Value::String(s) = &value {
                if !s.is_empty() {
                    value = Value::String(replace::apply(&[&*graph], s));
                }
            }
        }
        for link_id in &links {
            let Some(link) = graph.links.get(link_id) else {
                continue;
            };
            let Some(&t) = graph.by_id.get(&link.target_id) else {
                continue;
            };
            let target = &graph.nodes[t];
            let Some(name) = target
                .inputs
                .iter()
                .find(|i| i.link.as_ref() == Some(link_id))
                .and_then(|i| i.widget.clone())
            else {
                continue;
            };
            writes.push((t, name, value.clone()));
        }
    }
    for (t, name, value) in writes {
        if let Some(w) = graph.nodes[t].widgets.iter_mut().find(|w| w.name == name) {
            w.value = Some(value);
        }
    }
}

/// The value a widget sends: dynamic prompts resolved, file name patterns replaced.
pub fn sent_value(w: &Widget, graphs: &[ConfGraph]) -> Option<Value> {
    let value = w.value.clone()?;
    let Value::String(s) = &value else {
        return Some(value);
    };
    if w.dynamic_prompts {
        return Some(Value::String(dynamic_prompt::process(s)));
    }
    if w.replace_text {
        let all: Vec<&ConfGraph> = graphs.iter().collect();
        return Some(Value::String(replace::apply(&all, s)));
    }
    Some(value)
}

/// Whether the frontend treats `ty` as a save node (no `Node name for S&R` property of its own).
pub fn is_save_node(ty: &str) -> bool {
    SAVE_NODES.contains(&ty)
}

/// One widget of a new node: `(name, saved, sent, default)`.
pub type NewWidget = (String, bool, bool, Option<Value>);

/// The widgets a new node of type `ty` has: `(name, saved, sent, default)`, as the frontend
/// would make them (for tests that hold this module to the frontend).
#[doc(hidden)]
pub fn new_node_widgets(info: &Value, ty: &str) -> Option<Vec<NewWidget>> {
    let ui = UiNode {
        id: "1".into(),
        ty: ty.into(),
        mode: 0,
        title: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        widgets_values: WidgetsValues::None,
        properties: Map::new(),
    };
    let node = regular(&ui, &NodeDefs::new(info))?;
    Some(
        node.widgets
            .into_iter()
            .map(|w| (w.name, w.saved, w.sent, w.value))
            .collect(),
    )
}
