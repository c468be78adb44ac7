//! Node definitions from `/object_info`, and the widgets and input slots the frontend gives a
//! node of each type: the order in which a UI file's `widgets_values` are read.
//!
//! The frontend creates a node's slots in two passes over its inputs (in `input_order` when the
//! definition has one): first a socket for every input without a widget, then, for every input
//! with one, the widget and its socket. An INT input named `seed`/`noise_seed`, or any input
//! with `control_after_generate`, gets a "control after generate" combo right after its widget
//! (and a COMBO also a filter text): they are saved in `widgets_values` but never sent. A
//! `COMFY_DYNAMICCOMBO_V3` input puts the widgets of the chosen option right after itself.

use serde_json::{Map, Value};

/// Frontend-only node types (no `/object_info` entry).
pub const REROUTE: &str = "Reroute";
pub const PRIMITIVE_NODE: &str = "PrimitiveNode";
pub const NOTE: &str = "Note";
pub const MARKDOWN_NOTE: &str = "MarkdownNote";

const DYNAMIC_COMBO: &str = "COMFY_DYNAMICCOMBO_V3";
const AUTOGROW: &str = "COMFY_AUTOGROW_V3";
const MATCH_TYPE: &str = "COMFY_MATCHTYPE_V3";

/// Widget types the frontend has a widget for: its own, and those its core extensions add.
const WIDGET_TYPES: &[&str] = &[
    "INT",
    "FLOAT",
    "BOOLEAN",
    "STRING",
    "MARKDOWN",
    "COMBO",
    "IMAGEUPLOAD",
    "COLOR",
    "IMAGECOMPARE",
    "BOUNDING_BOX",
    "CHART",
    "GALLERIA",
    "PAINTER",
    "COMPOSITOR",
    "TEXTAREA",
    "CURVE",
    "RANGE",
    "VIDEO_EDIT",
    "BOUNDING_BOXES",
    "COLORS",
    DYNAMIC_COMBO,
    "WEBCAM",
    "AUDIO_UI",
    "AUDIOUPLOAD",
    "AUDIO_RECORD",
    "LOAD_3D_ANIMATION",
    "PREVIEW_3D",
    "PREVIEW_3D_ANIMATION",
    "LOAD_3D_ADVANCED",
    "PREVIEW_3D_ADVANCED",
    "SAVE_MESH_PREVIEW",
];

/// Widget types whose widget is never saved in `widgets_values` nor sent.
const UNSAVED_WIDGET_TYPES: &[&str] = &["AUDIO_UI", "MARKDOWN_PREVIEW"];
/// Widget types whose widget is saved in `widgets_values` but never sent (buttons, previews).
const UNSENT_WIDGET_TYPES: &[&str] = &["IMAGEUPLOAD", "AUDIOUPLOAD"];

/// Whether the frontend makes a widget for inputs of type `ty`.
pub fn is_widget_type(ty: &str) -> bool {
    WIDGET_TYPES.contains(&ty)
}

/// The node definitions of one `/object_info`.
#[derive(Debug, Clone, Copy)]
pub struct NodeDefs<'a> {
    info: &'a Value,
}

/// One input of a definition, as the frontend normalises it.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    /// `COMBO` for option lists, else the type as declared.
    pub ty: String,
    /// The type the socket takes (a list of types joined with commas).
    pub socket_ty: String,
    pub options: Map<String, Value>,
    /// The combo's options (for `COMBO`).
    pub combo: Vec<Value>,
    pub optional: bool,
}

/// One widget of a node.
#[derive(Debug, Clone)]
pub struct WidgetSpec {
    pub name: String,
    /// Takes an entry of `widgets_values` (the frontend's `widget.serialize !== false`).
    pub saved: bool,
    /// Sent in the prompt (`widget.options.serialize !== false`).
    pub sent: bool,
    /// The value of a new node (`None`: undefined).
    pub default: Option<Value>,
    /// For a dynamic combo: the options, each with the inputs it adds.
    pub dynamic: Option<Map<String, Value>>,
    /// A text whose `{a|b}` choices and comments are resolved when it is sent.
    pub dynamic_prompts: bool,
    /// A curve widget, whose list value is sent as `{"__type__": "CURVE", "__value__": ...}`.
    pub curve: bool,
}

