"""Unit checks of the Remote API node that need ComfyUI importable but no
server: schema (Autogrow and the fallback for ComfyUI without it), value
collection, the REMOTE_RESULT bundle and picker, and what goes on the wire.

Run with ComfyUI's Python: ``python nodes_unit.py COMFYUI_DIR``. Prints one
``ok <check>`` line per check; exits non-zero on the first failure.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402
from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.cpu = True  # before comfy.model_management picks a device
from comfy_api.latest import io  # noqa: E402

from comfy_remote import codec  # noqa: E402
from comfy_remote.nodes import remote_api  # noqa: E402

CHECKS: list[Callable[[], None]] = []


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS.append(fn)
    return fn


@check
def autogrow_schema() -> None:
    schema = remote_api.RemoteAPI.define_schema()
    assert schema.node_id == "RemoteAPI" and schema.category == "comfy-remote"
    ids = [i.id for i in schema.inputs]
    assert ids[0] == "values" and isinstance(schema.inputs[0], io.Autogrow.Input), ids
    for name in ("endpoint", "timeout", "token", "modal_key", "modal_secret", "protocol", "endpoint_url"):
        assert name in ids, name
    for i in schema.inputs:
        assert i.tooltip, f"input {i.id} has no tooltip"
    assert [h for h in schema.hidden] == [io.Hidden.unique_id], schema.hidden
    assert len(schema.outputs) == 1 and schema.outputs[0].tooltip
    url = next(i for i in schema.inputs if i.id == "endpoint_url")
    assert url.optional and url.force_input
    pick = remote_api.RemoteResultPick.define_schema()
    assert pick.node_id == "RemoteResultPick" and pick.category == "comfy-remote"


@check
def fallback_schema_without_autogrow() -> None:
    saved = io.Autogrow
    try:
        del io.Autogrow
        mod = importlib.reload(remote_api)
        assert not mod.HAS_AUTOGROW
        schema = mod.RemoteAPI.define_schema()
        values = [i for i in schema.inputs if i.id.startswith("value")]
        assert [i.id for i in values] == [f"value{n}" for n in range(mod.FALLBACK_INPUTS)]
        assert all(i.optional for i in values)
        got = mod.collect_values(None, {"value2": "c", "value0": "a", "value1": None, "endpoint": "x"})
        assert got == [("value0", "a"), ("value2", "c")], got
    finally:
        io.Autogrow = saved
        importlib.reload(remote_api)
    assert remote_api.HAS_AUTOGROW


@check
def collect_values_in_slot_order() -> None:
    got = remote_api.collect_values({"value10": 10, "value2": 2, "value0": 0}, {})
    assert [k for k, _ in got] == ["value0", "value2", "value10"], got


@check
def bundle_and_picker() -> None:
    img = torch.rand(1, 4, 4, 3)
    bundle = remote_api.RemoteResult([("image", "IMAGE", img), ("count", "INT", 3)])
    assert bundle["count"] == 3 and bundle[0] is img and bundle[-1] == 3
    assert list(bundle) == ["image", "count"] and bundle.type_of("image") == "IMAGE"
    assert "RemoteResult(image: IMAGE, count: INT)" == repr(bundle)
    pick = remote_api.RemoteResultPick.execute
    assert pick(bundle, name="count").result[0] == 3
    assert pick(bundle, name="", index=0).result[0] is img
    try:
        pick(bundle, name="nope")
    except ValueError as e:
        assert "image, count" in str(e), e
    else:
        raise AssertionError("unknown name accepted")
    assert pick("single", name="", index=0).result[0] == "single"


class Capture(BaseHTTPRequestHandler):
    bodies: list[bytes] = []
    result: bytes = b""

    def log_message(self, *args: object) -> None:
        pass

    def send(self, code: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.send(404, {"error": "no"})

    def do_POST(self) -> None:
        Capture.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        data = base64.b64encode(Capture.result).decode()
        self.send(200, {"status": "succeeded", "result": {"format": "comfy-remote/1+base64", "data": data}})


@check
def request_body_holds_only_the_inputs() -> None:
    img = torch.rand(1, 8, 8, 3)
    Capture.result = codec.encode([("image", "IMAGE", img), ("note", "STRING", "hi")])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = remote_api.Client(f"http://127.0.0.1:{server.server_address[1]}/run")
        items = [("value0", img), ("value1", 7)]
        out = asyncio.run(remote_api.run_remote(client, items, remote_api._Reporter(None)))
    finally:
        server.shutdown()
    assert isinstance(out, remote_api.RemoteResult) and out["note"] == "hi"
    assert torch.equal(out["image"], img)
    (body,) = Capture.bodies
    form = json.loads(body)
    assert set(form) == {"format", "data"}, form.keys()
    sent = codec.decode(base64.b64decode(form["data"]))
    assert [(n, t) for n, t, _ in sent] == [("value0", "IMAGE"), ("value1", "INT")], sent
    assert torch.equal(sent[0][2], img) and sent[1][2] == 7
    raw = base64.b64decode(form["data"])
    for leak in (b"extra_pnginfo", b"\"prompt\"", b"class_type"):
        assert leak not in raw, leak


def main() -> int:
    for fn in CHECKS:
        fn()
        print(f"ok {fn.__name__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
