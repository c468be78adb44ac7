"""Headless Chromium loads ComfyUI's page: the comfy-remote nodes are listed
(/object_info fetched by the page and the frontend's node registry), and a
screenshot of the canvas with a Remote API node (inputs linked) is written to
artifacts/ui_remote_api.png.

Needs COMFYUI_DIR and /usr/bin/chromium (apt-get install -y chromium).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
NODES = ["RemoteAPI", "RemoteInput", "RemoteOutput", "ModalDeployment"]

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: UI screenshot test skipped", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)

# Builds a small graph: an image and a number feeding a Remote API node,
# whose result goes to a preview. Returns the node's input names.
BUILD_GRAPH = """
(async () => {
  const app = window.comfyAPI?.app?.app ?? window.app;
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const img = add("EmptyImage", 40, 60);
  const num = add("PrimitiveInt", 40, 330);
  const remote = add("RemoteAPI", 420, 60);
  const pick = add("RemoteResultPick", 900, 60);
  const prev = add("PreviewAny", 900, 300);
  img.connect(0, remote, remote.findInputSlot("values.value0"));
  await new Promise(r => setTimeout(r, 300));
  let slot = remote.findInputSlot("values.value1");
  if (slot >= 0) num.connect(0, remote, slot);
  remote.connect(0, pick, 0);
  pick.connect(0, prev, 0);
  app.canvas.ds.scale = 1.0; app.canvas.ds.offset = [90, 140];
  app.graph.setDirtyCanvas(true, true);
  await new Promise(r => setTimeout(r, 800));
  return remote.inputs.map(i => i.name).concat(remote.widgets.map(w => w.name));
})()
"""


async def cdp_session(ws_url: str) -> Any:
    import aiohttp

    session = aiohttp.ClientSession()
    ws = await session.ws_connect(ws_url, max_msg_size=64 << 20)
    counter = 0

    async def call(method: str, **params: Any) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        my_id = counter
        await ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = json.loads((await ws.receive(timeout=60)).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def close() -> None:
        await ws.close()
        await session.close()

    return call, close


async def evaluate(call: Any, expr: str) -> Any:
    r = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in r:
        raise AssertionError(f"page error: {r['exceptionDetails']}")
    return r["result"].get("value")


def test_nodes_listed_and_screenshot(comfyui_dir: Path, comfy_python: Path, tmp_path: Path) -> None:
    from harness import free_port, start_comfyui, wait_until

    comfy = start_comfyui(comfy_python, comfyui_dir, tmp_path / "home")
    # A fresh user would get the templates dialog over the canvas.
    req = urllib.request.Request(f"{comfy.url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    port = free_port()
    profile = tempfile.mkdtemp(prefix="cr-chromium-")
    chrome = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1400,900",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def targets() -> list[dict[str, Any]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                    return pages or None
            except OSError:
                return None

        page = wait_until(targets, "Chromium's DevTools endpoint", deadline=60)[0]

        async def drive() -> tuple[list[str], list[str], list[str], bytes]:
            call, close = await cdp_session(page["webSocketDebuggerUrl"])
            try:
                await call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
                await call("Page.navigate", url=comfy.url)
                end = time.monotonic() + 120
                while time.monotonic() < end:
                    ready = await evaluate(call, "!!((window.comfyAPI?.app?.app ?? window.app)?.graph) && typeof LiteGraph !== 'undefined' && !!LiteGraph.registered_node_types['RemoteAPI']")
                    if ready:
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise AssertionError("ComfyUI's page did not load the node registry within 120 s")
                listed = await evaluate(call, f"fetch('/object_info').then(r => r.json()).then(o => {json.dumps(NODES)}.filter(n => n in o))")
                registered = await evaluate(call, f"{json.dumps(NODES)}.filter(n => n in LiteGraph.registered_node_types)")
                # Close anything the frontend opened on first start (templates, tips).
                await evaluate(call, "document.querySelectorAll('.p-dialog-close-button, button[aria-label=Close]').forEach(b => b.click()); true")
                names = await evaluate(call, BUILD_GRAPH)
                await asyncio.sleep(0.5)
                await call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)
                await call("Input.dispatchKeyEvent", type="keyUp", key="Escape", code="Escape", windowsVirtualKeyCode=27)
                await asyncio.sleep(0.5)
                shot = await call("Page.captureScreenshot", format="png")
                return listed, registered, names, base64.b64decode(shot["data"])
            finally:
                await close()

        listed, registered, names, png = asyncio.run(drive())
        out = ROOT / "artifacts"
        out.mkdir(exist_ok=True)
        (out / "ui_remote_api.png").write_bytes(png)
        assert listed == NODES, f"/object_info lists {listed}"
        assert registered == NODES, f"the frontend registered {registered}"
        for n in ("values.value0", "endpoint", "timeout", "token"):
            assert n in names, names
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    finally:
        chrome.terminate()
        chrome.wait(15)
        shutil.rmtree(profile, ignore_errors=True)
        comfy.stop()
