"""Packs and models of a local ComfyUI (a base directory the test makes; no ComfyUI runs), deployed.

A model file the Volume's manifest lists is uploaded again when the Volume (asked with
`modal volume ls`) lacks it or holds it at another size, and skipped when it is there at that size;
a custom node pack without git is copied into the project and its requirements are locked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, binary

FIXTURES = REPO / "crates" / "deploy" / "tests" / "fixtures"
FAKE = REPO / "tests" / "fake_modal"
UV = Path(sys.executable).parent / "uv"


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFY_REMOTE_WHEEL")}
    if UV.exists():
        full["COMFY_REMOTE_UV"] = str(UV)
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, env={**full, **(env or {})},
                          cwd=cwd, timeout=600)


@pytest.fixture
def fake_wheel(tmp_path):
    from test_deploy import make_wheel, version

    return make_wheel(tmp_path / f"comfy_remote-{version()}-cp310-abi3-manylinux_2_17_x86_64.whl")


def test_a_model_the_manifest_lists_but_the_volume_lacks_or_holds_at_another_size_is_uploaded_again(
        tmp_path, fake_wheel):
    home = tmp_path / "comfy"
    ckpt = home / "models" / "checkpoints" / "sd_xl_base_1.0.safetensors"
    lora = home / "models" / "loras" / "detail.safetensors"
    for path, body in ((ckpt, b"checkpoint weights" * 100), (lora, b"lora weights")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    log = tmp_path / "modal.log"
    env = {"PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_MODAL_LOG": str(log),
           "COMFY_REMOTE_MODAL_PYTHON": str(FAKE / "modal-python"), "COMFY_REMOTE_CACHE": str(tmp_path / "cache")}

    def deploy() -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        before = len(log.read_text().splitlines()) if log.exists() else 0
        r = run("deploy", str(FIXTURES / "remote_models.json"), "--out", str(tmp_path / "project"), "--wheel",
                str(fake_wheel), "--base-directory", str(home), "--force-rebuild", env=env)
        assert r.returncode == 0, r.stderr
        calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()[before:]]
        return r, calls

    def uploads(calls: list[list[str]]) -> list[str]:
        return [c[-1] for c in calls if c[:2] == ["volume", "put"] and not c[-1].startswith("/.comfy-remote/")]

    volume = tmp_path / "volumes" / "comfy-remote-models"
    on_volume = {"/checkpoints/sd_xl_base_1.0.safetensors": ckpt, "/loras/detail.safetensors": lora}

    r, calls = deploy()
    assert sorted(uploads(calls)) == sorted(on_volume), calls
    for remote, local in on_volume.items():
        assert (volume / remote.lstrip("/")).read_bytes() == local.read_bytes()

    # Both there, at their size, and in the manifest: the Volume is asked, nothing is uploaded.
    r, calls = deploy()
    assert uploads(calls) == [], calls
    assert ["volume", "ls", "--json", "comfy-remote-models", "/checkpoints"] in calls
    assert ["volume", "ls", "--json", "comfy-remote-models", "/loras"] in calls
    assert calls.index(["volume", "ls", "--json", "comfy-remote-models", "/loras"]) < calls.index(
        next(c for c in calls if c[0] == "deploy")), "asked before the deploy"
    assert r.stderr.count("is on Volume comfy-remote-models already (same size and sha256)") == 2, r.stderr
    manifest = json.loads((volume / ".comfy-remote" / "models.json").read_text())
    assert manifest["files"]["/loras/detail.safetensors"] == {
        "size": lora.stat().st_size, "sha256": hashlib.sha256(lora.read_bytes()).hexdigest()}

    # The manifest lies: the checkpoint is gone from the Volume, the LoRA cut short there.
    (volume / "checkpoints" / "sd_xl_base_1.0.safetensors").unlink()
    (volume / "loras" / "detail.safetensors").write_bytes(b"lora")
    r, calls = deploy()
    assert sorted(uploads(calls)) == sorted(on_volume), calls
    assert ("the manifest of Volume comfy-remote-models lists /checkpoints/sd_xl_base_1.0.safetensors, "
            "but the Volume lacks it: uploading it again") in r.stderr
    assert (f"Volume comfy-remote-models holds /loras/detail.safetensors at 4 bytes, not {lora.stat().st_size} "
            "bytes: uploading it again") in r.stderr
    for remote, local in on_volume.items():
        assert (volume / remote.lstrip("/")).read_bytes() == local.read_bytes()

    r, calls = deploy()
    assert uploads(calls) == [], "once repaired, skipped again"


PLAIN_PACK = '''
"""A custom node pack that is a plain directory (no git)."""


class CRPlainInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "comfy-remote/tests"

    def run(self, image):
        return (1.0 - image,)


NODE_CLASS_MAPPINGS = {"CRPlainInvert": CRPlainInvert}
'''


def test_a_pack_found_without_git_is_copied_into_the_project_and_its_requirements_are_locked(tmp_path, fake_wheel):
    if not UV.exists():
        pytest.skip("uv is not installed beside this Python (pip install -r requirements-test.txt)")
    home = tmp_path / "comfy"
    pack = home / "custom_nodes" / "cr-plain-pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(PLAIN_PACK)
    (pack / "requirements.txt").write_text("# what the pack needs\ntext-unidecode==1.3\n")
    (home / "models").mkdir()
    workflow = tmp_path / "plain.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
        "2": {"class_type": "CRPlainInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "type": "IMAGE", "value": ["2", 0]}},
    }))
    project = tmp_path / "project"
    r = run("deploy", str(workflow), "--no-deploy", "--out", str(project), "--wheel", str(fake_wheel),
            "--base-directory", str(home), "--json", env={"COMFY_REMOTE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["project"]["plan"]
    packs = {p["name"]: p for p in plan["packs"]}
    assert packs["cr-plain-pack"]["source"] == f"copied from {pack}"
    assert packs["cr-plain-pack"]["found"] and packs["cr-plain-pack"]["locked"]
    assert packs["cr-plain-pack"]["nodes"] == ["CRPlainInvert"]
    assert f"pack cr-plain-pack: found in the local ComfyUI; copied from {pack}" in r.stderr

    copied = project / "custom_nodes" / "cr-plain-pack"
    assert (copied / "__init__.py").read_text() == PLAIN_PACK
    assert (copied / "requirements.txt").read_text() == (pack / "requirements.txt").read_text()
    cfg = json.loads((project / "modal_config.json").read_text())
    (entry,) = [c for c in cfg["custom_nodes"] if c.get("name") == "cr-plain-pack"]
    assert Path(entry["path"]) == pack.resolve() and entry.get("git") is None
    lock = (project / "build" / "requirements.lock").read_text()
    assert "\ntext-unidecode==1.3 \\\n    --hash=sha256:" in lock, lock
    assert 'add_local_dir(HERE / "custom_nodes" / "cr-plain-pack"' in (project / "workflow.py").read_text(), \
        "the image takes the copy"
