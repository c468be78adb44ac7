"""The interface between the runtime and Modal: spawn/poll/result/cancel calls and a shared key-value store.

Job state lives only behind this interface (never in one container's
memory), so any web container can answer for any job. Keys, each with one
writer so concurrent writers never lose an update:
``job:<id>`` (web, at submit), ``progress:<id>`` (GPU job), ``cancel:<id>``
(web, on cancel), ``final:<id>`` (GPU job, or web when the call ended
without one), ``idem:<key>`` (web, first writer wins), ``info`` (GPU start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

CallStateName = Literal["running", "succeeded", "failed", "canceled", "expired"]


@dataclass(frozen=True)
class CallState:
    """Where a spawned call is; ``error`` is set for ``failed``."""

    state: CallStateName
    error: str = ""


class JobStore(Protocol):
    """A shared key-value store (``modal.Dict`` on Modal)."""

    async def get(self, key: str) -> Any | None: ...

    async def put(self, key: str, value: Any) -> None: ...

    async def put_if_absent(self, key: str, value: Any) -> bool:
        """Store ``value`` unless ``key`` exists; True when this call stored it."""
        ...


class Backend(Protocol):
    """Runs jobs somewhere (a GPU class on Modal) and reports on them by call id."""

    store: JobStore

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        """Start the job function; returns the call id."""
        ...

    async def poll(self, call_id: str) -> CallState: ...

    async def result(self, call_id: str, timeout: float) -> bytes: ...

    async def cancel(self, call_id: str) -> None: ...


class JobFailed(Exception):
    """The remote workflow failed; the message is the worker's."""


class JobCanceled(Exception):
    """The job was canceled before it finished."""
