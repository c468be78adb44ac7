// comfy-remote's frontend extension: the Remote API node takes the shape of
// the remote workflow it calls (one input per Remote Input, by name and
// type; one output per Remote Output), and a Remote Input's output socket
// takes its declared type. Node ids and naming rules come from the pack's
// routes (python/comfy_remote/nodes/routes.py), which also fetch an
// endpoint's signature server-side (token references never reach the page).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "comfy-remote.nodes";
// node.properties keys (saved in the workflow): the last shape the node
// took, and which remote output each output socket gives.
const SHAPE_PROP = "comfy_remote_shape";
const OUTPUTS_PROP = "comfy_remote_outputs";
// How ComfyUI draws an optional input (LiteGraph RenderShape.HollowCircle).
const OPTIONAL_SHAPE = 7;
const STATUS_WIDGET = "comfy_remote_status";
const REFRESH_DELAY_MS = 400;

let CFG = null;
// Service URLs the Modal Deployment nodes of this page reported, by node id.
const serviceUrls = new Map();

function chain(proto, name, fn) {
  const prev = proto[name];
  proto[name] = function (...args) {
    const r = prev?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
}

const isSlot = (name) => /^value\d+$/.test(name);
const isNamed = (name) => name.startsWith(CFG.named_input_prefix);
const remoteName = (name) => name.slice(CFG.named_input_prefix.length);
const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const linkOf = (node, id) => (id == null ? null : node.graph?.getLink?.(id) ?? node.graph?.links?.[id] ?? null);
const fits = (a, b) => a === "*" || b === "*" || a === b || (globalThis.LiteGraph?.isValidConnection?.(a, b) ?? false);

function resize(node) {
  const size = node.computeSize();
  node.setSize([Math.max(size[0], node.size[0]), size[1]]);
  node.setDirtyCanvas(true, true);
}

// ------------------------------------------------------------ status line

function setStatus(node, text) {
  node.comfyRemoteStatus = text || "";
  const w = widget(node, STATUS_WIDGET);
  if (w) {
    w.value = node.comfyRemoteStatus;
    resize(node);
  }
}

function addStatusWidget(node) {
  if (widget(node, STATUS_WIDGET)) return;
  const w = {
    name: STATUS_WIDGET,
    type: "comfy-remote-status",
    value: "",
    serialize: false,
    options: { serialize: false },
    draw(ctx, _node, width, y) {
      if (!this.value) return;
      ctx.save();
      ctx.fillStyle = "#e8b04a";
      ctx.font = "12px sans-serif";
      ctx.textBaseline = "top";
      lines(ctx, this.value, width - 20).forEach((line, i) => ctx.fillText(line, 10, y + 2 + i * 15));
      ctx.restore();
    },
    computeSize(width) {
      if (!this.value) return [width, 0];
      const ctx = app.canvas?.ctx;
      const n = ctx ? lines(ctx, this.value, (width || 300) - 20).length : 2;
      return [width, 4 + n * 15];
    },
  };
  node.addCustomWidget(w);
}

function lines(ctx, text, width) {
  ctx.font = "12px sans-serif";
  const out = [];
  let line = "";
  for (const word of String(text).split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      out.push(line);
      line = word;
    } else {
      line = next;
    }
  }
  if (line) out.push(line);
  return out;
}

// ------------------------------------------------------------ Remote API

// A hidden widget carries the output names into the prompt (the node's
// remote_outputs input); the node's properties keep them in the workflow.
function outputsWidget(node) {
  let w = widget(node, CFG.outputs_key);
  if (!w) {
    w = node.addWidget("text", CFG.outputs_key, node.properties?.[OUTPUTS_PROP] ?? "", () => {}, {});
    w.hidden = true;
    if (w.options) w.options.hidden = true;
  }
  return w;
}

function setSlotNames(node, names) {
  const value = names.length === 1 && names[0] === "" ? "" : JSON.stringify(names);
  node.properties[OUTPUTS_PROP] = value;
  outputsWidget(node).value = value;
}

