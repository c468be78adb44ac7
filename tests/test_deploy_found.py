"""A real workflow, deployed: a custom node pack in a git repository (one node that loads a small
safetensors file from ComfyUI's models folder), the model file, and the remote workflow saved in the
UI format, all in a ComfyUI the test makes.

`deploy --no-deploy` finds the pack (its remote URL and commit) and the model (its hash) in that
ComfyUI and converts the workflow with its `/object_info`; the project imports with the real `modal`
package; a deploy against the recording `modal` uploads the model with `modal volume put` (once);
and the container start path run here (the pack cloned at the pinned commit, as the image does,
the model read from the "Volume" through the generated `extra_model_paths.yaml`) runs a job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import CONTAINER, REPO, binary, comfy_home, request, start_comfyui, start_modal_runtime, wait_until

FAKE = REPO / "tests" / "fake_modal"
UV = Path(sys.executable).parent / "uv"

PACK = '''
"""A test pack: multiplies an image by the `scale` tensor of a safetensors file in models/checkpoints."""
import folder_paths
from safetensors.torch import load_file


class CRTinyScale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "weights": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "comfy-remote/tests"

    def run(self, image, weights):
        scale = load_file(folder_paths.get_full_path("checkpoints", weights))["scale"]
        return (image * scale,)


NODE_CLASS_MAPPINGS = {"CRTinyScale": CRTinyScale}
'''


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def ui_workflow() -> dict:
    """RemoteInput -> CRTinyScale(weights=tiny.safetensors) -> RemoteOutput, as Save writes it."""
    return {
        "last_node_id": 3, "last_link_id": 2, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "RemoteInput", "mode": 0, "outputs": [{"name": "value", "type": "*", "links": [1]}],
             "widgets_values": ["image", "IMAGE"]},
            {"id": 2, "type": "CRTinyScale", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": ["tiny.safetensors"]},
            {"id": 3, "type": "RemoteOutput", "mode": 0, "inputs": [{"name": "value", "type": "*", "link": 2}],
             "widgets_values": ["image"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "*"]],
        "groups": [], "config": {}, "extra": {},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, comfyui_dir, comfy_python):
    """The pack's upstream repository, a ComfyUI home with a clone of it and the model, that ComfyUI running."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("found")
    upstream = root / "upstream" / "cr-tiny-pack"
    upstream.mkdir(parents=True)
    (upstream / "__init__.py").write_text(PACK)
    (upstream / "requirements.txt").write_text("safetensors>=0.4.2\n")
    git("init", "-q", "-b", "main", cwd=upstream)
    git("add", ".", cwd=upstream)
    git("commit", "-q", "-m", "tiny pack", cwd=upstream)
    commit = git("rev-parse", "HEAD", cwd=upstream)
    home = root / "home"
    comfy_home(home)
    git("clone", "-q", upstream.as_uri(), str(home / "custom_nodes" / "cr-tiny-pack"), cwd=root)
    model = home / "models" / "checkpoints" / "tiny.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    save_file({"scale": torch.tensor([0.5])}, str(model))
    comfy = start_comfyui(comfy_python, comfyui_dir, home)
    workflow = root / "tiny_scale.json"
    workflow.write_text(json.dumps(ui_workflow(), indent=1))
    yield {"comfyui": comfyui_dir, "root": root, "home": home, "upstream": upstream, "commit": commit, "model": model, "comfy": comfy,
           "workflow": workflow}
    comfy.stop()


