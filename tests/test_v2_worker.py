"""Comfy API v2 on `comfy-remote serve` in front of a real ComfyUI, beyond the conformance suite: the
README's comfy-sdk script, any API-format graph with --allow-any-workflow, and assets, keys and jobs
that survive a restart of the worker. Needs COMFYUI_DIR (else one SKIPPED line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip(
        "COMFYUI_DIR is not set: the Comfy API v2 end-to-end tests need a ComfyUI checkout "
        "(export COMFYUI_DIR=/path/to/ComfyUI)",
        allow_module_level=True,
    )

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))

from harness import REPO, request, wait_until  # noqa: E402
from v2_client import form, read_png  # noqa: E402

comfy_sdk = pytest.importorskip("comfy_sdk", reason="comfy-sdk is not installed (pip install -r requirements-test.txt)")
from PIL import Image  # noqa: E402

from comfy_remote import codec  # noqa: E402

TOKEN = "v2-" + uuid.uuid4().hex
EXAMPLE = REPO / "examples" / "invert_blur.json"
PICTURE = REPO / "examples" / "input.png"
TERMINAL = ("succeeded", "failed", "canceled", "expired")


def auth(extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **(extra or {})}


def upload(url: str, data: bytes, name: str = "photo.png") -> dict:
    body, ctype = form({"file_path": name, "content_type": "image/png"}, data, name)
    r = request("POST", f"{url}/api/v2/assets", body, auth({"Content-Type": ctype}))
    assert r.status in (200, 201), r.body[:300]
    return r.json()


def submit(url: str, workflow: dict, key: str | None = None):
    h = auth({"Content-Type": "application/json"})
    if key:
        h["Idempotency-Key"] = key
    return request("POST", f"{url}/api/v2/jobs", json.dumps({"workflow": workflow}).encode(), h)


def wait(url: str, job_id: str) -> dict:
    return wait_until(lambda: (j := request("GET", f"{url}/api/v2/jobs/{job_id}", headers=auth()).json())["status"]
                      in TERMINAL and j, f"job {job_id}")


@pytest.fixture(scope="module")
def worker(tmp_path_factory, comfyui_dir, comfy_python):
    from harness import start_worker

    home = tmp_path_factory.mktemp("v2-worker")
    w = start_worker(EXAMPLE, comfyui=comfyui_dir, python=comfy_python, home=home, spool=home / "spool",
                     token=TOKEN, extra=["--allow-any-workflow"])
    yield w
    w.stop()


def readme_script() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Comfy API v2 (comfy-sdk)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readmes_comfy_sdk_script_runs_with_only_the_base_url_set(worker, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    env = {**os.environ, "COMFY_BASE_URL": worker.url, "COMFY_API_KEY": TOKEN}
    r = subprocess.run([sys.executable, "-c", readme_script()], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = Image.open(tmp_path / "out.png").convert("RGB")
    # The same job through protocol v1: the PNG holds the same pixels as the IMAGE result.
    import numpy as np

    src = np.asarray(Image.open(PICTURE).convert("RGB"), dtype=np.float32) / 255.0
    import torch

    body = codec.encode([("image", "IMAGE", torch.from_numpy(src)[None])])
    job = worker.submit(body, headers={}).json()
    worker.wait(job["id"])
    [(_, _, out)] = codec.decode(worker.result(job["id"]))
    expected = (out[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(got), expected)


def test_any_api_workflow_runs_with_allow_any_workflow(worker) -> None:
    data = PICTURE.read_bytes()
    asset = upload(worker.url, data)
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset["id"]}}}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2-" + uuid.uuid4().hex[:8]}},
    }
    r = submit(worker.url, graph)
    assert r.status == 201, r.body[:500]
    done = wait(worker.url, r.json()["id"])
    assert done["status"] == "succeeded", done
    [out] = done["outputs"]
    assert (out["node_id"], out["type"], out["content_type"]) == ("3", "image", "image/png"), out
    content = request("GET", out["url"], headers=auth()).body
    w, h, ch, px = read_png(content)
    w0, h0, ch0, px0 = read_png(data)
    assert (w, h, ch, ch0) == (w0, h0, 3, 3)
    # ImageInvert's output, pixel for pixel, as ComfyUI computes it: LoadImage's k / 255 in float32,
    # 1 - x, then SaveImage's 255 * x truncated to 8 bits.
    import numpy as np

    x = np.frombuffer(px0, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    expected = np.clip(np.float32(255.0) * (np.float32(1.0) - x), 0, 255).astype(np.uint8)
    assert px == expected.tobytes(), "the file SaveImage wrote, byte for byte"
    # Its workflow is the graph as submitted.
    wf = request("GET", f"{worker.url}/api/v2/jobs/{done['id']}/workflow", headers=auth()).json()
    assert wf["workflow"]["1"]["inputs"]["image"]["info"]["id"] == asset["id"]
    # What the job kept on disk once it ended: nothing of its own. Its graph is in its record, its
    # input went back, and its output is the asset (no result container until a v1 client asks).
    spool = Path(worker.argv[worker.argv.index("--spool") + 1])
    assert not (spool / "jobs" / done["id"]).exists()
    assert list((spool / "inputs").iterdir()) == []
    # The same job through protocol v1: a result container of that one file, as bytes.
    container = worker.result(done["id"])
    [(name, _, value)] = codec.decode(container)
    assert (name, bytes(value)) == (f"3/{out['name']}", content)
    v1 = request("GET", f"{worker.url}/v1/jobs/{done['id']}", headers=auth()).json()
    assert v1["result"]["bytes"] == len(container), v1["result"]


def test_a_burst_of_jobs_on_one_asset_all_succeed(worker) -> None:
    """Jobs queued back to back on one uploaded image: each one's LoadImage reads the whole file
    (putting the file into ComfyUI's input directory again while an earlier prompt read it broke
    that prompt)."""
    from concurrent.futures import ThreadPoolExecutor

    asset = upload(worker.url, PICTURE.read_bytes())
    ref = {"__type": "core/ASSET", "info": {"id": asset["id"]}}

    def one(i: int) -> str:
        graph = {
            "1": {"class_type": "LoadImage", "inputs": {"image": ref}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"burst-{i}-{uuid.uuid4().hex[:6]}"}},
        }
        r = submit(worker.url, graph)
        assert r.status == 201, r.body[:300]
        return r.json()["id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(32)))
    ended = [wait(worker.url, i) for i in ids]
    assert [e["status"] for e in ended] == ["succeeded"] * 32, [e.get("error") for e in ended if e["status"] != "succeeded"]


def ui_graph(prefix: str) -> dict:
    """EmptyImage -> ImageInvert -> SaveImage as ComfyUI's editor saves it (the UI format)."""
    def node(i: int, typ: str, inputs: list, links_out: list, widgets: list) -> dict:
        return {"id": i, "type": typ, "mode": 0, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": i - 1,
                "inputs": inputs, "properties": {"Node name for S&R": typ}, "widgets_values": widgets,
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": links_out}] if links_out else []}

    return {
        "last_node_id": 3, "last_link_id": 2, "groups": [], "config": {}, "extra": {}, "version": 0.4,
        "nodes": [
            node(1, "EmptyImage", [], [1], [8, 4, 1, 0]),
            node(2, "ImageInvert", [{"name": "image", "type": "IMAGE", "link": 1}], [2], []),
            node(3, "SaveImage", [{"name": "images", "type": "IMAGE", "link": 2}], [], [prefix]),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    }


def test_a_ui_format_graph_is_converted_with_this_comfyuis_node_definitions(worker) -> None:
    prefix = "v2-ui-" + uuid.uuid4().hex[:8]
    r = submit(worker.url, ui_graph(prefix))
    assert r.status == 201, r.body[:500]
    done = wait(worker.url, r.json()["id"])
    assert done["status"] == "succeeded", done
    [out] = done["outputs"]
    w, h, ch, px = read_png(request("GET", out["url"], headers=auth()).body)
    assert (w, h, ch) == (8, 4, 3) and set(px) == {255}, "a black 8x4 image, inverted"
    # The job ran the API graph ComfyUI's frontend makes of it.
    wf = request("GET", f"{worker.url}/api/v2/jobs/{done['id']}/workflow", headers=auth()).json()["workflow"]
    assert {k: (n["class_type"], n["inputs"]) for k, n in wf.items()} == {
        "1": ("EmptyImage", {"width": 8, "height": 4, "batch_size": 1, "color": 0}),
        "2": ("ImageInvert", {"image": ["1", 0]}),
        "3": ("SaveImage", {"images": ["2", 0], "filename_prefix": prefix}),
    }, wf
    # A node type this ComfyUI lacks is named, with the node that uses it.
    bad = ui_graph(prefix)
    bad["nodes"][1]["type"] = "NoSuchInvert"
    r = submit(worker.url, bad)
    assert r.status == 422 and r.json()["error"]["code"] == "invalid_workflow", r.body[:300]
    assert "NoSuchInvert" in r.json()["error"]["message"], r.body[:300]


def test_a_graph_this_comfyui_cannot_run_is_refused_at_submit(worker) -> None:
    graph = {"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}
    r = submit(worker.url, graph)
    assert r.status == 422, r.body[:300]
    err = r.json()["error"]
    assert err["code"] == "invalid_workflow", err
    assert "NoSuchNode" in err["message"] and "node 9" in err["message"], err


def test_assets_keys_and_jobs_survive_a_restart(start_worker_fn, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    w = start_worker_fn(EXAMPLE, name="first", spool=spool, token=TOKEN)
    asset = upload(w.url, PICTURE.read_bytes())
    graph = json.loads(EXAMPLE.read_text())
    graph["1"]["inputs"]["default"] = {"__type": "core/ASSET", "info": {"id": asset["id"]}}
    key = str(uuid.uuid4())
    r = submit(w.url, graph, key=key)
    assert r.status == 201, r.body[:300]
    done = wait(w.url, r.json()["id"])
    assert done["status"] == "succeeded"
    w.stop()
    again = start_worker_fn(EXAMPLE, name="second", spool=spool, token=TOKEN)
    a = request("GET", f"{again.url}/api/v2/assets/{asset['id']}", headers=auth())
    assert a.status == 200 and a.json()["hash"] == asset["hash"]
    assert request("GET", f"{again.url}/api/v2/assets/{asset['id']}/content", headers=auth()).body == PICTURE.read_bytes()
    after = request("GET", f"{again.url}/api/v2/jobs/{done['id']}", headers=auth()).json()
    assert (after["status"], [o["id"] for o in after["outputs"]]) == ("succeeded", [o["id"] for o in done["outputs"]])
    reused = submit(again.url, graph, key=key)
    assert reused.status == 422 and reused.json()["error"]["code"] == "idempotency_key_reuse"
