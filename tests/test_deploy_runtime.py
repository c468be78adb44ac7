"""The code a deployed app runs on Modal, run here: the GPU runtime (utils purge, ComfyUI + worker start, the job
function over the native client) and the web front, against a real ComfyUI, with a local stand-in only for
Modal's spawn/FunctionCall/Dict.

Two web front instances share one backend, as two web containers share Modal's state. The protocol itself is
held to the spec by tests/conformance (which runs against this front too); here is what is particular to Modal:
state shared across containers, checks before any GPU time, proxies and Host headers.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest

from harness import CONTAINER, request, sse, start_modal_runtime, wait_until

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

WORKFLOW = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
    "4": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["5", 0]}},
    "5": {"class_type": "PrimitiveInt", "inputs": {"value": 1}},
    # A test node that takes `steps` x 50 ms: a job to cancel while it runs.
    "6": {"class_type": "CRTestSlow", "inputs": {"image": ["1", 0], "steps": ["4", 0], "seconds_per_step": 0.05}},
    "7": {"class_type": "RemoteOutput", "inputs": {"name": "slow", "value": ["6", 0]}},
}
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TERMINAL = ("succeeded", "failed", "canceled", "expired")


@pytest.fixture(scope="module")
def service(tmp_path_factory, comfyui_dir, comfy_python):
    # The seed's failure: a `utils` module imported before ComfyUI's.
    tmp_path = tmp_path_factory.mktemp("runtime")
    stray = types.ModuleType("utils")
    stray.__file__ = str(tmp_path / "site-packages" / "utils.py")
    sys.modules["utils"] = stray
    wf = tmp_path / "remote.json"
    wf.write_text(json.dumps(WORKFLOW))
    rt = start_modal_runtime(wf, comfyui=comfyui_dir, python=comfy_python, home=tmp_path, fronts=2, token=TOKEN)
    yield rt
    rt.stop()


def encode_image(shape=(1, 64, 64, 3), **extra):
    import torch

    from comfy_remote import codec

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(7))
    return x, codec.encode([("image", "IMAGE", x), *((k, None, v) for k, v in extra.items())])


def submit(url: str, body: bytes, headers: dict[str, str] | None = None):
    return request("POST", f"{url}/v1/jobs", body, {**AUTH, "Content-Type": CONTAINER, **(headers or {})})


def wait(url: str, job_id: str, statuses=TERMINAL) -> dict:
    return wait_until(lambda: (j := request("GET", f"{url}/v1/jobs/{job_id}", headers=AUTH).json())["status"]
                      in statuses and j, f"job {job_id} to reach {statuses}")


def gpu_jobs(service) -> int:
    """Jobs the GPU container's worker has been handed (its own /metrics)."""
    text = request("GET", f"{service.gpu.url}/metrics").body.decode()
    return int(next(line.split()[1] for line in text.splitlines()
                    if line.startswith("comfy_remote_jobs_submitted_total")))


def test_utils_purged_and_comfyui_utils_importable(service, comfyui_dir):
    assert "utils" not in sys.modules or str(comfyui_dir) in str(getattr(sys.modules["utils"], "__path__", ""))
    mod = importlib.import_module("utils.install_util")
    assert str(Path(mod.__file__).resolve()).startswith(str(comfyui_dir))


def test_job_through_the_web_front_from_two_clients(service):
    from comfy_remote import codec

    a, b = service.fronts
    x, body = encode_image()
    r = submit(a.url, body)
    assert r.status == 202, r.body
    job = r.json()
    # The second web front (another container) sees the same job.
    done = wait(b.url, job["id"])
    assert done["status"] == "succeeded", done.get("error")
    assert done["progress"]["fraction"] == 1.0
    assert [o["name"] for o in done["result"]["outputs"]] == ["image", "slow"]
    res = request("GET", f"{b.url}/v1/jobs/{job['id']}/result", headers=AUTH)
    assert res.status == 200 and res.headers["content-type"].startswith(CONTAINER)
    outputs = {name: (typ, v) for name, typ, v in codec.decode(res.body)}
    typ, y = outputs["image"]
    assert typ == "IMAGE"
    assert bool((y == 1.0 - x).all()), "the remote ImageInvert result, bit for bit"
    # The same signature as the worker in the GPU container publishes.
    front = request("GET", f"{b.url}/v1/info", headers=AUTH).json()
    gpu = request("GET", f"{service.gpu.url}/v1/info").json()
    assert front["inputs"] == gpu["inputs"] and front["outputs"] == gpu["outputs"]
    assert front["workflow"] == gpu["workflow"]


