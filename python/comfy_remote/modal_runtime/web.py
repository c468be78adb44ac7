"""The web front of a deployed app: protocol v1 (docs/protocol.md §4) over a ``Backend``, and Comfy API v2
(``web_v2``, §5.1) on the same jobs.

CPU-only and stateless: every answer is built from the backend's call state
and its store, so any number of web containers agree about every job. The
protocol's rules come from the native module (``_native.Front``): the info
document, the check of a submit body against the workflow's signature
(before any GPU time is spent), error bodies and their status, bearer auth,
the job view and its URLs. What stays here is what Modal's primitives
shape: where job state lives, how event ids follow the job's records
(``state``), and waiting on the job's doorbell instead of polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfy_remote import _native
from comfy_remote.modal_runtime import state, web_v2
from comfy_remote.modal_runtime.backend import Backend, CallState, ResultExpired
from comfy_remote.modal_runtime.state import SLOTS, Record, now

log = logging.getLogger(__name__)

PROTOCOL = _native.PROTOCOL_VERSION
CONTAINER = "application/vnd.comfy-remote.container"
# A stream re-reads its job at least this often, and then asks Modal about
# the call itself (a lost doorbell, or a call that ended without a record).
EVENTS_RECHECK_S = 2.0
# An idle event stream sends an SSE comment this often (as the worker does).
KEEPALIVE_S = 15.0
# How long a result download waits for the call's return value.
RESULT_WAIT_S = 120.0
# How long a replayed Idempotency-Key waits for the first submit to finish spawning.
REPLAY_WAIT_S = 5.0


def signature(workflow_path: str) -> dict[str, Any]:
    """Inputs and outputs of the workflow, as the worker in the GPU container publishes them."""
    with open(workflow_path, encoding="utf-8") as f:
        text = f.read()
    sig: dict[str, Any] = json.loads(_native.workflow_signature(os.path.basename(workflow_path), text))
    return sig


def _json(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def _answer(e: Exception) -> Response:
    """The response of a native ``ApiError``."""
    headers = {"Retry-After": str(e.retry_after)} if getattr(e, "retry_after", None) else None
    return _json(e.body, e.status, headers)  # type: ignore[attr-defined]


def _error(code: str, message: str, details: Any = None) -> Exception:
    return _native.api_error(code, message, None if details is None else json.dumps(details))


class _ProtocolMiddleware:
    """Every response carries ``Comfy-Remote-Protocol``; ``/v1/*``, ``/api/v2/*`` (but its health) and
    ``/metrics`` need the token;
    an unexpected exception is a 500 with the error body (details go to the log)."""

    def __init__(self, app: Any, front: Any, counters: dict[str, int]) -> None:
        self.app = app
        self.front = front
        self.counters = counters

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_marked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = int(message.get("status", 200))
                self.counters["requests"] += 1
                if 400 <= status < 500:
                    self.counters["rejected"] += 1
                headers = [*message.get("headers", []), (b"comfy-remote-protocol", PROTOCOL.encode())]
                message = {**message, "headers": headers}
            await send(message)

        path = scope.get("path", "")
        guarded = path.startswith("/v1/") or path == "/metrics" or (
            path.startswith(web_v2.PREFIX + "/") and path != web_v2.PREFIX + "/health")
        if guarded:
            auth = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
            try:
                self.front.check_auth(auth)
            except _native.ApiError as e:
                await _answer(e)(scope, receive, send_marked)
                return
        try:
            await self.app(scope, receive, send_marked)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), path)
            if started:
                raise
            await _answer(_error("internal", "internal error; see the server's log"))(scope, receive, send_marked)


def create_app(
    backend: Backend,
    *,
    workflow_path: str,
    token: str | None = None,
    max_body_bytes: int | None = None,
    public_url: str | None = None,
    trust_forwarded: bool = False,
) -> FastAPI:
    """The ASGI app.

    ``token`` (from the app's modal.Secret) makes ``/v1/*``, ``/api/v2/*`` and ``/metrics``
    require ``Authorization: Bearer``. ``max_body_bytes`` defaults to the
    worker's. Job URLs are absolute from ``public_url``, else from the
    ``Host`` the client used; ``trust_forwarded`` lets ``X-Forwarded-Host``
    choose it (only behind a proxy that sets that header itself).
    """
    with open(workflow_path, encoding="utf-8") as f:
        front = _native.Front(
            os.path.basename(workflow_path), f.read(), max_body_bytes=max_body_bytes, token=token,
            public_url=public_url, trust_forwarded=trust_forwarded,
        )
    outputs = json.loads(front.outputs_json())
    store = backend.store
    counters = {"requests": 0, "rejected": 0, "submitted": 0}
    app = FastAPI(title="comfy-remote", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_ProtocolMiddleware, front=front, counters=counters)

    @app.exception_handler(_native.ApiError)
    async def api_error(_request: Request, e: Exception) -> Response:
        return _answer(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        message = {404: "no such route", 405: "this route does not take that method"}.get(e.status_code, str(e.detail))
        resp = _answer(_error(code, message))
        for k, v in (e.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError) -> Response:
        return _answer(_error("bad_request", f"malformed request: {e.errors()}"))

    def base_of(request: Request) -> str:
        h = request.headers
        return str(front.base_url(h.get("host"), h.get("x-forwarded-host"), h.get("x-forwarded-proto"),
                                  request.url.scheme))

    def job_id_of(raw: str) -> str:
        try:
            uuid.UUID(raw)
        except ValueError:
            raise _error("not_found", "job not found") from None
        return raw

    def ended(call: CallState) -> dict[str, Any]:
        """The view of a call that ended without writing the job's last record."""
        v: dict[str, Any] = {"status": call.state, "updated_at": now()}
        if call.state == "failed":
            v["error"] = {"code": "execution_failed", "message": f"the GPU call failed: {call.error}"}
        elif call.state == "canceled":
            v["error"] = {"code": "canceled", "message": "the job was canceled"}
        elif call.state == "succeeded":
            v["result"] = {"outputs": outputs, "bytes": 0}
        return v

    async def settle(job_id: str, rec: Record, key: str, view: dict[str, Any]) -> Record:
        """Write the record after ``rec`` under ``key`` unless someone did; the one that stands."""
        nxt = rec.after(view)
        if await store.put_if_absent(key, nxt.to_json()):
            await store.ring(job_id, nxt.seq)
            return nxt
        return Record.from_json(await store.get(key)) or nxt

    async def load(job_id: str, *, check_call: bool, meta: dict[str, Any] | None = None,
                   expiry: bool = True) -> tuple[dict[str, Any], Record] | None:
        """The job's metadata (read unless given) and its latest record. ``check_call`` also asks
        the backend whether the call ended without a record, or its result expired; without
        ``expiry`` a succeeded job is not looked at again (an event stream has ended by then)."""
        if meta is None:
            raw = await store.get(state.job_key(job_id))
            if raw is None:
                return None
            meta = json.loads(raw)
        call_id = meta.get("call_id")
        expired = Record.from_json(await store.get(state.expired_key(job_id))) if expiry else None
        if expired is not None:
            return meta, expired
        final = Record.from_json(await store.get(state.final_key(job_id)))
        if final is not None:
            if check_call and call_id and final.status == "succeeded" \
                    and (await backend.poll(call_id)).state == "expired":
                final = await settle(job_id, final, state.expired_key(job_id), {"status": "expired", "updated_at": now()})
            return meta, final
        rec = Record.from_json(await store.get(state.state_key(job_id))) or Record(0)
        if check_call and call_id:
            call = await backend.poll(call_id)
            if call.state != "running":
                # The GPU writes its last record before its call ends; none means it could not.
                final = Record.from_json(await store.get(state.final_key(job_id)))
                rec = final or await settle(job_id, rec, state.final_key(job_id), ended(call))
        return meta, rec

    async def view_text(job_id: str, meta: dict[str, Any], rec: Record, base: str,
                        canceling: bool | None = None) -> str:
        """The JobView; ``canceling`` (read from the store unless given): a cancel has not landed yet."""
        if canceling is None:
            canceling = not rec.terminal and await store.get(state.cancel_key(job_id)) is not None
        return str(front.job_view(None if rec.view is None else json.dumps(rec.view), job_id=job_id,
                                  created_at=meta["created_at"], base=base, canceling=canceling))

    async def result_response(job_id: str, data: bytes, request: Request) -> Response:
        """A result as the request asks for it: the JSON form, or the container packed,
        whole or ranged (the rules and headers from the native module)."""
        accept = request.headers.get("accept", "")
        if "application/json" in accept and CONTAINER not in accept:
            return _json(front.json_form(data))
        status, headers, body = await asyncio.to_thread(
            front.result_answer, data, job_id=job_id, headers=dict(request.headers))
        return Response(body, status_code=status, headers=dict(headers))

    async def waited(job_id: str, meta: dict[str, Any], secs: int, request: Request) -> Response | None:
        """``Prefer: wait``: the answer to a submit whose job ended within ``secs`` (the result,
        or the final JobView), or None to answer 202 as usual."""
        try:
            data = await backend.result(meta["call_id"], timeout=secs)
        except (asyncio.TimeoutError, TimeoutError):
            return None
        except Exception:  # the call failed or was canceled: its record says how
            loaded = await load(job_id, check_call=True, meta=meta)
            if loaded is None or not loaded[1].terminal:
                return None
            resp = _json(await view_text(job_id, meta, loaded[1], base_of(request)), 200)
        else:
            resp = await result_response(job_id, data, request)
        text = await view_text(job_id, meta, Record(0), base_of(request), canceling=False)
        resp.headers["comfy-remote-job"] = job_id
        resp.headers["location"] = json.loads(text)["poll_url"]
        resp.headers["preference-applied"] = f"wait={secs}"
        return resp

    async def must_load(job_id: str, *, check_call: bool) -> tuple[dict[str, Any], Record]:
        loaded = await load(job_id_of(job_id), check_call=check_call)
        if loaded is None:
            raise _error("not_found", "job not found")
        return loaded

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json('{"status":"ok"}')

    @app.get("/readyz")
    async def readyz() -> Response:
        # Jobs are accepted whether or not a GPU container runs: Modal starts one on demand.
        return _json(json.dumps({"ready": True, "reason": "accepting jobs (GPU containers start on demand)"}))

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(_native.openapi_json())

    @app.get("/metrics")
    async def metrics() -> Response:
        lines = []
        for name, help_ in (("requests", "HTTP requests answered by this web container."),
                            ("rejected", "Requests this web container answered with a 4xx."),
                            ("submitted", "Jobs this web container accepted.")):
            lines += [f"# HELP comfy_remote_web_{name}_total {help_}", f"# TYPE comfy_remote_web_{name}_total counter",
                      f"comfy_remote_web_{name}_total {counters[name]}"]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/v1/info")
    async def info() -> Response:
        return _json(front.info_json(await store.get(state.INFO_KEY)))

    async def read_body(request: Request, kind: str) -> bytes:
        """The body, streamed: refused with 413 as soon as it passes the limit."""
        limit = front.body_limit(kind)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise front.too_large(kind)
            chunks.append(chunk)
        return b"".join(chunks)

    async def replay(key: str, sha: str, base: str) -> Response:
        claim = json.loads(await store.get(state.idem_key(key)) or "{}")
        first = str(claim.get("job_id", ""))
        if claim.get("body_sha256") != sha:
            raise _error("conflict", "this Idempotency-Key was used for a different request body; "
                         "use a new key for a new job", {"job_id": first})
        deadline = time.monotonic() + REPLAY_WAIT_S
        while (loaded := await load(first, check_call=False)) is None:
            if time.monotonic() > deadline:
                raise _error("conflict", "a job with this Idempotency-Key is still being created; retry",
                             {"job_id": first})
            await asyncio.sleep(0.05)
        return _json(await view_text(first, *loaded, base), 200)

    async def start(job_id: str, container: bytes, sha: str) -> dict[str, Any]:
        """Spawn the job's GPU call and record the job; a failed spawn is recorded as a failed job."""
        meta: dict[str, Any] = {"call_id": None, "created_at": now(), "body_sha256": sha}
        try:
            meta["call_id"] = await backend.spawn(job_id, container, CONTAINER)
        except Exception:
            log.exception("spawning job %s failed", job_id)
            await store.put(state.job_key(job_id), json.dumps(meta))
            await settle(job_id, Record(0), state.final_key(job_id), {
                "status": "failed", "updated_at": now(),
                "error": {"code": "internal", "message": "the job could not be started; see the server's log"}})
            raise
        await store.put(state.job_key(job_id), json.dumps(meta))
        counters["submitted"] += 1
        return meta

    @app.post("/v1/jobs")
    async def submit(request: Request) -> Response:
        h = request.headers
        kind = front.media_kind(h.get("content-type"))
        front.check_content_length(kind, h.get("content-length"))
        _native.parse_retry_query(request.query_params.get("retry"))
        key = h.get("idempotency-key")
        if key is not None:
            _native.check_idempotency_key(key)
        body = await read_body(request, kind)
        # Decoding and the signature check happen here, before any GPU time is spent.
        container, sha = await asyncio.to_thread(front.check_submit, kind, body)
        base = base_of(request)
        job_id = str(uuid.uuid4())
        if key is not None and not await store.put_if_absent(
                state.idem_key(key), json.dumps({"job_id": job_id, "body_sha256": sha})):
            return await replay(key, sha, base)
        meta = await start(job_id, container or body, sha)
        secs = front.prefer_wait(dict(h))
        if secs:
            answer = await waited(job_id, meta, secs, request)
            if answer is not None:
                return answer
        # The job as accepted (whatever a GPU container did with it since).
        text = await view_text(job_id, meta, Record(0), base, canceling=False)
        return _json(text, 202, {"Location": json.loads(text)["poll_url"]})

    @app.get("/v1/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> Response:
        meta, rec = await must_load(job_id, check_call=True)
        return _json(await view_text(job_id, meta, rec, base_of(request)))

    async def cancel_job(job_id: str) -> tuple[dict[str, Any], Record]:
        """Ask for the job's cancel; the job as it is then."""
        meta, rec = await must_load(job_id, check_call=True)
        if not rec.terminal:
            await store.put(state.cancel_key(job_id), "true")
            await store.ring(state.cancel_channel(job_id), 1)
            if rec.view is None:
                # No GPU container has the job yet: drop the call, the job is canceled at once.
                if meta.get("call_id"):
                    await backend.cancel(meta["call_id"])
                rec = await settle(job_id, rec, state.final_key(job_id), {
                    "status": "canceled", "updated_at": now(),
                    "error": {"code": "canceled", "message": "the job was canceled"}})
            meta, rec = await must_load(job_id, check_call=False)
        return meta, rec

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str, request: Request) -> Response:
        meta, rec = await cancel_job(job_id)
        return _json(await view_text(job_id, meta, rec, base_of(request)), 202)

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str, request: Request) -> Response:
        meta, rec = await must_load(job_id, check_call=True)
        view = json.loads(await view_text(job_id, meta, rec, base_of(request)))
        st = view["status"]
        if st == "succeeded":
            try:
                data = await backend.result(meta["call_id"], timeout=RESULT_WAIT_S)
            except ResultExpired:
                await settle(job_id, rec, state.expired_key(job_id), {"status": "expired", "updated_at": now()})
                st = "expired"
            else:
                return await result_response(job_id, data, request)
        if st == "expired":
            raise _error("expired", "this job's result was deleted by the retention policy")
        if st in state.TERMINAL:
            raise _error("conflict", f"the job {st} and has no result", view.get("error"))
        raise _error("conflict", "the job has not finished; follow its events or poll it")

    @app.get("/v1/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> Response:
        await must_load(job_id, check_call=False)
        stream = _events(job_id, base_of(request), request.headers.get("last-event-id"), load, view_text, store)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def result_of(meta: dict[str, Any], job_id: str) -> bytes:
        """The call's result; ``ResultExpired`` once the backend dropped it (the job then reads ``expired``)."""
        try:
            return await backend.result(meta["call_id"], timeout=RESULT_WAIT_S)
        except ResultExpired:
            _, rec = await must_load(job_id, check_call=False)
            await settle(job_id, rec, state.expired_key(job_id), {"status": "expired", "updated_at": now()})
            raise

    web_v2.mount(app, workflow_path=workflow_path, backend=backend, max_body_bytes=max_body_bytes,
                 jobs=web_v2.Jobs(must_load=must_load, view_text=view_text, start=start, cancel=cancel_job,
                                  events=lambda job_id, base, last: _events(job_id, base, last, load, view_text, store),
                                  base_of=base_of, result=result_of))
    return app


def _frame(rec: Record, name: str, view_text: str) -> bytes:
    if name == "progress":
        data = json.dumps(json.loads(view_text)["progress"])
    elif name == "preview":
        data = json.dumps(rec.preview)
    else:
        data = view_text
    return f"id: {state.event_id(rec.seq, name)}\nevent: {name}\ndata: {data}\n\n".encode()


async def _events(
    job_id: str,
    base: str,
    last_event_id: str | None,
    load: Callable[..., Awaitable[tuple[dict[str, Any], Record] | None]],
    view_text: Callable[..., Awaitable[str]],
    store: Any,
) -> AsyncIterator[bytes]:
    """The job's events (docs/protocol.md §4.3) from its records.

    On connect: the events of the latest record the reader has not seen
    when its ``Last-Event-ID`` names that record, else a ``status``
    snapshot and the rest of that record's events (earlier records are not
    held). Then each new record's events, waking on the job's doorbell.
    """
    async with store.watch(job_id) as bell:
        loaded = await load(job_id, check_call=False)
        if loaded is None:
            return
        meta, rec = loaded
        resume = state.parse_event_id(last_event_id)
        # Previews are not replayed (as the worker does).
        if resume is not None and resume[0] == rec.seq:
            names = [n for n in rec.events if SLOTS[n] > resume[1] and n != "preview"]
        else:
            names = ["status", *(n for n in rec.events if n not in ("status", "preview"))]
        # A stream says what the job's records say: `canceling` once the GPU side has written it.
        text = await view_text(job_id, meta, rec, base, canceling=False)
        for name in names:
            yield _frame(rec, name, text)
        seen, last = rec.seq, rec
        quiet = time.monotonic()
        while not last.terminal:
            rung = await bell.wait(seen, EVENTS_RECHECK_S)
            # Two reads per change (the store is remote): the metadata is known, expiry comes after `done`.
            loaded = await load(job_id, check_call=not rung, meta=meta, expiry=False)
            if loaded is None:
                return
            meta, rec = loaded
            if rec.seq <= seen:
                if time.monotonic() - quiet >= KEEPALIVE_S:
                    quiet = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            # A reader that missed records is resynced with a `status` snapshot, then gets the rest of the
            # latest record's events, as one that connects now would (so a resume there continues alike).
            names = rec.events if rec.seq == seen + 1 else ["status", *(n for n in rec.events if n != "status")]
            text = await view_text(job_id, meta, rec, base, canceling=False)
            for name in names:
                yield _frame(rec, name, text)
            seen, last, quiet = rec.seq, rec, time.monotonic()
