"""An in-process stand-in for Modal's spawn/FunctionCall/Dict: runs the job coroutine on a private event loop thread.

Cancelling a call cancels its task, which raises ``CancelledError`` inside
the job coroutine, as Modal does for an async method.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import uuid
from typing import Any, Awaitable, Callable

from comfy_remote.modal_runtime.backend import CallState, JobCanceled, JobFailed

JobFn = Callable[[str, bytes, str], Awaitable[bytes]]


class LocalStore:
    """A dict behind a lock; values are deep-copied like a real remote store would."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    async def get(self, key: str) -> Any | None:
        with self._lock:
            return copy.deepcopy(self._data.get(key))

    async def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = copy.deepcopy(value)

    async def put_if_absent(self, key: str, value: Any) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = copy.deepcopy(value)
            return True


class LocalBackend:
    """Spawned calls are tasks on one background event loop."""

    def __init__(self, job_fn: JobFn, store: LocalStore | None = None) -> None:
        self.store = store or LocalStore()
        self._job_fn = job_fn
        self._calls: dict[str, concurrent.futures.Future[bytes]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-backend", daemon=True)
        self._thread.start()

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        call_id = "fc-local-" + uuid.uuid4().hex
        self._calls[call_id] = asyncio.run_coroutine_threadsafe(self._job_fn(job_id, body, content_type), self._loop)
        return call_id

    async def poll(self, call_id: str) -> CallState:
        fut = self._calls[call_id]
        if not fut.done():
            return CallState("running")
        if fut.cancelled():
            return CallState("canceled")
        exc = fut.exception()
        if isinstance(exc, (JobCanceled, asyncio.CancelledError)):
            return CallState("canceled")
        if exc is not None:
            return CallState("failed", str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}")
        return CallState("succeeded")

    async def result(self, call_id: str, timeout: float) -> bytes:
        fut = self._calls[call_id]
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    async def cancel(self, call_id: str) -> None:
        self._calls[call_id].cancel()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
