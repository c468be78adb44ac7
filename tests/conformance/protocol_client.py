"""The conformance suite's client: containers built and read from the specification (§2), without the
comfy-remote codec, as a third-party client would, and requests to the server under test."""

from __future__ import annotations

import base64
import http.client
import json
import re
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from harness import CONTAINER, DEADLINE, Response, request, sse, wait_until

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "workflow.json"
TOKEN = "conformance-" + uuid.uuid4().hex
# Small, so that the streamed-body 413 case is cheap; equal on both servers.
MAX_BODY = 1_000_000
# The suite's own servers drop results this long after a job ends (the expiry case).
RESULT_TTL_S = 5
TERMINAL = ("succeeded", "failed", "canceled", "expired")
# docs/protocol.md §4.2: the transitions a server may make.
TRANSITIONS = {
    "queued": {"running", "canceled", "canceling", "failed"},
    "running": {"succeeded", "failed", "canceling", "queued"},
    "canceling": {"canceled", "succeeded", "failed"},
    "succeeded": {"expired"},
}


# ---------------------------------------------------------------- containers (§2)


@dataclass
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def image(h: int = 8, w: int = 8, seed: int = 0) -> Tensor:
    """An IMAGE (1 x h x w x 3, F32 in 0..1) whose bytes are easy to compare."""
    n = h * w * 3
    return Tensor("F32", (1, h, w, 3), struct.pack(f"<{n}f", *(((i * 7 + seed) % 251) / 250.0 for i in range(n))))


def container(*entries: tuple[str, str | None, Any], version: int = 1) -> bytes:
    """A container of ``(name, type, value)`` entries: a ``Tensor`` or a value-tree node (§2.3)."""
    tensors: list[tuple[str, Tensor]] = []
    tree = []
    for name, typ, value in entries:
        if isinstance(value, Tensor):
            tname = f"t{len(tensors)}"
            tensors.append((tname, value))
            value = {"$t": tname}
        tree.append({"name": name, "type": typ, "value": value})
    header: dict[str, Any] = {"__metadata__": {"comfy_remote": json.dumps({"v": version, "entries": tree},
                                                                         separators=(",", ":"))}}
    offset = 0
    for tname, t in tensors:
        header[tname] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(t.data for _, t in tensors)


def read_container(data: bytes) -> dict[str, tuple[str | None, Any]]:
    """``{name: (type, value)}`` of a container; tensors as ``Tensor``."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    tree = json.loads(header["__metadata__"]["comfy_remote"])
    assert tree["v"] == 1, tree
    body = data[8 + n:]

    def node(v: Any) -> Any:
        if isinstance(v, dict) and "$t" in v:
            h = header[v["$t"]]
            start, end = h["data_offsets"]
            return Tensor(h["dtype"], tuple(h["shape"]), body[start:end])
        return v

    return {e["name"]: (e["type"], node(e["value"])) for e in tree["entries"]}


def job_body(img: Tensor | None = None, **values: Any) -> bytes:
    """A submit body for the suite's workflow: the image and any of steps / seconds_per_step / fail."""
    types = {"steps": "INT", "seconds_per_step": "FLOAT", "fail": "BOOLEAN"}
    return container(("image", "IMAGE", img or image()), *((k, types[k], v) for k, v in values.items()))


def base64_form(data: bytes) -> bytes:
    return json.dumps({"format": "comfy-remote/1+base64", "data": base64.b64encode(data).decode()}).encode()


# ---------------------------------------------------------------- the server under test


