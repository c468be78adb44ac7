"""The pack's HTTP routes on ComfyUI's server, for its frontend extension
(``web/comfy_remote.js``).

- ``GET /comfy-remote/config``: the node ids and the naming rules the
  extension follows (all from the native module).
- ``POST /comfy-remote/shape`` with ``{endpoint, token, modal_key,
  modal_secret, protocol}``: the endpoint's inputs and outputs, fetched
  here with the native client. Token fields are references (env var or
  ``secrets:<name>``) resolved here: no secret ever reaches the browser,
  and the answer holds only the signature.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from comfy_remote import _native, secrets

log = logging.getLogger("comfy_remote")

PREFIX = "/comfy-remote"
PROTOCOLS = ("auto", "native", "json")


class ShapeError(Exception):
    """A shape request that cannot be answered: ``status`` and a message that says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def config() -> dict[str, Any]:
    from comfy_remote.nodes import remote_api

    return {
        "nodes": {
            "remote_api": _native.REMOTE_API,
            "remote_result_pick": _native.REMOTE_RESULT_PICK,
            "remote_input": _native.REMOTE_INPUT,
            "remote_output": _native.REMOTE_OUTPUT,
            "modal_deployment": _native.MODAL_DEPLOYMENT,
        },
        # False on ComfyUI whose schema cannot take undeclared inputs: the
        # node keeps positional inputs and one result output there.
        "named": remote_api.NAMED,
        "named_input_prefix": _native.NAMED_INPUT_PREFIX,
        "max_inputs": remote_api.MAX_INPUTS,
        "outputs_key": remote_api.OUTPUTS_KEY,
        "max_outputs": remote_api.MAX_OUTPUTS,
        "result_type": remote_api.RESULT_TYPE,
    }


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ShapeError(400, f"{key} must be a string")
    return value.strip()


def fetch_shape(body: Any) -> dict[str, Any]:
    """The endpoint's shape (``remote_api.shape_view``), or ShapeError."""
    from comfy_remote.nodes import remote_api

    if not isinstance(body, dict):
        raise ShapeError(400, "the body must be a JSON object with the node's endpoint and token fields")
    url = _text(body, "endpoint")
    if not url:
        raise ShapeError(400, "no endpoint: set the node's endpoint (or link one) to show its inputs")
    protocol = _text(body, "protocol") or "auto"
    if protocol not in PROTOCOLS:
        raise ShapeError(400, f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    try:
        headers = secrets.auth_headers(_text(body, "token"), _text(body, "modal_key"), _text(body, "modal_secret"))
    except secrets.SecretError as e:  # its message never holds the secret
        raise ShapeError(400, str(e)) from None
    if protocol == "json":
        # The simple JSON shape publishes no signature: positional inputs, one result.
        return remote_api.shape_view(url, None)
    try:
        # Its own client, which asks for the signature whatever the node's
        # protocol says (a "native" client takes it on trust); an artist
        # waits on this answer, so one retry, not a job's six.
        client = _native.Client(url, headers=headers, mode="auto", max_attempts=2)
        signature = client.signature()
    except ValueError as e:  # a URL the client refuses
        raise ShapeError(400, f"endpoint {url}: {e}") from None
    except _native.RemoteError as e:
        raise ShapeError(502, f"endpoint {url} did not give its inputs: {e}") from None
    return remote_api.shape_view(url, signature)


_registered = False


def register() -> None:
    """Add the routes to ComfyUI's server (once; nothing without a server)."""
    global _registered
    if _registered:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # imported outside ComfyUI's server (unit checks)
        return
    routes = PromptServer.instance.routes

    @routes.get(f"{PREFIX}/config")
    async def _config(request: web.Request) -> web.Response:
        return web.json_response(config())

    @routes.post(f"{PREFIX}/shape")
    async def _shape(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            return web.json_response(await asyncio.to_thread(fetch_shape, body))
        except ShapeError as e:
            return web.json_response({"error": {"message": str(e)}}, status=e.status)

    _registered = True
