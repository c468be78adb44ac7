"""The conformance suite's Comfy API v2 client (docs/protocol.md §5.1): requests to ``/api/v2``, a
multipart upload form and a PNG reader, with the standard library only, as a third-party client would."""

from __future__ import annotations

import json
import re
import struct
import uuid
import zlib
from typing import Any

from harness import Response, sse
from protocol_client import TERMINAL, WORKFLOW, Server, Tensor, raw, wait_until

V2 = "/api/v2"
BLAKE3 = re.compile(r"blake3:[0-9a-f]{64}")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
JOB_FIELDS = {"id", "status", "created_at", "started_at", "completed_at", "expires_at", "queue_position",
              "progress", "outputs", "error", "urls"}


def graph(**changes: Any) -> dict[str, Any]:
    """The suite's workflow with ``{node: {field: value}}`` changes, as a v2 client submits it."""
    g = json.loads(WORKFLOW.read_text())
    for node, fields in changes.items():
        g[node]["inputs"].update(fields)
    return g


def job_graph(image_asset: str | None = None, steps: int | None = None, seconds: float | None = None,
              fail: bool | None = None) -> dict[str, Any]:
    """The workflow with its inputs set as ComfyUI's own export holds them: the image a Remote Input's
    default, the others the primitives that feed them."""
    changes: dict[str, Any] = {}
    if image_asset is not None:
        changes["1"] = {"default": asset_ref(image_asset)}
    if steps is not None:
        changes["3"] = {"value": steps}
    if seconds is not None:
        changes["5"] = {"value": seconds}
    if fail is not None:
        changes["7"] = {"value": fail}
    return graph(**changes)


def asset_ref(asset_id: str) -> dict[str, Any]:
    return {"__type": "core/ASSET", "info": {"id": asset_id}}


def submit(srv: Server, workflow: dict[str, Any] | None = None, key: str | None = None,
           body: bytes | None = None, content_type: str = "application/json") -> Response:
    h = {"Content-Type": content_type}
    if key is not None:
        h["Idempotency-Key"] = key
    data = body if body is not None else json.dumps({"workflow": workflow}).encode()
    r = raw(srv, "POST", V2 + "/jobs", data, h)
    if r.status == 201:
        srv.started.append(r.json()["id"])
    return r


def start(srv: Server, workflow: dict[str, Any]) -> dict[str, Any]:
    r = submit(srv, workflow)
    assert r.status == 201, (r.status, r.body[:500])
    return r.json()


def job(srv: Server, job_id: str) -> dict[str, Any]:
    r = srv.get(f"{V2}/jobs/{job_id}")
    assert r.status == 200, (r.status, r.body[:300])
    return r.json()


def wait(srv: Server, job_id: str, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    return wait_until(lambda: (j := job(srv, job_id))["status"] in statuses and j,
                      f"v2 job {job_id} to reach {statuses}", interval=0.05)


def events(srv: Server, job_id: str) -> list[dict[str, Any]]:
    return list(sse(f"{srv.url}{V2}/jobs/{job_id}/events", srv.auth()))


def form(fields: dict[str, str], file: bytes, filename: str = "in.png",
         file_type: str = "image/png") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body and its Content-Type."""
    boundary = "cr-" + uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {file_type}\r\n\r\n").encode()
    out += file + f"\r\n--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def upload(srv: Server, data: bytes, file_path: str = "in.png", **fields: str) -> Response:
    body, ctype = form({"content_type": "image/png", "file_path": file_path, **fields}, data, file_path)
    return raw(srv, "POST", V2 + "/assets", body, {"Content-Type": ctype})


def png(t: Tensor) -> bytes:
    """An RGB8 PNG of a ``[1, H, W, 3]`` F32 image tensor (``round(x * 255)``)."""
    (_, h, w, c) = t.shape
    vals = struct.unpack(f"<{h * w * c}f", t.data)
    rows = b"".join(b"\x00" + bytes(round(min(max(v, 0.0), 1.0) * 255) for v in vals[y * w * c:(y + 1) * w * c])
                    for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def read_png(data: bytes) -> tuple[int, int, int, bytes]:
    """``(width, height, channels, pixels)`` of an 8-bit grey/RGB/RGBA PNG (any filter)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, idat, w = 8, b"", 0
    h = color = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8, depth
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    ch = {0: 1, 2: 3, 6: 4}[color]
    raw_rows, stride = zlib.decompress(idat), w * ch
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        f, row = raw_rows[y * (stride + 1)], bytearray(raw_rows[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - ch] if i >= ch else 0
            b, cc = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1:
                row[i] = (row[i] + a) & 255
            elif f == 2:
                row[i] = (row[i] + b) & 255
            elif f == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else cc)) & 255
        out += row
        prev = row
    return w, h, ch, bytes(out)


def check_job(j: dict[str, Any], job_id: str | None = None) -> None:
    """The Job shape of the v2 contract: every required field present (nullable ones as null)."""
    assert JOB_FIELDS <= set(j), sorted(JOB_FIELDS - set(j))
    if job_id is not None:
        assert j["id"] == job_id
    assert j["status"] in ("queued", "running", "canceling", "succeeded", "canceled", "failed", "expired"), j
    for t in ("created_at", "expires_at"):
        assert RFC3339.fullmatch(j[t]), (t, j[t])
    for t in ("started_at", "completed_at"):
        assert j[t] is None or RFC3339.fullmatch(j[t]), (t, j[t])
    assert set(j["urls"]) >= {"self", "events", "cancel"}, j["urls"]
    assert j["urls"]["events"] == j["urls"]["self"] + "/events"
    assert j["urls"]["cancel"] == j["urls"]["self"] + "/cancel"
    assert j["urls"]["self"].endswith(f"{V2}/jobs/{j['id']}")
    p = j["progress"]
    if p is not None:
        assert {"value", "nodes_done", "nodes_total"} <= set(p) and 0.0 <= p["value"] <= 1.0, p
    if j["status"] != "queued":
        assert j["queue_position"] is None, j
    if j["status"] == "failed":
        assert j["error"]["code"] and j["error"]["message"] and j["error"]["traceback"] is None, j["error"]
    if j["status"] != "succeeded":
        assert j["outputs"] == [], j
    for o in j["outputs"]:
        assert {"node_id", "name", "type", "content_type", "size_bytes", "id", "hash", "url", "url_expires_at"} <= set(o)
        assert o["type"] in ("image", "video", "audio", "text", "file", "latent"), o


def assert_v2_error(r: Response, status: int, code: str) -> dict[str, Any]:
    """``status`` with v2's error envelope and ``code``; returns the error object."""
    assert r.status == status, (r.status, r.body[:500])
    doc = json.loads(r.body)
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert err.get("details") is None or isinstance(err["details"], dict), err
    text = json.dumps(err)
    assert "Traceback" not in text and '.py"' not in text and ".rs:" not in text, text
    return err
