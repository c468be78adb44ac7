"""The repository as a ComfyUI node pack, the way ComfyUI-Manager, `comfy node
install` and the Comfy Registry see it: requirements.txt pins the comfy-remote
package at the pack's version (the workspace's), `[tool.comfy]` is complete,
and a ComfyUI whose Python lacks a working comfy-remote still starts and says
in one line what to install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import REPO, comfyui_python, request, start_comfyui, stop_process, wait_until


def workspace_version() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_pack_pins_the_package_at_the_workspace_version():
    v = workspace_version()
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line] == [f"comfy-remote=={v}"]
    # As the Registry's publisher reads a dynamic version: a top-level `__version__ = "..."` line.
    project = pyproject()
    assert "version" in project["project"]["dynamic"]
    path = project["tool"]["comfy"]["version"]["path"]
    found = re.findall(r'^__version__\s*=\s*"([^"]*)"', (REPO / path).read_text(), re.M)
    assert found == [v], f"{path} says {found}, Cargo.toml {v}"


def test_the_registry_metadata_is_complete():
    project = pyproject()
    meta, comfy = project["project"], project["tool"]["comfy"]
    assert meta["name"] == "comfy-remote" and meta["description"] and meta["license"]
    assert meta["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert isinstance(comfy["includes"], list) and isinstance(comfy["Icon"], str)
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"]), comfy["requires-comfyui"]
    assert any(c.startswith("Operating System :: ") for c in meta["classifiers"])


PROBLEM = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pack", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
print(m.problem())
"""


def fake_package(root: Path, native: str | None) -> Path:
    """A `comfy_remote` on PYTHONPATH that shadows the installed one: the
    real Python sources, with no native module or a stand-in of another version."""
    shutil.copytree(REPO / "python" / "comfy_remote", root / "comfy_remote",
                    ignore=shutil.ignore_patterns("_native*.so", "_native*.pyd", "__pycache__"))
    if native is not None:
        (root / "comfy_remote" / "_native.py").write_text(native)
    return root


def pack_problem(env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}
    r = subprocess.run([sys.executable, "-c", PROBLEM, str(REPO / "__init__.py")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("case", ["missing", "no native module", "other version"])
def test_each_missing_piece_is_one_line_naming_the_install_command(tmp_path, case):
    v = workspace_version()
    if case == "missing":
        (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['comfy_remote'] = None\n")
        want = "the comfy-remote package is not installed in this ComfyUI's Python"
    elif case == "no native module":
        fake_package(tmp_path, None)
        want = "has no working native module"
    else:
        fake_package(tmp_path, '__version__ = "0.0.1"\n')
        want = f"this node pack is version {v} but ComfyUI's Python has comfy-remote 0.0.1"
    line = pack_problem({"PYTHONPATH": str(tmp_path)})
    assert want in line and f'-m pip install comfy-remote=={v}' in line, line
    assert "\n" not in line and sys.executable in line


def test_comfyui_without_the_native_module_starts_and_lists_the_packs_error(tmp_path, comfyui_dir):
    v = workspace_version()
    python = comfyui_python(comfyui_dir)
    shadow = fake_package(tmp_path / "shadow", None)
    home = tmp_path / "home"
    os.environ["PYTHONPATH"], saved = str(shadow), os.environ.get("PYTHONPATH")
    try:
        comfy = start_comfyui(python, comfyui_dir, home)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        info = request("GET", f"{comfy.url}/object_info").json()
        assert "RemoteAPI" not in info and "KSampler" in info, "ComfyUI runs, without our nodes"
        log = wait_until(lambda: (t := comfy.log_path.read_text()) and "IMPORT FAILED" in t and t,
                         "the import summary")
        ours = [line for line in log.splitlines() if "comfy-remote: " in line]
        assert len(ours) == 1, ours
        assert "has no working native module" in ours[0] and f"pip install comfy-remote=={v}" in ours[0]
        assert any("(IMPORT FAILED)" in line and "comfy-remote" in line for line in log.splitlines()), log[-3000:]
        # Raised by the entry point, not at import: ComfyUI logs one line, no traceback.
        assert "Error while calling comfy_entrypoint" in ours[0], ours[0]
        assert not any("Cannot import" in line and "comfy-remote" in line for line in log.splitlines())
    finally:
        stop_process(comfy.proc)

