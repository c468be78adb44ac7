"""ComfyUI's own frontend, driven in headless Chromium over the DevTools protocol: the oracle for UI-format
workflows. One page converts many workflows: `Frontend.to_api(ui)` loads a UI workflow with
`app.loadGraphData` and returns `(await app.graphToPrompt()).output`, the API workflow ComfyUI would run.

Needs Debian's Chromium (`/usr/bin/chromium`) and a running ComfyUI (which serves the frontend).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Settings that keep the page quiet while workflows load: no dialogs for missing nodes or models, no templates.
QUIET_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}

# Loads `ui` and converts it; the load is checked (the page's own start-up can still replace the
# graph right after the first load) and retried.
CONVERT = """
(async (ui, name) => {
  const app = window.comfyAPI?.app?.app ?? window.app;
  const ids = JSON.stringify((ui.nodes ?? []).map(n => String(n.id)).sort());
  try {
    for (let attempt = 0; ; attempt++) {
      await app.loadGraphData(structuredClone(ui), true, false, name);
      await new Promise(r => setTimeout(r, 50));
      const loaded = JSON.stringify(app.graph.nodes.map(n => String(n.id)).sort());
      if (loaded === ids || attempt >= 3) break;
      await new Promise(r => setTimeout(r, 1000));
    }
    const out = (await app.graphToPrompt()).output;
    return JSON.stringify({ok: out});
  } catch (e) {
    return JSON.stringify({error: String(e && e.stack || e)});
  }
})
"""


def available() -> bool:
    return Path(CHROMIUM).exists()


def _post_settings(comfy_url: str) -> None:
    for key, value in QUIET_SETTINGS.items():
        req = urllib.request.Request(f"{comfy_url}/settings/{key}", data=json.dumps(value).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()


class Frontend:
    """One Chromium page on ComfyUI's frontend; call `close()` when done."""

    def __init__(self, comfy_url: str, *, deadline: float = 180) -> None:
        from harness import free_port, wait_until

        _post_settings(comfy_url)
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="cr-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_ARGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
             "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._ws = None
        self._session = None
        self._counter = 0
        try:
            def page() -> dict[str, Any] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                        pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                        return pages[0] if pages else None
                except OSError:
                    return None

            target = wait_until(page, "Chromium's DevTools endpoint", deadline=deadline)
            self.loop.run_until_complete(self._open(target["webSocketDebuggerUrl"], comfy_url, deadline))
        except BaseException:
            self.close()
            raise

    async def _open(self, ws_url: str, comfy_url: str, deadline: float) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=256 << 20)
        await self._call("Page.navigate", url=comfy_url)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            ready = await self._eval("!!((window.comfyAPI?.app?.app ?? window.app)?.graph) && typeof LiteGraph !== 'undefined'")
            if ready:
                # Extensions register their node types after the graph exists; wait for the registry too.
                n = await self._eval("Object.keys(LiteGraph.registered_node_types).length")
                if n and n > 100:
                    # Let the start-up load of the default workflow finish before ours.
                    await asyncio.sleep(2)
                    return
            await asyncio.sleep(0.5)
        raise AssertionError(f"ComfyUI's page at {comfy_url} did not load within {deadline} s")

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._counter += 1
        my_id = self._counter
        await self._ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self._ws.receive()).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def _eval(self, expr: str) -> Any:
        r = await self._call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def evaluate(self, expr: str) -> Any:
        return self.loop.run_until_complete(self._eval(expr))

    def to_api(self, ui: dict[str, Any], name: str = "workflow.json") -> dict[str, Any]:
        """The API workflow the frontend makes of `ui`; raises with the page's error when it cannot."""
        text = self.evaluate(f"{CONVERT}({json.dumps(ui)}, {json.dumps(name)})")
        result = json.loads(text)
        if "error" in result:
            raise FrontendError(result["error"])
        return result["ok"]

    def build(self, body: str) -> dict[str, Any]:
        """Run `body` (JavaScript with `app`, `add(type, x, y)` and `sleep(ms)` in scope) on a cleared
        graph and return the graph as the frontend saves it."""
        js = f"""
(async () => {{
  const app = window.comfyAPI?.app?.app ?? window.app;
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  app.graph.clear();
  const add = (type, x = 0, y = 0) => {{ const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; }};
  {body}
  await sleep(200);
  return JSON.stringify(app.graph.serialize());
}})()
"""
        return json.loads(self.evaluate(js))

    def close(self) -> None:
        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        try:
            self.loop.run_until_complete(shut())
        finally:
            self.loop.close()
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


class FrontendError(Exception):
    """The frontend could not load or convert a workflow."""
