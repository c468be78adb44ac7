"""The GPU container: starts ComfyUI behind ``comfy-remote serve`` once, then runs one job per call over loopback.

Each job goes to the local worker through the native client
(``comfy_remote._native.Client``: submit, follow its events, fetch the
result). Every change of the job (its JobView, then each progress snapshot)
becomes a numbered record in the job store and rings the job's doorbell, so
the web front (any container) reports it at once. A cancel in the store
cancels the job on the worker (one job, not a global interrupt) and the job
is followed to its end; Modal cancelling the call does the same.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from comfy_remote import _native
from comfy_remote.modal_runtime import state
from comfy_remote.modal_runtime.backend import JobCanceled, JobFailed, JobStore
from comfy_remote.modal_runtime.state import Record

CONTAINER = "application/vnd.comfy-remote.container"
# Progress-only records are written at most this often per job (the store is
# remote); a snapshot that comes sooner is written when the interval ends.
PROGRESS_INTERVAL_S = 0.05
# How long one wait for the local job's next event lasts (then cancellation is checked).
EVENT_WAIT_S = 0.5
# A cancel is noticed by its doorbell; this bounds the wait when a bell is lost.
CANCEL_POLL_S = 2.0
# Previews (images, larger than progress) are written at most this often per job; others are dropped.
PREVIEW_INTERVAL_S = 0.25

log = logging.getLogger(__name__)


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
    # The worker's GET /v1/info: its signature has the output types it read from ComfyUI.
    info: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    # The native client of the local worker, shared by every job of this container.
    client: Any = None
    # Threads that wait on the native client (one per running job at most), apart
    # from the event loop's default pool so a busy container never queues them.
    waiters: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="job-events"))

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
        base = Path(home or os.environ.get(_native.ENV["HOME"], "/tmp/comfy-remote"))
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
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
        from comfy_remote import _native

        rt.client = _native.Client(rt.url, mode="native", max_attempts=3)
        return rt

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.waiters.shutdown(wait=False, cancel_futures=True)
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

        ``body`` is a container the web front already checked. Raises
        ``JobFailed`` / ``JobCanceled``; the final record is written first.
        """
        mirror = _Mirror(store, job_id)
        if not self.published:
            # For the web front's /v1/info: the output types only a ComfyUI knows.
            await store.put(state.INFO_KEY, json.dumps(self.info))
            self.published = True
        if await store.get(state.final_key(job_id)) is not None:
            raise JobCanceled("the job ended before a GPU container picked it up")
        if await store.get(state.cancel_key(job_id)) is not None:
            await mirror.finish(_ended("canceled", "canceled", "the job was canceled"))
            raise JobCanceled("the job was canceled before it started")
        job = self.client.start(body)
        local: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch_cancel(job_id, store, local))
        try:
            return await self._follow(job, mirror, local)
        except asyncio.CancelledError:
            # Modal (or the stand-in) cancelled this call: stop the job on the GPU.
            job.cancel()
            await asyncio.shield(mirror.finish(_ended("canceled", "canceled", "the job was canceled")))
            raise
        finally:
            watcher.cancel()

    async def _follow(self, job: Any, mirror: _Mirror, local: asyncio.Future[str]) -> bytes:
        from comfy_remote._native import RemoteError

        try:
            while True:
                ev = await asyncio.get_running_loop().run_in_executor(self.waiters, job.next_event, EVENT_WAIT_S)
                if ev is None:
                    if job.finished:
                        raise JobFailed("the local job ended without a result")
                    continue
                kind, data = ev
                if kind == "submitted":
                    if not local.done():
                        local.set_result(str(data["id"]))
                    await mirror.view(_view(job))
                elif kind == "status":
                    await mirror.view(_view(job))
                elif kind == "progress" and data.get("json"):
                    await mirror.progress(json.loads(data["json"]))
                elif kind == "preview":
                    mime, image, node = data
                    await mirror.preview(mime, bytes(image), node)
                elif kind == "done":
                    view = _view(job) or {}
                    view["result"] = {**(view.get("result") or {}), "bytes": len(data)}
                    await mirror.finish({**view, "status": "succeeded"})
                    return bytes(data)
        except RemoteError as e:
            view = _view(job)
            if e.kind == "canceled":
                if view is None or view.get("status") != "canceled":
                    view = _ended("canceled", "canceled", "the job was canceled")
                await mirror.finish(view)
                raise JobCanceled(str(e)) from None
            if view is None or view.get("status") not in state.TERMINAL:
                # The worker refused the job or could not be reached: not the workflow's failure.
                code = "comfyui_unavailable" if e.kind == "unreachable" else "internal"
                view = _ended("failed", code, f"the GPU container's worker failed the job: {e}")
            await mirror.finish(view)
            raise JobFailed(str((view.get("error") or {}).get("message") or e)) from None

    async def _watch_cancel(self, job_id: str, store: JobStore, local: asyncio.Future[str]) -> None:
        """Cancel the local job when the web front sets ``cancel:<id>`` (a cancel landing on any container)."""
        async with store.watch(state.cancel_channel(job_id)) as bell:
            while await store.get(state.cancel_key(job_id)) is None:
                await bell.wait(0, CANCEL_POLL_S)
        local_id = await local
        from comfy_remote._native import RemoteError

        try:
            await asyncio.to_thread(self.client.cancel_job, local_id)
        except RemoteError as e:  # the job may have ended meanwhile; its follower reports how
            log.warning("cancelling local job %s: %s", local_id, e)


