"""Comfy API v2 on the Modal web front (docs/protocol.md §5.1), beside protocol v1.

A v2 job is a v1 job of the deployed workflow: the graph a client submits
must be that workflow with other input values (``_native.V2Front.plan``),
which become the job's inputs container; the job then runs exactly as a v1
job does. What v2 adds lives in the job store, readable from any web
container:

- ``v2job:<id>`` (web, at submit): the graph as submitted;
- ``v2key:<scope>:<key>`` (web, first writer wins): a single-use
  Idempotency-Key, its claim time and job; deleted when the submit made no job;
- ``v2asset:<id>``: an asset record (uploads; and a job's outputs);
- ``v2hash:<hash>``: the newest uploaded asset with those bytes;
- ``v2blob:<hex>`` / ``v2blob:<hex>:<n>``: an asset's bytes, as base64 chunks;
- ``v2out:<id>`` (web, first writer wins): a succeeded job's output records,
  with ids derived from the job's, so racing containers write the same ones;
- ``preview:<id>`` (GPU job): the job's latest preview.

The rules are the native module's (``V2Front``: body checks, the graph
against the workflow, job and asset JSON, the result split into files, the
upload form, ranges); what stays here is where state lives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from comfy_remote import _native
from comfy_remote.modal_runtime import state
from comfy_remote.modal_runtime.backend import ResultExpired

log = logging.getLogger(__name__)

PREFIX = "/api/v2"
# Asset bytes are stored in pieces of this size (base64 text in the store).
CHUNK = 3 << 20
# Single-use keys are held this long.
KEY_TTL_S = 24 * 3600
# Output asset ids are uuid5(job id / index) in this namespace.
OUTPUTS_NS = uuid.UUID("6f1c9a9e-5a43-4cde-9d3b-6b7e0d2f9a11")
MAX_JSON_BODY = 64 << 20


@dataclass
class Jobs:
    """What the v1 front knows how to do with a job, lent to v2."""

    must_load: Callable[..., Awaitable[tuple[dict[str, Any], Any]]]
    view_text: Callable[..., Awaitable[str]]
    start: Callable[[str, bytes, str], Awaitable[dict[str, Any]]]
    cancel: Callable[[str], Awaitable[tuple[dict[str, Any], Any]]]
    events: Callable[[str, str, str | None], AsyncIterator[bytes]]
    base_of: Callable[[Request], str]
    result: Callable[[dict[str, Any], str], Awaitable[bytes]]


def job_key(job_id: str) -> str:
    return f"v2job:{job_id}"


def key_key(scope: str, key: str) -> str:
    return f"v2key:{scope}:{key}"


def asset_key(asset_id: str) -> str:
    return f"v2asset:{asset_id}"


def hash_key(hash_: str) -> str:
    return f"v2hash:{hash_}"


def blob_key(hash_: str, n: int | None = None) -> str:
    hexd = hash_.removeprefix("blake3:")
    return f"v2blob:{hexd}" if n is None else f"v2blob:{hexd}:{n}"


def outputs_key(job_id: str) -> str:
    return f"v2out:{job_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


def _json(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def mount(app: FastAPI, *, workflow_path: str, backend: Any, jobs: Jobs,
          max_body_bytes: int | None = None, max_asset_bytes: int | None = None) -> None:
    """Add the ``/api/v2`` routes to the web front's app."""
    import os

    with open(workflow_path, encoding="utf-8") as f:
        v2 = _native.V2Front(os.path.basename(workflow_path), f.read(), max_body_bytes=max_body_bytes,
                             max_asset_bytes=max_asset_bytes)
    store = backend.store

    # ------------------------------------------------------------ blobs and assets

    async def put_blob(hash_: str, data: bytes) -> None:
        if await store.get(blob_key(hash_)) is not None:
            return
        n = 0
        for n, start in enumerate(range(0, max(len(data), 1), CHUNK)):
            await store.put(blob_key(hash_, n), base64.b64encode(data[start:start + CHUNK]).decode())
        # Last: a blob with its header is complete.
        await store.put(blob_key(hash_), json.dumps({"size": len(data), "chunks": n + 1}))

    async def blob_parts(hash_: str, first: int, last: int) -> AsyncIterator[bytes]:
        """The bytes ``first..=last`` of a blob."""
        for n in range(first // CHUNK, last // CHUNK + 1):
            text = await store.get(blob_key(hash_, n))
            if text is None:
                raise RuntimeError(f"blob {hash_} lost its piece {n}")
            piece = base64.b64decode(text)
            lo = max(first - n * CHUNK, 0)
            hi = min(last - n * CHUNK + 1, len(piece))
            yield piece[lo:hi]

    async def blob_bytes(hash_: str, size: int) -> bytes:
        return b"".join([p async for p in blob_parts(hash_, 0, size - 1)]) if size else b""

    async def live_asset(asset_id: str) -> dict[str, Any] | None:
        rec = json.loads(await store.get(asset_key(asset_id)) or "null")
        if rec is None or (rec.get("expires_at") is not None and rec["expires_at"] <= now_ms()):
            return None
        return rec if await store.get(blob_key(rec["hash"])) is not None else None

    async def by_hash(hash_: str) -> dict[str, Any] | None:
        asset_id = await store.get(hash_key(hash_))
        return await live_asset(asset_id) if asset_id else None

    async def claim(scope: str, key: str | None) -> None:
        if key is None:
            return
        k = key_key(scope, key)
        claim_ = json.dumps({"claimed_at": now_ms()})
        if await store.put_if_absent(k, claim_):
            return
        held = json.loads(await store.get(k) or "{}")
        if now_ms() - int(held.get("claimed_at", 0)) > KEY_TTL_S * 1000:
            await store.put(k, claim_)  # an expired claim is taken over
            return
        raise v2.key_reused()

    async def release(scope: str, key: str | None) -> None:
        if key is not None:
            await store.delete(key_key(scope, key))

    # ------------------------------------------------------------ jobs

    async def outputs_of(job_id: str, meta: dict[str, Any], view: dict[str, Any]) -> list[dict[str, Any]]:
        """A succeeded job's output records, made assets on the first call (any container)."""
        if view.get("status") != "succeeded":
            return []
        stored = await store.get(outputs_key(job_id))
        if stored is not None:
            return list(json.loads(stored))
        try:
            data = await jobs.result(meta, job_id)
        except ResultExpired:
            return []  # the job reads `expired` from now on
        records = []
        for i, (node_id, name, kind, content_type, content, hash_) in enumerate(
                await asyncio.to_thread(v2.split, data)):
            await put_blob(hash_, content)
            rec = {"id": str(uuid.uuid5(OUTPUTS_NS, f"{job_id}/{i}")), "hash": hash_, "size_bytes": len(content),
                   "content_type": content_type, "file_path": name, "created_at": now_ms(), "expires_at": None,
                   "job_id": job_id, "node_id": node_id, "name": name, "kind": kind}
            await store.put(asset_key(rec["id"]), json.dumps(rec))
            records.append(rec)
        outs = [{"asset_id": r["id"], "job_id": job_id, "node_id": r["node_id"], "name": r["name"],
                 "kind": r["kind"], "content_type": r["content_type"], "size_bytes": r["size_bytes"],
                 "hash": r["hash"]} for r in records]
        if not await store.put_if_absent(outputs_key(job_id), json.dumps(outs)):
            return list(json.loads(await store.get(outputs_key(job_id)) or "[]"))
        return outs

    async def job_text(job_id: str, meta: dict[str, Any], rec: Any, base: str) -> str:
        view_text = await jobs.view_text(job_id, meta, rec, "")
        outs = await outputs_of(job_id, meta, json.loads(view_text))
        return str(v2.job(view_text, json.dumps(outs), base))

    @app.get(PREFIX + "/health")
    async def health() -> Response:
        return _json('{"status":"healthy"}')

    @app.post(PREFIX + "/jobs")
    async def submit(request: Request) -> Response:
        h = request.headers
        ctype = (h.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise v2.error("unsupported_media_type", f"send the body as application/json; got {ctype!r}")
        key = v2.key(h["idempotency-key"]) if "idempotency-key" in h else None
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_JSON_BODY:
                raise v2.error("payload_too_large", f"JSON bodies are limited to {MAX_JSON_BODY} bytes")
            chunks.append(chunk)
        plan_text = await asyncio.to_thread(v2.plan, b"".join(chunks))
        plan = json.loads(plan_text)
        files: dict[str, tuple[str | None, str, bytes]] = {}
        missing = []
        for a in plan["assets"]:
            rec = (await live_asset(a["id"])) if a.get("id") else (await by_hash(a["hash"]) if a.get("hash") else None)
            if rec is None:
                missing.append(a["label"])
                continue
            files[a["label"]] = (rec.get("file_path"), rec["content_type"],
                                 await blob_bytes(rec["hash"], int(rec["size_bytes"])))
        if missing:
            raise v2.missing_assets(missing)
        # Checked against the workflow's signature as a v1 submit is.
        container = bytes(await asyncio.to_thread(v2.container, plan_text, files))
        sha = hashlib.sha256(container).hexdigest()
        await claim("jobs", key)
        job_id = str(uuid.uuid4())
        try:
            await store.put(job_key(job_id), json.dumps({"workflow": plan["workflow"]}))
            meta = await jobs.start(job_id, container, sha)
        except BaseException:
            await release("jobs", key)
            raise
        if key is not None:
            await store.put(key_key("jobs", key), json.dumps({"claimed_at": now_ms(), "job_id": job_id}))
        text = await job_text(job_id, meta, state.Record(0), jobs.base_of(request))
        return _json(text, 201, {"Location": json.loads(text)["urls"]["self"]})

    @app.get(PREFIX + "/jobs")
    async def list_jobs() -> Response:
        raise v2.error("not_implemented", "this deployment does not list jobs; keep the ids its submits return")

    @app.get(PREFIX + "/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> Response:
        meta, rec = await jobs.must_load(job_id, check_call=True)
        return _json(await job_text(job_id, meta, rec, jobs.base_of(request)))

    @app.get(PREFIX + "/jobs/{job_id}/workflow")
    async def get_workflow(job_id: str) -> Response:
        await jobs.must_load(job_id, check_call=False)
        stored = json.loads(await store.get(job_key(job_id)) or "null")
        graph = stored["workflow"] if stored else json.loads(v2.served_graph())
        return _json(json.dumps({"workflow": graph, "format": "api"}))

    @app.post(PREFIX + "/jobs/{job_id}/cancel")
    async def cancel(job_id: str, request: Request) -> Response:
        meta, rec = await jobs.cancel(job_id)
        return _json(await job_text(job_id, meta, rec, jobs.base_of(request)))

    @app.get(PREFIX + "/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> Response:
        meta, _ = await jobs.must_load(job_id, check_call=False)
        return StreamingResponse(_stream(job_id, meta, jobs.base_of(request)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def frame(name: str, data: str) -> bytes:
        return f"event: {name}\ndata: {data}\n\n".encode()

    async def finish(job_id: str, meta: dict[str, Any], base: str) -> list[bytes]:
        meta, rec = await jobs.must_load(job_id, check_call=True)
        job = json.loads(await job_text(job_id, meta, rec, base))
        frames = [frame("output", json.dumps(o)) for o in job["outputs"]]
        if job.get("progress") is not None:
            frames.append(frame("progress", json.dumps(job["progress"])))
        frames.append(frame("status", json.dumps({"status": job["status"], "queue_position": job["queue_position"]})))
        return frames

    async def _stream(job_id: str, meta: dict[str, Any], base: str) -> AsyncIterator[bytes]:
        """v1's event stream of the job (its records), said as v2 says it."""
        last_status: str | None = None
        last_progress: str | None = None
        first = True
        async for raw in jobs.events(job_id, "", None):
            if raw.startswith(b":"):
                yield raw
                continue
            name, data = _parse(raw)
            if name in ("status", "done") and json.loads(data).get("status") in state.TERMINAL:
                for f in await finish(job_id, meta, base):
                    yield f
                return
            if name == "status":
                s = str(v2.status_event(data))
                if s != last_status:
                    last_status = s
                    yield frame("status", s)
                if first:
                    first = False
                    view = json.loads(data)
                    if view.get("status") == "running":
                        p = str(v2.progress(json.dumps(view["progress"])))
                        last_progress = p
                        yield frame("progress", p)
                    latest = await store.get(state.preview_key(job_id))
                    if latest is not None:
                        yield frame("preview", str(v2.preview(latest)))
            elif name == "progress":
                p = str(v2.progress(data))
                if p != last_progress:
                    last_progress = p
                    yield frame("progress", p)
            elif name == "preview":
                yield frame("preview", str(v2.preview(data)))

    # ------------------------------------------------------------ assets

    def asset_text(rec: dict[str, Any], base: str, created_new: bool | None = None) -> str:
        return str(v2.asset(json.dumps(rec), base, created_new))

    @app.post(PREFIX + "/assets")
    async def upload(request: Request) -> Response:
        h = request.headers
        key = v2.key(h["idempotency-key"]) if "idempotency-key" in h else None
        limit = v2.max_asset_bytes
        declared = h.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
            raise v2.too_large()
        form = _native.FormReader(h.get("content-type"))
        fields: dict[str, str] = {}
        hasher = None
        part_type = None
        size = 0
        result: tuple[int, str] | None = None
        with tempfile.TemporaryFile() as spool:
            async for chunk in request.stream():
                for part in form.feed(chunk):
                    if part[0] == "field":
                        fields[part[1]] = part[2]
                    elif part[0] == "file":
                        if hasher is not None or result is not None:
                            raise v2.error("invalid_request", "the form has two `file` parts")
                        hasher, part_type = _native.ContentHasher(), part[3]
                    elif part[0] == "data" and hasher is not None:
                        size += len(part[1])
                        if size > limit:
                            raise v2.too_large()
                        hasher.update(part[1])
                        spool.write(part[1])
                    elif part[0] == "end" and hasher is not None:
                        result, hasher = (size, hasher.finish()), None
            form.finish()
            file_path, content_type, expected, expires_in = v2.upload_fields(fields, result is not None, part_type)
            assert result is not None
            size, hash_ = result
            v2.check_hash(expected, hash_)
            await claim("assets", key)
            created_new = await store.get(blob_key(hash_)) is None
            if created_new:
                spool.seek(0)
                await put_blob(hash_, spool.read())
        rec = {"id": str(uuid.uuid4()), "hash": hash_, "size_bytes": size, "content_type": content_type,
               "file_path": file_path, "created_at": now_ms(),
               "expires_at": now_ms() + (expires_in * 1000 if expires_in else v2.retention_ms), "job_id": None}
        await store.put(asset_key(rec["id"]), json.dumps(rec))
        await store.put(hash_key(hash_), rec["id"])
        return _json(asset_text(rec, jobs.base_of(request), created_new), 201 if created_new else 200)

    @app.post(PREFIX + "/assets/from-hash")
    async def from_hash(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise v2.error("invalid_request", "the body must be JSON {\"hash\": ...}") from None
        hash_ = body.get("hash") if isinstance(body, dict) else None
        if not isinstance(hash_, str):
            raise v2.error("invalid_request", "the body has no `hash` (blake3:<hex>)")
        existing = await by_hash(hash_) if _native.is_blake3(hash_) else None
        if existing is None:
            raise v2.error("blob_not_found", "no bytes with this hash here; upload them (POST /api/v2/assets)")
        expires_in = v2.expires_in(None if body.get("expires_in") is None else str(body["expires_in"]))
        rec = {**existing, "id": str(uuid.uuid4()), "created_at": now_ms(), "job_id": None,
               "file_path": body.get("file_path") or existing.get("file_path"),
               "expires_at": now_ms() + (expires_in * 1000 if expires_in else v2.retention_ms)}
        for k in ("node_id", "name", "kind"):
            rec.pop(k, None)
        await store.put(asset_key(rec["id"]), json.dumps(rec))
        return _json(asset_text(rec, jobs.base_of(request), False), 201)

    @app.head(PREFIX + "/assets/by-hash/{hash_}")
    async def head_by_hash(hash_: str) -> Response:
        known = _native.is_blake3(hash_) and await by_hash(hash_) is not None
        return Response(status_code=200 if known else 404)

    def asset_id_of(raw: str) -> str:
        try:
            uuid.UUID(raw)
        except ValueError:
            raise v2.error("not_found", "asset not found") from None
        return raw

    async def must_asset(asset_id: str) -> dict[str, Any]:
        rec = await live_asset(asset_id_of(asset_id))
        if rec is None:
            raise v2.error("not_found", "asset not found")
        return rec

    @app.get(PREFIX + "/assets/{asset_id}")
    async def get_asset(asset_id: str, request: Request) -> Response:
        return _json(asset_text(await must_asset(asset_id), jobs.base_of(request)))

    @app.delete(PREFIX + "/assets/{asset_id}")
    async def delete_asset(asset_id: str) -> Response:
        rec = await must_asset(asset_id)
        if rec.get("job_id"):
            raise v2.error("asset_in_use", "this asset is an output of a job; it is deleted with the job's result")
        # The bytes stay: another record may refer to them (the store keeps no count).
        await store.delete(asset_key(asset_id))
        return Response(status_code=204)

    @app.get(PREFIX + "/assets/{asset_id}/content")
    async def content(asset_id: str, request: Request) -> Response:
        rec = await must_asset(asset_id)
        size = int(rec["size_bytes"])
        rng = v2.byte_range(request.headers.get("range"), size)
        first, last = rng if rng is not None else (0, size - 1)
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(max(last - first + 1, 0))}
        if rng is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        body = blob_parts(rec["hash"], first, last) if size else _empty()
        return StreamingResponse(body, status_code=206 if rng is not None else 200,
                                 media_type=rec["content_type"], headers=headers)


async def _empty() -> AsyncIterator[bytes]:
    if False:  # pragma: no cover - an async generator with nothing to give
        yield b""


def _parse(raw: bytes) -> tuple[str, str]:
    """``(event, data)`` of one SSE frame the v1 stream wrote."""
    name, data = "message", []
    for line in raw.decode().splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return name, "\n".join(data)
