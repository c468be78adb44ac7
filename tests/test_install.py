"""The installed package (the wheel in the test virtualenv): the console
script runs the native CLI, which carries no server and hands `serve` over
to the `comfy-remote-server` executable of the server wheel, or says in one
line what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPT = shutil.which("comfy-remote", path=str(BIN))

pytestmark = pytest.mark.skipif(SCRIPT is None, reason="the comfy-remote wheel is not installed in this virtualenv")


def test_the_native_module_carries_no_server_and_serve_hands_over():
    assert shutil.which("comfy-remote-server", path=str(BIN)), "the server wheel is installed beside the package"
    r = subprocess.run([SCRIPT, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--workflow" in r.stdout and "--spool" in r.stdout


def test_without_the_server_serve_says_what_to_install(tmp_path):
    from comfy_remote import __version__

    alone = tmp_path / "comfy-remote"
    shutil.copy(SCRIPT, alone)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, str(alone), "serve", "--workflow", "w.json"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert f"pip install comfy-remote-server=={__version__}" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_the_other_verbs_run_from_the_native_module(tmp_path):
    r = subprocess.run([SCRIPT, "run", "http://127.0.0.1:1", "--json", "-i", "x=1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4 and '"unavailable"' in r.stdout, r.stderr


def test_a_fresh_virtualenv_installs_the_wheels_and_runs_them(tmp_path):
    """What `pip install comfy-remote comfy-remote-server` gives a user: no Rust, no checkout."""
    from harness import wheel

    package = wheel()
    server = sorted(package.parent.glob("comfy_remote_server-*.whl"))
    assert server, f"no comfy_remote_server wheel beside {package}"
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    scripts = venv / ("Scripts" if os.name == "nt" else "bin")
    python = scripts / ("python.exe" if os.name == "nt" else "python")
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(package),
                        str(server[-1])], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    from comfy_remote import __version__

    r = subprocess.run([str(scripts / "comfy-remote"), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split()[-1] == __version__, (r.stdout, r.stderr)
    r = subprocess.run([str(scripts / "comfy-remote"), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--workflow" in r.stdout, r.stderr
    r = subprocess.run([str(python), "-c", "import comfy_remote.codec, comfy_remote._native as n; print(n.__version__)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == __version__, r.stderr