/// One input slot of a node (a socket), in the node's order.
#[derive(Debug, Clone)]
pub struct SocketSpec {
    pub name: String,
    pub ty: String,
    /// The widget this socket belongs to.
    pub widget: Option<String>,
}

/// A node type's definition.
#[derive(Debug, Clone)]
pub struct NodeDef<'a> {
    pub name: &'a str,
    pub display_name: String,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
}

fn combo_options(spec: &[Value]) -> Option<Vec<Value>> {
    match spec.first() {
        Some(Value::Array(options)) => Some(options.clone()),
        Some(Value::String(t)) if t == "COMBO" => Some(
            spec.get(1)
                .and_then(|o| o.get("options"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        ),
        _ => None,
    }
}

/// An input spec (`[type, {options}]`) normalised as the frontend's V1 -> V2 transform does.
pub fn input_spec(name: &str, spec: &Value, optional: bool) -> InputSpec {
    let list = spec.as_array().map(Vec::as_slice).unwrap_or_default();
    let options = list
        .get(1)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let (ty, combo) = match combo_options(list) {
        Some(c) => ("COMBO".to_owned(), c),
        None => (
            list.first()
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_owned(),
            Vec::new(),
        ),
    };
    let socket_ty = if ty == MATCH_TYPE {
        options
            .get("template")
            .and_then(|t| t.get("allowed_types"))
            .map(|t| super::graph::type_string(Some(t)))
            .unwrap_or_else(|| "*".to_owned())
    } else {
        ty.clone()
    };
    InputSpec {
        name: name.to_owned(),
        ty,
        socket_ty,
        options,
        combo,
        optional,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

impl InputSpec {
    fn opt(&self, key: &str) -> Option<&Value> {
        self.options.get(key)
    }

    /// The widget type, when the frontend makes a widget for this input.
    pub fn widget_type(&self) -> Option<&str> {
        if truthy(self.opt("forceInput")) {
            return None;
        }
        let ty = self
            .opt("widgetType")
            .and_then(Value::as_str)
            .unwrap_or(&self.ty);
        is_widget_type(ty).then_some(ty)
    }

    fn is_dynamic_input(&self) -> bool {
        self.ty == AUTOGROW || self.ty == MATCH_TYPE
    }

    /// The widgets this input adds, with their defaults (a dynamic combo's chosen inputs not included).
    pub fn widgets(&self) -> Vec<WidgetSpec> {
        let Some(ty) = self.widget_type() else {
            return Vec::new();
        };
        let widget = |default: Option<Value>| WidgetSpec {
            name: self.name.clone(),
            saved: !UNSAVED_WIDGET_TYPES.contains(&ty),
            sent: !UNSAVED_WIDGET_TYPES.contains(&ty) && !UNSENT_WIDGET_TYPES.contains(&ty),
            default,
            dynamic: None,
            dynamic_prompts: false,
            curve: false,
        };
        let control = |name: &str| WidgetSpec {
            name: name.to_owned(),
            saved: true,
            sent: false,
            default: None,
            dynamic: None,
            dynamic_prompts: false,
            curve: false,
        };
        let cag = self.opt("control_after_generate");
        // A string names both the widget and its default mode.
        let control_name = |fallback: &str| match cag {
            Some(Value::String(name)) => name.clone(),
            _ => fallback.to_owned(),
        };
        let unsent = |name: &str, default: Value| WidgetSpec {
            name: name.to_owned(),
            saved: true,
            sent: false,
            default: Some(default),
            dynamic: None,
            dynamic_prompts: false,
            curve: false,
        };
        let default = self.opt("default").filter(|v| !v.is_null()).cloned();
        match ty {
            "INT" => {
                let mut out = vec![widget(Some(default.unwrap_or_else(|| 0.into())))];
                let with_control = match cag {
                    Some(v) => truthy(Some(v)),
                    None => self.name == "seed" || self.name == "noise_seed",
                };
                if with_control {
                    out.push(control(&control_name("control_after_generate")));
                }
                out
            }
            "FLOAT" => {
                let mut out = vec![widget(Some(default.unwrap_or_else(|| 0.into())))];
                if truthy(cag) {
                    out.push(control(&control_name("control_after_generate")));
                }
                out
            }
            "BOOLEAN" => vec![widget(Some(default.unwrap_or(Value::Bool(false))))],
            "STRING" => {
                let mut w = widget(Some(default.unwrap_or_else(|| "".into())));
                w.dynamic_prompts = self.opt("dynamicPrompts") == Some(&Value::Bool(true));
                vec![w]
            }
            "COMBO" => {
                let first = self.combo.first().cloned();
                let value = default
                    .filter(|d| truthy(Some(d)))
                    .or(first)
                    .or_else(|| self.opt("remote").map(|_| "Loading...".into()));
                let mut out = vec![widget(value)];
                if let Some(remote) = self.opt("remote") {
                    // Every remote combo gets an auto-refresh toggle, and a button when asked.
                    out.push(unsent("Auto-refresh after generation", Value::Bool(false)));
                    if truthy(remote.get("refresh_button")) {
                        let mut button = widget(Some("refresh".into()));
                        button.name = "refresh".into();
                        out.push(button);
                    }
                }
                if truthy(cag) {
                    out.push(control(&control_name("control_after_generate")));
                    out.push(control("control_filter_list"));
                }
                out
            }
            DYNAMIC_COMBO => {
                let options: Map<String, Value> = self
                    .opt("options")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|o| {
                                Some((
                                    o.get("key").and_then(Value::as_str)?.to_owned(),
                                    o.get("inputs").cloned().unwrap_or(Value::Null),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut w = widget(options.keys().next().map(|k| Value::String(k.clone())));
                w.dynamic = Some(options);
                vec![w]
            }
            "CURVE" => {
                let mut w = widget(default);
                w.curve = true;
                vec![w]
            }
            "MARKDOWN" | "TEXTAREA" => vec![widget(Some(default.unwrap_or_else(|| "".into())))],
            "IMAGEUPLOAD" => vec![widget(Some("image".into()))],
            "PREVIEW_3D" => vec![widget(Some("".into()))],
            "AUDIOUPLOAD" | "WEBCAM" => vec![widget(Some("".into()))],
            // The recorder's preview (sent) and its recorder (not), both named after the input.
            "AUDIO_RECORD" => {
                let mut recorder = unsent(&self.name, "".into());
                recorder.name = self.name.clone();
                vec![widget(Some("".into())), recorder]
            }
            "IMAGECOMPARE" => {
                let mut w = widget(Some(Value::Array(vec!["".into(), "".into()])));
                w.saved = false;
                vec![w]
            }
            "BOUNDING_BOX"
                if self.opt("component").and_then(Value::as_str) == Some("ImageCrop") =>
            {
                // The crop editor keeps the box's fields in widgets of their own (saved, not sent).
                let mut out = vec![widget(default.clone())];
                for field in ["x", "y", "width", "height"] {
                    let v = default
                        .as_ref()
                        .and_then(|d| d.get(field))
                        .cloned()
                        .unwrap_or_else(|| 0.into());
                    out.push(unsent(field, v));
                }
                out
            }
            _ => vec![widget(default)],
        }
    }
}

/// The inputs of a spec object (`{"required": {...}, "optional": {...}}`), in the frontend's order.
pub fn ordered_inputs(input: Option<&Value>, order: Option<&Value>) -> Vec<InputSpec> {
    let mut by_name: Vec<InputSpec> = Vec::new();
    for (group, optional) in [("required", false), ("optional", true)] {
        let Some(map) = input.and_then(|i| i.get(group)).and_then(Value::as_object) else {
            continue;
        };
        for (name, spec) in map {
            let s = input_spec(name, spec, optional);
            // A name in both groups: the optional one wins, in the required one's place.
            match by_name.iter_mut().find(|i| i.name == *name) {
                Some(existing) => *existing = s,
                None => by_name.push(s),
            }
        }
    }
    let Some(order) = order.and_then(Value::as_object) else {
        return by_name;
    };
    let mut out: Vec<InputSpec> = Vec::new();
    for (group, optional) in [("required", false), ("optional", true)] {
        for name in order
            .get(group)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(s) = by_name
                .iter()
                .find(|i| i.name == name && i.optional == optional)
            {
                if !out.iter().any(|o| o.name == s.name) {
                    out.push(s.clone());
                }
            }
        }
    }
    for s in by_name {
        if !out.iter().any(|o| o.name == s.name) {
            out.push(s);
        }
    }
    out
}

/// The inputs a dynamic combo option adds, named `<combo>.<input>`.
pub fn dynamic_children(combo: &str, inputs: &Value) -> Vec<InputSpec> {
    let mut out = Vec::new();
    for (group, optional) in [("required", false), ("optional", true)] {
        let Some(map) = inputs.get(group).and_then(Value::as_object) else {
            continue;
        };
        for (name, spec) in map {
            out.push(input_spec(&format!("{combo}.{name}"), spec, optional));
        }
    }
    out
}

/// The sockets and widgets of inputs added one by one (`addNodeInput`): each input's socket, then its widgets.
/// Also returns the names of the autogrow inputs among them (whose saved sockets beyond the first
/// ones are kept by name).
pub fn add_inputs_one_by_one(
    specs: &[InputSpec],
) -> (Vec<SocketSpec>, Vec<WidgetSpec>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut widgets = Vec::new();
    let mut autogrow = Vec::new();
    for s in specs {
        if s.ty == AUTOGROW {
            sockets.extend(autogrow_sockets(s));
            autogrow.push(s.name.clone());
            continue;
        }
        let w = s.widgets();
        sockets.push(SocketSpec {
            name: s.name.clone(),
            ty: s.socket_ty.clone(),
            widget: s.widget_type().map(|_| s.name.clone()),
        });
        widgets.extend(w);
    }
    (sockets, widgets, autogrow)
}

/// A node's sockets and widgets as a new node has them (`addInputs`: sockets without widgets first).
pub fn layout(inputs: &[InputSpec]) -> (Vec<SocketSpec>, Vec<WidgetSpec>) {
    let mut sockets = Vec::new();
    let mut widgets = Vec::new();
    for s in inputs {
        if s.widget_type().is_some() {
            continue;
        }
        if s.ty == AUTOGROW {
            sockets.extend(autogrow_sockets(s));
            continue;
        }
        sockets.push(SocketSpec {
            name: s.name.clone(),
            ty: s.socket_ty.clone(),
            widget: None,
        });
    }
    for s in inputs {
        if s.widget_type().is_none() || s.is_dynamic_input() {
            continue;
        }
        let w = s.widgets();
        sockets.push(SocketSpec {
            name: s.name.clone(),
            ty: s.socket_ty.clone(),
            widget: Some(s.name.clone()),
        });
        widgets.extend(w);
    }
    (sockets, widgets)
}

/// The sockets an autogrow input starts with: its first `min + 1` groups.
fn autogrow_sockets(s: &InputSpec) -> Vec<SocketSpec> {
    let Some(template) = s.opt("template") else {
        return Vec::new();
    };
    let min = template.get("min").and_then(Value::as_u64).unwrap_or(1);
    let names: Option<Vec<&str>> = template
        .get("names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let max = names
        .as_ref()
        .map(|n| n.len() as u64)
        .or_else(|| template.get("max").and_then(Value::as_u64))
        .unwrap_or(100);
    let prefix = template.get("prefix").and_then(Value::as_str).unwrap_or("");
    let specs = ordered_inputs(template.get("input"), None);
    let mut out = Vec::new();
    for ordinal in 0..=min {
        if ordinal >= max {
            break;
        }
        for spec in &specs {
            let base = match &names {
                Some(n) => n
                    .get(ordinal as usize)
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
                None if specs.len() == 1 => format!("{prefix}{ordinal}"),
                None => format!("{}{ordinal}", spec.name),
            };
            out.push(SocketSpec {
                name: format!("{}.{base}", s.name),
                ty: spec.socket_ty.clone(),
                widget: None,
            });
        }
    }
    out
}

impl<'a> NodeDefs<'a> {
    pub fn new(info: &'a Value) -> Self {
        NodeDefs { info }
    }

    /// The definition of node type `ty`, with the inputs core frontend extensions add.
    pub fn get(&self, ty: &str) -> Option<NodeDef<'a>> {
        let (name, def) = self.info.as_object()?.get_key_value(ty)?;
        let input = with_extension_inputs(name, def.get("input"));
        let inputs = ordered_inputs(input.as_deref(), def.get("input_order"));
        Some(NodeDef {
            name,
            display_name: def
                .get("display_name")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .unwrap_or(name)
                .to_owned(),
            inputs,
            outputs: def
                .get("output")
                .and_then(Value::as_array)
                .map(|o| {
                    o.iter()
                        .map(|t| match t {
                            Value::Array(_) => "COMBO".to_owned(),
                            other => super::graph::type_string(Some(other)),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The definition's inputs with what the frontend's core extensions add (`beforeRegisterNodeDef`):
/// an `upload` button after the required inputs for a media combo (`image_upload`, ...).
fn with_extension_inputs<'v>(
    node: &str,
    input: Option<&'v Value>,
) -> Option<std::borrow::Cow<'v, Value>> {
    let input = input?;
    let required = input.get("required").and_then(Value::as_object);
    let media = required.and_then(|r| {
        r.iter().find(|(_, spec)| {
            let list = spec.as_array().map(Vec::as_slice).unwrap_or_default();
            let opts = list.get(1);
            let upload = ["image_upload", "video_upload", "animated_image_upload"]
                .iter()
                .any(|k| opts.and_then(|o| o.get(*k)) == Some(&Value::Bool(true)));
            upload && combo_options(list).is_some()
        })
    });
    let audio = required.is_some_and(|r| {
        r.values().any(|spec| {
            let list = spec.as_array().map(Vec::as_slice).unwrap_or_default();
            list.get(1).and_then(|o| o.get("audio_upload")) == Some(&Value::Bool(true))
                && combo_options(list).is_some()
        })
    });
    if audio {
        // The audio player, then the upload button.
        let mut input = input.clone();
        if let Some(Value::Object(r)) = input.get_mut("required") {
            r.insert("audioUI".into(), serde_json::json!(["AUDIO_UI", {}]));
            r.insert("upload".into(), serde_json::json!(["AUDIOUPLOAD", {}]));
        }
        return Some(std::borrow::Cow::Owned(input));
    }
    let Some((name, spec)) = media else {
        if node == "SaveGLB" || node == "Preview3D" {
            // The 3D preview of the mesh.
            let mut input = input.clone();
            if let Some(Value::Object(r)) = input.get_mut("required") {
                r.insert("image".into(), serde_json::json!(["PREVIEW_3D"]));
            }
            return Some(std::borrow::Cow::Owned(input));
        }
        return Some(std::borrow::Cow::Borrowed(input));
    };
    let mut options = spec
        .get(1)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    options.insert("imageInputName".into(), Value::String(name.clone()));
    let upload = Value::Array(vec!["IMAGEUPLOAD".into(), Value::Object(options)]);
    let mut input = input.clone();
    if let Some(Value::Object(r)) = input.get_mut("required") {
        r.insert("upload".into(), upload);
    }
    Some(std::borrow::Cow::Owned(input))
}
