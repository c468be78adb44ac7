"""The Modal Deployment node under ComfyUI's Python: its schema, generate-only (no URL), and a recorded deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from harness import REPO

FIXTURES = REPO / "crates" / "deploy" / "tests" / "fixtures"
FAKE = REPO / "tests" / "fake_modal"
# The resolver of the image's packages: the test virtualenv's (ComfyUI's gets our wheel without dependencies).
UV = Path(sys.executable).parent / "uv"

SCRIPT = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from comfy_api.latest import io
from comfy_remote.nodes.modal_deploy import ModalDeployment, NODES
schema = ModalDeployment.define_schema()
assert schema.node_id == "ModalDeployment" and schema.category == "comfy-remote"
assert all(i.tooltip for i in schema.inputs), "every input has a tooltip"
assert [o.io_type for o in schema.outputs] == ["STRING", "STRING"]
args = dict(workflow_path=sys.argv[2], app_name="node-app", gpu="H100,A100-80GB", pip_packages="einops\n",
            apt_packages="", clean_build=False, force_rebuild=False, delete_remote_app=False,
            project_dir=sys.argv[3], wheel_path=sys.argv[4])
out = asyncio.run(ModalDeployment.execute(deploy=False, **args))
gen_url, gen_msg = out.args[0], out.args[1]
out = asyncio.run(ModalDeployment.execute(deploy=True, **args))
print(json.dumps({"gen": [gen_url, gen_msg], "dep": list(out.args)}))
"""


def make_wheels(wheel: Path, version: str) -> None:
    """The package wheel and, beside it, the server's: the generator checks and copies both."""
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"comfy_remote-{version}.dist-info/METADATA", f"Name: comfy-remote\nVersion: {version}\n")
        z.writestr("comfy_remote/_native.abi3.so", b"")
    server = wheel.parent / f"comfy_remote_server-{version}-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(server, "w") as z:
        z.writestr(f"comfy_remote_server-{version}.dist-info/METADATA",
                   f"Name: comfy-remote-server\nVersion: {version}\n")
        z.writestr(f"comfy_remote_server-{version}.data/scripts/comfy-remote-server", b"")


def test_modal_deployment_node(tmp_path, comfyui_dir, comfy_python):
    version = subprocess.run([str(comfy_python), "-c", "import comfy_remote; print(comfy_remote.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    wheel = tmp_path / f"comfy_remote-{version}-cp310-abi3-manylinux_2_17_x86_64.whl"
    make_wheels(wheel, version)
    log = tmp_path / "modal.log"
    env = {**os.environ, "PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_MODAL_LOG": str(log),
           "COMFY_REMOTE_MODAL_PYTHON": str(FAKE / "modal-python"), "COMFY_REMOTE_UV": str(UV)}
    env.pop("COMFYUI_DIR", None)
    project = tmp_path / "project"
    r = subprocess.run([str(comfy_python), "-c", SCRIPT, str(comfyui_dir), str(FIXTURES / "remote_invert.json"),
                        str(project), str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["gen"][0] == "", "generate only never returns a URL"
    assert "not deployed" in res["gen"][1]
    assert res["dep"][0] == "https://acme--node-app-web.modal.run"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0]["argv"] == ["deploy", f"{project / 'workflow.py'}::app"] and calls[0]["cwd"] == str(project)
    cfg = json.loads((project / "modal_config.json").read_text())
    assert cfg["gpu"] == ["H100", "A100-80GB"] and cfg["pip"] == ["einops"]


CLEAN_SCRIPT = r"""
import asyncio, json, logging, sys
sys.path.insert(0, sys.argv[1])
from comfy_remote.nodes.modal_deploy import ModalDeployment
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])
logger = logging.getLogger("comfy_remote.modal_deploy")
logger.addHandler(Keep())
logger.setLevel(logging.INFO)
workflow, config, project, wheel, clean = sys.argv[2:7]
out = asyncio.run(ModalDeployment.execute(
    workflow_path=workflow, app_name="", gpu="", pip_packages="", apt_packages="", deploy=False,
    clean_build=clean == "clean", force_rebuild=False, delete_remote_app=False, config_path=config,
    project_dir=project, wheel_path=wheel))
print(json.dumps({"out": list(out.args), "log": records}))
"""


def test_clean_build_from_the_node_keeps_what_it_reads_and_warns_of_a_public_service(tmp_path, comfyui_dir,
                                                                                       comfy_python):
    """The node pointed at its own project (its workflow copy and config) with Clean Build on."""
    version = subprocess.run([str(comfy_python), "-c", "import comfy_remote; print(comfy_remote.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    wheel = tmp_path / f"comfy_remote-{version}-cp310-abi3-manylinux_2_17_x86_64.whl"
    make_wheels(wheel, version)
    env = {**os.environ, "PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_MODAL_LOG": str(tmp_path / "log"),
           "COMFY_REMOTE_MODAL_PYTHON": str(FAKE / "modal-python"), "COMFY_REMOTE_UV": str(UV)}
    env.pop("COMFYUI_DIR", None)
    (tmp_path / "sd.json").write_text((FIXTURES / "remote_invert.json").read_text())
    project = tmp_path / "project"

    def node(workflow: Path, config: str, clean: bool) -> dict:
        r = subprocess.run([str(comfy_python), "-c", CLEAN_SCRIPT, str(comfyui_dir), str(workflow), config,
                            str(project), str(wheel), "clean" if clean else "keep"],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    node(tmp_path / "sd.json", "", clean=False)
    cfg = json.loads((project / "modal_config.json").read_text())
    cfg["gpu"] = "L4"
    cfg["auth"]["proxy_auth"] = False
    (project / "modal_config.json").write_text(json.dumps(cfg))
    (project / "notes.txt").write_text("mine")
    res = node(project / "sd.json", str(project / "modal_config.json"), clean=True)
    assert json.loads((project / "modal_config.json").read_text())["gpu"] == "L4", "the edited config survives"
    assert (project / "sd.json").read_text() == (FIXTURES / "remote_invert.json").read_text()
    assert (project / "notes.txt").read_text() == "mine"
    assert (project / "workflow.py").is_file()
    assert any("clean build: kept" in m for _, m in res["log"]), res["log"]
    warnings = [m for level, m in res["log"] if level == "WARNING"]
    assert len(warnings) == 1 and "is public" in warnings[0] and "anyone with the service URL" in warnings[0]
    assert "is public" in res["out"][1], "the node's message says so too"
