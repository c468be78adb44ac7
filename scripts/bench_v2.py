#!/usr/bin/env python3
"""Comfy API v2 head to head: `comfy-remote serve --allow-any-workflow` and comfy-api-proxy
(the reference implementation, PyPI, pinned in requirements-test.txt), both in front of the
same ComfyUI, in the same run, on the same graph (LoadImage -> CRTestSlow -> SaveImage, the
image an uploaded asset). Prints a Markdown section for docs/benchmarks.md.

1. Added latency per job: submit, SSE until the terminal status, GET the job, download its
   output; minus the same prompt POSTed to ComfyUI directly (poll /history every 1 ms,
   GET /view), paired per iteration.
2. ComfyUI event -> SSE event: CRTestSlow notes each step's wall-clock time just before it
   reports it (CR_TEST_NODES_TRACE); the client notes when that step's `progress` arrives.
   Each server runs jobs until it delivered at least EVENT_SAMPLES steps (comfy-api-proxy
   throttles `progress`, so it runs more jobs), so both p99s come from samples of one size.
   The floor: the same steps read from ComfyUI's own websocket. The jobs go in rounds, one per
   server and one to ComfyUI directly, the order alternating: arrivals come in steps of about
   4 ms, on ComfyUI's own websocket too (its executing thread and its event loop share Python's
   lock), so a median can jump by one step, and a slow spell of the host would fall on one.
3. Status polls: GET /api/v2/jobs/{id} of a finished job from 1 and 32 keep-alive clients
   (crates/worker/examples/load.rs), 3 s each.
4. A 100 MB asset upload (multipart, streamed from a file): time, and the server's peak
   RSS above its RSS before (sampled every 2 ms).
5. 200 concurrent submits, BURSTS times per server in turn (the order alternating from round to
   round): answers, submit latency, time until every accepted job ended as its event stream
   told it (every accepted job's stream opened once every submit was answered, as a client
   waiting on its jobs does; a stream refused or closed early: the job polled every 0.2 s),
   and until each succeeded job's output was downloaded as well (8 at once); times are the
   bursts' medians. Status polls every 0.2 s cannot tell the servers apart here: the last job's
   end reaches a poller up to a round of polls late (0.2-0.4 s of a ~1 s burst), while either
   server records it within a few milliseconds of ComfyUI. ComfyUI's output directory is
   emptied after each burst: SaveImage lists it to number its file, so without that each burst would run slower than the one before it; its
   history is cleared then too, so each burst meets a ComfyUI in the same state (neither server
   reads a finished burst's history again). Before
   each burst ComfyUI is asked to free memory (POST /free), which runs its garbage collection
   then: it collects at most every 10 s, for about half a second with nothing else running, and
   bursts of ~2.5 s in a fixed order would otherwise meet it on one server's turn more often.
   During the bursts ComfyUI runs on a core of its own, the servers and this client on the rest
   (pin_apart): on two shared cores, the server that answered polls soonest was polled most
   (900 polls a burst against 300) and so took the most CPU from ComfyUI.

Needs COMFYUI_DIR, a release build (`cargo build --release -p comfy-remote-cli
-p comfy-remote-worker --example load`), the wheel in target/wheels and comfy-api-proxy
installed in this Python. Usage: scripts/bench_v2.py [--iterations N] [--out FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "conformance"))

from harness import (  # noqa: E402
    binary, comfy_home, comfyui_python, free_port, request, sse, stop_process, target_dir, wait_answers, wait_until,
    wheel,
)

TRACE = "CR_TEST_NODES_TRACE"
# 200-submit bursts per server, taken in turn (ours, theirs; theirs, ours; ...).
BURSTS = 9
# Per server: job event streams that closed before their job ended (the job was then polled).
SSE_CLOSED_EARLY: dict[str, int] = {}
# Per (server, HTTP status): job event streams a server refused (the job was then polled).
SSE_REFUSED: dict[tuple[str, int], int] = {}
# Steps of latency each server's (and the floor's) event row is computed from, at least.
EVENT_SAMPLES = 120
EVENT_MAX_JOBS = 80
TERMINAL = ("succeeded", "failed", "canceled", "expired")
# Our worker serves this workflow; the benchmark's jobs run their own graph (--allow-any-workflow).
SERVED = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["1", 0]}},
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def graph(image: object, steps: int, seconds: float, tag: str) -> dict:
    """The head-to-head graph; `tag` makes each prompt distinct (ComfyUI caches identical ones)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CRTestSlow", "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"bench-{tag}"}},
    }


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} / {pct(xs, 0.9):.1f}" if xs else "n/a"


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, url: str) -> None:
        self.name, self.proc, self.url = name, proc, url

    def post_json(self, path: str, body: dict) -> tuple[int, dict]:
        r = request("POST", self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return r.status, (r.json() if r.body else {})

    def job(self, job_id: str) -> dict:
        return request("GET", f"{self.url}/api/v2/jobs/{job_id}").json()


def start_comfyui(py: Path, comfyui: Path, home: Path, trace: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = comfy_home(home)
    logf = open(home / "comfyui.log", "ab")
    proc = subprocess.Popen([str(py), "main.py", "--listen", "127.0.0.1", "--port", str(port), *args],
                            cwd=comfyui, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, TRACE: str(trace)})
    url = f"http://127.0.0.1:{port}"
    wait_answers(proc, f"{url}/prompt", home / "comfyui.log", "ComfyUI")
    return proc, url


def start_ours(bin_: Path, comfy_url: str, work: Path) -> Server:
    wf = work / "served.json"
    wf.write_text(json.dumps(SERVED))
    port = free_port()
    logf = open(work / "ours.log", "ab")
    # ComfyUI runs on this machine: ours reads its outputs from its output directory, as it does
    # for a ComfyUI it starts itself (comfy-api-proxy has no such option).
    proc = subprocess.Popen([str(bin_), "serve", "--workflow", str(wf), "--comfyui-url", comfy_url,
                             "--comfyui-output-dir", str(work / "comfy" / "output"),
                             "--listen", f"127.0.0.1:{port}", "--spool", str(work / "ours-spool"),
                             "--allow-any-workflow", "--max-jobs", "256"],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"
    wait_answers(proc, f"{url}/readyz", work / "ours.log", "comfy-remote serve")
    return Server("comfy-remote", proc, url)


def start_proxy(comfy_url: str, work: Path) -> Server:
    exe = shutil.which("comfy-api-proxy") or str(Path(sys.executable).parent / "comfy-api-proxy")
    port = free_port()
    logf = open(work / "proxy.log", "ab")
    proc = subprocess.Popen([exe, "run", "--comfyui", comfy_url, "--port", str(port),
                             "--state-dir", str(work / "proxy-state")],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_answers(proc, f"{url}/api/v2/health", work / "proxy.log", "comfy-api-proxy")
    return Server("comfy-api-proxy", proc, url)


def multipart(fields: dict[str, str], filename: str, size: int) -> tuple[bytes, bytes, str]:
    boundary = "bench-" + uuid.uuid4().hex
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(s: Server, path: Path, content_type: str) -> tuple[dict, float]:
    """Stream `path` as an asset; returns (asset, seconds)."""
    size = path.stat().st_size
    head, tail, ctype = multipart({"content_type": content_type, "file_path": path.name}, path.name, size)
    u = urlsplit(s.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    t0 = time.perf_counter()
    conn.putrequest("POST", "/api/v2/assets")
    conn.putheader("Content-Type", ctype)
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    conn.send(head)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            conn.send(chunk)
    conn.send(tail)
    resp = conn.getresponse()
    body = resp.read()
    took = time.perf_counter() - t0
    conn.close()
    assert resp.status in (200, 201), (s.name, resp.status, body[:300])
    return json.loads(body), took


def ref(asset: dict) -> dict:
    return {"__type": "core/ASSET", "info": {"id": asset["id"], "hash": asset.get("hash")}}


def run_job(s: Server, g: dict) -> tuple[float, dict]:
    """Submit, SSE to the terminal status, GET the job, download its first output."""
    t0 = time.perf_counter()
    st, j = s.post_json("/api/v2/jobs", {"workflow": g})
    assert st == 201, (s.name, st, j)
    ended = False
    for ev in sse(f"{s.url}/api/v2/jobs/{j['id']}/events"):
        if ev.get("event") == "status" and (ev["data"] or {}).get("status") in TERMINAL:
            ended = True
            break
    done = s.job(j["id"])
    if not ended:
        # The stream closed before the job ended: a client falls back to polling (counted, logged).
        SSE_CLOSED_EARLY[s.name] = SSE_CLOSED_EARLY.get(s.name, 0) + 1
        give_up = time.monotonic() + 120
        while done["status"] not in TERMINAL and time.monotonic() < give_up:
            time.sleep(0.01)
            done = s.job(j["id"])
    assert done["status"] == "succeeded" and done["outputs"], (s.name, done)
    out = done["outputs"][0]
    content = request("GET", out["url"])
    assert content.status == 200 and content.body[:4] == b"\x89PNG", (s.name, content.status)
    return time.perf_counter() - t0, done


def run_direct(comfy_url: str, g: dict) -> float:
    t0 = time.perf_counter()
    r = request("POST", f"{comfy_url}/prompt", json.dumps({"prompt": g, "client_id": "bench"}).encode(),
                {"Content-Type": "application/json"})
    pid = r.json()["prompt_id"]
    while True:
        h = request("GET", f"{comfy_url}/history/{pid}").json()
        if pid in h:
            break
        time.sleep(0.001)
    img = h[pid]["outputs"]["3"]["images"][0]
    q = f"filename={img['filename']}&subfolder={img['subfolder']}&type={img['type']}"
    assert request("GET", f"{comfy_url}/view?{q}").status == 200
    return time.perf_counter() - t0


def bench_latency(servers: list[Server], refs: dict[str, object], comfy_url: str, direct_name: str, n: int) -> dict:
    res: dict[str, list[float]] = {"direct": [], **{s.name: [] for s in servers}}
    for i in range(n + 2):
        tag = uuid.uuid4().hex[:8]
        d = run_direct(comfy_url, graph(direct_name, 1, 0.0, "d" + tag))
        times = {s.name: run_job(s, graph(refs[s.name], 1, 0.0, s.name[:5] + tag))[0] for s in servers}
        if i >= 2:
            res["direct"].append(d * 1000)
            for k, v in times.items():
                res[k].append(v * 1000)
    return res


def step_latencies(trace: Path, arrived: dict[int, float]) -> list[float]:
    """Arrival minus the step's own time, for each step that arrived."""
    stamps = {}
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        stamps[rec["step"]] = rec["t"]
    return [(t - stamps[k]) * 1000 for k, t in arrived.items() if k in stamps]


def events_job(s: Server, asset_ref: object, trace: Path, steps: int, jobs: int) -> list[float]:
    """One job's step -> SSE `progress` latencies (of the steps that arrived)."""
    trace.write_text("")
    # A step time of its own per job: ComfyUI would serve an identical CRTestSlow from its cache.
    seconds = 0.05 + jobs * 1e-6 * (2 if s.name == "comfy-remote" else 1)
    st, j = s.post_json("/api/v2/jobs", {"workflow": graph(asset_ref, steps, seconds, uuid.uuid4().hex[:8])})
    assert st == 201, j
    arrived: dict[int, float] = {}
    for ev in sse(f"{s.url}/api/v2/jobs/{j['id']}/events"):
        now = time.time()
        d = ev["data"] or {}
        if ev.get("event") == "progress" and d.get("current_node") == "2" and d.get("step"):
            arrived.setdefault(int(d["step"]), now)
        if ev.get("event") == "status" and d.get("status") in TERMINAL:
            break
    return step_latencies(trace, arrived)


def events_job_direct(comfy_url: str, image_name: str, trace: Path, steps: int, jobs: int) -> list[float]:
    """The floor: one job's steps as `progress` messages on ComfyUI's own websocket."""
    import asyncio

    import aiohttp

    async def run() -> list[float]:
        async with aiohttp.ClientSession() as http:
            client = uuid.uuid4().hex
            async with http.ws_connect(f"{comfy_url.replace('http', 'ws', 1)}/ws?clientId={client}") as ws:
                trace.write_text("")
                g = graph(image_name, steps, 0.05 + jobs * 1e-6 * 3, uuid.uuid4().hex[:8])
                async with http.post(f"{comfy_url}/prompt", json={"prompt": g, "client_id": client}) as r:
                    pid = (await r.json())["prompt_id"]
                arrived: dict[int, float] = {}
                async for msg in ws:
                    now = time.time()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    d = m.get("data") or {}
                    if d.get("prompt_id") != pid:
                        continue
                    if m["type"] == "progress" and str(d.get("node")) == "2":
                        arrived.setdefault(int(d["value"]), now)
                    if m["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                        break
        return step_latencies(trace, arrived)

    return asyncio.run(run())


def bench_events(servers: list[Server], refs: dict[str, object], comfy_url: str, direct_name: str,
                 trace: Path, steps: int) -> dict[str, dict]:
    """Jobs in rounds (one per server and one straight to ComfyUI, the order alternating), each
    taking part until it has EVENT_SAMPLES steps: the host's slow and quick spells fall on all."""
    runs = {k: {"lat": [], "delivered": 0, "jobs": 0} for k in [s.name for s in servers] + ["direct"]}
    jobs: list[tuple[str, object]] = [(s.name, s) for s in servers] + [("direct", None)]
    rnd = 0
    while True:
        todo = [(k, s) for k, s in jobs if len(runs[k]["lat"]) < EVENT_SAMPLES and runs[k]["jobs"] < EVENT_MAX_JOBS]
        if not todo:
            break
        for k, s in todo if rnd % 2 == 0 else todo[::-1]:
            r = runs[k]
            r["jobs"] += 1
            lat = (events_job_direct(comfy_url, direct_name, trace, steps, r["jobs"]) if s is None
                   else events_job(s, refs[k], trace, steps, r["jobs"]))
            r["lat"] += lat
            r["delivered"] += len(lat)
        rnd += 1
    for r in runs.values():
        r["total"] = steps * r["jobs"]
    return runs


def bench_polls(s: Server, job_id: str) -> list[dict]:
    load = target_dir() / "release" / "examples" / "load"
    out = []
    for c in (1, 32):
        r = subprocess.run([str(load), f"{s.url}/api/v2/jobs/{job_id}", str(c), "3"], check=True,
                           capture_output=True, text=True)
        d = json.loads(r.stdout)
        d["concurrency"] = c
        out.append(d)
    return out


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_upload(s: Server, path: Path) -> dict:
    before = rss(s.proc.pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss(s.proc.pid))
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        asset, took = upload(s, path, "application/octet-stream")
    finally:
        stop.set()
        t.join()
    return {"seconds": took, "rss_before": before, "rss_added": peak[0] - before, "size": asset["size_bytes"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def executing(comfy_url: str, n: int = 200) -> str:
    """The last `n` prompts' time executing, and from the first's start to the last's end, from
    ComfyUI's history (for the log: where a burst's time went)."""
    runs = []
    for entry in request("GET", f"{comfy_url}/history?max_items={n}").json().values():
        st = {m[0]: m[1].get("timestamp") for m in entry.get("status", {}).get("messages", [])}
        if "execution_start" in st and "execution_success" in st:
            runs.append((st["execution_start"], st["execution_success"]))
    if not runs:
        return "n/a"
    busy = sum(e - s for s, e in runs) / 1000
    return f"{busy:.2f} of {(max(e for _, e in runs) - min(s for s, _ in runs)) / 1000:.2f}"


def pin_apart(comfy_pid: int, server_pids: list[int]) -> bool:
    """ComfyUI on the first core, the servers and this client on the others (every thread of
    each process; threads made later inherit it). A client polls from another machine in
    practice: sharing ComfyUI's cores, the server polled most (the one answering soonest)
    would be the one taking most CPU from ComfyUI."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return False

    def pin(pid: int, to: set[int]) -> None:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), to)
            except OSError:
                pass  # a thread that just ended

    pin(comfy_pid, {cpus[0]})
    for pid in server_pids:
        pin(pid, set(cpus[1:]))
    pin(os.getpid(), set(cpus[1:]))
    return True


class KeepAlive:
    """GETs over one kept-alive connection, as a polling client (comfy-sdk's httpx) makes them:
    a poll then costs the client little of the two cores it shares with the servers."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def get_json(self, path: str) -> dict:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return json.loads(r.read())
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def bench_burst(s: Server, asset_ref: object, n: int) -> dict:
    def one(i: int) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        try:
            st, j = s.post_json("/api/v2/jobs", {"workflow": graph(asset_ref, 1, 0.0, f"burst{i}-{uuid.uuid4().hex[:6]}")})
            return st, time.perf_counter() - t0, j.get("id")
        except OSError:
            return 0, time.perf_counter() - t0, None

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    accepted = [jid for st, _, jid in answers if st == 201 and jid]

    def watch(jid: str) -> tuple[str, float]:
        """The job's end, as its event stream tells it (a stream refused, or closed first: polled)."""
        try:
            for ev in sse(f"{s.url}/api/v2/jobs/{jid}/events"):
                st = (ev.get("data") or {}).get("status") if ev.get("event") == "status" else None
                if st in TERMINAL:
                    return st, time.perf_counter()
            SSE_CLOSED_EARLY[s.name] = SSE_CLOSED_EARLY.get(s.name, 0) + 1
        except urllib.error.HTTPError as e:
            SSE_REFUSED[s.name, e.code] = SSE_REFUSED.get((s.name, e.code), 0) + 1
        poller = KeepAlive(s.url)
        while (st := poller.get_json(f"/api/v2/jobs/{jid}")["status"]) not in TERMINAL:
            time.sleep(0.2)
        return st, time.perf_counter()

    # Every accepted job's event stream, opened once every submit was answered.
    with concurrent.futures.ThreadPoolExecutor(max(1, len(accepted))) as pool:
        seen = list(pool.map(watch, accepted))
    ended: dict[str, int] = {}
    for st, _ in seen:
        ended[st] = ended.get(st, 0) + 1
    total = max((t for _, t in seen), default=time.perf_counter()) - t0

    # What the client came for: every succeeded job's output, downloaded (8 at a time).
    def fetch(jid: str) -> bool:
        outs = s.job(jid).get("outputs") or []
        return bool(outs) and request("GET", outs[0]["url"]).status == 200

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        fetched = sum(pool.map(fetch, [j for j, (st, _) in zip(accepted, seen) if st == "succeeded"]))
    with_outputs = time.perf_counter() - t0
    codes: dict[int, int] = {}
    for st, _, _ in answers:
        codes[st] = codes.get(st, 0) + 1
    return {"codes": codes, "lat": [t * 1000 for _, t, _ in answers], "total_s": total,
            "with_outputs_s": with_outputs, "fetched": fetched,
            "succeeded": ended.get("succeeded", 0), "accepted": len(accepted), "ended": ended}


def merge_bursts(runs: list[dict]) -> dict:
    """Several bursts as one: answers and submit latencies pooled, times as medians."""
    codes: dict[int, int] = {}
    ended: dict[str, int] = {}
    for r in runs:
        for k, v in r["codes"].items():
            codes[k] = codes.get(k, 0) + v
        for k, v in r["ended"].items():
            ended[k] = ended.get(k, 0) + v
    med = statistics.median
    return {"codes": codes, "lat": [x for r in runs for x in r["lat"]],
            "total_s": med(r["total_s"] for r in runs), "with_outputs_s": med(r["with_outputs_s"] for r in runs),
            "totals": [r["total_s"] for r in runs], "fetched": sum(r["fetched"] for r in runs),
            "succeeded": sum(r["succeeded"] for r in runs), "accepted": sum(r["accepted"] for r in runs),
            "bursts": len(runs), "ended": ended}


def refused(name: str) -> str:
    """The event streams `name` refused in the bursts, by status."""
    return ", ".join(f"{v} ({code})" for (n, code), v in sorted(SSE_REFUSED.items()) if n == name) or "0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="also write the section to this file")
    args = ap.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_DIR") or sys.exit("set COMFYUI_DIR"))
    bin_ = binary()
    py = comfyui_python(comfyui, wheel())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trace = work / "trace.jsonl"
        trace.write_text("")
        comfy_proc, comfy_url = start_comfyui(py, comfyui, work / "comfy", trace)
        servers: list[Server] = []
        try:
            servers = [start_ours(bin_, comfy_url, work), start_proxy(comfy_url, work)]
            # One input image, uploaded to each server (and to ComfyUI for the direct baseline).
            img = work / "bench.png"
            from v2_client import png
            from protocol_client import image

            img.write_bytes(png(image(64, 64, seed=1)))
            refs = {}
            for s in servers:
                a, _ = upload(s, img, "image/png")
                refs[s.name] = ref(a)
            body, tail, ctype = multipart({"type": "input", "overwrite": "true"}, img.name, 0)
            data = body.replace(b'name="file"', b'name="image"') + img.read_bytes() + tail
            r = request("POST", f"{comfy_url}/upload/image", data, {"Content-Type": ctype})
            direct_name = r.json()["name"]

            log("latency per job")
            lat = bench_latency(servers, refs, comfy_url, direct_name, args.iterations)
            log("event latency")
            ev = bench_events(servers, refs, comfy_url, direct_name, trace, 20)
            log("status polls")
            polls = {}
            for s in servers:
                _, done = run_job(s, graph(refs[s.name], 1, 0.0, "poll" + uuid.uuid4().hex[:6]))
                polls[s.name] = bench_polls(s, done["id"])
            log("100 MB upload")
            big = work / "big.bin"
            with open(big, "wb") as f:
                for _ in range(100):
                    f.write(os.urandom(1_000_000))
            up = {s.name: bench_upload(s, big) for s in servers}
            big.unlink()
            log("200 concurrent submits")
            pinned = pin_apart(comfy_proc.pid, [s.proc.pid for s in servers])
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            outputs = work / "comfy" / "output"
            for i in range(BURSTS):
                for s in servers if i % 2 == 0 else servers[::-1]:
                    request("POST", f"{comfy_url}/free", json.dumps({"free_memory": True}).encode(),
                            {"Content-Type": "application/json"})
                    time.sleep(1.0)
                    cpu0 = cpu_seconds(s.proc.pid), cpu_seconds(comfy_proc.pid)
                    runs[s.name].append(bench_burst(s, refs[s.name], 200))
                    cpu1 = cpu_seconds(s.proc.pid), cpu_seconds(comfy_proc.pid)
                    r = runs[s.name][-1]
                    log(f"burst of {s.name}: {r['total_s']:.2f} s, outputs {r['with_outputs_s']:.2f} s, "
                        f"ended {r['ended']}, event streams refused so far {SSE_REFUSED}; CPU s: "
                        f"server {cpu1[0] - cpu0[0]:.2f}, ComfyUI {cpu1[1] - cpu0[1]:.2f}; "
                        f"ComfyUI executing (s): {executing(comfy_url)}")
                    shutil.rmtree(outputs)
                    outputs.mkdir()
                    request("POST", f"{comfy_url}/history", json.dumps({"clear": True}).encode(),
                            {"Content-Type": "application/json"})
            burst = {k: merge_bursts(v) for k, v in runs.items()}
        finally:
            for s in servers:
                stop_process(s.proc)
            stop_process(comfy_proc)
    load_after = os.getloadavg()

    ours, theirs = servers[0].name, servers[1].name
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    added = {k: [v - d for v, d in zip(lat[k], lat["direct"])] for k in (ours, theirs)}
    lines = [
        "## Comfy API v2: comfy-remote vs comfy-api-proxy\n",
        f"Produced by `scripts/bench_v2.py` on {os.cpu_count()} CPU cores ({cpu}), load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after; one ComfyUI on CPU behind both servers, in the "
        f"same run: `comfy-remote serve --allow-any-workflow` and comfy-api-proxy 0.1.6, both running LoadImage "
        f"(an uploaded asset, 64x64) -> CRTestSlow -> SaveImage. {args.iterations} iterations after 2 warm-ups, "
        "interleaved. Ratios: how many times better ours is (higher is better).\n",
        "| Measure | comfy-remote | comfy-api-proxy | ratio |",
        "|---|---|---|---|",
    ]

    def row(name: str, a: float, b: float, fmt: str, better_low: bool = True) -> None:
        if better_low and a <= 0 < b:
            ratio = "ours at or below zero"
        elif a > 0 and b > 0:
            ratio = f"{(b / a if better_low else a / b):.1f}x"
        else:
            ratio = "n/a"
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")

    med = statistics.median
    lines.append(f"| Job via SSE, total (median / p90 ms; ComfyUI directly: {ms(lat['direct'])}) | {ms(lat[ours])} | {ms(lat[theirs])} | {med(lat[theirs]) / med(lat[ours]):.1f}x |")
    row("Added latency per job, median ms (paired, vs ComfyUI directly)", med(added[ours]), med(added[theirs]), "{:.1f}")
    for s in (ours, theirs):
        ev[s]["med"] = med(ev[s]["lat"]) if ev[s]["lat"] else float("nan")
    floor = ev["direct"]["lat"]
    row(f"ComfyUI step -> SSE `progress`, median ms (ComfyUI's websocket: {med(floor):.1f})",
        ev[ours]["med"], ev[theirs]["med"], "{:.1f}")
    row(f"ComfyUI step -> SSE `progress`, p99 ms (ComfyUI's websocket: {pct(floor, 0.99):.1f})",
        pct(ev[ours]["lat"], 0.99), pct(ev[theirs]["lat"], 0.99), "{:.1f}")
    lines.append(f"| Steps those two rows are computed from (ComfyUI's websocket: {len(floor)}) | "
                 f"{len(ev[ours]['lat'])} | {len(ev[theirs]['lat'])} | |")
    share = {k: ev[k]["delivered"] / max(ev[k]["total"], 1) for k in (ours, theirs)}
    lines.append(f"| Steps delivered as `progress` (20 steps of 50 ms a job) | "
                 f"{ev[ours]['delivered']}/{ev[ours]['total']} ({ev[ours]['jobs']} jobs) | "
                 f"{ev[theirs]['delivered']}/{ev[theirs]['total']} ({ev[theirs]['jobs']} jobs) | "
                 f"{share[ours] / max(share[theirs], 1e-9):.1f}x |")
    for i, c in enumerate((1, 32)):
        a, b = polls[ours][i], polls[theirs][i]
        row(f"Status polls/s, {c} client{'s' if c > 1 else ''}", a["rps"], b["rps"], "{:.0f}", better_low=False)
        row(f"Status poll p99 ms, {c} client{'s' if c > 1 else ''}", a["p99_ms"], b["p99_ms"], "{:.2f}")
    row("100 MB asset upload, seconds", up[ours]["seconds"], up[theirs]["seconds"], "{:.2f}")
    row("100 MB asset upload, server memory added (MiB)", up[ours]["rss_added"] / 2**20,
        up[theirs]["rss_added"] / 2**20, "{:.1f}")
    for s in (ours, theirs):
        b = burst[s]
        lost = ", ".join(f"{v} {k}" for k, v in sorted(b["ended"].items()) if k != "succeeded")
        b["desc"] = (f"{b['accepted']}/{200 * b['bursts']} accepted, {b['succeeded']} succeeded"
                     + (f" ({lost})" if lost else "") + ", answers "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(b["codes"].items())))
    lines.append(f"| 200 concurrent submits, {BURSTS} bursts each, in alternating turns | {burst[ours]['desc']} | "
                 f"{burst[theirs]['desc']} | |")
    row("200 concurrent submits, submit p99 ms", pct(burst[ours]["lat"], 0.99), pct(burst[theirs]["lat"], 0.99), "{:.0f}")
    each = {k: "/".join(f"{t:.1f}" for t in burst[k]["totals"]) for k in (ours, theirs)}
    row(f"200 concurrent submits, until every job's event stream told its end (median s; each burst: "
        f"{each[ours]} and {each[theirs]})",
        burst[ours]["total_s"], burst[theirs]["total_s"], "{:.1f}")
    row(f"200 concurrent submits, until every output was downloaded too (median s; {burst[ours]['fetched']} and "
        f"{burst[theirs]['fetched']} outputs)", burst[ours]["with_outputs_s"], burst[theirs]["with_outputs_s"], "{:.1f}")
    lines.append("")
    lines.append(f"Errors in the status-poll loops: comfy-remote {polls[ours][0]['errors'] + polls[ours][1]['errors']}, "
                 f"comfy-api-proxy {polls[theirs][0]['errors'] + polls[theirs][1]['errors']}. comfy-api-proxy throttles "
                 "`progress` to about 2 a second by design; every step's latency counts only the steps a server "
                 "delivered. The load loop and both servers share the two cores, so requests/s are floors. "
                 "comfy-remote ran with `--max-jobs 256` (its default, 64, answers the rest `429 queue_full` with "
                 "`Retry-After`, which comfy-sdk honours). "
                 + ("For the bursts ComfyUI had the first core to itself; the servers and the client shared the "
                    "other. " if pinned else "")
                 + "Job event streams that closed before their job ended "
                 f"(the job was then polled until it did, in the time): comfy-remote {SSE_CLOSED_EARLY.get(ours, 0)}, "
                 f"comfy-api-proxy {SSE_CLOSED_EARLY.get(theirs, 0)}. Event streams refused in the bursts (the job was "
                 f"then polled): comfy-remote {refused(ours)}, comfy-api-proxy {refused(theirs)}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
