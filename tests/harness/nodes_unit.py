"""Unit checks of the nodes that need ComfyUI importable but no server: the
schemas this ComfyUI's V3 schema can express (named shape where it takes
undeclared inputs, Autogrow, the fallback without either), value
collection, output sockets, the REMOTE_RESULT bundle and picker, how Remote
Input/Output find their job, the shape route, and what goes on the wire.

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

from comfy_remote import _native, codec  # noqa: E402
from comfy_remote.nodes import compat, remote_api, remote_io, routes  # noqa: E402

CHECKS: list[Callable[[], None]] = []


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS.append(fn)
    return fn


@check
def every_node_defines_its_schema() -> None:
    # What ComfyUI does when it loads the pack: each schema is built and
    # turned into /object_info (an unsupported option fails here, as
    # `advanced` did on 0.3.64).
    from comfy_remote.nodes import _node_classes

    classes = _node_classes()
    assert sorted(c.define_schema().node_id for c in classes) == sorted(_native.NODE_TYPES)
    for c in classes:
        info = c.GET_NODE_INFO_V1()
        assert info["category"] == "comfy-remote", info


@check
def remote_api_schema() -> None:
    schema = remote_api.RemoteAPI.define_schema()
    assert schema.node_id == "RemoteAPI" and schema.category == "comfy-remote"
    ids = [i.id for i in schema.inputs]
    for name in ("endpoint", "timeout", "token", "modal_key", "modal_secret", "protocol", "endpoint_url"):
        assert name in ids, name
    for i in schema.inputs:
        assert i.tooltip, f"input {i.id} has no tooltip"
    assert {io.Hidden.unique_id, io.Hidden.prompt} <= set(schema.hidden), schema.hidden
    assert all(o.tooltip for o in schema.outputs)
    url = next(i for i in schema.inputs if i.id == "endpoint_url")
    assert url.optional and url.force_input
    if compat.ACCEPTS_ALL_INPUTS:
        # Named shape: the frontend adds the sockets; undeclared inputs reach execute().
        assert remote_api.NAMED and schema.accept_all_inputs
        assert not any(i.startswith("value") for i in ids), ids
        assert len(schema.outputs) == remote_api.MAX_OUTPUTS
    else:
        assert not remote_api.NAMED and len(schema.outputs) == 1
        first = schema.inputs[0]
        if compat.HAS_AUTOGROW:
            assert first.id == "values" and isinstance(first, io.Autogrow.Input), ids
        else:
            assert ids[: remote_api.FALLBACK_INPUTS] == [f"value{n}" for n in range(remote_api.FALLBACK_INPUTS)]
    pick = remote_api.RemoteResultPick.define_schema()
    assert pick.node_id == "RemoteResultPick" and pick.category == "comfy-remote"


@check
def older_schemas_degrade() -> None:
    saved = (compat.ACCEPTS_ALL_INPUTS, compat.HAS_AUTOGROW)
    try:
        for accepts_all, autogrow in [(False, compat.HAS_AUTOGROW), (False, False)]:
            compat.ACCEPTS_ALL_INPUTS, compat.HAS_AUTOGROW = accepts_all, autogrow
            mod = importlib.reload(remote_api)
            schema = mod.RemoteAPI.define_schema()
            assert not mod.NAMED and len(schema.outputs) == 1
            if not autogrow:
                values = [i for i in schema.inputs if i.id.startswith("value")]
                assert [i.id for i in values] == [f"value{n}" for n in range(mod.FALLBACK_INPUTS)]
                assert all(i.optional for i in values)
    finally:
        compat.ACCEPTS_ALL_INPUTS, compat.HAS_AUTOGROW = saved
        importlib.reload(remote_api)
    assert remote_api.NAMED == compat.ACCEPTS_ALL_INPUTS
    # The progress API the Remote API node drives, on this ComfyUI.
    assert asyncio.iscoroutinefunction(compat.execution_api().set_progress)
    # make() drops what a constructor does not take: `advanced` on 0.3.64 and a made-up one.
    s = compat.make(io.String.Input, "x", default="", advanced=True, no_such_option=1)
    assert s.id == "x"


@check
def collect_values_positional_then_named() -> None:
    got = remote_api.collect_values({"value10": 10, "value2": 2, "value0": 0}, {})
    assert [k for k, _ in got] == ["value0", "value2", "value10"], got
    got = remote_api.collect_values(None, {"value2": "c", "value0": "a", "value1": None, "endpoint": "x"})
    assert got == [("value0", "a"), ("value2", "c")], got
    # Autogrow's prompt keys (saved API workflows) are positional too; named ones follow.
    got = remote_api.collect_values(None, {"input:sigma": 0.5, "values.value1": "b", "input:none": None, "token": ""})
    assert got == [("value1", "b"), ("input:sigma", 0.5)], got


@check
def output_sockets_follow_remote_outputs() -> None:
    img = torch.rand(1, 4, 4, 3)
    outs = [("image", "IMAGE", img), ("count", "INT", 3)]
    assert remote_api.output_slots("") == [""] and remote_api.output_slots(None) == [""]
    slots = remote_api.output_slots('["count", "image"]')
    assert remote_api.slot_values(slots, outs, {0, 1}) == [3, img]
    # The result socket: the value of one output, the bundle of several.
    (one,) = remote_api.slot_values([""], outs[:1], {0})
    assert one is img
    (bundle,) = remote_api.slot_values([""], outs, {0})
    assert isinstance(bundle, remote_api.RemoteResult) and list(bundle) == ["image", "count"]
    # A socket whose output the endpoint dropped: None unlinked, named when linked.
    assert remote_api.slot_values(["image", "mask"], outs, {0}) == [img, None]
    try:
        remote_api.slot_values(["image", "mask"], outs, {1})
    except ValueError as e:
        assert "'mask' is linked" in str(e) and "image, count" in str(e), e
    else:
        raise AssertionError("a linked output the endpoint dropped was not named")
    for bad in ("image", "[1]", "[]", "{}"):
        try:
            remote_api.output_slots(bad)
        except ValueError as e:
            assert remote_api.OUTPUTS_KEY in str(e), e
        else:
            raise AssertionError(f"{bad!r} accepted")
    signature = {"inputs": [], "outputs": [{"name": "image"}, {"name": "count"}]}
    remote_api.check_output_names(["", "image", "mask"], signature, {0, 1})  # mask is not linked
    remote_api.check_output_names(["mask"], None, {0})  # no signature: checked on the result
    try:
        remote_api.check_output_names(["image", "mask"], signature, {1})
    except ValueError as e:
        assert "'mask' is linked" in str(e) and "image, count" in str(e), e
    else:
        raise AssertionError("a linked output the signature lacks was not named")
    prompt = {
        "7": {"class_type": "RemoteAPI", "inputs": {"endpoint": "x"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 2]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    linked = remote_api.linked_slots(prompt, "7")
    assert linked == {2}, linked
    remote_api.check_links(["a", "b", "c"], linked)
    try:
        remote_api.check_links(["a", "b"], linked)
    except ValueError as e:
        assert "output socket 2 is linked but the node fills 2" in str(e), e
    else:
        raise AssertionError("a link past the filled sockets was accepted")


class _Hidden:
    def __init__(self, prompt: object, unique_id: str | None) -> None:
        self.prompt, self.unique_id = prompt, unique_id


@check
def remote_io_find_their_job_in_the_prompt() -> None:
    for cls in (remote_io.RemoteInput, remote_io.RemoteOutput):
        schema = cls.define_schema()
        ids = [i.id for i in schema.inputs]
        assert _native.JOB_KEY not in ids, ids  # no widget: never saved into a workflow
        assert {io.Hidden.prompt, io.Hidden.unique_id} <= set(schema.hidden), schema.hidden
        assert all(i.tooltip for i in schema.inputs), ids
    prompt = {"4": {"class_type": "RemoteInput", "inputs": {"name": "x", _native.JOB_KEY: "/jobs/1/inputs.crc"}}}
    assert remote_io.job_path(_Hidden(prompt, "4")) == "/jobs/1/inputs.crc"
    assert remote_io.job_path(_Hidden(prompt, "5")) == ""
    assert remote_io.job_path(_Hidden({"4": {"inputs": {"name": "x"}}}, "4")) == ""
    assert remote_io.job_path(None) == ""


@check
def remote_io_round_trip_through_a_job_directory() -> None:
    import tempfile
    from pathlib import Path

    img = torch.rand(1, 4, 4, 3)
    with tempfile.TemporaryDirectory() as d:
        inputs = Path(d) / "inputs.crc"
        inputs.write_bytes(codec.encode([("image", "IMAGE", img), ("steps", "INT", 3)]))
        for name, ty, want in [("image", "IMAGE", img), ("steps", "FLOAT", 3.0)]:
            remote_io.RemoteInput.hidden = _Hidden({"1": {"inputs": {_native.JOB_KEY: str(inputs)}}}, "1")
            (got,) = remote_io.RemoteInput.execute(name=name, type=ty).result
            assert (torch.equal(got, want) if ty == "IMAGE" else got == want and isinstance(got, float)), got
        remote_io.RemoteOutput.hidden = _Hidden({"2": {"inputs": {_native.JOB_KEY: d}}}, "2")
        remote_io.RemoteOutput.execute(name="out", value=img)
        ((name, ty, value),) = codec.decode_file(Path(_native.job_output_file(d, "out")))
        assert name == "out" and ty == "IMAGE" and torch.equal(value, img)
        # Run locally (no job key): the default passes through.
        remote_io.RemoteInput.hidden = _Hidden({"1": {"inputs": {"name": "image"}}}, "1")
        (got,) = remote_io.RemoteInput.execute(name="image", type="IMAGE", default=img).result
        assert got is img


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
    # GET /v1/info answers this (a comfy-remote endpoint), or 404 when None (the simple JSON shape).
    info: dict | None = None
    auth: list[str | None] = []

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
        Capture.auth.append(self.headers.get("Authorization"))
        if self.path.endswith("/v1/info") and Capture.info is not None:
            self.send(200, Capture.info)
        else:
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
        outs = asyncio.run(remote_api.run_remote(client, items, remote_api._Reporter(None)))
    finally:
        server.shutdown()
    out = remote_api.result_value(outs)
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


@check
def shape_route_resolves_references_and_sends_only_the_signature() -> None:
    import os

    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ["CR_UNIT_TOKEN"] = "t0ken-value"
    try:
        Capture.info = None
        for protocol in ("auto", "json"):
            shape = routes.fetch_shape({"endpoint": f"{base}/run", "protocol": protocol})
            assert shape == {"endpoint": f"{base}/run", "inputs": None, "outputs": None}, shape
        item = {"name": "image", "type": "IMAGE", "optional": False, "node_id": "3"}
        Capture.info = {"protocol": "comfy-remote/1", "inputs": [item, {**item, "name": "sigma", "type": "FLOAT",
                        "optional": True}], "outputs": [{**item, "node_id": "9"}]}
        shape = routes.fetch_shape({"endpoint": f"{base}/svc", "token": "CR_UNIT_TOKEN", "protocol": "native"})
        assert shape["inputs"] == [{"name": "image", "type": "IMAGE", "optional": False},
                                   {"name": "sigma", "type": "FLOAT", "optional": True}], shape
        assert shape["outputs"] == [{"name": "image", "type": "IMAGE"}], shape
        assert "Bearer t0ken-value" in Capture.auth, Capture.auth  # resolved here, sent to the endpoint
        assert "t0ken-value" not in json.dumps(shape)
        for body, status, words in [
            ({"endpoint": ""}, 400, "no endpoint"),
            ({"endpoint": f"{base}/svc", "token": "sk-pasted-secret-123"}, 400, "environment variable"),
            ({"endpoint": f"{base}/svc", "protocol": "ftp"}, 400, "protocol"),
            ({"endpoint": "http://127.0.0.1:1/none", "protocol": "native"}, 502, "did not give its inputs"),
            ([], 400, "JSON object"),
        ]:
            try:
                routes.fetch_shape(body)
            except routes.ShapeError as e:
                assert e.status == status and words in str(e), (body, e.status, str(e))
                assert "pasted-secret" not in str(e)
            else:
                raise AssertionError(f"{body} accepted")
        cfg = routes.config()
        assert cfg["nodes"]["remote_api"] == "RemoteAPI" and cfg["named_input_prefix"] == "input:"
        assert cfg["named"] == remote_api.NAMED and cfg["outputs_key"] == remote_api.OUTPUTS_KEY
    finally:
        server.shutdown()
        Capture.info = None


def main() -> int:
    for fn in CHECKS:
        fn()
        print(f"ok {fn.__name__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
