"""End-to-end harness: find the binary and wheel, prepare ComfyUI's Python,
start ComfyUI and workers on free loopback ports, talk HTTP/SSE to them.

Everything a test starts is stopped by the test (fixtures in
``tests/conftest.py``); every ComfyUI runs from a private base directory so
nothing is written into the ComfyUI checkout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
CONTAINER = "application/vnd.comfy-remote.container"
# Generous: only so that a broken run cannot hang forever.
DEADLINE = float(os.environ.get("COMFY_REMOTE_TEST_DEADLINE", "600"))


def log(msg: str) -> None:
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_dir() -> Path:
    """Where cargo builds: $CARGO_TARGET_DIR, else the repository's target/."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def binary() -> Path:
    """The comfy-remote binary: $COMFY_REMOTE_BIN, else a cargo build."""
    env = os.environ.get("COMFY_REMOTE_BIN")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = target_dir() / profile / "comfy-remote"
        if p.exists():
            newest_src = max(f.stat().st_mtime for f in (REPO / "crates").rglob("*.rs"))
            if p.stat().st_mtime >= newest_src:
                return p
    log("building comfy-remote (cargo build -p comfy-remote-cli)")
    subprocess.run(["cargo", "build", "-p", "comfy-remote-cli"], cwd=REPO, check=True, stdout=sys.stderr)
    return target_dir() / "debug" / "comfy-remote"


def wheel() -> Path:
    """The comfy-remote wheel: $COMFY_REMOTE_WHEEL, else the newest in target/wheels."""
    env = os.environ.get("COMFY_REMOTE_WHEEL")
    if env:
        return Path(env)
    wheels = sorted((target_dir() / "wheels").glob("comfy_remote-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError("no wheel in target/wheels: run `maturin build --out target/wheels` (scripts/test.sh does)")
    return wheels[-1]


def comfyui_python(comfyui: Path, wheel_path: Path | None = None) -> Path:
    """ComfyUI's Python (cached env from scripts/comfyui_env.py), with our wheel installed."""
    cmd = [sys.executable, str(REPO / "scripts" / "comfyui_env.py"), "--comfyui", str(comfyui)]
    if wheel_path is not None:
        cmd += ["--install-wheel", str(wheel_path)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# Test-only nodes (CRTestSlow, CRTestFail) every test ComfyUI gets beside ours.
TEST_NODES = REPO / "tests" / "nodes" / "comfy_remote_test_nodes"


def comfy_home(root: Path) -> list[str]:
    """A private ComfyUI base directory with our node pack and the test nodes; returns main.py args."""
    for d in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in (("comfy-remote", REPO), (TEST_NODES.name, TEST_NODES)):
        link = root / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return [
        "--cpu",
        "--base-directory", str(root),
        "--database-url", f"sqlite:///{root / 'comfyui.db'}",
        "--disable-auto-launch",
    ]


# ---------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def sse(url: str, headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield SSE events as {id, event, data} until the server closes."""
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream", **(headers or {})})
    with urllib.request.urlopen(req, timeout=DEADLINE) as r:
        ev: dict[str, Any] = {}
        data: list[str] = []
        for raw in r:
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if not line:
                if data or ev:
                    ev["data"] = json.loads("\n".join(data)) if data else None
                    yield ev
                ev, data = {}, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            elif key in ("id", "event"):
                ev[key] = value


def wait_until(pred, what: str, deadline: float = DEADLINE, interval: float = 0.1):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- processes


@dataclass
class ComfyUI:
    """A ComfyUI started directly (the baseline the worker is compared to)."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    def prompt(self, prompt: dict, client_id: str = "harness") -> dict:
        """Queue `prompt`, wait for it, return its history entry."""
        r = request("POST", f"{self.url}/prompt", json.dumps({"prompt": prompt, "client_id": client_id}).encode(),
                    {"Content-Type": "application/json"})
        assert r.status == 200, r.body
        pid = r.json()["prompt_id"]

        def done():
            h = request("GET", f"{self.url}/history/{pid}").json()
            return h.get(pid)

        return wait_until(done, f"prompt {pid}", interval=0.05)

    def stop(self) -> None:
        stop_process(self.proc)


def start_comfyui(python: Path, comfyui: Path, home: Path, env: dict[str, str] | None = None) -> ComfyUI:
    """Start ComfyUI from `home` (see comfy_home); `env` is added to this process's environment."""
    port = free_port()
    args = comfy_home(home)
    log_path = home / "comfyui.log"
    f = open(log_path, "ab")
    proc = subprocess.Popen([str(python), "main.py", "--listen", "127.0.0.1", "--port", str(port), *args],
                            cwd=comfyui, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env} if env else None)
    url = f"http://127.0.0.1:{port}"
    wait_answers(proc, f"{url}/prompt", log_path, "ComfyUI")
    return ComfyUI(proc, url, log_path)


def wait_answers(proc: subprocess.Popen, url: str, log_path: Path, what: str) -> None:
    """Wait until `url` answers 200; fail with the log's tail if `proc` exits first."""

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}); log:\n{log_path.read_text()[-4000:]}")
        try:
            return request("GET", url, timeout=2).status == 200
        except OSError:
            return False

    wait_until(up, f"{what} to answer {url}", interval=0.2)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Worker:
    """A `comfy-remote serve` process."""

    proc: subprocess.Popen
    url: str
    log_path: Path
    token: str | None = None
    argv: list[str] = field(default_factory=list)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**h, **(extra or {})}

    def get(self, path: str) -> Response:
        return request("GET", self.url + path, headers=self.headers())

    def submit(self, body: bytes, content_type: str = CONTAINER, headers: dict[str, str] | None = None,
               query: str = "") -> Response:
        return request("POST", f"{self.url}/v1/jobs{query}", body, self.headers({"Content-Type": content_type, **(headers or {})}))

    def job(self, job_id: str) -> dict:
        r = self.get(f"/v1/jobs/{job_id}")
        assert r.status == 200, r.body
        return r.json()

    def cancel(self, job_id: str) -> Response:
        return request("POST", f"{self.url}/v1/jobs/{job_id}/cancel", b"", self.headers())

    def wait(self, job_id: str, statuses=("succeeded", "failed", "canceled", "expired")) -> dict:
        return wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j, f"job {job_id} to reach {statuses}")

    def result(self, job_id: str) -> bytes:
        r = self.get(f"/v1/jobs/{job_id}/result")
        assert r.status == 200, r.body
        return r.body

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[dict]:
        h = self.headers({"Last-Event-ID": last_event_id} if last_event_id else None)
        return sse(f"{self.url}/v1/jobs/{job_id}/events", h)

    def comfyui_pid(self) -> int:
        text = self.get("/metrics").body.decode()
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith("comfy_remote_comfyui_pid ")))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)

    def kill(self) -> None:
        """SIGKILL the worker only (not its group): ComfyUI must die by itself."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_worker(workflow: dict | Path, *, comfyui: Path, python: Path, home: Path, spool: Path,
                 extra: list[str] | None = None, token: str | None = None, env: dict[str, str] | None = None,
                 wait_ready: bool = True, port: int | None = None, cwd: Path | None = None) -> Worker:
    """Start `comfy-remote serve`; `spool` may be relative (to `cwd`), as a user types it."""
    home.mkdir(parents=True, exist_ok=True)
    if isinstance(workflow, dict):
        wf_path = home / "workflow.json"
        wf_path.write_text(json.dumps(workflow, indent=1))
    else:
        wf_path = workflow
    port = port or free_port()
    argv = [str(binary()), "serve", "--workflow", str(wf_path), "--comfyui", str(comfyui), "--python", str(python),
            "--listen", f"127.0.0.1:{port}", "--spool", str(spool)]
    argv += [f"--comfyui-arg={a}" for a in comfy_home(home / "comfy")]
    argv += extra or []
    full_env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})}
    full_env.pop("COMFY_REMOTE_TOKEN", None)
    if token:
        full_env["COMFY_REMOTE_TOKEN"] = token
    log_path = home / "worker.log"
    f = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=cwd)
    w = Worker(proc, f"http://127.0.0.1:{port}", log_path, token, argv)
    if wait_ready:
        wait_answers(proc, f"{w.url}/readyz", log_path, "the worker")
    return w


class WebServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread (the Modal web front, run here)."""

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"web-{self.port}", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "the web front to start", deadline=30)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class ModalRuntime:
    """The code a deployed Modal app runs, run here: the GPU runtime (`comfy-remote serve` + ComfyUI) behind
    the web front(s), with only Modal's spawn/FunctionCall/Dict replaced by the in-process stand-in.
    ComfyUI runs from `home/comfy` (custom_nodes/, models/; put packs there first) with `comfy_args`."""

    gpu: Any
    backend: Any
    fronts: list[WebServer]

    @property
    def url(self) -> str:
        return self.fronts[0].url

    def stop(self) -> None:
        for f in self.fronts:
            f.stop()
        self.backend.close()
        self.gpu.stop()


