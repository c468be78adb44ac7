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


def test_ui_format_workflow_is_converted_and_checked_with_the_comfyuis_node_definitions(tmp_path):
    # A UI-format file: converted with the attached ComfyUI's /object_info, which lacks FancyNode.
    wf = tmp_path / "ui.json"
    wf.write_text(json.dumps({"nodes": [{"id": 4, "type": "FancyNode", "mode": 0}], "links": [], "version": 0.4}))
    info = json.dumps({"RemoteInput": {"input": {"required": {}}, "output": ["*"]}}).encode()
    with _Peer({("GET", "/prompt"): (200, "application/json", b"{}"),
                ("GET", "/object_info"): (200, "application/json", info)}) as comfy:
        r = serve("--workflow", str(wf), "--comfyui-url", comfy.url, "--spool", str(tmp_path / "spool"),
                  "--listen", "127.0.0.1:0")
    assert r.returncode == 2, r.stderr
    assert "workflow ui.json: uses node types this ComfyUI does not have: FancyNode (node 4)" in r.stderr


def test_model_files_the_comfyui_lacks_stop_serve_with_the_list(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "RemoteOutput", "inputs": {"name": "model", "value": ["1", 0]}},
    }))
    info = json.dumps({
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["other.safetensors"]]}},
                                   "output": ["MODEL", "CLIP", "VAE"]},
        "RemoteOutput": {"input": {"required": {"name": ["STRING", {}], "value": ["*", {}]}}, "output": []},
    }).encode()
    with _Peer({("GET", "/prompt"): (200, "application/json", b"{}"),
                ("GET", "/object_info"): (200, "application/json", info)}) as comfy:
        r = serve("--workflow", str(wf), "--comfyui-url", comfy.url, "--spool", str(tmp_path / "spool"),
                  "--listen", "127.0.0.1:0")
    assert r.returncode == 2, r.stderr
    assert "names model files this ComfyUI does not have: checkpoints/sd15.safetensors (node 1 ckpt_name)" in r.stderr


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