function slotNames(node) {
  const raw = node.properties?.[OUTPUTS_PROP];
  if (!raw) return null;
  try {
    const names = JSON.parse(raw);
    return Array.isArray(names) ? names : null;
  } catch {
    return null;
  }
}

function dynamicInputs(node) {
  return (node.inputs ?? []).map((inp, i) => [inp, i]).filter(([inp]) => isSlot(inp.name) || isNamed(inp.name));
}

// Positional mode: keep one free value<N> socket after the connected ones.
function growSlots(node) {
  if (dynamicInputs(node).some(([inp]) => isNamed(inp.name))) return;
  let slots = dynamicInputs(node).filter(([inp]) => isSlot(inp.name));
  // Drop free sockets at the end, then add one.
  for (let k = slots.length - 1; k >= 0 && slots[k][0].link == null; k--) node.removeInput(slots[k][1]);
  slots = dynamicInputs(node);
  const next = slots.length ? Number(slots[slots.length - 1][0].name.slice(5)) + 1 : 0;
  if (next < CFG.max_inputs) node.addInput(`value${next}`, "*", { label: `value${next}` });
  resize(node);
}

// Take the endpoint's shape: named, typed inputs and outputs. Links stay
// where names match; a linked socket the endpoint no longer has is kept and
// named in the status line (running the node names it in its error too).
function applyShape(node, shape) {
  node.properties[SHAPE_PROP] = shape;
  const gone = [];
  if (!shape.inputs) {
    // The simple JSON shape has no signature: positional inputs, one result.
    growSlots(node);
    setStatus(node, "this endpoint publishes no signature: inputs are sent in order (value0, value1, ...)");
    return;
  }
  const prefix = CFG.named_input_prefix;
  const want = new Map(shape.inputs.map((i) => [i.name, i]));
  // Positional sockets become named ones (a link on value<N> moves to the Nth input).
  for (const [inp] of dynamicInputs(node)) {
    if (!isSlot(inp.name)) continue;
    const target = shape.inputs[Number(inp.name.slice(5))];
    if (inp.link != null && target && node.findInputSlot(prefix + target.name) < 0) {
      inp.name = prefix + target.name;
    }
  }
  for (const [inp, i] of dynamicInputs(node).reverse()) {
    const spec = isNamed(inp.name) ? want.get(remoteName(inp.name)) : null;
    if (spec) {
      styleInput(inp, spec);
      const link = linkOf(node, inp.link);
      if (link && !fits(link.type, spec.type)) gone.push(`${spec.name} takes ${spec.type}, not ${link.type}`);
    } else if (inp.link != null) {
      inp.label = `${isNamed(inp.name) ? remoteName(inp.name) : inp.name} (not on the endpoint)`;
      gone.push(`input ${inp.label}`);
    } else {
      node.removeInput(i);
    }
  }
  for (const spec of shape.inputs) {
    if (node.findInputSlot(prefix + spec.name) < 0) styleInput(node.addInput(prefix + spec.name, spec.type), spec);
  }

  // Outputs: socket k gives the remote output names[k].
  const outputs = new Map(shape.outputs.map((o) => [o.name, o]));
  let names = slotNames(node);
  if (!names) names = node.outputs[0]?.links?.length ? [""] : [];
  for (let k = names.length - 1; k >= 0; k--) {
    const slot = node.outputs[k];
    if (names[k] === "") {
      if (slot) {
        slot.label = shape.outputs.length === 1 ? shape.outputs[0].name : "result";
        slot.type = shape.outputs.length === 1 ? shape.outputs[0].type : CFG.result_type;
      }
    } else if (outputs.has(names[k])) {
      if (slot) {
        slot.label = names[k];
        slot.type = outputs.get(names[k]).type;
      }
    } else if (slot?.links?.length) {
      slot.label = `${names[k]} (not on the endpoint)`;
      gone.push(`output ${slot.label}`);
    } else {
      names.splice(k, 1);
      if (slot) node.removeOutput(k);
    }
  }
  for (const o of shape.outputs) {
    if (names.includes(o.name) || names.length >= CFG.max_outputs) continue;
    // A kept result socket already gives the one output.
    if (names.length === 1 && names[0] === "" && shape.outputs.length === 1) continue;
    const k = names.length;
    names.push(o.name);
    if (!node.outputs[k]) node.addOutput(k === 0 ? "result" : `output${k}`, o.type);
    node.outputs[k].label = o.name;
    node.outputs[k].type = o.type;
  }
  while (node.outputs.length > Math.max(names.length, 1) && !node.outputs[node.outputs.length - 1].links?.length) {
    node.removeOutput(node.outputs.length - 1);
  }
  setSlotNames(node, names);
  setStatus(node, gone.length ? `the endpoint changed: ${gone.join("; ")}` : "");
  resize(node);
}

