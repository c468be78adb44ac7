"""`comfy-remote serve` refuses bad set-ups before starting anything, and
`comfy-remote run` reports an unreachable worker; no ComfyUI needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, binary, free_port  # noqa: E402


def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("COMFY_REMOTE_TOKEN", "COMFYUI_DIR")}
    return subprocess.run([str(binary()), "serve", *args], capture_output=True, text=True, env={**full, **(env or {})},
                          timeout=120)


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui", str(tmp_path),
              "--listen", "0.0.0.0:0")
    assert r.returncode == 2
    assert "token" in r.stderr and "COMFY_REMOTE_TOKEN" in r.stderr


def test_ui_format_workflow_is_refused_with_the_export_hint(tmp_path):
    wf = tmp_path / "ui.json"
    wf.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    r = serve("--workflow", str(wf), "--comfyui", str(tmp_path))
    assert r.returncode == 2
    assert "Export (API)" in r.stderr


def test_workflow_without_remote_output_is_refused(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"1": {"class_type": "RemoteInput", "inputs": {"name": "x"}}}))
    r = serve("--workflow", str(wf), "--comfyui", str(tmp_path))
    assert r.returncode == 2 and "RemoteOutput" in r.stderr


def test_missing_comfyui_is_a_usage_error(tmp_path):
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui", str(tmp_path / "nope"))
    assert r.returncode == 2 and "main.py" in r.stderr


def test_run_against_nothing_exits_unavailable(tmp_path):
    port = free_port()
    r = subprocess.run([str(binary()), "run", f"http://127.0.0.1:{port}", "--input", "x=1", "--json",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stderr
    assert json.loads(r.stdout)["status"] == "unavailable"


def test_run_sends_the_token_and_modal_proxy_auth_from_the_environment(tmp_path):
    """A deployed service wants Modal-Key/Modal-Secret (and maybe a bearer token):
    `run` reads them from the environment, never from its command line."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict[str, str]] = []

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = json.dumps({"error": {"code": "unauthorized", "message": "no"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "COMFY_REMOTE_TOKEN": "tok-1", "MODAL_KEY": "wk-2", "MODAL_SECRET": "ws-3"}
        r = subprocess.run([str(binary()), "run", f"http://127.0.0.1:{server.server_port}", "--input", "x=1",
                            "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    finally:
        server.shutdown()
    assert r.returncode != 0
    assert seen, "run never reached the endpoint"
    assert all(h.get("authorization") == "Bearer tok-1" for h in seen)
    assert all(h.get("modal-key") == "wk-2" and h.get("modal-secret") == "ws-3" for h in seen)
    assert "tok-1" not in r.stderr and "ws-3" not in r.stderr
