"""The web front of a deployed app: protocol v1 (submit, status, events, result, cancel, info) over a ``Backend``.

CPU-only and stateless: every answer is built from the backend's call state
and its store, so any number of web containers agree about every job.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from comfy_remote.modal_runtime.backend import Backend
from comfy_remote.modal_runtime.gpu import CONTAINER, now

PROTOCOL = "comfy-remote/1"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
EVENTS_POLL_S = 0.25
MAX_BODY_BYTES = 1 << 31


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _progress(raw: Any, status: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        p = dict(raw)
    else:
        # No GPU container has picked the job up yet: Modal is queueing it or
        # starting a container (a cold start boots ComfyUI first).
        p = {"value": 0.0, "max": 1.0, "fraction": 0.0, "phase": "queued",
             "text": "waiting for a GPU container (a cold start takes a while)"}
    if status == "succeeded":
        p.update(value=p.get("max", 1.0), fraction=1.0, phase="done")
    elif status in TERMINAL:
        p["phase"] = "done"
    return p


def signature(workflow_path: str) -> dict[str, Any]:
    """Inputs and outputs of the workflow, for /v1/info before any GPU started.

    Computed by the worker's own parser (the native module), so the order,
    types and optional flags are exactly what the worker in the GPU
    container publishes.
    """
    from comfy_remote import _native

    with open(workflow_path, encoding="utf-8") as f:
        text = f.read()
    sig: dict[str, Any] = json.loads(_native.workflow_signature(os.path.basename(workflow_path), text))
    return sig


def create_app(backend: Backend, *, workflow_path: str, token: str | None = None) -> FastAPI:
    """The ASGI app; ``token`` (from the app's modal.Secret) makes every route require ``Authorization: Bearer``."""
    app = FastAPI(title="comfy-remote", docs_url=None, redoc_url=None)
    store = backend.store
    static_sig = signature(workflow_path)

    @app.middleware("http")
    async def protocol_and_auth(request: Request, call_next: Any) -> Response:
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                resp: Response = _error(401, "unauthorized", "missing or wrong bearer token")
                resp.headers["Comfy-Remote-Protocol"] = PROTOCOL
                return resp
        resp = await call_next(request)
        resp.headers["Comfy-Remote-Protocol"] = PROTOCOL
        return resp

    def urls(base: str, job_id: str) -> dict[str, str]:
        me = f"{base}/v1/jobs/{job_id}"
        return {"self": me, "events": me + "/events", "result": me + "/result", "cancel": me + "/cancel"}

    def base_url(request: Request) -> str:
        proto = request.headers.get("x-forwarded-proto", request.url.scheme)
        host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
        return f"{proto}://{host}"

    async def view(job_id: str, base: str) -> dict[str, Any] | None:
        rec = await store.get(f"job:{job_id}")
        if rec is None:
            return None
        state = await store.get(f"final:{job_id}")
        if state is None:
            prog = await store.get(f"progress:{job_id}") or {}
            call = await backend.poll(rec["call_id"])
            if call.state == "running":
                status = prog.get("status", "queued")
                if status not in TERMINAL and await store.get(f"cancel:{job_id}"):
                    status = "canceling"
                state = {"status": status, "progress": prog.get("progress"), "updated_at": prog.get("updated_at")}
            else:
                # The call ended without the job writing its end (crash, timeout, cancel before start).
                state = {"status": call.state, "updated_at": now(), "progress": prog.get("progress")}
                if call.state == "failed":
                    state["error"] = {"code": "execution_failed", "message": call.error}
                elif call.state == "canceled":
                    state["error"] = {"code": "canceled", "message": "the job was canceled"}
                elif call.state == "expired":
                    state["error"] = {"code": "expired", "message": "the job's result has expired"}
                elif call.state == "succeeded":
                    state["result"] = {"outputs": static_sig["outputs"], "bytes": 0}
                await store.put(f"final:{job_id}", state)
        status = state["status"]
        u = urls(base, job_id)
        out: dict[str, Any] = {
            "id": job_id, "status": status, "progress": _progress(state.get("progress"), status),
            "poll_url": u["self"], "urls": u, "created_at": rec["created_at"],
            "updated_at": state.get("updated_at") or rec["created_at"],
        }
        if status == "succeeded":
            res = state.get("result") or {}
            out["result"] = {
                "url": u["result"], "bytes": res.get("bytes", 0),
                "outputs": [{"name": o["name"], "type": o["type"]} for o in res.get("outputs", [])],
            }
        if state.get("error"):
            out["error"] = state["error"]
        return out

    @app.get("/v1/info")
    async def info() -> Any:
        live = await store.get("info")
        if live:
            return live
        return {
            "protocol": PROTOCOL, "server_version": os.environ.get("COMFY_REMOTE_VERSION", ""),
            "workflow": {"name": os.path.basename(workflow_path), "sha256": ""},
            **static_sig,
            "limits": {"max_body_bytes": MAX_BODY_BYTES, "max_tensors": 0, "max_rank": 0, "max_concurrent_jobs": 0},
        }

    @app.post("/v1/jobs")
    async def submit(request: Request) -> Any:
        body = await request.body()
        if not body:
            return _error(400, "bad_request", "the request has no body: send a comfy-remote container")
        content_type = request.headers.get("content-type", CONTAINER)
        job_id = uuid.uuid4().hex
        key = request.headers.get("idempotency-key")
        if key:
            if not await store.put_if_absent(f"idem:{key}", job_id):
                existing = await store.get(f"idem:{key}")
                for _ in range(50):  # the first submitter may still be spawning
                    v = await view(existing, base_url(request))
                    if v is not None:
                        return JSONResponse(v, status_code=200)
                    await asyncio.sleep(0.1)
                return _error(409, "conflict", "a job with this Idempotency-Key is still being created; retry")
        call_id = await backend.spawn(job_id, body, content_type)
        await store.put(f"job:{job_id}", {"call_id": call_id, "created_at": now()})
        v = await view(job_id, base_url(request))
        return JSONResponse(v, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> Any:
        v = await view(job_id, base_url(request))
        return v if v is not None else _error(404, "not_found", f"no job {job_id}")

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str, request: Request) -> Any:
        rec = await store.get(f"job:{job_id}")
        if rec is None:
            return _error(404, "not_found", f"no job {job_id}")
        v = await view(job_id, base_url(request))
        if v is not None and v["status"] not in TERMINAL:
            await store.put(f"cancel:{job_id}", True)
            await backend.cancel(rec["call_id"])
            v = await view(job_id, base_url(request))
        return v

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str, request: Request) -> Any:
        v = await view(job_id, base_url(request))
        if v is None:
            return _error(404, "not_found", f"no job {job_id}")
        if v["status"] != "succeeded":
            code = 409 if v["status"] not in TERMINAL else 410
            return _error(code, "not_ready" if code == 409 else "conflict", f"the job is {v['status']}")
        rec = await store.get(f"job:{job_id}")
        data = await backend.result(rec["call_id"], timeout=120)
        return Response(data, media_type=CONTAINER)

    @app.get("/v1/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> Any:
        first = await view(job_id, base_url(request))
        if first is None:
            return _error(404, "not_found", f"no job {job_id}")
        base = base_url(request)

        async def stream() -> AsyncIterator[bytes]:
            seq = 1
            v: dict[str, Any] | None = first
            yield _sse(seq, "status", v)
            last_progress = json.dumps(v["progress"], sort_keys=True)
            last_status = v["status"]
            while v is not None and v["status"] not in TERMINAL:
                await asyncio.sleep(EVENTS_POLL_S)
                v = await view(job_id, base)
                if v is None:
                    return
                p = json.dumps(v["progress"], sort_keys=True)
                if v["status"] != last_status:
                    seq += 1
                    last_status = v["status"]
                    if v["status"] not in TERMINAL:
                        yield _sse(seq, "status", v)
                elif p != last_progress:
                    seq += 1
                    yield _sse(seq, "progress", v["progress"])
                last_progress = p
            seq += 1
            yield _sse(seq, "done", v)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _sse(seq: int, event: str, data: Any) -> bytes:
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()
