"""The backend over Modal's primitives: ``Function.spawn``, ``FunctionCall.from_id``, ``modal.Dict`` and ``modal.Queue``.

Doorbells are ``modal.Queue`` partitions read with ``Queue.iterate``, which
leaves the items in place, so every watcher of a job (in any web container)
sees every ring. A channel's numbers are spread over partitions of
``EPOCH`` items (``<channel>.<seq // EPOCH>``), below Modal's 5,000 items
per partition, so a new watcher skims at most one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any, AsyncIterator

import modal
import modal.exception

from comfy_remote.modal_runtime.backend import CallState, ResultExpired

log = logging.getLogger(__name__)

EPOCH = 1000
# A bell partition is dropped this long after its last ring.
BELL_TTL_S = 6 * 3600
# How long one `iterate` waits for a new item before it is reopened.
ITERATE_WAIT_S = 25.0


def object_name(base: str, suffix: str) -> str:
    """``base + suffix``, shortened with a digest to Modal's 63-character limit for names."""
    name = base + suffix
    if len(name) < 64:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:12]
    return f"{base[: 63 - len(suffix) - 13]}-{digest}{suffix}"


def _partition(channel: str, seq: int) -> str:
    return f"{channel}.{seq // EPOCH}"


class _ModalBell:
    """Follows a channel's partitions in a background task; ``wait`` waits on what it saw."""

    def __init__(self, queue: Any, channel: str) -> None:
        self._queue = queue
        self._channel = channel
        self._seen = 0
        self._after = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _follow(self) -> None:
        while True:
            epoch = (max(self._seen, self._after) + 1) // EPOCH
            try:
                async for item in self._queue.iterate.aio(
                    partition=_partition(self._channel, epoch * EPOCH), item_poll_timeout=ITERATE_WAIT_S
                ):
                    seq = int(item) if isinstance(item, (int, str)) and str(item).isdigit() else 0
                    if seq > self._seen:
                        self._seen = seq
                        self._changed.set()
                    if (self._seen + 1) // EPOCH != epoch:
                        break  # the next number is in the next partition
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - waiters fall back to re-reading on their timeout
                log.debug("doorbell %s: %s", self._channel, e)
                await asyncio.sleep(1.0)

    async def wait(self, after: int, timeout: float) -> bool:
        self._after = max(self._after, after)
        if self._seen > after:
            return True
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._seen > after


class ModalStore:
    """A ``modal.Dict`` (created on first use) as the job store, a ``modal.Queue`` for its doorbells."""

    def __init__(self, name: str) -> None:
        self._dict = modal.Dict.from_name(name, create_if_missing=True)
        self._bells = modal.Queue.from_name(object_name(name, "-bells"), create_if_missing=True)

    async def get(self, key: str) -> str | None:
        value = await self._dict.get.aio(key)
        return value if isinstance(value, str) else None

    async def put(self, key: str, value: str) -> None:
        await self._dict.put.aio(key, value)

    async def put_if_absent(self, key: str, value: str) -> bool:
        return bool(await self._dict.put.aio(key, value, skip_if_exists=True))

    async def delete(self, key: str) -> None:
        await self._dict.pop.aio(key, None)

    async def ring(self, channel: str, seq: int) -> None:
        try:
            await self._bells.put.aio(
                str(seq), block=False, partition=_partition(channel, seq), partition_ttl=BELL_TTL_S
            )
        except Exception as e:  # noqa: BLE001 - a lost bell costs a waiter its bounded poll, nothing more
            log.warning("could not ring %s: %s", channel, e)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[_ModalBell]:
        bell = _ModalBell(self._bells, channel)
        bell.start()
        try:
            yield bell
        finally:
            await bell.stop()


class ModalBackend:
    """Jobs are calls of the GPU class's ``run_job`` method; their state is Modal's."""

    def __init__(self, run_job: Any, dict_name: str) -> None:
        self._run_job = run_job
        self.store = ModalStore(dict_name)

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        # Arguments over a few KiB go through Modal's blob store by themselves.
        call = await self._run_job.spawn.aio(job_id, body, content_type)
        return str(call.object_id)

    async def poll(self, call_id: str) -> CallState:
        call = modal.FunctionCall.from_id(call_id)
        try:
            await call.get.aio(timeout=0)
        except modal.exception.OutputExpiredError:
            return CallState("expired")
        except modal.exception.FunctionTimeoutError as e:
            return CallState("failed", f"the job exceeded the deployment's timeout: {e}")
        except (modal.exception.TimeoutError, TimeoutError):
            return CallState("running")
        except modal.exception.InputCancellation:
            return CallState("canceled")
        except Exception as e:  # noqa: BLE001 - the call's own failure is the answer
            if type(e).__name__ == "JobCanceled" or "cancel" in str(e).lower():
                return CallState("canceled")
            return CallState("failed", str(e) or type(e).__name__)
        return CallState("succeeded")

    async def result(self, call_id: str, timeout: float) -> bytes:
        try:
            return bytes(await modal.FunctionCall.from_id(call_id).get.aio(timeout=timeout))
        except modal.exception.OutputExpiredError as e:
            raise ResultExpired(call_id) from e

    async def cancel(self, call_id: str) -> None:
        await modal.FunctionCall.from_id(call_id).cancel.aio()