def deploy(world, tmp_path: Path, fake_wheel: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`comfy-remote deploy` of the UI workflow, looking for packs and models in the test's ComfyUI."""
    full = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_DIR", "COMFY_REMOTE_WHEEL")}
    if UV.exists():
        full["COMFY_REMOTE_UV"] = str(UV)
    full["COMFY_REMOTE_CACHE"] = str(tmp_path / "cache")
    argv = [str(binary()), "deploy", str(world["workflow"]), "--out", str(tmp_path / "project"),
            "--wheel", str(fake_wheel), "--comfyui", str(world["comfyui"]), "--base-directory", str(world["home"]),
            "--object-info", world["comfy"].url, "--json", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env={**full, **(env or {})}, timeout=600)


@pytest.fixture
def fake_wheel(tmp_path):
    from test_deploy import make_wheel, version

    return make_wheel(tmp_path / f"comfy_remote-{version()}-cp310-abi3-manylinux_2_17_x86_64.whl")


def test_deploy_finds_the_pack_and_the_model_uploads_it_and_the_container_runs_the_job(world, tmp_path, fake_wheel,
                                                                                         comfyui_dir, comfy_python):
    # --no-deploy: the plan, and a project that imports with the real modal package.
    r = deploy(world, tmp_path, fake_wheel, "--no-deploy")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    project = tmp_path / "project"
    packs = {p["name"]: p for p in report["project"]["plan"]["packs"]}
    assert packs["cr-tiny-pack"]["source"] == f"git {world['upstream'].as_uri()} @ {world['commit']}"
    assert packs["cr-tiny-pack"]["nodes"] == ["CRTinyScale"] and packs["cr-tiny-pack"]["found"]
    (model,) = report["project"]["plan"]["models"]
    assert (model["folder"], model["file"], model["used_by"]) == ("checkpoints", "tiny.safetensors", "2:weights")
    assert model["sha256"] == hashlib.sha256(world["model"].read_bytes()).hexdigest()
    assert model["size"] == world["model"].stat().st_size
    assert "pack cr-tiny-pack: found in the local ComfyUI; git " in r.stderr
    assert "model checkpoints/tiny.safetensors (node 2:weights)" in r.stderr
    cfg = json.loads((project / "modal_config.json").read_text())
    assert {"name": "cr-tiny-pack", "git": world["upstream"].as_uri(), "ref": world["commit"],
            "nodes": ["CRTinyScale"]} in cfg["custom_nodes"], "the pin is saved in the project's config"
    assert cfg["volume"]["name"] == "comfy-remote-models"
    api = json.loads((project / "tiny_scale.json").read_text())
    assert api["2"] == {"inputs": {"weights": "tiny.safetensors", "image": ["1", 0]}, "class_type": "CRTinyScale",
                        "_meta": {"title": "CRTinyScale"}}, "the project holds the API form"
    lock = (project / "build" / "requirements.lock").read_text()
    assert "\nsafetensors==" in lock, "the pack's requirements are in the lock"
    text = (project / "workflow.py").read_text()
    assert f"fetch -q --depth 1 {world['upstream'].as_uri()} {world['commit']}" in text
    from test_deploy import inspect

    assert inspect(project)["volumes"] == ["/models"]

    # A deploy against the recording modal: the model goes to the Volume once.
    log = tmp_path / "modal.log"
    env = {"PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}", "FAKE_MODAL_LOG": str(log),
           "COMFY_REMOTE_MODAL_PYTHON": str(FAKE / "modal-python")}
    for _ in range(2):
        r = deploy(world, tmp_path, fake_wheel, "--force-rebuild", env=env)
        assert r.returncode == 0, r.stderr
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    puts = [c for c in calls if c[:2] == ["volume", "put"] and c[-1] == "/checkpoints/tiny.safetensors"]
    assert puts == [["volume", "put", "--force", "comfy-remote-models", str(world["model"]),
                     "/checkpoints/tiny.safetensors"]], calls
    assert calls.index(puts[0]) < calls.index(next(c for c in calls if c[0] == "deploy")), "uploaded before deploy"
    volume = tmp_path / "volumes" / "comfy-remote-models"
    assert (volume / "checkpoints" / "tiny.safetensors").read_bytes() == world["model"].read_bytes()
    assert "is on Volume comfy-remote-models already" in r.stderr

    # The container start path, run here: the pack cloned at the pinned commit as the image does,
    # models read from the Volume through the project's extra_model_paths.yaml.
    image_home = tmp_path / "container"
    pack = image_home / "comfy" / "custom_nodes" / "cr-tiny-pack"
    pack.mkdir(parents=True)
    git("init", "-q", cwd=pack)
    git("fetch", "-q", "--depth", "1", world["upstream"].as_uri(), world["commit"], cwd=pack)
    git("checkout", "-q", "FETCH_HEAD", cwd=pack)
    paths = (project / "build" / "extra_model_paths.yaml").read_text().replace("base_path: /models", f"base_path: {volume}")
    (tmp_path / "extra_model_paths.yaml").write_text(paths)
    rt = start_modal_runtime(project / "tiny_scale.json", comfyui=comfyui_dir, python=comfy_python, home=image_home,
                             comfy_args=("--extra-model-paths-config", str(tmp_path / "extra_model_paths.yaml")))
    try:
        import torch

        from comfy_remote import codec

        x = torch.rand(1, 4, 4, 3, generator=torch.Generator().manual_seed(1))
        r = request("POST", f"{rt.url}/v1/jobs", codec.encode([("image", "IMAGE", x)]), {"Content-Type": CONTAINER})
        assert r.status == 202, r.body
        job_id = r.json()["id"]
        done = wait_until(lambda: (j := request("GET", f"{rt.url}/v1/jobs/{job_id}").json())["status"]
                          in ("succeeded", "failed") and j, "the job")
        assert done["status"] == "succeeded", done
        out = {n: v for n, _t, v in codec.decode(request("GET", f"{rt.url}/v1/jobs/{job_id}/result").body)}
        assert torch.allclose(out["image"], x * 0.5)
    finally:
        rt.stop()