@dataclass
class Server:
    """A server under test and the jobs a case started on it."""

    kind: str
    url: str
    token: str | None
    # Our own servers: a case may send any Host header and knows the limits it was started with.
    local: bool
    expired_job: str | None = None
    started: list[str] = field(default_factory=list)

    def auth(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**h, **(extra or {})}

    def get(self, path: str, headers: dict[str, str] | None = None, auth: bool = True) -> Response:
        return request("GET", self.url + path, headers=self.auth(headers) if auth else (headers or {}))

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None, auth: bool = True) -> Response:
        return request("POST", self.url + path, body, self.auth(headers) if auth else (headers or {}))

    def submit(self, body: bytes, content_type: str | None = CONTAINER, headers: dict[str, str] | None = None,
               query: str = "") -> Response:
        h = {"Content-Type": content_type} if content_type else {}
        r = raw(self, "POST", "/v1/jobs" + query, body, {**h, **(headers or {})})
        if r.status in (200, 202):
            self.started.append(r.json()["id"])
        return r

    def start(self, body: bytes | None = None, **values: Any) -> dict[str, Any]:
        r = self.submit(body if body is not None else job_body(**values))
        assert r.status == 202, (r.status, r.body)
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/jobs/{job_id}")
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def wait(self, job_id: str, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
        return wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j,
                          f"job {job_id} to reach {statuses}", interval=0.05)

    def cancel(self, job_id: str) -> Response:
        return self.post(f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str, last_event_id: str | None = None) -> list[dict[str, Any]]:
        h = self.auth({"Last-Event-ID": last_event_id} if last_event_id is not None else None)
        return list(sse(f"{self.url}/v1/jobs/{job_id}/events", h))

    def info(self) -> dict[str, Any]:
        r = self.get("/v1/info")
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def settle(self) -> None:
        """Cancel what the case left running and wait for it, so the next case finds the server idle."""
        for jid in self.started:
            if self.job(jid)["status"] not in TERMINAL:
                self.cancel(jid)
        for jid in self.started:
            self.wait(jid)
        self.started.clear()


def raw(server: Server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        *, auth: bool = True, chunks: Iterator[bytes] | None = None) -> Response:
    """A request sent with http.client exactly as given (no default Content-Type; a Host, Content-Length or
    chunked body of our choosing); the answer is read even when the server stops reading the body early."""
    u = urlsplit(server.url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=DEADLINE)
    try:
        hdrs = server.auth(headers) if auth else dict(headers or {})
        names = {k.lower() for k in hdrs}
        conn.putrequest(method, path, skip_host="host" in names, skip_accept_encoding=True)
        if chunks is None and body is not None and "content-length" not in names:
            hdrs["Content-Length"] = str(len(body))
        if chunks is not None:
            hdrs["Transfer-Encoding"] = "chunked"
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            if chunks is not None:
                for c in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                conn.send(b"0\r\n\r\n")
            elif body:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def assert_error(r: Response, status: int, code: str) -> dict[str, Any]:
    """The answer is ``status`` with the error body of §4.6 and ``code``; returns the error object."""
    assert r.status == status, (r.status, r.body[:500])
    assert r.headers.get("comfy-remote-protocol") == "comfy-remote/1", r.headers
    doc = json.loads(r.body)
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert "details" not in err or err["details"] is None or isinstance(err["details"], dict), err
    # No internals: no stack trace, no source paths.
    text = json.dumps(err)
    assert "Traceback" not in text and '.py"' not in text and ".rs:" not in text, text
    return err


RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def check_view(v: dict, job_id: str | None = None) -> None:
    """The JobView shape of §4.2."""
    assert set(v) >= {"id", "status", "progress", "poll_url", "urls", "created_at", "updated_at"}, v
    if job_id:
        assert v["id"] == job_id
    assert v["status"] in ("queued", "running", "canceling", "succeeded", "canceled", "failed", "expired")
    p = v["progress"]
    assert set(p) >= {"value", "max", "fraction", "phase"}, p
    assert 0.0 <= p["fraction"] <= 1.0 and p["value"] == p["fraction"] and p["max"] == 1.0, p
    assert p["phase"] in ("queued", "starting", "running", "collecting", "done"), p
    assert set(v["urls"]) >= {"self", "events", "result", "cancel"}, v["urls"]
    assert v["poll_url"] == v["urls"]["self"]
    for name, suffix in (("events", "/events"), ("result", "/result"), ("cancel", "/cancel")):
        assert v["urls"][name] == v["urls"]["self"] + suffix
    assert RFC3339.fullmatch(v["created_at"]) and RFC3339.fullmatch(v["updated_at"]), v
    assert ("result" in v and v["result"] is not None) == (v["status"] == "succeeded"), v
    if v["status"] == "failed":
        assert v["error"]["code"] and v["error"]["message"], v
