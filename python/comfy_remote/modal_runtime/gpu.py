"""The GPU container: starts ComfyUI behind ``comfy-remote serve`` once, then runs one job per call over loopback.

Progress from the worker's event stream is mirrored into the job store, so
the web front (any container) can report it; a cancel flag in the store, or
Modal cancelling the call, cancels the job on the worker (one job, not a
global interrupt).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from comfy_remote.modal_runtime.backend import JobCanceled, JobFailed, JobStore

CONTAINER = "application/vnd.comfy-remote.container"
# At most this many progress writes per second per job (the store is remote).
PROGRESS_WRITES_PER_S = 10
CANCEL_CHECK_S = 0.5


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def purge_preloaded_utils(comfyui_dir: str | os.PathLike[str]) -> list[str]:
    """Drop any ``utils`` module not from ComfyUI (a PyPI ``utils``, a stray module) and put ComfyUI first on sys.path.

    Without this, ``import utils.install_util`` fails with "'utils' is not a
    package" when something imported another ``utils`` first. Returns the
    purged module names.
    """
    comfy = os.path.realpath(comfyui_dir)
    comfy_utils = os.path.join(comfy, "utils")
    purged = []
    for name in list(sys.modules):
        if name != "utils" and not name.startswith("utils."):
            continue
        mod = sys.modules[name]
        paths = [os.path.realpath(p) for p in (getattr(mod, "__path__", None) or [])]
        file = os.path.realpath(getattr(mod, "__file__", None) or "")
        if comfy_utils in paths or file.startswith(comfy_utils + os.sep):
            continue
        del sys.modules[name]
        purged.append(name)
    if comfy in (os.path.realpath(p) for p in sys.path):
        sys.path[:] = [p for p in sys.path if os.path.realpath(p) != comfy]
    sys.path.insert(0, comfy)
    return purged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GpuRuntime:
    """A running ``comfy-remote serve`` (and its ComfyUI) on loopback."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        *,
        comfyui_dir: str,
        workflow: str,
        startup_timeout_s: float = 600,
        command: Sequence[str] | None = None,
        python: str | None = None,
        extra_args: Sequence[str] = (),
        home: str | None = None,
    ) -> GpuRuntime:
        """Purge ``utils``, start the worker (which starts ComfyUI) and wait until it is ready."""
        purge_preloaded_utils(comfyui_dir)
        port = _free_port()
        base = Path(home or os.environ.get("COMFY_REMOTE_HOME", "/tmp/comfy-remote"))
        base.mkdir(parents=True, exist_ok=True)
        argv = [
            *(command or [sys.executable, "-m", "comfy_remote"]),
            "serve",
            "--workflow", workflow,
            "--comfyui", comfyui_dir,
            "--python", python or sys.executable,
            "--listen", f"127.0.0.1:{port}",
            "--spool", str(base / "spool"),
            *extra_args,
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [comfyui_dir, *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("COMFY_REMOTE_TOKEN", None)  # loopback only: the public token guards the web front
        log_path = base / "worker.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        rt = cls(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"comfy-remote serve exited ({proc.returncode}) during start-up:\n{rt.log_tail()}")
            try:
                with urllib.request.urlopen(rt.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                rt.stop()
                raise RuntimeError(f"ComfyUI was not ready after {startup_timeout_s:.0f} s:\n{rt.log_tail()}")
            time.sleep(0.25)
        with urllib.request.urlopen(rt.url + "/v1/info", timeout=10) as r:
            rt.info = json.loads(r.read())
        return rt

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except (ProcessLookupError, PermissionError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    async def run_job(self, job_id: str, body: bytes, content_type: str, store: JobStore) -> bytes:
        """Run one job on the local worker; returns the outputs container.

        Raises ``JobFailed`` / ``JobCanceled``; the final state is written to the store first.
        """
        import aiohttp

        if self.info:
            await store.put("info", self.info)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(self.url, timeout=timeout) as http:
            async with http.post(
                "/v1/jobs", data=body,
                headers={"Content-Type": content_type or CONTAINER, "Idempotency-Key": job_id},
            ) as r:
                submitted = await r.json(content_type=None)
                if r.status >= 400:
                    err = submitted.get("error", {}) if isinstance(submitted, dict) else {}
                    await store.put(f"final:{job_id}", {
                        "status": "failed", "updated_at": now(),
                        "error": {"code": err.get("code", "invalid_input"),
                                  "message": err.get("message", f"the worker refused the job (HTTP {r.status})")},
                    })
                    raise JobFailed(err.get("message", f"HTTP {r.status}"))
            local = submitted["id"]
            watcher = asyncio.create_task(self._watch_cancel(http, local, job_id, store))
            try:
                view = await self._follow(http, local, job_id, store)
            except asyncio.CancelledError:
                # Modal (or the stand-in) cancelled this call: stop the job on the GPU.
                await asyncio.shield(self._cancel_local(http, local, job_id, store))
                raise
            finally:
                watcher.cancel()
            status = view["status"]
            if status == "succeeded":
                async with http.get(f"/v1/jobs/{local}/result") as r:
                    data = await r.read()
                result = view.get("result") or {}
                await store.put(f"final:{job_id}", {
                    "status": "succeeded", "updated_at": now(), "progress": view.get("progress"),
                    "result": {"outputs": result.get("outputs", []), "bytes": len(data)},
                })
                return data
            error = view.get("error") or {"code": "execution_failed", "message": f"the job ended {status}"}
            await store.put(f"final:{job_id}", {
                "status": status, "updated_at": now(), "progress": view.get("progress"), "error": error,
            })
            if status == "canceled":
                raise JobCanceled(error.get("message", "canceled"))
            raise JobFailed(error.get("message", status))

    async def _cancel_local(self, http: Any, local: str, job_id: str, store: JobStore) -> None:
        try:
            async with http.post(f"/v1/jobs/{local}/cancel") as r:
                await r.read()
        finally:
            await store.put(f"final:{job_id}", {
                "status": "canceled", "updated_at": now(),
                "error": {"code": "canceled", "message": "the job was canceled"},
            })

    async def _watch_cancel(self, http: Any, local: str, job_id: str, store: JobStore) -> None:
        """Cancel the local job when the web front sets ``cancel:<id>`` (a cancel landing on any container)."""
        while not await store.get(f"cancel:{job_id}"):
            await asyncio.sleep(CANCEL_CHECK_S)
        async with http.post(f"/v1/jobs/{local}/cancel") as r:
            await r.read()

    async def _follow(self, http: Any, local: str, job_id: str, store: JobStore) -> dict[str, Any]:
        """Follow the worker's SSE stream to the end, mirroring progress; returns the final view."""
        last_write = 0.0
        status = "queued"
        async with http.get(f"/v1/jobs/{local}/events", headers={"Accept": "text/event-stream"}) as r:
            event, data = "", []
            async for raw in r.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                t = time.monotonic()
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if key == "event":
                        event = value
                    elif key == "data":
                        data.append(value)
                    continue
                if not data:
                    continue
                payload = json.loads("\n".join(data))
                name, event, data = event, "", []
                if name in ("status", "done"):
                    status = payload.get("status", status)
                    progress = payload.get("progress")
                elif name == "progress":
                    progress = payload
                else:
                    continue  # previews stay on the GPU side
                if name == "done":
                    return payload
                changed = name == "status"
                if changed or t - last_write >= 1.0 / PROGRESS_WRITES_PER_S:
                    last_write = t
                    await store.put(f"progress:{job_id}", {"status": status, "progress": progress, "updated_at": now()})
        # The stream ended without `done` (worker restarted?): ask once.
        async with http.get(f"/v1/jobs/{local}") as r:
            return dict(await r.json(content_type=None))
