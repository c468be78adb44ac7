"""A job's numbered records in the store, and the SSE event ids derived from them.

The GPU job writes a record each time its job changes: ``{"seq": n,
"events": [...], "view": {...}}`` where ``view`` is the worker's JobView
(or the part of one the web front writes for a call that ended without a
record) and ``events`` names what changed since record ``n - 1``:
``status``, ``progress``, and ``done`` for the terminal record; or only
``preview``, for a record that carries a preview image (``preview``) and
repeats the view. The event ids of record ``n`` are ``4n + slot`` (status
0, progress 1, done 2, preview 3), so they grow with the record numbers
whichever web container streams them, and a ``Last-Event-ID`` names the
record and the slot a reader saw last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
SLOTS = {"status": 0, "progress": 1, "done": 2, "preview": 3}


def now() -> str:
    """RFC 3339 in UTC with milliseconds, as the worker writes times."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The info a GPU container's worker serves (GpuRuntime publishes it on its first job).
INFO_KEY = "info"


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def state_key(job_id: str) -> str:
    return f"state:{job_id}"


def final_key(job_id: str) -> str:
    return f"final:{job_id}"


def expired_key(job_id: str) -> str:
    return f"expired:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"cancel:{job_id}"


def preview_key(job_id: str) -> str:
    """The job's latest preview (a Comfy API v2 stream sends it on connect)."""
    return f"preview:{job_id}"


def idem_key(key: str) -> str:
    return f"idem:{key}"


def cancel_channel(job_id: str) -> str:
    return f"{job_id}.cancel"


def event_id(seq: int, name: str) -> int:
    return seq * 4 + SLOTS[name]


def parse_event_id(text: str | None) -> tuple[int, int] | None:
    """``(record number, slot)`` of a ``Last-Event-ID`` this scheme gave, else None."""
    if text is None or not text.strip().isdigit():
        return None
    n = int(text.strip())
    seq, slot = divmod(n, 4)
    return (seq, slot) if slot in SLOTS.values() else None


def changes(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """The events that record ``after`` implies, coming after ``before``."""
    events = []
    if before is None or before.get("status") != after.get("status"):
        events.append("status")
    if before is not None and before.get("progress") != after.get("progress"):
        events.append("progress")
    if after.get("status") in TERMINAL:
        events.append("done")
    return events


@dataclass
class Record:
    """Record ``seq`` of a job; ``view`` is None for the implicit record 0 (no GPU container yet)."""

    seq: int
    events: list[str] = field(default_factory=lambda: ["status"])
    view: dict[str, Any] | None = None
    # A `preview` event's data: {"mime", "data" (base64), "node"?}.
    preview: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return str((self.view or {}).get("status", "queued"))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> str:
        d: dict[str, Any] = {"seq": self.seq, "events": self.events, "view": self.view}
        if self.preview is not None:
            d["preview"] = self.preview
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str | None) -> Record | None:
        if text is None:
            return None
        d = json.loads(text)
        return cls(int(d["seq"]), list(d.get("events") or []), d.get("view"), d.get("preview"))

    def after(self, view: dict[str, Any]) -> Record:
        """The next record, holding ``view``."""
        return Record(self.seq + 1, changes(self.view, view), view)

    def with_preview(self, preview: dict[str, Any]) -> Record:
        """The next record: the same view, and a preview image."""
        return Record(self.seq + 1, ["preview"], self.view, preview)
