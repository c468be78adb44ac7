#!/usr/bin/env python3
"""Benchmark: end-to-end overhead of one Remote API call.

Local ComfyUI -> Remote API node -> worker -> remote ComfyUI -> back, against
the same nodes run in the local ComfyUI (the baseline, measured in the same
run, on the same machine), for a tiny payload (1x8x8x3 IMAGE) and a
4x1024x1024x3 float32 IMAGE (48 MiB each way). Each prompt varies the
image colour so nothing is served from ComfyUI's cache. Wall time is from
POST /prompt to `execution_success` on the websocket; median of N runs
after one warm-up.

Usage: COMFYUI_DIR=... python scripts/bench_nodes.py [--runs N] [--only tiny|image]
    [--keep DIR]
Needs the comfy-remote binary and wheel (as the tests do). Prints a
markdown table on stdout. --keep leaves the worker's and both ComfyUIs' logs
(and spool) in DIR; with COMFY_REMOTE_TRACE=1 the local ComfyUI's log shows
the Remote API node's phases in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import comfyui_python, start_comfyui, start_worker, wheel  # noqa: E402

REMOTE_WORKFLOW = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
}


def prompt(kind: str, size: tuple[int, int, int], color: int, endpoint: str) -> dict[str, Any]:
    b, h, w = size
    nodes: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": b, "color": color}},
        "9": {"class_type": "CRTestSink", "inputs": {"value": ["2", 0]}},
    }
    if kind == "local":
        nodes["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    else:
        nodes["2"] = {
            "class_type": "RemoteAPI",
            "inputs": {"values.value0": ["1", 0], "endpoint": endpoint, "timeout": 600.0, "token": "", "protocol": "auto"},
        }
    return nodes


async def timed(base: str, p: dict[str, Any]) -> float:
    import aiohttp

    cid = uuid.uuid4().hex
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{base.replace('http', 'ws')}/ws?clientId={cid}", max_msg_size=0) as ws:
            t0 = time.perf_counter()
            async with s.post(f"{base}/prompt", json={"prompt": p, "client_id": cid}) as r:
                pid = (await r.json())["prompt_id"]
            while True:
                msg = await ws.receive(timeout=600)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if (m.get("data") or {}).get("prompt_id") != pid:
                    continue
                if m["type"] == "execution_success":
                    return time.perf_counter() - t0
                if m["type"] in ("execution_error", "execution_interrupted"):
                    raise RuntimeError(json.dumps(m)[:2000])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["tiny", "image"], help="run one payload only")
    ap.add_argument("--keep", type=Path, help="keep logs and spool in this directory")
    args = ap.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_DIR") or sys.exit("set COMFYUI_DIR to a ComfyUI checkout"))
    py = comfyui_python(comfyui, wheel())
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cr-bench-", dir=args.keep))
    worker = local = None
    try:
        worker = start_worker(REMOTE_WORKFLOW, comfyui=comfyui, python=py, home=tmp / "remote", spool=tmp / "spool")
        home = tmp / "local"
        (home / "custom_nodes" / "cr_test_nodes").mkdir(parents=True)
        shutil.copy(ROOT / "tests" / "harness" / "nodes_dump.py", home / "custom_nodes" / "cr_test_nodes" / "__init__.py")
        local = start_comfyui(py, comfyui, home)
        rows = []
        color = 1
        payloads = [("tiny", "tiny 1x8x8x3", (1, 8, 8)), ("image", "IMAGE 4x1024x1024x3", (4, 1024, 1024))]
        for key, label, size in payloads:
            if args.only and key != args.only:
                continue
            times: dict[str, list[float]] = {"local": [], "remote": []}
            for i in range(args.runs + 1):
                for kind in ("local", "remote"):  # interleaved: both see the same machine load
                    color += 1
                    t = asyncio.run(timed(local.url, prompt(kind, size, color, worker.url)))
                    if i > 0:
                        times[kind].append(t)
            lo, re = statistics.median(times["local"]), statistics.median(times["remote"])
            rows.append((label, lo, re))
            print(f"{label}: local {times['local']} remote {times['remote']}", file=sys.stderr)
        print("| payload | local nodes (median) | via Remote API (median) | ratio | overhead |")
        print("|---|---|---|---|---|")
        for label, lo, re in rows:
            print(f"| {label} | {lo * 1000:.0f} ms | {re * 1000:.0f} ms | {re / lo:.1f}x | +{(re - lo) * 1000:.0f} ms |")
        return 0
    finally:
        for p in (local, worker):
            if p is not None:
                p.stop()
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
