"""The main-job script's ComfyUI provisioning: a clone of a (local) ComfyUI
repository at the pinned tag, and one clear message when cloning fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.sh"


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "COMFYUI_DIR"}
    full.update({"COMFY_REMOTE_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"), **env})
    return subprocess.run([str(DEMO), "--provision-only"], env=full, capture_output=True, text=True)


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_provisions_comfyui_by_cloning_the_pinned_tag(tmp_path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git("init", "-q", cwd=upstream)
    (upstream / "main.py").write_text("print('old')\n")
    git("add", ".", cwd=upstream)
    git("commit", "-qm", "old", cwd=upstream)
    (upstream / "main.py").write_text("print('pinned')\n")
    (upstream / "requirements.txt").write_text("")
    git("add", ".", cwd=upstream)
    git("commit", "-qm", "pinned", cwd=upstream)
    git("tag", "v0.33.0", cwd=upstream)
    (upstream / "main.py").write_text("print('newer')\n")
    git("commit", "-qam", "newer", cwd=upstream)

    r = run_demo(tmp_path, COMFY_REMOTE_COMFYUI_REPO=str(upstream))
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip())
    assert where == tmp_path / "cache" / "comfyui"
    assert (where / "main.py").read_text() == "print('pinned')\n"
    # A second run reuses the clone.
    again = run_demo(tmp_path, COMFY_REMOTE_COMFYUI_REPO=str(tmp_path / "gone"))
    assert again.returncode == 0 and Path(again.stdout.strip()) == where


def test_failed_clone_stops_with_one_message_naming_comfyui_dir(tmp_path):
    r = run_demo(tmp_path, COMFY_REMOTE_COMFYUI_REPO=str(tmp_path / "no-such-repo"))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "COMFYUI_DIR" in errors[0]
    assert not (tmp_path / "cache" / "comfyui").exists()
