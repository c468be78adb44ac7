"""Shared fixtures of the end-to-end tests: ComfyUI's location and Python,
private ComfyUI homes, and workers that are always stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ComfyUI, Worker, comfyui_python, start_comfyui, start_worker, wheel  # noqa: E402

COMFYUI_SKIP = (
    "COMFYUI_DIR is not set: end-to-end tests need a ComfyUI checkout "
    "(export COMFYUI_DIR=/path/to/ComfyUI)"
)


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    d = os.environ.get("COMFYUI_DIR")
    if not d:
        pytest.skip(COMFYUI_SKIP)
    return Path(d).resolve()


@pytest.fixture(scope="session")
def comfy_python(comfyui_dir: Path) -> Path:
    """ComfyUI's Python with the comfy-remote wheel installed."""
    return comfyui_python(comfyui_dir, wheel())


@pytest.fixture
def start_worker_fn(tmp_path, comfyui_dir, comfy_python):
    """start_worker_fn(workflow, **kw) -> Worker, stopped after the test."""
    started: list[Worker] = []

    def start(workflow, *, name: str = "w", spool: Path | None = None, **kw) -> Worker:
        home = tmp_path / name
        w = start_worker(workflow, comfyui=comfyui_dir, python=comfy_python, home=home,
                         spool=spool or (home / "spool"), **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def direct_comfyui(tmp_path_factory, comfyui_dir, comfy_python):
    """A ComfyUI run directly (no worker): the baseline."""
    c: ComfyUI = start_comfyui(comfy_python, comfyui_dir, tmp_path_factory.mktemp("direct"))
    yield c
    c.stop()
