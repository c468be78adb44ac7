"""What a new user does first, against a real worker on a real ComfyUI: a
relative spool, `comfy-remote run` with plain literals for typed inputs, a
typo in an input name, an output folder that cannot be written, following
a job again by its id, the defaults that must meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CONTAINER, binary, request  # noqa: E402

# Typed inputs of every primitive kind, each echoed back through a node that
# keeps its Python type, so what reached ComfyUI is visible in the result.
WORKFLOW = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "sigma", "type": "FLOAT"}},
    "2": {"class_type": "RemoteInput", "inputs": {"name": "prompt", "type": "STRING"}},
    "3": {"class_type": "RemoteInput", "inputs": {"name": "flag", "type": "BOOLEAN"}},
    "4": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT", "default": ["5", 0]}},
    "5": {"class_type": "PrimitiveInt", "inputs": {"value": 4}},
    "6": {"class_type": "PrimitiveFloat", "inputs": {"value": ["1", 0]}},
    "7": {"class_type": "StringConcatenate", "inputs": {"string_a": ["2", 0], "string_b": "!", "delimiter": ""}},
    "8": {"class_type": "PrimitiveBoolean", "inputs": {"value": ["3", 0]}},
    "9": {"class_type": "PrimitiveInt", "inputs": {"value": ["4", 0]}},
    "10": {"class_type": "RemoteOutput", "inputs": {"name": "sigma", "value": ["6", 0]}},
    "11": {"class_type": "RemoteOutput", "inputs": {"name": "text", "value": ["7", 0]}},
    "12": {"class_type": "RemoteOutput", "inputs": {"name": "flag", "value": ["8", 0]}},
    "13": {"class_type": "RemoteOutput", "inputs": {"name": "steps", "value": ["9", 0]}},
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory, comfyui_dir, comfy_python):
    """`serve --spool spool`: the spool relative to the directory serve runs in."""
    from harness import start_worker

    home = tmp_path_factory.mktemp("newuser")
    w = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=Path("spool"), cwd=home)
    yield w
    w.stop()


def run(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), "run", url, *args, "--json"], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def jobs_submitted(worker) -> int:
    text = worker.get("/metrics").body.decode()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("comfy_remote_jobs_submitted_total")))


def test_a_relative_spool_and_literals_of_the_declared_types(worker, tmp_path):
    # The literals a user types: 2 for a FLOAT, 42 for a STRING, 1 for a BOOLEAN.
    r = run(worker.url, "-i", "sigma=2", "-i", "prompt=42", "-i", "flag=1", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "succeeded", doc
    out = tmp_path / "out"
    assert (out / "text.txt").read_text() == "42!"
    assert json.loads((out / "flag.json").read_text()) is True
    # The FLOAT input got a float (widened by the type rule), not the int 2.
    sigma = (out / "sigma.json").read_text().strip()
    assert sigma == "2.0", sigma
    assert json.loads((out / "steps.json").read_text()) == 4
    assert {o["name"]: o["type"] for o in doc["outputs"]} == {
        "sigma": "FLOAT", "text": "STRING", "flag": "BOOLEAN", "steps": "INT"}


def test_an_int_for_a_float_input_is_accepted_by_the_worker(worker):
    body = json.dumps({"inputs": {"sigma": 3, "prompt": "a", "flag": False}}).encode()
    r = worker.submit(body, "application/json")
    assert r.status == 202, r.body
    job = worker.wait(r.json()["id"])
    assert job["status"] == "succeeded", job


def test_a_typo_in_an_input_name_suggests_the_closest_and_sends_nothing(worker, tmp_path):
    before = jobs_submitted(worker)
    r = run(worker.url, "-i", "sigam=2", "-i", "prompt=a", "-i", "flag=true", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected"
    assert 'did you mean "sigma"?' in doc["error"]["message"], doc
    assert "this workflow takes: sigma, prompt, flag, steps" in doc["error"]["message"]
    # The worker says the same over HTTP.
    body = json.dumps({"inputs": {"sigam": 2.0, "prompt": "a", "flag": True}}).encode()
    resp = worker.submit(body, "application/json")
    assert resp.status == 422
    assert resp.json()["error"]["details"]["input"] == "sigam"
    assert 'did you mean "sigma"?' in resp.json()["error"]["message"]
    assert jobs_submitted(worker) == before


def test_literals_that_are_not_of_the_type_say_what_to_type(worker, tmp_path):
    r = run(worker.url, "-i", "sigma=fast", "-i", "prompt=a", "-i", "flag=true", cwd=tmp_path)
    assert r.returncode == 2
    assert "type a number such as 7.0" in json.loads(r.stdout)["error"]["message"]
    r = run(worker.url, "-i", "sigma=1", "-i", "prompt=a", "-i", "flag=maybe", cwd=tmp_path)
    assert r.returncode == 2
    assert "type true or false" in json.loads(r.stdout)["error"]["message"]
    r = run(worker.url, "-i", "sigma=1", "-i", "flag=true", cwd=tmp_path)
    assert r.returncode == 2
    assert 'missing input "prompt"' in json.loads(r.stdout)["error"]["message"]


def test_a_typo_in_the_packing_setting_is_a_usage_error_that_names_the_choices(worker, tmp_path):
    before = jobs_submitted(worker)
    r = subprocess.run([str(binary()), "run", worker.url, "-i", "sigma=1", "-i", "prompt=a", "-i", "flag=true", "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**os.environ, "COMFY_REMOTE_PACK": "alwys"})
    assert r.returncode == 2, r.stderr
    msg = json.loads(r.stdout)["error"]["message"]
    assert 'COMFY_REMOTE_PACK="alwys"' in msg and "auto, always, never" in msg, msg
    assert jobs_submitted(worker) == before


def test_an_output_folder_that_cannot_be_written_is_refused_before_submitting(worker, tmp_path):
    before = jobs_submitted(worker)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = run(worker.url, "-i", "sigma=1", "-i", "prompt=a", "-i", "flag=true", "--out", str(blocker), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "is not a folder" in json.loads(r.stdout)["error"]["message"]
    assert jobs_submitted(worker) == before


def test_run_follows_an_earlier_job_by_its_id(worker, tmp_path):
    body = json.dumps({"inputs": {"sigma": 1.5, "prompt": "again", "flag": True}}).encode()
    job_id = worker.submit(body, "application/json").json()["id"]
    r = run(worker.url, "--job", job_id, "--out", "again", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["job_id"] == job_id and doc["status"] == "succeeded"
    assert (tmp_path / "again" / "text.txt").read_text() == "again!"
    unknown = run(worker.url, "--job", "00000000-0000-4000-8000-000000000000", cwd=tmp_path)
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["status"] == "rejected"


def test_a_usage_error_still_prints_the_json_summary(tmp_path):
    r = subprocess.run([str(binary()), "run", "http://127.0.0.1:1", "--json", "--no-such-flag"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected" and doc["error"]["kind"] == "usage"
    assert "--no-such-flag" in doc["error"]["message"]


def test_the_node_default_endpoint_is_where_serve_listens_by_default():
    from comfy_remote import _native

    help_text = subprocess.run([str(binary()), "serve", "--help"], capture_output=True, text=True).stdout
    listen = _native.DEFAULT_ENDPOINT.removeprefix("http://")
    assert f"[default: {listen}]" in " ".join(help_text.split()), help_text


def test_an_inputs_container_with_an_int_for_a_float_is_widened_by_remote_input(worker):
    from comfy_remote import codec

    body = codec.encode([("sigma", "INT", 7), ("prompt", "STRING", "x"), ("flag", "BOOLEAN", False)])
    r = worker.submit(body, CONTAINER)
    assert r.status == 202, r.body
    job = worker.wait(r.json()["id"])
    assert job["status"] == "succeeded", job
    out = {n: (t, v) for n, t, v in codec.decode(worker.result(job["id"]))}
    assert out["sigma"] == ("FLOAT", 7.0) and isinstance(out["sigma"][1], float)
    assert request("GET", f"{worker.url}/v1/jobs/{job['id']}/result").status == 200