def _view(job: Any) -> dict[str, Any] | None:
    text = job.view_json()
    return json.loads(text) if text else None


def _ended(status: str, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "updated_at": state.now(), "error": {"code": code, "message": message}}


class _Mirror:
    """Writes a job's changes as numbered records (``state``) and rings its doorbell."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._last = Record(0)
        self._lock = asyncio.Lock()
        self._written_at = 0.0
        self._pending: dict[str, Any] | None = None
        self._flush: asyncio.Task[None] | None = None
        self._preview_at = 0.0

    async def view(self, view: dict[str, Any] | None) -> None:
        """A new JobView from the worker: written at once; a terminal one only by ``finish``
        (with the result's size), so the job has one last record."""
        if view is not None and view.get("status") not in state.TERMINAL:
            self._pending = None
            await self._write(view)

    async def progress(self, progress: dict[str, Any]) -> None:
        """A progress snapshot: written at once, or at the end of the current interval."""
        if self._last.view is None:
            return
        self._pending = {**self._last.view, "progress": progress}
        wait = self._written_at + PROGRESS_INTERVAL_S - time.monotonic()
        if wait <= 0:
            await self._write(self._pending)
        elif self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_after(wait))

    async def preview(self, mime: str, image: bytes, node: str | None) -> None:
        """A preview image: written unless one was written less than PREVIEW_INTERVAL_S ago."""
        if self._last.view is None or time.monotonic() - self._preview_at < PREVIEW_INTERVAL_S:
            return
        self._preview_at = time.monotonic()
        preview: dict[str, Any] = {"mime": mime, "data": base64.b64encode(image).decode()}
        if node:
            preview["node"] = {"id": node}
        async with self._lock:
            rec = self._last.with_preview(preview)
            await self._store.put(state.state_key(self._job_id), rec.to_json())
            await self._store.put(state.preview_key(self._job_id), json.dumps(preview))
            self._last = rec
        await self._store.ring(self._job_id, rec.seq)

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._pending is not None:
            await self._write(self._pending)

    async def _write(self, view: dict[str, Any]) -> None:
        async with self._lock:
            if view is self._pending:
                self._pending = None
            rec = self._last.after(view)
            if not rec.events:
                return
            await self._store.put(state.state_key(self._job_id), rec.to_json())
            self._last = rec
            self._written_at = time.monotonic()
        await self._store.ring(self._job_id, rec.seq)

    async def finish(self, view: dict[str, Any]) -> None:
        """The terminal record (``final:<id>``, first writer wins)."""
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        async with self._lock:
            self._pending = None
            rec = self._last.after(view)
            await self._store.put_if_absent(state.final_key(self._job_id), rec.to_json())
            self._last = rec
        await self._store.ring(self._job_id, rec.seq)


def fetch_models(plan: str, mount: str) -> list[str]:
    """Fetch the model files of the project's ``build/models.json`` that the Volume at ``mount``
    lacks (each checked against its sha256; the native module does the work). Returns the paths
    fetched, so the caller commits the Volume only when something changed."""
    if not os.path.isfile(plan):
        return []
    fetched: list[str] = json.loads(_native.fetch_models(plan, mount, log=log.info))
    for path in fetched:
        log.info("fetched model %s onto the Volume", path)
    return fetched
