"""What the artist sees, in headless Chromium against two real ComfyUIs: the
local one with the pack (its frontend extension included) and a remote one
behind `comfy-remote serve`.

A Remote Input declared IMAGE refuses a link to a MASK input and shows no
job widget. A workflow whose Remote API node points at the worker is built,
saved and opened again in a fresh page: the node shows the remote workflow's inputs
by name and type (optional ones hollow, with the remote default) and one
output per Remote Output. Run is pressed: the node's progress bar moves, its
progress text follows the remote steps, a remote preview shows on the node,
and the result shows in a Preview Image node, pixel for pixel. On a long job
Cancel is pressed: the node ends interrupted and the remote job is
`canceled`. Pointed at an endpoint that does not answer, the node keeps the
shape it knew and says so; pointed at a changed remote workflow, it names
the linked input the endpoint no longer has. Screenshots go to
artifacts/ui/.

Needs COMFYUI_DIR and /usr/bin/chromium (apt-get install -y chromium).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
NODES = ["RemoteAPI", "RemoteResultPick", "RemoteInput", "RemoteOutput", "ModalDeployment"]
COLOR = 0xCC6633

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: the browser test did not run", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: the browser test did not run (apt-get install -y chromium)",
                allow_module_level=True)


def remote_input(name: str, comfy_type: str, default: list[Any] | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"name": name, "type": comfy_type}
    if default is not None:
        inputs["default"] = default
    return {"class_type": "RemoteInput", "inputs": inputs}


# The remote workflow: an image, and two optional inputs with remote
# defaults, through the test node that reports progress with a preview
# each step; two outputs.
REMOTE_WORKFLOW = {
    "1": remote_input("image", "IMAGE"),
    "2": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
    "3": remote_input("steps", "INT", ["2", 0]),
    "4": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.25}},
    "5": remote_input("seconds_per_step", "FLOAT", ["4", 0]),
    "6": {"class_type": "CRTestSlow", "inputs": {"image": ["1", 0], "steps": ["3", 0], "seconds_per_step": ["5", 0]}},
    "7": {"class_type": "ImageToMask", "inputs": {"image": ["6", 0], "channel": "red"}},
    "8": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["6", 0]}},
    "9": {"class_type": "RemoteOutput", "inputs": {"name": "mask", "value": ["7", 0]}},
}

# The same workflow after an edit on the remote side: `steps` renamed
# `count`, served by a second worker on the same remote ComfyUI.
CHANGED_WORKFLOW = {**REMOTE_WORKFLOW, "3": remote_input("count", "INT", ["2", 0])}

# In the page: a Remote Input declared IMAGE, linked to an IMAGE input and
# to a MASK one, as an artist builds a remote workflow.
TYPED_INPUT = """
(() => {
  const app = window.comfyAPI.app.app;
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const input = add("RemoteInput", 30, 40);
  const w = input.widgets.find(w => w.name === "type");
  w.value = "IMAGE"; w.callback?.(w.value);
  const invert = add("ImageInvert", 400, 40), mask = add("InvertMask", 400, 200);
  const toImage = !!input.connect(0, invert, 0), toMask = !!input.connect(0, mask, 0);
  const out = input.outputs[0], widgets = input.widgets.map(w => w.name);
  app.graph.clear();
  return {type: out.type, label: out.label, toImage, toMask, widgets};
})
"""

# In the page: the workflow the artist builds. Returns the node ids.
BUILD = """
(async (endpoint, color) => {
  const app = window.comfyAPI.app.app;
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const set = (node, name, value) => { const w = node.widgets.find(w => w.name === name); w.value = value; w.callback?.(value); };
  const img = add("EmptyImage", 30, 40);
  set(img, "width", 64); set(img, "height", 48); set(img, "color", color);
  const steps = add("PrimitiveInt", 30, 330);
  set(steps, "value", 8);
  const remote = add("RemoteAPI", 360, 40);
  set(remote, "endpoint", endpoint);
  const until = async (ok) => { for (let i = 0; i < 600 && !ok(); i++) await new Promise(r => setTimeout(r, 100)); };
  await until(() => remote.findInputSlot("input:image") >= 0);
  img.connect(0, remote, remote.findInputSlot("input:image"));
  steps.connect(0, remote, remote.findInputSlot("input:steps"));
  const preview = add("PreviewImage", 760, 40);
  remote.connect(0, preview, 0);
  const toImage = add("MaskToImage", 760, 330);
  remote.connect(1, toImage, 0);
  const maskPreview = add("PreviewImage", 1000, 330);
  toImage.connect(0, maskPreview, 0);
  return {saved: app.graph.serialize(), ids: {remote: remote.id, steps: steps.id, preview: preview.id, mask: maskPreview.id}};
})
"""

# In a fresh page: open the saved workflow, wait for the node to take the
# endpoint's shape, report what the node shows.
OPEN = """
(async (saved, id) => {
  const app = window.comfyAPI.app.app;
  // The frontend may still restore its last workflow after the page loads,
  // replacing this one: load until the graph keeps it.
  let node;
  for (let i = 0; i < 30; i++) {
    await app.loadGraphData(saved, true, false, "remote-api.json");
    await new Promise(r => setTimeout(r, 500));
    node = app.graph.getNodeById(id);
    if (node) break;
  }
  for (let i = 0; i < 600 && !(node.properties.comfy_remote_shape && node.comfyRemoteStatus === ""); i++)
    await new Promise(r => setTimeout(r, 100));
  app.canvas.ds.scale = 1.0; app.canvas.ds.offset = [40, 60];
  app.graph.setDirtyCanvas(true, true);
  const api = window.comfyAPI.api.api;
  window.__events = [];
  for (const t of ["progress_text", "progress_state", "execution_start", "execution_success", "execution_error",
                   "execution_interrupted"])
    api.addEventListener(t, e => window.__events.push({type: t, detail: e.detail}));
  return {
    status: node.comfyRemoteStatus,
    inputs: node.inputs.filter(i => i.name.startsWith("input:") || /^value\\d+$/.test(i.name))
      .map(i => ({name: i.name, label: i.label, type: i.type, optional: i.shape === 7, linked: i.link != null})),
    outputs: node.outputs.map(o => ({label: o.label, type: o.type, linked: (o.links || []).length > 0})),
  };
})
"""

# While a prompt runs: what the Remote API node shows, sampled until it ends.
WATCH = """
(async (id, stopAfterText) => {
  const app = window.comfyAPI.app.app;
  const node = app.graph.getNodeById(id);
  const samples = [];
  const ended = () => window.__events.find(e => e.type.startsWith("execution_") && e.type !== "execution_start");
  for (let i = 0; i < 6000 && !ended(); i++) {
    const text = node.widgets?.find(w => w.name === "$$node-text-preview")?.value ?? null;
    const preview = (app.nodePreviewImages?.[String(id)] ?? [])[0] ?? null;
    samples.push({progress: node.progress ?? null, text, preview});
    if (stopAfterText && text && text.includes(stopAfterText)) break;
    await new Promise(r => setTimeout(r, 50));
  }
  await new Promise(r => setTimeout(r, 100));
  const last = node.widgets?.find(w => w.name === "$$node-text-preview")?.value ?? null;
  return {samples, end: ended() ?? null, last};
})
"""


# What the page was told about the node while it ran: the progress its bar
# shows (progress_state) and the texts it shows (progress_text).
EVENTS = """
(id) => ({
  progress: window.__events.filter(e => e.type === "progress_state" && e.detail.nodes?.[String(id)])
    .map(e => e.detail.nodes[String(id)]).filter(n => n.state === "running").map(n => n.value / n.max),
  texts: window.__events.filter(e => e.type === "progress_text" && String(e.detail.nodeId) === String(id))
    .map(e => e.detail.text),
})
"""

# In the page: point the Remote API node at another endpoint (as an artist
# edits the field), wait for its status line to say `expect`; what it shows.
RETARGET = """
(async (id, endpoint, expect) => {
  const app = window.comfyAPI.app.app;
  const node = app.graph.getNodeById(id);
  const w = node.widgets.find(w => w.name === "endpoint");
  w.value = endpoint; w.callback?.(endpoint);
  for (let i = 0; i < 600 && !(node.comfyRemoteStatus || "").includes(expect); i++)
    await new Promise(r => setTimeout(r, 100));
  app.graph.setDirtyCanvas(true, true);
  await new Promise(r => setTimeout(r, 300));
  return {status: node.comfyRemoteStatus,
          inputs: node.inputs.filter(i => i.name.startsWith("input:")).map(i => ({label: i.label, linked: i.link != null})),
          outputs: node.outputs.map(o => o.label)};
})
"""

# The pictures the Preview Image nodes draw, once loaded: their sizes.
SHOWN = """
(async (ids) => {
  const app = window.comfyAPI.app.app;
  const sizes = () => ids.map(id => {
    const img = app.graph.getNodeById(id).imgs?.[0];
    return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
  });
  for (let i = 0; i < 600 && sizes().includes(null); i++) await new Promise(r => setTimeout(r, 50));
  app.graph.setDirtyCanvas(true, true);
  await new Promise(r => setTimeout(r, 300));
  return sizes();
})
"""


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.counter = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.counter += 1
        my_id = self.counter
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            # Longer than any page-side wait loop: those end the call.
            msg = json.loads((await self.ws.receive(timeout=600)).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, fn: str, *args: Any) -> Any:
        """Call the page function ``fn`` with JSON arguments; its (awaited) result."""
        expr = f"({fn})(...{json.dumps(list(args))})"
        r = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page error: {json.dumps(r['exceptionDetails'])[:2000]}")
        return r["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        ready = ("() => !!window.comfyAPI?.app?.app?.graph && typeof LiteGraph !== 'undefined'"
                 " && !!LiteGraph.registered_node_types['RemoteAPI']")
        end = time.monotonic() + 180
        while not await self.js(ready):
            assert time.monotonic() < end, "ComfyUI's page did not load the node registry"
            await asyncio.sleep(0.25)
        # Close what the frontend opens on a first start (templates, tips).
        await self.js("() => document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element."""
        box = await self.js(
            "(s) => { const r = document.querySelector(s)?.getBoundingClientRect(); return r && [r.x + r.width / 2, r.y + r.height / 2]; }",
            selector,
        )
        assert box, f"no {selector} on the page"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self, name: str) -> bytes:
        png = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / name).write_bytes(png)
        return png


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, comfyui_dir: Path, comfy_python: Path) -> Iterator[dict[str, Any]]:
    from harness import free_port, request, start_comfyui, start_worker, wait_until

    tmp = tmp_path_factory.mktemp("ui")
    started: list[Any] = []
    profile = tempfile.mkdtemp(prefix="cr-chromium-")
    chrome = None
    try:
        worker = start_worker(REMOTE_WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=tmp / "remote",
                              spool=tmp / "remote" / "spool")
        started.append(worker)
        # The changed workflow, served beside it from the ComfyUI it started.
        found = re.search(r"starting ComfyUI .*port=(\d+)", worker.log_path.read_text(errors="replace"))
        assert found, "the worker's log names no ComfyUI port"
        changed = start_worker(CHANGED_WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=tmp / "changed",
                               spool=tmp / "changed" / "spool",
                               extra=["--comfyui-url", f"http://127.0.0.1:{found.group(1)}"])
        started.append(changed)
        local = start_comfyui(comfy_python, comfyui_dir, tmp / "local")
        started.append(local)
        # A fresh user would get the templates dialog over the canvas.
        request("POST", f"{local.url}/settings/Comfy.TutorialCompleted", b"true")
        # Nor may a page restore its last workflow over the one the test opens.
        request("POST", f"{local.url}/settings/Comfy.Workflow.Persist", b"false")
        port = free_port()
        chrome = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1400,900",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

        def page_target() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                    return pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                return None

        yield {"worker": worker, "changed": changed, "local": local,
               "page": wait_until(page_target, "Chromium's DevTools endpoint")}
    finally:
        if chrome is not None:
            chrome.terminate()
            chrome.wait(15)
        shutil.rmtree(profile, ignore_errors=True)
        for p in reversed(started):
            p.stop()
        logs = ARTIFACTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for f in tmp.rglob("*.log"):
            shutil.copy(f, logs / f"{f.parent.name}-{f.name}")


