"""An in-process stand-in for Modal's spawn/FunctionCall/Dict: runs the job coroutine on a private event loop thread.

Cancelling a call cancels its task, which raises ``CancelledError`` inside
the job coroutine, as Modal does for an async method. The store's
doorbells are a condition variable: a number per channel under the
store's lock, and the waiters of each event loop woken through that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

from comfy_remote.modal_runtime.backend import CallState, JobCanceled, JobFailed, ResultExpired

JobFn = Callable[[str, bytes, str], Awaitable[bytes]]


class _LocalBell:
    def __init__(self, store: LocalStore, channel: str) -> None:
        self._store = store
        self._channel = channel

    async def wait(self, after: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiter = (loop, fut)
        with self._store._lock:
            if self._store._rung.get(self._channel, 0) > after:
                return True
            self._store._waiters.setdefault(self._channel, []).append(waiter)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._store._lock:
                waiters = self._store._waiters.get(self._channel, [])
                if waiter in waiters:
                    waiters.remove(waiter)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LocalStore:
    """A dict of JSON text behind a lock, with doorbells."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        self._rung: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    async def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    async def put(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"the job store holds JSON text, not {type(value).__name__}")
        with self._lock:
            self._data[key] = value

    async def put_if_absent(self, key: str, value: str) -> bool:
        if not isinstance(value, str):
            raise TypeError(f"the job store holds JSON text, not {type(value).__name__}")
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    async def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    async def ring(self, channel: str, seq: int) -> None:
        with self._lock:
            self._rung[channel] = max(self._rung.get(channel, 0), seq)
            waiters = self._waiters.pop(channel, [])
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_wake, fut)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[_LocalBell]:
        yield _LocalBell(self, channel)


class LocalBackend:
    """Spawned calls are tasks on one background event loop.

    ``result_ttl_s`` stands in for Modal's output retention: that long after
    a call succeeded, ``poll`` says ``expired`` and ``result`` raises
    ``ResultExpired`` (None keeps results for the backend's lifetime).
    """

    def __init__(self, job_fn: JobFn, store: LocalStore | None = None, *, result_ttl_s: float | None = None) -> None:
        self.store = store or LocalStore()
        self._job_fn = job_fn
        self._ttl = result_ttl_s
        self._calls: dict[str, concurrent.futures.Future[bytes]] = {}
        self._ended: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-backend", daemon=True)
        self._thread.start()

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        call_id = "fc-local-" + uuid.uuid4().hex
        fut = asyncio.run_coroutine_threadsafe(self._job_fn(job_id, body, content_type), self._loop)
        fut.add_done_callback(lambda _f: self._ended.setdefault(call_id, time.monotonic()))
        self._calls[call_id] = fut
        return call_id

    def _expired(self, call_id: str) -> bool:
        ended = self._ended.get(call_id)
        return self._ttl is not None and ended is not None and time.monotonic() - ended > self._ttl

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
        return CallState("expired") if self._expired(call_id) else CallState("succeeded")

    async def result(self, call_id: str, timeout: float) -> bytes:
        fut = self._calls[call_id]
        # Shielded: a timeout here must not cancel the call itself.
        data = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
        if self._expired(call_id):
            raise ResultExpired(call_id)
        return data

    async def cancel(self, call_id: str) -> None:
        self._calls[call_id].cancel()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