def start_modal_runtime(workflow: Path, *, comfyui: Path, python: Path, home: Path, fronts: int = 1,
                        result_ttl_s: float | None = None, comfy_args: tuple[str, ...] = (),
                        **front_options: Any) -> ModalRuntime:
    """GpuRuntime.start (as the GPU class's enter does), a LocalBackend whose calls run its jobs, and
    `fronts` web fronts sharing that backend (as web containers share Modal's state)."""
    from comfy_remote.modal_runtime.gpu import GpuRuntime
    from comfy_remote.modal_runtime.local import LocalBackend, LocalStore
    from comfy_remote.modal_runtime.web import create_app

    home.mkdir(parents=True, exist_ok=True)
    extra = [f"--comfyui-arg={a}" for a in [*comfy_home(home / "comfy"), *comfy_args]]
    gpu = GpuRuntime.start(comfyui_dir=str(comfyui), workflow=str(workflow), command=[str(binary())],
                           python=str(python), extra_args=extra, home=str(home / "gpu"), startup_timeout_s=DEADLINE)
    store = LocalStore()
    backend = LocalBackend(lambda job_id, body, ct: gpu.run_job(job_id, body, ct, store), store,
                           result_ttl_s=result_ttl_s)
    rt = ModalRuntime(gpu, backend, [])
    try:
        for _ in range(fronts):
            rt.fronts.append(WebServer(create_app(backend, workflow_path=str(workflow), **front_options)))
    except BaseException:
        rt.stop()
        raise
    return rt
