"""The Modal Deployment node queued in a running ComfyUI, as a user runs it: generate only, on a remote
workflow saved in the UI format that uses a custom node pack (the test nodes, a plain directory without git).

The prompt goes through ComfyUI's own HTTP API (POST /prompt, then /history/<id>). The node converts the
workflow with that ComfyUI's node definitions, finds the pack in its custom_nodes and copies it into the
project, and says it did not deploy; the recording `modal` shows no `modal deploy` ran.

Needs COMFYUI_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness import TEST_NODES, request, start_comfyui, wait_until
from test_deploy_node import FAKE, UV, make_wheels

PACK = TEST_NODES.name  # comfy_remote_test_nodes


def ui_workflow() -> dict:
    """RemoteInput(image: IMAGE) -> CRTestSlow(steps=2) -> RemoteOutput(image), as the editor's Save writes it."""
    return {
        "id": "5d2c8a4e-0000-4000-8000-000000000001",
        "revision": 0,
        "last_node_id": 3,
        "last_link_id": 2,
        "nodes": [
            {
                "id": 1, "type": "RemoteInput", "pos": [0, 0], "size": [270, 82], "flags": {}, "order": 0, "mode": 0,
                "inputs": [
                    {"localized_name": "default", "name": "default", "shape": 7, "type": "*", "link": None},
                    {"localized_name": "name", "name": "name", "type": "STRING", "widget": {"name": "name"},
                     "link": None},
                    {"localized_name": "type", "name": "type", "type": "COMBO", "widget": {"name": "type"},
                     "link": None},
                ],
                "outputs": [{"label": "image", "localized_name": "value", "name": "value", "type": "IMAGE",
                             "links": [1]}],
                "properties": {"Node name for S&R": "RemoteInput"},
                "widgets_values": ["image", "IMAGE"],
            },
            {
                "id": 2, "type": "CRTestSlow", "pos": [320, 0], "size": [270, 106], "flags": {}, "order": 1, "mode": 0,
                "inputs": [
                    {"localized_name": "image", "name": "image", "type": "IMAGE", "link": 1},
                    {"localized_name": "steps", "name": "steps", "type": "INT", "widget": {"name": "steps"},
                     "link": None},
                    {"localized_name": "seconds_per_step", "name": "seconds_per_step", "type": "FLOAT",
                     "widget": {"name": "seconds_per_step"}, "link": None},
                    {"localized_name": "progress_api", "name": "progress_api", "shape": 7, "type": "COMBO",
                     "widget": {"name": "progress_api"}, "link": None},
                ],
                "outputs": [{"localized_name": "IMAGE", "name": "IMAGE", "type": "IMAGE", "links": [2]}],
                "properties": {"Node name for S&R": "CRTestSlow"},
                "widgets_values": [2, 0.01, "hook"],
            },
            {
                "id": 3, "type": "RemoteOutput", "pos": [640, 0], "size": [270, 58], "flags": {}, "order": 2,
                "mode": 0,
                "inputs": [
                    {"localized_name": "value", "name": "value", "type": "*", "link": 2},
                    {"localized_name": "name", "name": "name", "type": "STRING", "widget": {"name": "name"},
                     "link": None},
                ],
                "outputs": [],
                "properties": {"Node name for S&R": "RemoteOutput"},
                "widgets_values": ["image"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "*"]],
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
    }


def test_the_node_in_a_running_comfyui_generates_a_project_for_a_ui_workflow_with_a_custom_pack(
        tmp_path, comfyui_dir, comfy_python):
    version = subprocess.run([str(comfy_python), "-c", "import comfy_remote; print(comfy_remote.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    wheel = tmp_path / "wheels" / f"comfy_remote-{version}-cp310-abi3-manylinux_2_17_x86_64.whl"
    wheel.parent.mkdir()
    make_wheels(wheel, version)
    modal_log = tmp_path / "modal.log"
    env = {"PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_MODAL_LOG": str(modal_log),
           "COMFY_REMOTE_MODAL_PYTHON": str(FAKE / "modal-python"), "COMFY_REMOTE_UV": str(UV)}
    workflow = tmp_path / "slow_remote.json"
    workflow.write_text(json.dumps(ui_workflow(), indent=1))
    project = tmp_path / "project"

    comfy = start_comfyui(comfy_python, comfyui_dir, tmp_path / "comfy", env=env)
    try:
        prompt = {"1": {"class_type": "ModalDeployment", "inputs": {
            "workflow_path": str(workflow), "app_name": "slow-remote", "gpu": "L4", "pip_packages": "",
            "apt_packages": "", "deploy": False, "clean_build": False, "force_rebuild": False,
            "delete_remote_app": False, "config_path": "", "project_dir": str(project), "wheel_path": str(wheel)}}}
        r = request("POST", f"{comfy.url}/prompt", json.dumps({"prompt": prompt, "client_id": "deploy-live"}).encode(),
                    {"Content-Type": "application/json"})
        assert r.status == 200, r.body
        prompt_id = r.json()["prompt_id"]
        entry = wait_until(lambda: request("GET", f"{comfy.url}/history/{prompt_id}").json().get(prompt_id),
                           f"prompt {prompt_id}", interval=0.2)
        # The server runs with the recording `modal` first on its PATH: a deploy would be in its log.
        server_env = dict(kv.split("=", 1) for kv in
                          Path(f"/proc/{comfy.proc.pid}/environ").read_text().split("\0") if "=" in kv)
        assert server_env["PATH"].split(os.pathsep)[0] == str(FAKE)
        assert server_env["FAKE_MODAL_LOG"] == str(modal_log)
    finally:
        comfy.stop()
    comfy_log = comfy.log_path.read_text()

    # The prompt succeeded, and the node says it generated the project without deploying.
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"], (status, comfy_log[-4000:])
    ui = entry["outputs"]["1"]
    assert ui["comfy_remote_service_url"] == [""], "generate only: no service URL"
    (message,) = ui["text"]
    assert message.startswith(f"generated {project} (not deployed: turn on 'deploy' to get a service URL)"), message

    # The project holds the workflow (under its file name) in the API format, converted with this
    # ComfyUI's node definitions; its modal_config.json the settings and the pack.
    api = json.loads((project / workflow.name).read_text())
    assert "nodes" not in api and "links" not in api
    assert {n["class_type"] for n in api.values()} == {"RemoteInput", "CRTestSlow", "RemoteOutput"}
    (slow,) = [n for n in api.values() if n["class_type"] == "CRTestSlow"]
    (source,) = [k for k, n in api.items() if n["class_type"] == "RemoteInput"]
    assert slow["inputs"]["image"] == [source, 0]
    assert (slow["inputs"]["steps"], slow["inputs"]["seconds_per_step"]) == (2, 0.01)
    cfg = json.loads((project / "modal_config.json").read_text())
    assert cfg["app_name"] == "slow-remote" and cfg["gpu"] in ("L4", ["L4"]), cfg

    # The pack was found in this ComfyUI's custom_nodes and, having no git, copied into the project.
    (pack,) = [c for c in cfg["custom_nodes"] if c.get("name") == PACK]
    assert pack.get("git") is None and Path(pack["path"]).resolve() == TEST_NODES.resolve(), pack
    copied = project / "custom_nodes" / PACK
    for f in TEST_NODES.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            rel = f.relative_to(TEST_NODES)
            assert (copied / rel).read_bytes() == f.read_bytes(), f"{rel} copied into the project"
    assert f'add_local_dir(HERE / "custom_nodes" / "{PACK}"' in (project / "workflow.py").read_text()
    assert f"pack {PACK}: found in the local ComfyUI; copied from" in comfy_log

    # No `modal deploy` ran (generate only calls no `modal` at all).
    calls = [json.loads(line)["argv"] for line in modal_log.read_text().splitlines()] if modal_log.exists() else []
    assert not [c for c in calls if c[:1] == ["deploy"]], calls