// An optional input shows the remote default it takes when unconnected
// (`sigma = 0.5`), when the endpoint publishes it.
function styleInput(inp, spec) {
  const known = spec.optional && spec.default !== undefined;
  const shown = known ? JSON.stringify(spec.default) : null;
  inp.type = spec.type;
  inp.label = known ? `${spec.name} = ${shown}` : spec.name;
  inp.localized_name = inp.label;
  inp.shape = spec.optional ? OPTIONAL_SHAPE : undefined;
  const why = known
    ? ` (optional: unconnected, the remote workflow uses ${shown})`
    : spec.optional ? " (optional: unconnected, the remote workflow uses its own default)" : "";
  inp.tooltip = `${spec.name}: ${spec.type}${why}`;
}

// The endpoint the node calls: the widget, or a linked Modal Deployment's URL once it ran.
function endpointOf(node) {
  const slot = node.findInputSlot("endpoint_url");
  const inp = slot >= 0 ? node.inputs[slot] : null;
  if (inp?.link != null) {
    const link = linkOf(node, inp.link);
    return link ? serviceUrls.get(String(link.origin_id)) ?? null : null;
  }
  return widget(node, "endpoint")?.value ?? "";
}

async function refresh(node) {
  const endpoint = endpointOf(node);
  const known = node.properties[SHAPE_PROP];
  if (endpoint == null) {
    if (!known) setStatus(node, "the endpoint comes from a link: its inputs show once the linked node has run");
    return;
  }
  const body = { endpoint };
  for (const key of ["token", "modal_key", "modal_secret", "protocol"]) body[key] = widget(node, key)?.value ?? "";
  const ticket = (node.comfyRemoteTicket = (node.comfyRemoteTicket ?? 0) + 1);
  let answer;
  try {
    const r = await api.fetchApi("/comfy-remote/shape", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    answer = { ok: r.ok, doc: await r.json() };
  } catch (e) {
    answer = { ok: false, doc: { error: { message: String(e) } } };
  }
  if (ticket !== node.comfyRemoteTicket) return; // a newer request is under way
  if (answer.ok) {
    applyShape(node, answer.doc);
  } else {
    const why = answer.doc?.error?.message ?? "no answer";
    setStatus(node, known ? `showing the last known inputs and outputs (${known.endpoint}): ${why}` : why);
  }
}

function scheduleRefresh(node) {
  clearTimeout(node.comfyRemoteTimer);
  node.comfyRemoteTimer = setTimeout(() => refresh(node), REFRESH_DELAY_MS);
}

function setupRemoteApi(node, created) {
  outputsWidget(node);
  addStatusWidget(node);
  for (const key of ["endpoint", "token", "modal_key", "modal_secret", "protocol"]) {
    const w = widget(node, key);
    if (w && !w.comfyRemoteWatched) {
      w.comfyRemoteWatched = true;
      const prev = w.callback;
      w.callback = function (...args) {
        const r = prev?.apply(this, args);
        scheduleRefresh(node);
        return r;
      };
    }
  }
  if (created) {
    // One result socket and one free positional input until the shape is
    // known, unless the node is being loaded from a workflow (configure
    // runs right after creation, before this microtask).
    queueMicrotask(() => {
      if (node.comfyRemoteConfigured) return;
      while (node.outputs.length > 1) node.removeOutput(node.outputs.length - 1);
      growSlots(node);
    });
  } else {
    node.comfyRemoteConfigured = true;
    outputsWidget(node).value = node.properties[OUTPUTS_PROP] ?? "";
    // Saved before inputs were plain sockets: values.value<N> -> value<N>.
    for (const inp of node.inputs ?? []) {
      if (/^values\.value\d+$/.test(inp.name)) inp.name = inp.name.slice("values.".length);
    }
    // The shape saved with the workflow, until the endpoint answers (or if it never does).
    const saved = node.properties[SHAPE_PROP];
    if (saved?.inputs) applyShape(node, saved);
    else if (!dynamicInputs(node).length) growSlots(node);
  }
  scheduleRefresh(node);
}

function patchRemoteApi(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    setupRemoteApi(this, true);
  });
  chain(nodeType.prototype, "onConfigure", function () {
    setupRemoteApi(this, false);
  });
  chain(nodeType.prototype, "onConnectionsChange", function (side, _slot, _connected, _link, io) {
    if (side === 1 /* input */ && io && isSlot(io.name)) growSlots(this);
    if (side === 1 && io?.name === "endpoint_url") scheduleRefresh(this);
  });
}

