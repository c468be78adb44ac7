"""The interface between the runtime and Modal: spawn/poll/result/cancel calls, a shared key-value store, doorbells.

Job state lives only behind this interface (never in one container's
memory), so any web container can answer for any job. Values are JSON text
(the store never holds a Python object to unpickle). Keys, each with one
writer so concurrent writers never lose an update (``state`` documents the
records):

- ``job:<id>`` (web, at submit): the call id, creation time and body digest;
- ``idem:<key>`` (web, first writer wins): the job an Idempotency-Key names;
- ``state:<id>`` (GPU job): the latest record of the job, numbered;
- ``final:<id>`` (GPU job, or web when the call ended without one; first
  writer wins): the terminal record;
- ``expired:<id>`` (web): the record of a succeeded job whose result is gone;
- ``cancel:<id>`` (web, on cancel);
- ``preview:<id>`` (GPU job): the job's latest preview;
- ``info`` (GPU container, on its first job): its worker's ``/v1/info``;
- ``v2*`` (web): what Comfy API v2 adds (``web_v2`` documents them).

Doorbells make waiting cheap: whoever writes a record of job ``<id>`` rings
channel ``<id>`` with its number, and a cancel rings ``<id>.cancel``.
Watchers wait on a channel instead of polling; a bell may be lost (the
store says when it cannot ring), so every waiter also re-reads after a
bounded time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncContextManager, Literal, Protocol

CallStateName = Literal["running", "succeeded", "failed", "canceled", "expired"]


@dataclass(frozen=True)
class CallState:
    """Where a spawned call is; ``error`` is set for ``failed``."""

    state: CallStateName
    error: str = ""


class Bell(Protocol):
    """A watcher of one channel, open for as long as its context lasts."""

    async def wait(self, after: int, timeout: float) -> bool:
        """Return once the channel was rung with a number above ``after``
        (True), or after ``timeout`` seconds (False). Rings since the watch
        opened count, so read the state after opening and before waiting."""
        ...


class JobStore(Protocol):
    """A shared key-value store of JSON text (``modal.Dict`` on Modal) with doorbells."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str) -> None: ...

    async def put_if_absent(self, key: str, value: str) -> bool:
        """Store ``value`` unless ``key`` exists; True when this call stored it."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (nothing when it is absent)."""
        ...

    async def ring(self, channel: str, seq: int) -> None:
        """Wake the watchers of ``channel``: what it names changed, now at number ``seq``."""
        ...

    def watch(self, channel: str) -> AsyncContextManager[Bell]:
        """Watch ``channel`` (``async with store.watch(ch) as bell``)."""
        ...


class Backend(Protocol):
    """Runs jobs somewhere (a GPU class on Modal) and reports on them by call id."""

    store: JobStore

    async def spawn(self, job_id: str, body: bytes, content_type: str) -> str:
        """Start the job function; returns the call id."""
        ...

    async def poll(self, call_id: str) -> CallState: ...

    async def result(self, call_id: str, timeout: float) -> bytes:
        """The call's return value; raises ``ResultExpired`` once the backend dropped it."""
        ...

    async def cancel(self, call_id: str) -> None: ...


class JobFailed(Exception):
    """The remote workflow failed; the message is the worker's."""


class JobCanceled(Exception):
    """The job was canceled before it finished."""


class ResultExpired(Exception):
    """The backend no longer holds the call's result."""