class _Peer:
    """A scripted HTTP peer on loopback: `routes` maps (method, path) to
    (status, content type, body); anything else is 404."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, str, bytes]]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, ctype, body = routes.get((self.command, self.path.split("?")[0]),
                                                 (404, "text/plain", b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "_Peer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("COMFY_REMOTE_TOKEN", "MODAL_KEY", "MODAL_SECRET")}
    return subprocess.run([str(binary()), "run", *args], capture_output=True, text=True,
                          env={**full, **(env or {})}, timeout=300)


def test_a_second_worker_on_the_same_spool_is_refused(tmp_path):
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}"
    wf = str(REPO / "examples" / "invert_blur.json")
    full = {k: v for k, v in os.environ.items() if k not in ("COMFY_REMOTE_TOKEN", "COMFYUI_DIR")}
    first = subprocess.Popen([str(binary()), "serve", "--workflow", wf, "--comfyui-url", dead, "--spool", str(spool),
                              "--listen", "127.0.0.1:0", "--startup-timeout", "600"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full)
    try:
        import time
        lock = spool / "lock"
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None, "the first worker exited"
            time.sleep(0.05)
        r = serve("--workflow", wf, "--comfyui-url", dead, "--spool", str(spool), "--listen", "127.0.0.1:0")
        assert r.returncode == 2, r.stderr
        assert f"spool {spool} is in use by another worker (pid {first.pid}); pass --spool DIR" in r.stderr
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_unknown_node_types_are_a_usage_error_not_unreachable(tmp_path):
    with _Peer({("GET", "/prompt"): (200, "application/json", b"{}"),
                ("GET", "/object_info"): (200, "application/json", b"{}")}) as comfy:
        r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui-url", comfy.url,
                  "--spool", str(tmp_path / "spool"), "--listen", "127.0.0.1:0")
    assert r.returncode == 2, r.stderr
    assert "node types" in r.stderr


def test_serve_rejects_a_comfyui_url_that_is_not_http(tmp_path):
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui-url", "not-a-url")
    assert r.returncode == 2 and "--comfyui-url" in r.stderr


def test_a_comfyui_output_dir_that_is_not_there_is_a_usage_error(tmp_path):
    # A typo would otherwise only show as every output read through /view.
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui-url", "http://127.0.0.1:9",
              "--comfyui-output-dir", str(tmp_path / "ouptut"), "--spool", str(tmp_path / "spool"))
    assert r.returncode == 2, r.stderr
    assert "--comfyui-output-dir" in r.stderr and "ouptut" in r.stderr and "not a directory" in r.stderr


def test_token_errors_are_usage_errors_naming_the_source(tmp_path):
    wf = str(REPO / "examples" / "invert_blur.json")
    missing = tmp_path / "no-token"
    r = serve("--workflow", wf, "--comfyui", str(tmp_path), "--token-file", str(missing))
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr
    empty = tmp_path / "empty-token"
    empty.write_text("  \n")
    r = serve("--workflow", wf, "--comfyui", str(tmp_path), "--token-file", str(empty))
    assert r.returncode == 2 and str(empty) in r.stderr and "empty" in r.stderr, r.stderr
    r = serve("--workflow", wf, "--comfyui", str(tmp_path), env={"COMFY_REMOTE_TOKEN": " "})
    assert r.returncode == 2 and "COMFY_REMOTE_TOKEN" in r.stderr and "empty" in r.stderr, r.stderr


def test_attached_start_up_timeout_names_the_url(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui-url", dead,
              "--spool", str(tmp_path / "spool"), "--listen", "127.0.0.1:0", "--startup-timeout", "1")
    assert r.returncode == 4, r.stderr
    assert f"error: ComfyUI: {dead} did not answer within 1s" in r.stderr
    assert "ComfyUI: ComfyUI" not in r.stderr and "log above" not in r.stderr


def test_run_closed_stdout_does_not_panic(tmp_path):
    p = subprocess.Popen([str(binary()), "run", "not-a-url", "--json", "--out", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    assert p.returncode == 2, err
    assert "panicked" not in err


def test_run_bad_urls_are_usage_errors_with_a_json_summary(tmp_path):
    for url in ("not-a-url", "ftp://x"):
        r = run_cli(url, "--json", "--out", str(tmp_path))
        assert r.returncode == 2, r.stderr
        doc = json.loads(r.stdout)
        assert doc["status"] == "rejected" and url in doc["error"]["message"]


def test_run_every_early_exit_prints_a_json_summary(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    missing = tmp_path / "missing.png"
    cases = [
        (["--input", f"image={missing}"], "no such file"),
        (["--input", "x=json:{"], "not valid JSON"),
        (["--input", "noequals"], "expected name="),
        (["--input", "a=1", "--input", "a=2"], "--input a"),
        (["--input", f"d={tmp_path}"], "is a directory"),
    ]
    for extra, needle in cases:
        r = run_cli(url, *extra, "--json", "--out", str(tmp_path))
        assert r.returncode == 2, (extra, r.stderr)
        doc = json.loads(r.stdout)
        assert doc["status"] == "rejected", doc
        assert needle in doc["error"]["message"], doc


def test_run_against_a_plain_web_server_says_so_without_html(tmp_path):
    page = b"<!DOCTYPE HTML><html><head><title>Error response</title></head><body><h1>Error response</h1>" \
           b"<p>Message: Unsupported method ('POST').</p></body></html>"
    with _Peer({("POST", "/"): (501, "text/html", page)}) as peer:
        r = run_cli(peer.url, "--input", "x=1", "--json", "--out", str(tmp_path))
    assert r.returncode != 0
    msg = json.loads(r.stdout)["error"]["message"]
    assert "not a comfy-remote endpoint (GET /v1/info -> 404, POST / -> 501)" in msg
    assert "<" not in msg and "<" not in r.stderr


def test_run_401_says_where_the_token_comes_from(tmp_path):
    body = json.dumps({"error": {"code": "unauthorized", "message": "missing bearer token"}}).encode()
    with _Peer({("GET", "/v1/info"): (401, "application/json", body)}) as peer:
        r = run_cli(peer.url, "--input", "x=1", "--json", "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert "set COMFY_REMOTE_TOKEN to the service's bearer token" in message and "--token-env" in message, message


def test_run_401_from_modal_proxy_auth_names_the_modal_variables(tmp_path):
    # Modal's proxy answers before the service does, without our error body.
    with _Peer({("GET", "/v1/info"): (401, "text/plain", b"modal-http: missing credentials for proxy authorization")}) as peer:
        r = run_cli(peer.url, "--input", "x=1", "--json", "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert "MODAL_KEY and MODAL_SECRET" in message and "COMFY_REMOTE_TOKEN" not in message, message


def test_a_spool_that_cannot_be_created_is_a_usage_error(tmp_path):
    spool = tmp_path / "file"
    spool.write_text("not a directory")
    r = serve("--workflow", str(REPO / "examples" / "invert_blur.json"), "--comfyui-url",
              f"http://127.0.0.1:{free_port()}", "--spool", str(spool), "--listen", "127.0.0.1:0")
    assert r.returncode == 2, r.stderr
    assert str(spool) in r.stderr and "--spool" in r.stderr


def test_run_timeout_against_nothing_reports_the_connection_error(tmp_path):
    r = run_cli(f"http://127.0.0.1:{free_port()}", "--input", "x=1", "--timeout", "1", "--json",
                "--out", str(tmp_path))
    assert r.returncode == 4, r.stderr
    assert json.loads(r.stdout)["status"] == "unavailable"