// ------------------------------------------------------------ Remote Input

function applyInputType(node) {
  const type = widget(node, "type")?.value || "*";
  const out = node.outputs?.[0];
  if (out) {
    out.type = type;
    out.label = type === "*" ? "value" : type;
    // Links the new type does not fit are removed, as LiteGraph refuses them when drawn.
    for (const id of [...(out.links ?? [])]) {
      const link = linkOf(node, id);
      const target = link && node.graph.getNodeById(link.target_id);
      const want = target?.inputs?.[link.target_slot]?.type;
      if (want && !fits(type, want)) node.graph.removeLink(id);
    }
  }
  const def = node.inputs?.find((i) => i.name === "default");
  if (def) def.type = type;
  node.setDirtyCanvas(true, true);
}

function patchRemoteInput(nodeType) {
  const setup = function () {
    const w = widget(this, "type");
    if (w && !w.comfyRemoteWatched) {
      w.comfyRemoteWatched = true;
      const prev = w.callback;
      const node = this;
      w.callback = function (...args) {
        const r = prev?.apply(this, args);
        applyInputType(node);
        return r;
      };
    }
    applyInputType(this);
  };
  chain(nodeType.prototype, "onNodeCreated", setup);
  chain(nodeType.prototype, "onConfigure", setup);
}

// ------------------------------------------------------------ events

function onExecuted(event) {
  const { node: id, display_node: shown, output } = event.detail ?? {};
  const node = app.graph?.getNodeById?.(shown ?? id);
  if (!node || !output) return;
  const shape = output.comfy_remote_shape?.[0];
  if (shape && node.type === CFG.nodes.remote_api) applyShape(node, shape);
  const url = output.comfy_remote_service_url?.[0];
  if (node.type === CFG.nodes.modal_deployment && url) {
    serviceUrls.set(String(node.id), url);
    for (const other of app.graph.nodes ?? []) {
      if (other.type === CFG.nodes.remote_api) scheduleRefresh(other);
    }
  }
}

app.registerExtension({
  name: EXTENSION,
  async init() {
    try {
      CFG = await (await api.fetchApi("/comfy-remote/config")).json();
    } catch (e) {
      console.warn(`${EXTENSION}: the pack's routes did not answer; the Remote API node keeps positional inputs`, e);
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!CFG) return;
    if (nodeData.name === CFG.nodes.remote_input) patchRemoteInput(nodeType);
    if (nodeData.name === CFG.nodes.remote_api && CFG.named) patchRemoteApi(nodeType);
  },
  setup() {
    if (CFG) api.addEventListener("executed", onExecuted);
  },
});
