"""Tests of the nodes' Python side: token references (plain Python) and,
under the Python of each ComfyUI (current and 0.3.64), the schemas, inputs
and output sockets, the bundle, the job path, the shape route and the
request body (tests/harness/nodes_unit.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from comfy_remote import secrets  # noqa: E402


def test_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CR_TEST_TOKEN", "s3cret")
    assert secrets.resolve("CR_TEST_TOKEN", field="token") == "s3cret"
    assert secrets.resolve("env:CR_TEST_TOKEN", field="token") == "s3cret"
    assert secrets.resolve("  ", field="token") is None
    monkeypatch.delenv("CR_TEST_TOKEN")
    with pytest.raises(secrets.SecretError, match="CR_TEST_TOKEN is not set"):
        secrets.resolve("CR_TEST_TOKEN", field="token")


def test_a_pasted_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(secrets.SecretError) as e:
        secrets.resolve("sk-live-abcdef123456", field="token")
    assert "abcdef123456" not in str(e.value)
    assert "environment variable" in str(e.value)


def test_secrets_file_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "secrets.json"
    monkeypatch.setenv(secrets.SECRETS_FILE_ENV, str(f))
    with pytest.raises(secrets.SecretError, match="does not exist"):
        secrets.resolve("secrets:worker", field="token")
    f.write_text(json.dumps({"worker": "tok", "mk": "key", "ms": "sec"}))
    assert secrets.resolve("secrets:worker", field="token") == "tok"
    with pytest.raises(secrets.SecretError, match="no string entry 'other'"):
        secrets.resolve("secrets:other", field="token")
    assert secrets.auth_headers("secrets:worker", "secrets:mk", "secrets:ms") == [
        ("Authorization", "Bearer tok"),
        ("Modal-Key", "key"),
        ("Modal-Secret", "sec"),
    ]
    with pytest.raises(secrets.SecretError, match="go together"):
        secrets.auth_headers("", "secrets:mk", "")


# The current ComfyUI, and 0.3.64 (no Autogrow, no accept_all_inputs, no `advanced`).
@pytest.mark.parametrize("which", ["comfyui_dir", "comfyui_old_dir"])
def test_node_checks_under_comfyui(request: pytest.FixtureRequest, which: str) -> None:
    comfyui = request.getfixturevalue(which)
    py = request.getfixturevalue("comfy_python" if which == "comfyui_dir" else "comfy_old_python")
    r = subprocess.run(
        [str(py), str(ROOT / "tests" / "harness" / "nodes_unit.py"), comfyui],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=comfyui,
    )
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") >= 10, r.stdout
