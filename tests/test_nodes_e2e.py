"""End to end: a local ComfyUI runs a workflow whose Remote API node calls a
worker in front of a second ComfyUI (and, second, the same worker behind an
endpoint that speaks only the seed's JSON/polling shape). Checks, as a user
would: every node of the pack loads; IMAGE, MASK, LATENT, STRING and INT
come back equal bit for bit to the same nodes run locally; progress reaches
the local websocket as `progress_state` for the Remote API node;
interrupting the local prompt leaves the remote job `canceled`; inputs
named after the remote ones and output sockets chosen by name work as the
frontend extension sends them.

Every case runs on the current ComfyUI (COMFYUI_DIR) and on an older one
(COMFYUI_OLD_DIR, 0.3.64: no Autogrow, no accept_all_inputs), each
ComfyUI of a stack being that version.

Needs COMFYUI_DIR (a ComfyUI checkout), the comfy-remote binary
(COMFY_REMOTE_BIN or target/release/comfy-remote) and wheel
(COMFY_REMOTE_WHEEL or target/wheels/*.whl).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip("COMFYUI_DIR is not set: end-to-end Remote API tests skipped", allow_module_level=True)

REMOTE_API_NODE = "10"


# ---------------------------------------------------------------- processes


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module", params=["current", "0.3.64"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A worker (supervising the remote ComfyUI), the seed-shape endpoint in
    front of it, and the local ComfyUI with the test dump node, all of one
    ComfyUI version."""
    from harness import free_port, start_comfyui, start_worker, stop_process, wait_until

    old = request.param != "current"
    comfyui_dir = request.getfixturevalue("comfyui_old_dir" if old else "comfyui_dir")
    comfy_python = request.getfixturevalue("comfy_old_python" if old else "comfy_python")
    tmp = tmp_path_factory.mktemp(f"nodes_e2e_{request.param}")
    started: list[Any] = []
    seed = None
    try:
        worker = start_worker(remote_workflow(), comfyui=comfyui_dir, python=comfy_python,
                              home=tmp / "remote", spool=tmp / "remote" / "spool")
        started.append(worker)
        local_home = tmp / "local"
        (local_home / "custom_nodes" / "cr_test_nodes").mkdir(parents=True)
        shutil.copy(ROOT / "tests" / "harness" / "nodes_dump.py",
                    local_home / "custom_nodes" / "cr_test_nodes" / "__init__.py")
        local = start_comfyui(comfy_python, comfyui_dir, local_home)
        started.append(local)
        port = free_port()
        seed = subprocess.Popen([sys.executable, str(ROOT / "tests" / "seed_endpoint.py"),
                                 "--worker", worker.url, "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert seed.stdout is not None and seed.stdout.readline().startswith("listening on")
        yield {"worker": worker.url, "seed": f"http://127.0.0.1:{port}/run", "local": local.url,
               "local_home": local_home, "wait_until": wait_until, "old": old,
               # How a positional input is keyed: as Autogrow saved it where it exists.
               "slot": "value{}" if old else "values.value{}"}
    finally:
        if seed is not None:
            seed.terminate()
            seed.wait(10)
        for p in reversed(started):
            p.stop()
        out = ROOT / "artifacts" / f"nodes_e2e_{request.param}"
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.rglob("*.log"):
            shutil.copy(f, out / f"{f.parent.name}-{f.name}")


# ---------------------------------------------------------------- workflows


def remote_input(name: str, comfy_type: str, default: list[Any] | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"name": name, "type": comfy_type}
    if default is not None:
        inputs["default"] = default
    return {"class_type": "RemoteInput", "inputs": inputs}


def remote_output(name: str, link: list[Any]) -> dict[str, Any]:
    return {"class_type": "RemoteOutput", "inputs": {"name": name, "value": link}}


def transform(nodes: dict[str, Any], image: list[Any], radius: Any, text: Any, prefix: str) -> dict[str, list[Any]]:
    """The nodes whose results are compared: same on both sides."""
    nodes[f"{prefix}1"] = {"class_type": "ImageBlur", "inputs": {"image": image, "blur_radius": radius, "sigma": 2.0}}
    nodes[f"{prefix}2"] = {"class_type": "ImageInvert", "inputs": {"image": [f"{prefix}1", 0]}}
    nodes[f"{prefix}3"] = {"class_type": "ImageToMask", "inputs": {"image": image, "channel": "red"}}
    nodes[f"{prefix}4"] = {"class_type": "InvertMask", "inputs": {"mask": [f"{prefix}3", 0]}}
    nodes[f"{prefix}5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}}
    nodes[f"{prefix}6"] = {
        "class_type": "LatentUpscale",
        "inputs": {"samples": [f"{prefix}5", 0], "upscale_method": "bilinear", "width": 96, "height": 64, "crop": "disabled"},
    }
    nodes[f"{prefix}7"] = {"class_type": "StringConcatenate", "inputs": {"string_a": text, "string_b": "-remote", "delimiter": ""}}
    return {
        "image": [f"{prefix}2", 0],
        "mask": [f"{prefix}4", 0],
        "latent": [f"{prefix}6", 0],
        "text": [f"{prefix}7", 0],
    }


def remote_workflow() -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": remote_input("image", "IMAGE", ["1", 0]),
        "3": remote_input("radius", "INT", None),
        "4": remote_input("text", "STRING", None),
        "5": remote_input("count", "INT", None),
    }
    outs = transform(nodes, ["2", 0], ["3", 0], ["4", 0], "r")
    outs["count"] = ["5", 0]
    for i, (name, link) in enumerate(outs.items()):
        nodes[f"o{i}"] = remote_output(name, link)
    return nodes


def local_prompt(endpoint: str, protocol: str, size: int, radius: int, slot: str = "values.value{}") -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size * 3 // 4, "batch_size": 1, "color": 0x3366CC}},
        "2": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": 0.5, "blend_mode": "multiply"}},
        "3": {"class_type": "PrimitiveInt", "inputs": {"value": radius}},
        "4": {"class_type": "PrimitiveString", "inputs": {"value": "hello"}},
        "5": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
        REMOTE_API_NODE: {
            "class_type": "RemoteAPI",
            "inputs": {
                slot.format(0): ["2", 0],
                slot.format(1): ["3", 0],
                slot.format(2): ["4", 0],
                slot.format(3): ["5", 0],
                "endpoint": endpoint,
                "timeout": 600.0,
                "token": "",
                "protocol": protocol,
            },
        },
    }
    for i, name in enumerate(["image", "mask", "latent", "text", "count"]):
        nodes[f"p{i}"] = {"class_type": "RemoteResultPick", "inputs": {"result": [REMOTE_API_NODE, 0], "name": name, "index": 0}}
        nodes[f"d{i}"] = {"class_type": "CRTestDump", "inputs": {"value": [f"p{i}", 0], "name": f"remote_{name}"}}
    outs = transform(nodes, ["2", 0], ["3", 0], ["4", 0], "l")
    outs["count"] = ["5", 0]
    for i, (name, link) in enumerate(outs.items()):
        nodes[f"e{i}"] = {"class_type": "CRTestDump", "inputs": {"value": link, "name": f"local_{name}"}}
    return nodes


# ---------------------------------------------------------------- running


async def run_prompt(base: str, prompt: dict[str, Any], interrupt_when: str | None = None) -> dict[str, Any]:
    """Queue a prompt on a ComfyUI and follow its websocket until it ends.
    With ``interrupt_when``, POST /interrupt once a progress text contains it."""
    import aiohttp

    client_id = uuid.uuid4().hex
    seen: dict[str, Any] = {"progress_state": [], "texts": [], "end": None, "interrupted_at": None}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            async with s.post(f"{base}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json()
                assert r.status == 200, body
            pid = body["prompt_id"]
            seen["prompt_id"] = pid
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=deadline - time.monotonic())
                if msg.type == aiohttp.WSMsgType.BINARY:
                    (kind,) = struct.unpack(">I", msg.data[:4])
                    if kind == 3:  # progress text: node id length, node id, text
                        (n,) = struct.unpack(">I", msg.data[4:8])
                        node, text = msg.data[8 : 8 + n].decode(), msg.data[8 + n :].decode()
                        seen["texts"].append((node, text))
                        if interrupt_when and interrupt_when in text and seen["interrupted_at"] is None:
                            seen["interrupted_at"] = time.monotonic()
                            await s.post(f"{base}/interrupt", json={"prompt_id": pid})
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"websocket closed: {msg}")
                m = json.loads(msg.data)
                data = m.get("data") or {}
                if data.get("prompt_id") not in (None, pid):
                    continue
                if m["type"] == "progress_state":
                    seen["progress_state"].append(data)
                if m["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    seen["end"] = m
                    seen["ended_at"] = time.monotonic()
                    return seen
    raise AssertionError("prompt did not finish within 600 s")


def load_dump(base_dir: Path, name: str) -> Any:
    from comfy_remote import codec

    ((_, _, value),) = codec.decode_file(base_dir / "output" / "cr_dump" / f"{name}.crc")
    return value


def assert_same(a: Any, b: Any, what: str) -> None:
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), what
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{what}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{what}: keys {set(a)} vs {set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{what}.{k}")
    else:
        assert a == b and type(a) is type(b), f"{what}: {a!r} vs {b!r}"


@pytest.mark.parametrize("target", ["worker", "seed"])
def test_remote_api_matches_local_and_reports_progress(stack: dict[str, Any], target: str) -> None:
    endpoint = stack[target]
    protocol = "auto"
    seen = asyncio.run(run_prompt(stack["local"], local_prompt(endpoint, protocol, size=96, radius=3, slot=stack["slot"])))
    assert seen["end"]["type"] == "execution_success", json.dumps(seen["end"])[:3000]
    base = stack["local_home"]
    for name in ["image", "mask", "latent", "text", "count"]:
        assert_same(load_dump(base, f"remote_{name}"), load_dump(base, f"local_{name}"), name)
    ours = [d["nodes"][REMOTE_API_NODE] for d in seen["progress_state"] if REMOTE_API_NODE in d.get("nodes", {})]
    assert ours, "no progress_state update for the Remote API node"
    assert any(n["state"] == "running" and 0 < n["value"] for n in ours), ours[-3:]
    texts = [t for node, t in seen["texts"] if node == REMOTE_API_NODE]
    assert any(t.startswith("remote job ") for t in texts), texts
    assert any(t.startswith("done: image, mask, latent, text, count") for t in texts), texts


@pytest.mark.parametrize("target", ["worker", "seed"])
def test_interrupt_cancels_the_remote_job(stack: dict[str, Any], target: str) -> None:
    # A big image and the widest blur keep the remote ComfyUI busy for a while.
    prompt = local_prompt(stack[target], "auto", size=2048, radius=31, slot=stack["slot"])
    seen = asyncio.run(run_prompt(stack["local"], prompt, interrupt_when="remote: running"))
    assert seen["interrupted_at"] is not None, seen["texts"]
    assert seen["end"]["type"] == "execution_interrupted", seen["end"]
    job_id = next(t.split()[2].rstrip(":") for node, t in seen["texts"] if t.startswith("remote job "))
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        status = http_json(f"{stack['worker']}/v1/jobs/{job_id}")["status"]
        if status == "canceled":
            break
        time.sleep(0.2)
    assert status == "canceled", status


def test_every_node_loads(stack: dict[str, Any]) -> None:
    from comfy_remote import _native

    info = http_json(f"{stack['local']}/object_info")
    assert [n for n in _native.NODE_TYPES if n not in info] == [], "nodes missing from /object_info"
    log = (stack["local_home"] / "comfyui.log").read_text(errors="replace")
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "comfy-remote" in line]
    assert failed == [], failed
    # No node shows the worker's job path as a widget.
    for node in (_native.REMOTE_INPUT, _native.REMOTE_OUTPUT):
        declared = {**info[node]["input"].get("required", {}), **info[node]["input"].get("optional", {})}
        assert _native.JOB_KEY not in declared, declared


