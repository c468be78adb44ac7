#!/usr/bin/env python3
"""Progress latency through the Modal path, against the worker's own, measured in the same run.

"ComfyUI event -> client SSE event": the test node ``CRTestSlow``
(tests/nodes) appends the wall-clock time of each step to a trace file just
before it reports that step through ComfyUI's progress hook; the client
notes when the SSE ``progress`` event of that step arrives. Two paths, each
in front of its own ComfyUI on CPU, jobs interleaved so both see the same
load:

- worker (the baseline): ``comfy-remote serve``, events read from it directly;
- Modal path: the Modal web front, run here with the local stand-in for
  Modal's spawn/Dict (``modal_runtime.local``), in front of the GPU runtime
  (``modal_runtime.gpu``: the native client following that container's own
  worker and mirroring each change into the store).

The Modal runtime is imported from ``comfy_remote.modal_runtime`` as found
on ``sys.path``: point PYTHONPATH at another checkout's ``python/`` (with
the native module copied beside it) to measure that version.

Needs COMFYUI_DIR, the release binary (COMFY_REMOTE_BIN or target/release)
and the wheel. Prints a Markdown section for docs/benchmarks.md.
Usage: scripts/bench_modal_path.py [--jobs N] [--steps N] [--seconds-per-step S] [--label TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import (  # noqa: E402
    CONTAINER, WebServer, binary, comfy_home, comfyui_python, request, sse, start_worker, wheel,
)

TRACE = "CR_TEST_NODES_TRACE"
WORKFLOW = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "RemoteInput", "inputs": {"name": "steps", "type": "INT"}},
    "3": {"class_type": "RemoteInput", "inputs": {"name": "seconds_per_step", "type": "FLOAT"}},
    "4": {"class_type": "CRTestSlow", "inputs": {"image": ["1", 0], "steps": ["2", 0], "seconds_per_step": ["3", 0]}},
    "5": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["4", 0]}},
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one_job(url: str, headers: dict[str, str], body: bytes, trace: Path) -> tuple[list[float], int]:
    """Run one job; the latency (ms) of each step's progress event, and the number of steps the client saw."""
    trace.write_text("")
    r = request("POST", f"{url}/v1/jobs", body, {**headers, "Content-Type": CONTAINER})
    assert r.status == 202, r.body
    arrived: dict[int, float] = {}
    for ev in sse(f"{url}/v1/jobs/{r.json()['id']}/events", headers):
        t = time.time()
        d = ev.get("data") or {}
        if ev.get("event") == "progress" and (d.get("node") or {}).get("id") == "4" and d.get("step"):
            arrived.setdefault(int(d["step"]["value"]), t)
        if ev.get("event") == "done":
            assert d.get("status") == "succeeded", d
            break
    sent = {int(x["step"]): float(x["t"]) for x in map(json.loads, trace.read_text().splitlines())}
    return [(arrived[k] - sent[k]) * 1000 for k in sorted(arrived) if k in sent], len(arrived)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seconds-per-step", type=float, default=0.1)
    ap.add_argument("--label", default="", help="names the Modal runtime measured (e.g. before / after)")
    args = ap.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_DIR", ""))
    if not comfyui.is_dir():
        log("set COMFYUI_DIR to a ComfyUI checkout")
        return 2
    from comfy_remote import codec
    from comfy_remote.modal_runtime import gpu as gpu_mod
    from comfy_remote.modal_runtime.local import LocalBackend, LocalStore
    from comfy_remote.modal_runtime.web import create_app

    import torch

    log(f"Modal runtime from {Path(gpu_mod.__file__).parent}")
    python = comfyui_python(comfyui, wheel())
    work = Path(tempfile.mkdtemp(prefix="bench-modal-"))
    wf = work / "workflow.json"
    wf.write_text(json.dumps(WORKFLOW))
    trace_w, trace_m = work / "trace-worker.jsonl", work / "trace-modal.jsonl"
    token = "bench-token"
    auth = {"Authorization": f"Bearer {token}"}

    log("starting the worker (baseline)")
    worker = start_worker(wf, comfyui=comfyui, python=python, home=work / "worker", spool=work / "worker" / "spool",
                          env={TRACE: str(trace_w), "RUST_LOG": "warn"})
    log("starting the Modal runtime (GPU runtime + web front)")
    saved = os.environ.get(TRACE)
    os.environ[TRACE] = str(trace_m)
    try:
        rt = gpu_mod.GpuRuntime.start(
            comfyui_dir=str(comfyui), workflow=str(wf), command=[str(binary())], python=str(python),
            extra_args=[f"--comfyui-arg={a}" for a in comfy_home(work / "modal" / "comfy")],
            home=str(work / "modal" / "gpu"), startup_timeout_s=600)
    finally:
        if saved is None:
            os.environ.pop(TRACE, None)
        else:
            os.environ[TRACE] = saved
    store = LocalStore()
    backend = LocalBackend(lambda job_id, body, ct: rt.run_job(job_id, body, ct, store), store)
    front = WebServer(create_app(backend, workflow_path=str(wf), token=token))
    try:
        img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
        body = codec.encode([("image", "IMAGE", img), ("steps", "INT", args.steps),
                             ("seconds_per_step", "FLOAT", args.seconds_per_step)])
        lat: dict[str, list[float]] = {"worker": [], "modal": []}
        seen: dict[str, list[int]] = {"worker": [], "modal": []}
        for i in range(args.jobs + 1):
            for name, url, headers, trace in (("worker", worker.url, {}, trace_w), ("modal", front.url, auth, trace_m)):
                ms, n = one_job(url, headers, body, trace)
                if i == 0:
                    continue  # warm-up
                lat[name] += ms
                seen[name].append(n)
            log(f"job {i}/{args.jobs}")
    finally:
        front.stop()
        backend.close()
        rt.stop()
        worker.stop()

    label = f" ({args.label})" if args.label else ""
    print(f"Produced by `scripts/bench_modal_path.py` on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"ComfyUI on CPU; {args.jobs} jobs per path after a warm-up, each `CRTestSlow` with {args.steps} steps "
          f"{args.seconds_per_step * 1000:.0f} ms apart; worker and Modal path interleaved in the same run.\n")
    print("| Path | ComfyUI step -> client SSE `progress`: median / p90 / max (ms) | steps the client saw |")
    print("|---|---|---|")
    for name, title in (("worker", "Worker (`comfy-remote serve`), baseline"),
                        ("modal", f"Modal path: web front -> store -> GPU runtime -> worker{label}")):
        xs = lat[name]
        print(f"| {title} | {statistics.median(xs):.1f} / {pct(xs, 90):.1f} / {max(xs):.1f} | "
              f"{sum(seen[name])} of {args.steps * args.jobs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
