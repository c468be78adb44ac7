#!/usr/bin/env python3
"""Benchmarks of the worker gateway (`comfy-remote serve`), each against a
baseline measured in the same run. Prints a Markdown section for
docs/benchmarks.md ("Worker gateway").

1. Added latency of a tiny job: the worker (submit, SSE until done, download
   the result) vs the same prompt POSTed to the same ComfyUI directly (poll
   /history every 1 ms, read the output file).
2. Progress latency: ComfyUI's own timestamps of execution_start /
   execution_success (from /history) -> arrival of the matching SSE progress
   event at the client.
3. Status-poll throughput and latency under concurrent keep-alive clients
   (crates/worker/examples/load.rs, bounded in time).
4. Peak RSS (VmHWM) of the worker process for a 1 GiB payload.

Needs COMFYUI_DIR, a release build (`cargo build --release -p comfy-remote-cli
--example load -p comfy-remote-worker`) and the wheel in target/wheels.
Usage: scripts/bench_worker.py [--iterations N] [--skip-1gb]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import (  # noqa: E402
    CONTAINER, binary, comfyui_python, free_port, request, sse, start_comfyui, stop_process, target_dir, wait_until,
    wheel,
)

TINY = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
}
PASS = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["1", 0]}},
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def start_worker(bin_: Path, workflow: dict, comfy_url: str, work: Path, name: str):
    wf = work / f"{name}.json"
    wf.write_text(json.dumps(workflow))
    port = free_port()
    logf = open(work / f"{name}.log", "ab")
    proc = subprocess.Popen([str(bin_), "serve", "--workflow", str(wf), "--comfyui-url", comfy_url,
                             "--listen", f"127.0.0.1:{port}", "--spool", str(work / f"{name}-spool"),
                             "--max-body-bytes", str(3 << 30)],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return request("GET", f"{url}/readyz", timeout=2).status == 200
        except OSError:
            return False

    wait_until(ready, "worker ready", interval=0.1)
    return proc, url


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def bench_latency(codec, torch, comfy, worker_url: str, work: Path, n: int) -> dict:
    img = torch.rand(1, 64, 64, 3)
    body = codec.encode([("image", "IMAGE", img)])
    direct, via, start_lat, end_lat = [], [], [], []
    for i in range(n + 2):
        # Direct: the same prompt to the same ComfyUI.
        job = work / f"direct-{uuid.uuid4().hex}"
        job.mkdir()
        (job / "inputs.crc").write_bytes(body)
        prompt = json.loads(json.dumps(TINY))
        prompt["1"]["inputs"]["remote_job"] = str(job / "inputs.crc")
        prompt["3"]["inputs"]["remote_job"] = str(job)
        t0 = time.perf_counter()
        r = request("POST", f"{comfy.url}/prompt", json.dumps({"prompt": prompt, "client_id": "bench"}).encode(),
                    {"Content-Type": "application/json"})
        pid = r.json()["prompt_id"]
        while True:
            h = request("GET", f"{comfy.url}/history/{pid}").json()
            if pid in h:
                break
            time.sleep(0.001)
        (job / "outputs" / "image.crc").read_bytes()
        t_direct = time.perf_counter() - t0

        # Through the worker.
        t0 = time.perf_counter()
        r = request("POST", f"{worker_url}/v1/jobs", body, {"Content-Type": CONTAINER})
        jid = r.json()["id"]
        got_start = got_end = None
        for ev in sse(f"{worker_url}/v1/jobs/{jid}/events"):
            now = time.time()
            d = ev["data"] or {}
            if ev.get("event") == "progress":
                if d.get("phase") in ("starting", "running") and got_start is None:
                    got_start = now
                if d.get("phase") == "collecting" and got_end is None:
                    got_end = now
            if ev.get("event") == "done":
                break
        request("GET", f"{worker_url}/v1/jobs/{jid}/result")
        t_worker = time.perf_counter() - t0
        if i < 2:
            continue  # warm-up
        direct.append(t_direct * 1000)
        via.append(t_worker * 1000)
        # ComfyUI's own timestamps of the same prompt.
        hist = request("GET", f"{comfy.url}/history?max_items=4").json()
        for entry in hist.values():
            if jid in json.dumps(entry["prompt"][2]):
                stamps = {m[0]: m[1].get("timestamp") for m in entry["status"]["messages"]}
                if got_start and stamps.get("execution_start"):
                    start_lat.append(got_start * 1000 - stamps["execution_start"])
                if got_end and stamps.get("execution_success"):
                    end_lat.append(got_end * 1000 - stamps["execution_success"])
    return {"direct": direct, "worker": via, "start": start_lat, "end": end_lat}


def bench_polls(worker_url: str, job_id: str) -> list[dict]:
    load = target_dir() / "release" / "examples" / "load"
    out = []
    for c in (1, 8, 32):
        r = subprocess.run([str(load), f"{worker_url}/v1/jobs/{job_id}", str(c), "3"], check=True,
                           capture_output=True, text=True)
        d = json.loads(r.stdout)
        d["concurrency"] = c
        out.append(d)
    return out


def vm(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def bench_1gb(codec, torch, bin_: Path, comfy_url: str, work: Path) -> dict:
    proc, url = start_worker(bin_, PASS, comfy_url, work, "big")
    try:
        side = 9459  # 1 x 9459 x 9459 x 3 f32 = 1.00 GiB
        img = torch.rand(1, side, side, 3)
        path = work / "big.crc"
        path.write_bytes(codec.encode([("image", "IMAGE", img)]))
        del img
        size = path.stat().st_size
        before = vm(proc.pid, "VmHWM")
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            conn.request("POST", "/v1/jobs", body=f, headers={"Content-Type": CONTAINER, "Content-Length": str(size)})
            resp = conn.getresponse()
            job = json.loads(resp.read())
        upload = time.perf_counter() - t0
        jid = job["id"]
        wait_until(lambda: request("GET", f"{url}/v1/jobs/{jid}").json()["status"] in ("succeeded", "failed"),
                   "1 GiB job", interval=0.5)
        status = request("GET", f"{url}/v1/jobs/{jid}").json()["status"]
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
        conn.request("GET", f"/v1/jobs/{jid}/result")
        resp = conn.getresponse()
        got = 0
        while chunk := resp.read(1 << 20):
            got += len(chunk)
        total = time.perf_counter() - t0
        peak = vm(proc.pid, "VmHWM")
        path.unlink()
        return {"bytes": size, "status": status, "result_bytes": got, "rss_before": before, "rss_peak": peak,
                "upload_s": upload, "total_s": total}
    finally:
        stop_process(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--skip-1gb", action="store_true")
    args = ap.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_DIR") or sys.exit("set COMFYUI_DIR"))
    bin_ = binary()
    import torch

    from comfy_remote import codec

    py = comfyui_python(comfyui, wheel())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        comfy = start_comfyui(py, comfyui, work / "comfy")
        proc, url = start_worker(bin_, TINY, comfy.url, work, "tiny")
        try:
            log("latency (worker vs direct)")
            lat = bench_latency(codec, torch, comfy, url, work, args.iterations)
            jid = request("POST", f"{url}/v1/jobs", codec.encode([("image", "IMAGE", torch.rand(1, 8, 8, 3))]),
                          {"Content-Type": CONTAINER}).json()["id"]
            wait_until(lambda: request("GET", f"{url}/v1/jobs/{jid}").json()["status"] == "succeeded", "poll job")
            log("status polls")
            polls = bench_polls(url, jid)
            big = None
            if not args.skip_1gb:
                log("1 GiB payload")
                big = bench_1gb(codec, torch, bin_, comfy.url, work)
        finally:
            stop_process(proc)
            comfy.stop()

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    ms = lambda xs: f"{statistics.median(xs):.1f} / {pct(xs, 0.9):.1f}"  # noqa: E731
    added = [w - d for w, d in zip(lat["worker"], lat["direct"])]
    print("## Worker gateway\n")
    print(f"Produced by `scripts/bench_worker.py` on {os.cpu_count()} CPU cores ({cpu}), ComfyUI on CPU, "
          f"{len(lat['direct'])} iterations after 2 warm-ups; baselines measured in the same run.\n")
    print("| Measure | median / p90 (ms) |\n|---|---|")
    print(f"| Tiny job (64x64 IMAGE, invert) sent to ComfyUI directly: POST /prompt, poll /history every 1 ms | {ms(lat['direct'])} |")
    print(f"| Same job through the worker: submit, SSE until `done`, download the result | {ms(lat['worker'])} |")
    print(f"| Added by the worker (paired difference) | {ms(added)} |")
    if lat["start"]:
        print(f"| Progress latency: ComfyUI `execution_start` -> first SSE `progress` (starting) at the client | {ms(lat['start'])} |")
    if lat["end"]:
        print(f"| Progress latency: ComfyUI `execution_success` -> SSE `progress` (collecting) at the client | {ms(lat['end'])} |")
    print("\nComfyUI timestamps have 1 ms resolution.\n")
    print("Status polls (`GET /v1/jobs/{id}`, keep-alive clients, 3 s each, `crates/worker/examples/load.rs`):\n")
    print("| Concurrent clients | requests/s | p50 (ms) | p99 (ms) | errors |\n|---|---|---|---|---|")
    for p in polls:
        print(f"| {p['concurrency']} | {p['rps']} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |")
    if big:
        gib = 1 << 30
        print(f"\n1 GiB payload (IMAGE 1x9459x9459x3 f32, {big['bytes'] / gib:.2f} GiB container; workflow passes it "
              f"through): job {big['status']}, result {big['result_bytes'] / gib:.2f} GiB downloaded; "
              f"worker peak RSS (VmHWM) {big['rss_peak'] / 2**20:.0f} MiB "
              f"({big['rss_peak'] / big['bytes']:.2f}x the payload; {big['rss_before'] / 2**20:.0f} MiB before the upload). "
              f"Upload {big['upload_s']:.1f} s, submit to downloaded result {big['total_s']:.1f} s. "
              "The body is streamed to disk; validation maps the file; a single output is renamed into place.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