def test_bad_input_is_refused_before_any_gpu_time(service):
    a, _ = service.fronts
    before = gpu_jobs(service)
    _, unknown = encode_image(picture=3)
    r = submit(a.url, unknown)
    assert r.status == 422 and r.json()["error"]["details"] == {"input": "picture"}, r.body
    r = submit(a.url, b"\x01\x02\x03")
    assert r.status == 400 and r.json()["error"]["details"]["kind"] == "truncated", r.body
    r = submit(a.url, json.dumps({"inputs": {"steps": 2}}).encode(), {"Content-Type": "application/json"})
    assert r.status == 422 and r.json()["error"]["details"] == {"input": "image"}, r.body
    assert gpu_jobs(service) == before, "a refused submit reached the GPU container"
    # A good one does.
    _, body = encode_image()
    ok = submit(a.url, body)
    assert ok.status == 202
    assert wait(a.url, ok.json()["id"])["status"] == "succeeded"
    assert gpu_jobs(service) == before + 1


def test_events_resume_on_another_container_where_they_left_off(service):
    a, b = service.fronts
    _, body = encode_image(steps=6)
    job = submit(a.url, body).json()
    events = list(sse(f"{a.url}/v1/jobs/{job['id']}/events", AUTH))
    assert events[0]["event"] == "status" and events[-1]["event"] == "done"
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), ids
    # The same ids from the other container; resuming there after the one before `done` gives `done` only.
    again = list(sse(f"{b.url}/v1/jobs/{job['id']}/events", {**AUTH, "Last-Event-ID": str(ids[-2])}))
    assert [(e["id"], e["event"]) for e in again] == [(events[-1]["id"], "done")]
    assert again[-1]["data"] == {**events[-1]["data"], "urls": again[-1]["data"]["urls"],
                                 "poll_url": again[-1]["data"]["poll_url"], "result": again[-1]["data"]["result"]}
    assert again[-1]["data"]["poll_url"] == f"{b.url}/v1/jobs/{job['id']}"


def test_cancel_from_the_other_client_stops_the_running_job(service):
    a, b = service.fronts
    _, body = encode_image(steps=400)
    job = submit(a.url, body).json()
    wait(a.url, job["id"], ("running",) + TERMINAL)
    r = request("POST", f"{b.url}/v1/jobs/{job['id']}/cancel", b"", AUTH)
    assert r.status == 202 and r.json()["status"] in ("canceling", "canceled"), r.body
    end = wait(a.url, job["id"])
    assert end["status"] == "canceled" and end["error"]["code"] == "canceled", end
    r = request("GET", f"{a.url}/v1/jobs/{job['id']}/result", headers=AUTH)
    assert r.status == 409 and r.json()["error"]["code"] == "conflict"
    assert r.json()["error"]["details"] == end["error"]
    # The GPU worker's own job was canceled, not left running.
    def gpu_jobs_by_status() -> dict[str, float]:
        text = request("GET", f"{service.gpu.url}/metrics").body.decode()
        return {line.split('"')[1]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith('comfy_remote_jobs{status="')}

    counts = wait_until(lambda: (c := gpu_jobs_by_status()).get("running", 0) == 0 and c, "the GPU job to stop")
    assert counts.get("canceled", 0) >= 1, counts


def test_idempotency_key_across_containers(service):
    a, b = service.fronts
    _, body = encode_image()
    _, other = encode_image(steps=2)
    h = {"Idempotency-Key": "k-1"}
    j1 = submit(a.url, body, h)
    j2 = submit(b.url, body, h)
    assert (j1.status, j2.status) == (202, 200) and j1.json()["id"] == j2.json()["id"]
    conflict = submit(b.url, other, h)
    assert conflict.status == 409 and conflict.json()["error"]["details"] == {"job_id": j1.json()["id"]}


def test_urls_come_from_the_host_not_from_an_untrusted_forwarded_host(service):
    a, _ = service.fronts
    _, body = encode_image()
    r = submit(a.url, body, {"X-Forwarded-Host": "attacker.example"})
    assert r.status == 202
    assert r.json()["poll_url"] == f"{a.url}/v1/jobs/{r.json()['id']}"
    assert r.headers["location"] == r.json()["poll_url"]
    wait(a.url, r.json()["id"])


def test_a_trusted_proxy_and_a_public_url_choose_the_base(tmp_path):
    """Behind a proxy that sets X-Forwarded-Host itself, the front may trust it; a public URL wins over both."""
    from comfy_remote import _native

    wf = json.dumps(WORKFLOW)
    plain = _native.Front("wf.json", wf)
    trusting = _native.Front("wf.json", wf, trust_forwarded=True)
    public = _native.Front("wf.json", wf, public_url="https://api.example/base/", trust_forwarded=True)
    args = ("127.0.0.1:9", "proxy.example", "https", "http")
    assert plain.base_url(*args) == "https://127.0.0.1:9"
    assert trusting.base_url(*args) == "https://proxy.example"
    assert public.base_url(*args) == "https://api.example/base"
    assert plain.base_url("evil.example/x?", None, None, "http") == ""