def view(local_url: str, image: dict[str, str]) -> Any:
    """A Preview Image node's picture, as ComfyUI serves it to the page."""
    from PIL import Image

    q = urllib.parse.urlencode(image)
    with urllib.request.urlopen(f"{local_url}/view?{q}", timeout=30) as r:
        return Image.open(io.BytesIO(r.read())).convert("RGB")


def colors(img: Any) -> set[tuple[int, ...]]:
    return {c for _, c in img.getcolors(maxcolors=1 << 16)}


def test_the_artist_sees_named_inputs_progress_previews_results_and_cancel(servers: dict[str, Any]) -> None:
    import aiohttp
    from harness import free_port

    worker, local = servers["worker"], servers["local"]

    async def drive() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.ws_connect(servers["page"], max_msg_size=64 << 20) as ws:
            page = Page(ws)
            await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1,
                            mobile=False)
            await page.open(local.url)
            listed = await page.js(f"() => fetch('/object_info').then(r => r.json()).then(o => {json.dumps(NODES)}.filter(n => n in o))")
            registered = await page.js(f"() => {json.dumps(NODES)}.filter(n => n in LiteGraph.registered_node_types)")
            typed = await page.js(TYPED_INPUT)
            built = await page.js(BUILD, worker.url, COLOR)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "remote-api.json").write_text(json.dumps(built["saved"], indent=1))
            ids = built["ids"]

            # Open the saved workflow in a fresh page, as an artist opens a file.
            await page.open(local.url)
            shown = await page.js(OPEN, built["saved"], ids["remote"])
            await asyncio.sleep(0.5)
            await page.screenshot("1-named-inputs.png")

            await page.click("[data-testid=queue-button]")
            run = await page.js(WATCH, ids["remote"], None)
            run["events"] = await page.js(EVENTS, ids["remote"])
            outputs = await page.js("() => window.comfyAPI.app.app._nodeOutputs")
            drawn = await page.js(SHOWN, [ids["preview"], ids["mask"]])
            await page.screenshot("3-result.png")
            mid = next((i for i, x in enumerate(run["samples"]) if x["preview"] and (x["progress"] or 0) > 0), None)

            # A long job, canceled once it is under way.
            await page.js("(id) => { const n = window.comfyAPI.app.app.graph.getNodeById(id);"
                          " n.widgets.find(w => w.name === 'value').value = 100000; window.__events.length = 0; }",
                          ids["steps"])
            await page.click("[data-testid=queue-button]")
            # Any step of the long job (the text moves faster than the page is sampled).
            started = await page.js(WATCH, ids["remote"], "/100000")
            await page.screenshot("2-progress-and-preview.png")
            await page.click("button[aria-label='Cancel current run']")
            canceled = await page.js(WATCH, ids["remote"], None)
            await asyncio.sleep(0.5)
            texts = await page.js("() => window.__events.filter(e => e.type === 'progress_text').map(e => e.detail.text)")
            await page.screenshot("4-canceled.png")

            # The endpoint stops answering: the node keeps the shape it knew and says so.
            gone = await page.js(RETARGET, ids["remote"], f"http://127.0.0.1:{free_port()}", "last known")
            await page.screenshot("5-unreachable.png")
            # The remote workflow changed: the linked input it lost is kept and named.
            moved = await page.js(RETARGET, ids["remote"], servers["changed"].url, "endpoint changed")
            await page.screenshot("6-changed.png")
            return {"gone": gone, "moved": moved, "listed": listed, "registered": registered, "typed": typed, "ids": ids, "shown": shown, "run": run,
                    "outputs": outputs, "drawn": drawn, "mid": mid, "started": started, "canceled": canceled, "texts": texts}

    seen = asyncio.run(drive())
    ids = seen["ids"]
    assert seen["listed"] == NODES, f"/object_info lists {seen['listed']}"
    assert seen["registered"] == NODES, f"the frontend registered {seen['registered']}"

    # Remote Input: its output takes the declared type, so a wrong link is refused; no job widget.
    assert seen["typed"] == {"type": "IMAGE", "label": "IMAGE", "toImage": True, "toMask": False,
                             "widgets": ["name", "type"]}, seen["typed"]

    # The node shows the remote workflow's shape, after a save and a reload.
    shown = seen["shown"]
    assert shown["status"] == "", shown
    # Optional inputs show the default the remote workflow gives them.
    assert [(i["label"], i["type"], i["optional"]) for i in shown["inputs"]] == [
        ("image", "IMAGE", False), ("steps = 3", "INT", True), ("seconds_per_step = 0.25", "FLOAT", True)], shown["inputs"]
    assert [i["linked"] for i in shown["inputs"]] == [True, True, False], shown["inputs"]
    assert [(o["label"], o["type"], o["linked"]) for o in shown["outputs"]] == [
        ("image", "IMAGE", True), ("mask", "MASK", True)], shown["outputs"]

    # Run: the progress bar moves, the text follows the remote steps, a remote preview shows.
    run = seen["run"]
    assert run["end"] and run["end"]["type"] == "execution_success", run["end"]
    told = run["events"]["progress"]
    assert len({p for p in told if 0 < p < 1}) >= 3, f"the progress bar did not move: {told}"
    assert told == sorted(told), f"the progress bar went back: {told}"
    drawn = [x["progress"] for x in run["samples"] if x["progress"] is not None]
    assert any(0 < p < 1 for p in drawn), f"the node drew no progress bar: {drawn}"
    told_texts = run["events"]["texts"]
    steps = {t.rsplit("step ", 1)[1] for t in told_texts if "CRTestSlow" in t and "step " in t}
    assert len(steps) >= 4 and "8/8" in steps, told_texts
    texts = [x["text"] for x in run["samples"] if x["text"]]
    assert any("CRTestSlow" in t and "step " in t for t in texts), sorted(set(texts))
    assert (run["last"] or "").startswith("done: image, mask"), run["last"]
    assert seen["mid"] is not None, "no remote preview showed on the node while the job ran"
    previews = {x["preview"] for x in run["samples"] if x["preview"]}
    assert len(previews) >= 2, "the preview did not follow the steps"

    # The result, in the Preview Image nodes: the image passed through, its red channel as the mask.
    assert seen["drawn"] == [[64, 48], [64, 48]], seen["drawn"]
    outputs = seen["outputs"]
    (picture,) = outputs[str(ids["preview"])]["images"]
    img = view(local.url, picture)
    assert img.size == (64, 48)
    rgb = (COLOR >> 16 & 255, COLOR >> 8 & 255, COLOR & 255)
    assert colors(img) == {rgb}, sorted(colors(img))[:5]
    (mask,) = outputs[str(ids["mask"])]["images"]
    assert colors(view(local.url, mask)) == {(rgb[0],) * 3}

    # Cancel: the node ends interrupted, the remote job is canceled.
    assert any(re.search(r"step \d+/100000", x["text"] or "") for x in seen["started"]["samples"]), \
        seen["started"]["samples"][-3:]
    end = seen["canceled"]["end"]
    assert end and end["type"] == "execution_interrupted", end
    assert str(end["detail"]["node_id"]) == str(ids["remote"]), end
    assert seen["texts"][-1] == "canceled", seen["texts"][-5:]
    job_id = next(t.split()[2].rstrip(":") for t in seen["texts"] if t.startswith("remote job "))
    status = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and status != "canceled":
        status = worker.job(job_id)["status"]
        time.sleep(0.1)
    assert status == "canceled", status

    # Unreachable: the inputs and outputs it knew stay, and the node says why.
    gone = seen["gone"]
    assert gone["status"].startswith(f"showing the last known inputs and outputs ({worker.url})"), gone
    assert [i["label"] for i in gone["inputs"]] == ["image", "steps = 3", "seconds_per_step = 0.25"], gone
    assert gone["outputs"] == ["image", "mask"], gone
    # Changed: the new input shows, the linked one the endpoint lost is kept and named.
    moved = seen["moved"]
    assert moved["status"] == "the endpoint changed: input steps (not on the endpoint)", moved
    assert {(i["label"], i["linked"]) for i in moved["inputs"]} == {
        ("image", True), ("steps (not on the endpoint)", True), ("count = 3", False),
        ("seconds_per_step = 0.25", False)}, moved

    for name in ("1-named-inputs.png", "2-progress-and-preview.png", "3-result.png", "4-canceled.png",
                 "5-unreachable.png", "6-changed.png"):
        png = (ARTIFACTS / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
