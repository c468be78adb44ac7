"""The code a deployed app runs on Modal, run here: the GPU runtime (utils purge, ComfyUI + worker start, the job
function) and the web front, against a real ComfyUI, with a local stand-in only for Modal's spawn/Dict.

Two web front instances share one backend, as two web containers share Modal's state.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from harness import binary, comfy_home, free_port, request, wait_until

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

WORKFLOW = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
    # Slow on a large image: gives the cancel test a job to cancel while it runs.
    "4": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
    "5": {"class_type": "RemoteOutput", "inputs": {"name": "blurred", "value": ["4", 0]}},
}
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Server:
    """uvicorn on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "the web front to start", deadline=30)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_runtime(tmp_path: Path, comfyui_dir: Path, comfy_python: Path, workflow: dict):
    from comfy_remote.modal_runtime.gpu import GpuRuntime

    wf = tmp_path / "remote.json"
    wf.write_text(json.dumps(workflow))
    extra = [f"--comfyui-arg={a}" for a in comfy_home(tmp_path / "comfy")]
    rt = GpuRuntime.start(comfyui_dir=str(comfyui_dir), workflow=str(wf), command=[str(binary())],
                          python=str(comfy_python), extra_args=extra, home=str(tmp_path / "gpu"),
                          startup_timeout_s=300)
    return rt, wf


@pytest.fixture(scope="module")
def service(tmp_path_factory, comfyui_dir, comfy_python):
    from comfy_remote.modal_runtime.local import LocalBackend, LocalStore
    from comfy_remote.modal_runtime.web import create_app

    # The seed's failure: a `utils` module imported before ComfyUI's.
    tmp_path = tmp_path_factory.mktemp("runtime")
    stray = types.ModuleType("utils")
    stray.__file__ = str(tmp_path / "site-packages" / "utils.py")
    sys.modules["utils"] = stray
    rt, wf = start_runtime(tmp_path, comfyui_dir, comfy_python, WORKFLOW)
    store = LocalStore()
    backend = LocalBackend(lambda job_id, body, ct: rt.run_job(job_id, body, ct, store), store)
    fronts = [Server(create_app(backend, workflow_path=str(wf), token=TOKEN)) for _ in range(2)]
    yield rt, fronts
    for f in fronts:
        f.stop()
    backend.close()
    rt.stop()


def encode_image(shape=(1, 64, 64, 3)):
    import torch

    from comfy_remote import codec

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(7))
    return x, codec.encode([("image", "IMAGE", x)])


def test_utils_purged_and_comfyui_utils_importable(service, comfyui_dir):
    assert "utils" not in sys.modules or str(comfyui_dir) in str(getattr(sys.modules["utils"], "__path__", ""))
    mod = importlib.import_module("utils.install_util")
    assert str(Path(mod.__file__).resolve()).startswith(str(comfyui_dir))


def test_job_through_the_web_front_from_two_clients(service):
    from comfy_remote import codec

    rt, (a, b) = service
    x, body = encode_image()
    assert request("POST", f"{a.url}/v1/jobs", body, {"Content-Type": codec_media()}).status == 401
    r = request("POST", f"{a.url}/v1/jobs", body, {**AUTH, "Content-Type": codec_media()})
    assert r.status == 202, r.body
    assert r.headers["comfy-remote-protocol"] == "comfy-remote/1"
    job = r.json()
    assert job["status"] in ("queued", "running")
    # The second web front (another container) sees the same job.
    done = wait_until(lambda: (j := request("GET", f"{b.url}/v1/jobs/{job['id']}", headers=AUTH).json())
                      ["status"] in ("succeeded", "failed", "canceled") and j, "the job to finish", deadline=120)
    assert done["status"] == "succeeded", done.get("error")
    assert done["progress"]["fraction"] == 1.0
    assert [o["name"] for o in done["result"]["outputs"]] == ["image", "blurred"]
    res = request("GET", f"{b.url}/v1/jobs/{job['id']}/result", headers=AUTH)
    assert res.status == 200 and res.headers["content-type"].startswith(codec_media())
    outputs = {name: (typ, v) for name, typ, v in codec.decode(res.body)}
    typ, y = outputs["image"]
    assert typ == "IMAGE"
    assert bool((y == 1.0 - x).all()), "the remote ImageInvert result, bit for bit"
    info = request("GET", f"{b.url}/v1/info", headers=AUTH).json()
    assert [i["name"] for i in info["inputs"]] == ["image"]
    assert [o["name"] for o in info["outputs"]] == ["image", "blurred"]
    assert request("GET", f"{a.url}/v1/jobs/nope", headers=AUTH).status == 404


def test_events_stream_ends_with_done(service):
    rt, (a, b) = service
    _, body = encode_image()
    job = request("POST", f"{a.url}/v1/jobs", body, {**AUTH, "Content-Type": codec_media()}).json()
    from harness import sse

    names = [ev.get("event") for ev in sse(f"{b.url}/v1/jobs/{job['id']}/events", AUTH)]
    assert names[0] == "status" and names[-1] == "done"


def test_cancel_from_the_other_client(service):
    rt, (a, b) = service
    _, body = encode_image((1, 2048, 2048, 3))
    # Keep the worker busy so the next job is still running/queued when canceled.
    first = request("POST", f"{a.url}/v1/jobs", body, {**AUTH, "Content-Type": codec_media()}).json()
    job = request("POST", f"{a.url}/v1/jobs", body, {**AUTH, "Content-Type": codec_media()}).json()
    time.sleep(0.5)
    r = request("POST", f"{b.url}/v1/jobs/{job['id']}/cancel", b"", AUTH)
    assert r.status == 200 and r.json()["status"] in ("canceling", "canceled"), r.body
    end = wait_until(lambda: (j := request("GET", f"{a.url}/v1/jobs/{job['id']}", headers=AUTH).json())
                     ["status"] in ("succeeded", "failed", "canceled") and j, "the cancel to land", deadline=120)
    assert end["status"] == "canceled", end
    assert request("GET", f"{a.url}/v1/jobs/{job['id']}/result", headers=AUTH).status in (409, 410)
    wait_until(lambda: request("GET", f"{a.url}/v1/jobs/{first['id']}", headers=AUTH).json()["status"]
               in ("succeeded", "failed", "canceled"), "the first job", deadline=120)


def test_idempotency_key_returns_the_same_job(service):
    rt, (a, b) = service
    _, body = encode_image()
    h = {**AUTH, "Content-Type": codec_media(), "Idempotency-Key": "k-1"}
    j1 = request("POST", f"{a.url}/v1/jobs", body, h).json()
    j2 = request("POST", f"{b.url}/v1/jobs", body, h).json()
    assert j1["id"] == j2["id"]


def codec_media() -> str:
    return "application/vnd.comfy-remote.container"
