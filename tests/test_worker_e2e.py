"""End-to-end tests of the worker (`comfy-remote serve`) in front of a real ComfyUI.

Needs COMFYUI_DIR (a ComfyUI checkout; its Python env is prepared by
scripts/comfyui_env.py). Without it this module is skipped with one line.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
import uuid
from datetime import datetime

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip(
        "COMFYUI_DIR is not set: the worker end-to-end tests need a ComfyUI checkout "
        "(export COMFYUI_DIR=/path/to/ComfyUI)",
        allow_module_level=True,
    )

import torch  # noqa: E402

from comfy_remote import codec  # noqa: E402
from harness import CONTAINER, start_worker, wait_until  # noqa: E402

TOKEN = "test-token-" + uuid.uuid4().hex
SLOW = 1536  # EmptyImage side that makes the blur chain take seconds on CPU
FAST = 64
BLURS = 6

# image -> invert -> blur -> "image";  size (INT, default 64) -> EmptyImage -> blur x6 -> "slow"
WORKFLOW: dict = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 3, "sigma": 1.0}},
    "4": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["3", 0]}},
    "5": {"class_type": "RemoteInput", "inputs": {"name": "size", "type": "INT", "default": ["6", 0]}},
    "6": {"class_type": "PrimitiveInt", "inputs": {"value": FAST}},
    "7": {"class_type": "EmptyImage", "inputs": {"width": ["5", 0], "height": ["5", 0], "batch_size": 1, "color": 0x4080C0}},
}
_prev = "7"
for i in range(BLURS):
    nid = str(10 + i)
    WORKFLOW[nid] = {"class_type": "ImageBlur", "inputs": {"image": [_prev, 0], "blur_radius": 31, "sigma": 10.0}}
    _prev = nid
WORKFLOW["30"] = {"class_type": "RemoteOutput", "inputs": {"name": "slow", "value": [_prev, 0]}}


def enc(**values) -> bytes:
    return codec.encode([(k, None, v) for k, v in values.items()])


def outputs(data: bytes) -> dict:
    return {name: value for name, _ty, value in codec.decode(data)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory, comfyui_dir, comfy_python):
    home = tmp_path_factory.mktemp("worker")
    w = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=home / "spool",
                     token=TOKEN, extra=["--max-body-bytes", "1000000"])
    yield w
    w.stop()


def direct_run(direct_comfyui, tmp_path, inputs: list) -> dict:
    """The same workflow run directly in ComfyUI, values handed over by the test itself."""
    job = tmp_path / f"direct-{uuid.uuid4().hex}"
    job.mkdir()
    (job / "inputs.crc").write_bytes(codec.encode(inputs))
    prompt = json.loads(json.dumps(WORKFLOW))
    for node in prompt.values():
        if node["class_type"] == "RemoteInput":
            node["inputs"]["remote_job"] = str(job / "inputs.crc")
        elif node["class_type"] == "RemoteOutput":
            node["inputs"]["remote_job"] = str(job)
    h = direct_comfyui.prompt(prompt)
    assert h["status"]["completed"], h["status"]
    return {p.stem: codec.decode_file(p)[0][2] for p in (job / "outputs").glob("*.crc")}


def send_early_answered(worker, body: bytes):
    """POST a body the server may refuse before reading it all: the answer
    is read even when the upload is cut short."""
    import http.client
    from urllib.parse import urlsplit

    from harness import Response

    u = urlsplit(worker.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", "/v1/jobs")
    for k, v in worker.headers({"Content-Type": CONTAINER, "Content-Length": str(len(body))}).items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        conn.sock.sendall(body)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = conn.getresponse()
    out = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    conn.close()
    return out


def test_info_lists_the_signature(worker):
    info = worker.get("/v1/info").json()
    assert [(i["name"], i["type"], i["optional"]) for i in info["inputs"]] == [("image", "IMAGE", False), ("size", "INT", True)]
    assert [(o["name"], o["type"]) for o in info["outputs"]] == [("image", "IMAGE"), ("slow", "IMAGE")]


def test_result_equals_comfyui_run_directly_bit_for_bit(worker, direct_comfyui, tmp_path):
    g = torch.Generator().manual_seed(7)
    img = torch.rand(1, 40, 56, 3, generator=g)
    r = worker.submit(enc(image=img))
    assert r.status == 202, r.body
    job = worker.wait(r.json()["id"])
    assert job["status"] == "succeeded", job
    assert [o["name"] for o in job["result"]["outputs"]] == ["image", "slow"]
    got = outputs(worker.result(job["id"]))
    want = direct_run(direct_comfyui, tmp_path, [("image", "IMAGE", img)])
    assert got.keys() == want.keys() == {"image", "slow"}
    for k in got:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        assert torch.equal(got[k], want[k]), k
    # The default (PrimitiveInt 64) flowed through the Remote Input.
    assert got["slow"].shape == (1, FAST, FAST, 3)


def test_two_jobs_with_different_inputs_get_different_results(worker):
    a = torch.zeros(1, 16, 16, 3)
    b = torch.ones(1, 16, 16, 3)
    ids = [worker.submit(enc(image=x, size=s)).json()["id"] for x, s in ((a, 32), (b, 48))]
    res = [outputs(worker.result(worker.wait(i)["id"])) for i in ids]
    assert torch.equal(res[0]["image"], torch.ones(1, 16, 16, 3))
    assert torch.equal(res[1]["image"], torch.zeros(1, 16, 16, 3))
    assert res[0]["slow"].shape[1] == 32 and res[1]["slow"].shape[1] == 48


def test_json_inputs_form_and_idempotency(worker):
    body = json.dumps({"format": "comfy-remote/1+base64",
                       "data": __import__("base64").b64encode(enc(image=torch.zeros(1, 8, 8, 3))).decode()}).encode()
    key = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
    first = worker.submit(body, "application/json", key)
    again = worker.submit(body, "application/json", key)
    assert first.status == 202 and again.status == 200
    assert first.json()["id"] == again.json()["id"]
    other = worker.submit(enc(image=torch.ones(1, 8, 8, 3)), CONTAINER, key)
    assert other.status == 409 and other.json()["error"]["code"] == "conflict"
    jid = first.json()["id"]
    assert worker.wait(jid)["status"] == "succeeded"
    from harness import request
    as_json = request("GET", f"{worker.url}/v1/jobs/{jid}/result", headers=worker.headers({"Accept": "application/json"}))
    assert as_json.status == 200
    form = as_json.json()
    assert form["format"] == "comfy-remote/1+base64"
    assert __import__("base64").b64decode(form["data"]) == worker.result(jid)


def test_progress_events_are_in_order_and_end_at_one(worker):
    r = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=256))
    jid = r.json()["id"]
    events = list(worker.events(jid))
    ids = [int(e["id"]) for e in events if e.get("id")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    fractions = [e["data"]["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions), fractions
    assert fractions[-1] == 1.0
    nodes = [e["data"]["node"]["type"] for e in events if e["event"] == "progress" and e["data"].get("node")]
    assert "ImageBlur" in nodes and "RemoteOutput" in nodes
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded"
    # Resume after the 3rd event: only later events come.
    later = list(worker.events(jid, last_event_id=str(ids[2])))
    assert [int(e["id"]) for e in later] == [i for i in ids if i > ids[2]]


def test_steps_and_previews_of_a_v3_set_progress_node_reach_the_job(start_worker_fn):
    """A node that reports progress only through the V3 API
    (``execution.set_progress``) gives steps and previews, as one using
    ComfyUI's progress-bar hook does: ComfyUI reports the former only in
    ``progress_state``."""
    steps = 5
    wf = {
        "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
        "2": {"class_type": "CRTestSlow", "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": 0.05,
                                                     "progress_api": "set_progress"}},
        "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
    }
    w = start_worker_fn(wf, name="v3-progress")
    image = torch.rand(1, 8, 8, 3)
    jid = w.submit(enc(image=image)).json()["id"]
    events = list(w.events(jid))
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded", events[-1]
    got = [e["data"]["step"] for e in events if e["event"] == "progress" and e["data"].get("step")]
    assert [s["value"] for s in got] == list(range(1, steps + 1)), got
    assert {s["max"] for s in got} == {steps}, got
    assert sum(e["event"] == "preview" for e in events) >= 1, [e["event"] for e in events]
    assert torch.equal(outputs(w.result(jid))["image"], image)


def test_cancel_running_job_and_the_next_still_succeeds(worker):
    slow = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW)).json()["id"]
    queued = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW + 8)).json()["id"]
    after = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=FAST)).json()["id"]
    wait_until(lambda: (p := worker.job(slow)["progress"]).get("node", {}).get("type") == "ImageBlur" and p,
               "the slow job to be blurring")
    # Jobs behind it are queued (in ComfyUI's queue or ours) with their place.
    q1, q2 = worker.job(queued), worker.job(after)
    assert (q1["status"], q1["progress"]["phase"], q1["progress"]["queue_position"]) == ("queued", "queued", 1)
    assert (q2["status"], q2["progress"]["queue_position"]) == ("queued", 2)
    r = worker.cancel(slow)
    assert r.status == 202
    assert worker.wait(slow)["status"] == "canceled"
    # The second slow one sits in ComfyUI's queue or ours: cancel removes it there.
    assert worker.cancel(queued).status == 202
    assert worker.wait(queued)["status"] == "canceled"
    done = worker.wait(after)
    assert done["status"] == "succeeded", done
    assert worker.get(f"/v1/jobs/{slow}/result").status == 409


def test_a_waiting_jobs_stream_shows_its_place_as_the_queue_moves(worker):
    slow = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW)).json()["id"]
    middle = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW // 2)).json()["id"]
    last = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=FAST)).json()["id"]
    wait_until(lambda: worker.job(slow)["status"] == "running" and worker.job(slow)["started_at"],
               "the first job to be running")
    events = list(worker.events(last))
    places: list[int] = []
    for e in events:
        if e["event"] == "status" and e["data"]["status"] == "queued":
            p = e["data"]["progress"]["queue_position"]
            if not places or places[-1] != p:
                places.append(p)
    assert places == [2, 1], [(e["event"], e["data"].get("status")) for e in events]
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded", events[-1]
    assert [worker.wait(j)["status"] for j in (slow, middle)] == ["succeeded", "succeeded"]


def test_jobs_start_in_the_order_they_were_submitted(worker):
    # Prompts are posted without waiting for ComfyUI's answer to the one
    # before; behind a running job they still start in submit order.
    ids = [worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW // 2)).json()["id"]]
    ids += [worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=FAST + k)).json()["id"] for k in range(10)]
    done = [worker.wait(i) for i in ids]
    assert [d["status"] for d in done] == ["succeeded"] * len(ids)
    started = [datetime.fromisoformat(d["started_at"]) for d in done]
    assert started == sorted(started), [d["started_at"] for d in done]


def test_bad_requests_get_the_right_4xx(worker):
    img = torch.rand(1, 8, 8, 3)
    cases = []
    r = worker.submit(enc(picture=img))
    cases.append(("unknown name", r, 422, "invalid_input"))
    assert "picture" in r.json()["error"]["message"]
    r = worker.submit(enc(size=3))
    cases.append(("missing required", r, 422, "invalid_input"))
    r = worker.submit(codec.encode([("image", "STRING", "hello")]))
    cases.append(("wrong type", r, 422, "invalid_input"))
    r = worker.submit(codec.encode([("image", "IMAGE", img), ("size", "INT", "big")]))
    cases.append(("wrong type 2", r, 422, "invalid_input"))
    # A header that lies about a tensor's size.
    good = enc(image=img)
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [1, 64, 64, 3]
    hb = json.dumps(header).encode()
    r = worker.submit(struct.pack("<Q", len(hb)) + hb + good[8 + n:])
    cases.append(("lying header", r, 400, "invalid_payload"))
    r = worker.submit(good[: len(good) // 2])
    cases.append(("truncated", r, 400, "invalid_payload"))
    r = worker.submit(codec.encode([("image", "IMAGE", torch.zeros([1] * 9))]))
    cases.append(("rank over the cap", r, 400, "invalid_payload"))
    r = worker.submit(b"{not json", "application/json")
    cases.append(("bad JSON", r, 400, "bad_request"))
    r = worker.submit(good, "text/plain")
    cases.append(("media type", r, 415, "unsupported_media_type"))
    r = send_early_answered(worker, b"\0" * 1_200_000)
    cases.append(("oversize", r, 413, "payload_too_large"))
    from harness import request
    r = request("POST", f"{worker.url}/v1/jobs", good, {"Content-Type": CONTAINER, "Authorization": "Bearer wrong"})
    cases.append(("bad token", r, 401, "unauthorized"))
    r = request("GET", f"{worker.url}/v1/info")
    cases.append(("no token", r, 401, "unauthorized"))
    r = worker.get("/v1/jobs/" + str(uuid.uuid4()))
    cases.append(("unknown job", r, 404, "not_found"))
    for what, resp, status, code in cases:
        assert resp.status == status, (what, resp.status, resp.body)
        assert resp.json()["error"]["code"] == code, (what, resp.body)
    # Still serving.
    ok = worker.submit(good)
    assert ok.status == 202 and worker.wait(ok.json()["id"])["status"] == "succeeded"


def test_validation_error_names_the_node(start_worker_fn):
    wf = json.loads(json.dumps(WORKFLOW))
    wf["3"]["inputs"]["blur_radius"] = 500
    w = start_worker_fn(wf, name="invalid")
    job = w.wait(w.submit(enc(image=torch.rand(1, 8, 8, 3))).json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "validation_failed"
    assert "node 3 (ImageBlur)" in job["error"]["message"], job["error"]


def test_a_failing_node_reports_its_exception_but_not_the_traceback(start_worker_fn):
    wf = {
        "1": {"class_type": "RemoteInput", "inputs": {"name": "x", "type": "*"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["2", 0]}},
    }
    w = start_worker_fn(wf, name="failing")
    r = w.submit(json.dumps({"inputs": {"x": "not an image"}}).encode(), "application/json")
    assert r.status == 202, r.body
    job = w.wait(r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "execution_failed", job
    details = job["error"]["details"]
    assert details["node"] == {"id": "2", "type": "ImageInvert"}
    assert details["comfyui"]["exception_type"], details
    text = json.dumps(job)
    assert "traceback" not in text.lower() and ".py" not in text, text
    # The traceback is in the worker's log, for the operator.
    assert "Traceback" in w.log_path.read_text() or "File \"" in w.log_path.read_text()
    # Public readiness: whether and why, nothing about ComfyUI's address or process.
    from harness import request
    ready = request("GET", f"{w.url}/readyz")
    assert ready.status == 200 and set(ready.json()) == {"ready", "reason"}, ready.body


def test_killed_comfyui_fails_the_running_job_and_recovers(worker):
    pid_before = worker.comfyui_pid()
    slow = worker.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW)).json()["id"]
    wait_until(lambda: worker.job(slow)["progress"].get("node", {}).get("type") == "ImageBlur", "the job to run")
    os.kill(pid_before, signal.SIGKILL)
    job = worker.wait(slow)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "comfyui_unavailable"
    assert "ComfyUI stopped" in job["error"]["message"]
    nxt = worker.submit(enc(image=torch.rand(1, 8, 8, 3)))
    assert nxt.status == 202
    assert worker.wait(nxt.json()["id"])["status"] == "succeeded"
    assert worker.comfyui_pid() != pid_before
    metrics = worker.get("/metrics").body.decode()
    assert "comfy_remote_comfyui_restarts_total 1" in metrics


def test_killed_worker_keeps_every_accepted_job(tmp_path, comfyui_dir, comfy_python):
    home = tmp_path / "durable"
    spool = home / "spool"
    w = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=spool)
    running = w.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW)).json()["id"]
    retried = w.submit(enc(image=torch.rand(1, 8, 8, 3), size=SLOW // 2), query="?retry=true").json()["id"]
    queued = [w.submit(enc(image=torch.rand(1, 8, 8, 3), size=FAST)).json()["id"] for _ in range(3)]
    wait_until(lambda: w.job(running)["progress"].get("node", {}).get("type") == "ImageBlur", "the job to run")
    comfy_pid = w.comfyui_pid()
    w.kill()
    # ComfyUI dies with its worker (no orphan).
    wait_until(lambda: not os.path.exists(f"/proc/{comfy_pid}") or
               open(f"/proc/{comfy_pid}/stat").read().split()[2] == "Z", "ComfyUI to exit")
    w2 = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=spool)
    try:
        first = w2.wait(running)
        assert first["status"] == "failed" and first["error"]["code"] == "worker_restarted", first
        for jid in [retried, *queued]:
            j = w2.wait(jid)
            assert j["status"] == "succeeded", j
            assert outputs(w2.result(jid)).keys() == {"image", "slow"}
    finally:
        w2.stop()


def test_run_cli_writes_outputs_and_a_json_summary(worker, tmp_path):
    import subprocess

    from harness import REPO, binary

    out = tmp_path / "out"
    env = {**os.environ, "MY_TOKEN": TOKEN}
    r = subprocess.run([str(binary()), "run", worker.url, "--input", f"image={REPO / 'examples' / 'input.png'}",
                        "--input", "size=32", "--out", str(out), "--token-env", "MY_TOKEN", "--json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "succeeded"
    assert [(o["name"], o["type"]) for o in doc["outputs"]] == [("image", "IMAGE"), ("slow", "IMAGE")]
    from PIL import Image

    img = Image.open(out / "image.png")
    assert img.size == Image.open(REPO / "examples" / "input.png").size
    assert Image.open(out / "slow.png").size == (32, 32)
    bad = subprocess.run([str(binary()), "run", worker.url, "--input", "picture=3", "--token-env", "MY_TOKEN",
                          "--out", str(out)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2, bad.stderr
    assert "picture" in bad.stderr
    noauth = subprocess.run([str(binary()), "run", worker.url, "--input", "size=3", "--out", str(out),
                             "--token-env", "NO_SUCH_VAR"], capture_output=True, text=True, env=env)
    assert noauth.returncode != 0 and "401" in noauth.stderr or "unauthorized" in noauth.stderr


def test_nodes_run_locally_without_a_worker(direct_comfyui):
    """Designing the workflow locally: Remote Input passes its default through,
    Remote Output previews; with neither a job nor a default, a clear error."""
    from harness import request

    local = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE", "default": ["1", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["3", 0]}},
        "5": {"class_type": "RemoteOutput", "inputs": {"name": "text", "value": ["6", 0]}},
        "6": {"class_type": "PrimitiveString", "inputs": {"value": "hello"}},
    }
    h = direct_comfyui.prompt(local)
    assert h["status"]["completed"], h["status"]
    assert h["outputs"]["4"]["images"], h["outputs"]["4"]
    assert "hello" in json.dumps(h["outputs"]["5"])
    missing = {
        "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
        "2": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["1", 0]}},
    }
    h = direct_comfyui.prompt(missing)
    assert not h["status"]["completed"]
    err = next(m[1] for m in h["status"]["messages"] if m[0] == "execution_error")
    assert "connect a `default`" in err["exception_message"] and err["node_type"] == "RemoteInput"
    assert request("GET", f"{direct_comfyui.url}/object_info/RemoteInput").json()["RemoteInput"]["category"] == "comfy-remote"