def test_inputs_by_name_and_outputs_by_name(stack: dict[str, Any]) -> None:
    """The prompt the frontend extension makes: inputs keyed ``input:<name>``
    (in any order), output sockets chosen by ``remote_outputs``. ComfyUI
    0.3.64 hands a node its linked inputs whatever their names but drops a
    literal it does not declare: there the inputs still go by name and the
    one output socket is the bundle."""
    prompt = local_prompt(stack["worker"], "auto", size=64, radius=2)
    node = prompt[REMOTE_API_NODE]["inputs"]
    for i, name in reversed(list(enumerate(["image", "radius", "text", "count"]))):
        node[f"input:{name}"] = node.pop(f"values.value{i}")
    node["remote_outputs"] = json.dumps(["count", "image", "text"])
    for k in [k for k in prompt if k[0] in "pd" and k[1:].isdigit()]:
        prompt.pop(k)
    picked = ["count", "image", "text"]
    for i, name in enumerate(picked):
        source = [REMOTE_API_NODE, i]
        if stack["old"]:
            prompt[f"p{i}"] = {"class_type": "RemoteResultPick", "inputs": {"result": [REMOTE_API_NODE, 0],
                                                                            "name": name, "index": 0}}
            source = [f"p{i}", 0]
        prompt[f"d{i}"] = {"class_type": "CRTestDump", "inputs": {"value": source, "name": f"named_{name}"}}
    seen = asyncio.run(run_prompt(stack["local"], prompt))
    assert seen["end"]["type"] == "execution_success", json.dumps(seen["end"])[:3000]
    base = stack["local_home"]
    for name in picked:
        assert_same(load_dump(base, f"named_{name}"), load_dump(base, f"local_{name}"), name)
    if stack["old"]:
        return

    # A linked socket whose output the endpoint does not have is named before anything is sent.
    node["remote_outputs"] = json.dumps(["count", "depth", "text"])
    seen = asyncio.run(run_prompt(stack["local"], prompt))
    assert seen["end"]["type"] == "execution_error", seen["end"]
    message = seen["end"]["data"]["exception_message"]
    assert "'depth' is linked" in message and "image, mask, latent, text, count" in message, message
