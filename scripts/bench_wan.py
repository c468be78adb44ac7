#!/usr/bin/env python3
"""Benchmark: one remote call over a wide-area link, against the peers and the floor.

A laptop calls a GPU box over the internet; here the link is `wan-relay`
(crates/netsim) on loopback, with a set bandwidth and round-trip time, in
front of each server. For each payload the same work runs remotely
(ImageInvert for images, LatentMultiply for the latent) and the result comes
back to the caller:

- ours: the native client (what the Remote API node and `comfy-remote run`
  use; packed tensors, `Prefer: wait`, one kept-alive connection) against
  `comfy-remote serve`;
- the seed's protocol: the same client in its JSON mode against an endpoint
  that speaks only that shape (tests/seed_endpoint.py: base64 containers in
  JSON, status polled every 100 ms) in front of the same kind of worker;
- comfy-api-proxy (PyPI) driven by comfy-sdk (PyPI): the image uploaded as a
  PNG asset, LoadImage -> ImageInvert -> SaveImage, the job followed by its
  event stream, the PNG outputs downloaded (it cannot carry a LATENT);
- the floor: the payload's bytes (PNG files for images, the raw tensor for
  the latent) sent up and back down through the same link in one request to
  a server that only reads and answers, plus ComfyUI running the same nodes
  directly (no network).

Every call uses a fresh image (one pixel changed), so no server caches it.
Wire bytes are what crossed the link (both directions, headers included).
Medians of --runs after one warm-up. A codec section measures the packed
8-bit image against PIL's PNG on the same photo.

Usage: COMFYUI_DIR=... python scripts/bench_wan.py [--runs N] [--photo FILE]
    [--profiles 100:40,1000:10] [--only tiny,image,batch,latent] [--out FILE]
Needs the comfy-remote and wan-relay binaries (COMFY_REMOTE_BIN; wan-relay
beside it), the wheel, comfy-api-proxy and comfy-sdk in this Python
(requirements-test.txt). Prints a markdown section; --out also writes it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from comfy_remote import codec  # noqa: E402
from comfy_remote._native import Client  # noqa: E402
from harness import comfyui_python, free_port, request, start_comfyui, start_worker, wait_answers, wheel  # noqa: E402
from harness.relay import Relay  # noqa: E402

IMAGE_WF = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["2", 0]}},
}
LATENT_WF = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "latent", "type": "LATENT"}},
    "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 0.5}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "latent", "value": ["2", 0]}},
}
# ComfyUI's SaveImage writes PNGs at this level.
PNG_LEVEL = 4
SEED_POLL_S = 0.1


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- payloads


def png(u8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def from_png(data: bytes) -> torch.Tensor:
    """An IMAGE [1,H,W,3] as ComfyUI's LoadImage makes it."""
    u8 = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


def photo(path: Path | None, size: int) -> np.ndarray:
    """A size x size RGB photo: --photo, else a synthetic one (gradients and grain)."""
    if path is not None:
        img = Image.open(path).convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        return np.array(img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS))
    g = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x * 200 + 20, y * 180 + 40, (x + y) * 90 + 30], axis=2)
    return np.clip(base + g.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)


class Payload:
    """What one call sends: `frames` 8-bit images (PNG files and the IMAGE
    LoadImage would make of them), or a LATENT."""

    def __init__(self, key: str, label: str, frames: list[np.ndarray] | None = None,
                 latent: tuple[int, ...] | None = None) -> None:
        self.key, self.label, self.frames, self.latent = key, label, frames, latent

    def variant(self, i: int) -> dict[str, Any]:
        """Call `i`'s inputs: a pixel (or a latent value) differs per call."""
        if self.latent is not None:
            g = torch.Generator().manual_seed(i)
            t = torch.randn(self.latent, generator=g)
            return {"latent": {"samples": t}, "raw": t.numel() * 4}
        pngs, images = [], []
        for f in self.frames or []:
            f = f.copy()
            f[0, 0, 0] = i % 256
            f[0, 1, 0] = i // 256 % 256
            data = png(f)
            pngs.append(data)
            images.append(from_png(data))
        inverted = [png(255 - np.array(Image.open(io.BytesIO(p)).convert("RGB"))) for p in pngs]
        return {"pngs": pngs, "image": torch.cat(images), "out_png_bytes": sum(map(len, inverted))}


# ---------------------------------------------------------------- systems


def timed_call(link: Relay, fn: Callable[[], Any], check: Callable[[Any], None] | None = None) -> tuple[float, int]:
    """Seconds and wire bytes of `fn()`; `check` then looks at what it returned (not timed)."""
    link.reset()
    time.sleep(0.05)
    t0 = time.perf_counter()
    got = fn()
    took = time.perf_counter() - t0
    time.sleep(0.06)  # the relay reports its counters every 20 ms
    s = link.stats()
    if check is not None:
        check(got)
    return took, s["up_bytes"] + s["down_bytes"]


def follow(client: Client, body: bytes) -> bytes:
    job = client.start(body)
    while True:
        ev = job.next_event(600.0)
        if ev is None:
            continue
        if ev[0] == "done":
            return ev[1]
        if ev[0] in ("failed", "error", "canceled"):
            raise RuntimeError(f"remote job ended {ev}")


def ours_call(client: Client, codecs: tuple[str, ...], v: dict[str, Any]) -> Any:
    """What the Remote API node does: encode (packed as the endpoint reads), run, decode."""
    name, typ = ("latent", "LATENT") if "latent" in v else ("image", "IMAGE")
    body = codec.encode([(name, typ, v[name])], codecs=codecs)
    return codec.decode(follow(client, body))[0][2]


def ours_check(v: dict[str, Any]) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        if "latent" in v:
            assert torch.equal(got["samples"], v["latent"]["samples"] * 0.5)
        else:
            assert torch.equal(got.view(torch.int32), (1.0 - v["image"]).view(torch.int32)), "not bit-identical"
    return check


def seed_call(client: Client, v: dict[str, Any]) -> None:
    if "latent" in v:
        body = codec.encode([("latent", "LATENT", v["latent"])])
    else:
        body = codec.encode([("image", "IMAGE", v["image"])])
    codec.decode(follow(client, body))


def proxy_call(comfy: Any, v: dict[str, Any]) -> None:
    import comfy_sdk

    graph: dict[str, Any] = {}
    loads = []
    for i in range(len(v["pngs"])):
        graph[f"l{i}"] = {"class_type": "LoadImage", "inputs": {"image": ""}}
        loads.append([f"l{i}", 0])
    img = loads[0]
    for i, other in enumerate(loads[1:]):
        graph[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": img, "image2": other}}
        img = [f"b{i}", 0]
    graph["inv"] = {"class_type": "ImageInvert", "inputs": {"image": img}}
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": ["inv", 0], "filename_prefix": "wan"}}
    wf = comfy.workflows.from_json(graph)
    for i, data in enumerate(v["pngs"]):
        wf.set_input(f"l{i}", "image", comfy.assets.from_bytes(data, filename=f"in{i}.png", content_type="image/png"))
    job = comfy.submit(wf)
    for ev in job.events():
        if isinstance(ev, comfy_sdk.StatusChange) and ev.status in ("succeeded", "failed", "canceled"):
            break
    job.refresh()
    assert job.status == "succeeded", job.status
    outs = job.get_outputs("save")
    assert len(outs) == len(v["pngs"]), outs
    for o in outs:
        assert o.to_bytes()[:4] == b"\x89PNG"


class Echo(BaseHTTPRequestHandler):
    """Reads the body, answers `X-Answer-Bytes` bytes: the floor's server."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers["Content-Length"])
        while n:
            n -= len(self.rfile.read(min(n, 1 << 20)))
        size = int(self.headers["X-Answer-Bytes"])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"\0" * (1 << 20)
        while size:
            k = min(size, len(chunk))
            self.wfile.write(chunk[:k])
            size -= k

    def log_message(self, *a: Any) -> None:
        pass


def floor_call(link: Relay, up: int, down: int) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=600)
    conn.request("POST", "/", body=b"\0" * up, headers={"X-Answer-Bytes": str(down)})
    r = conn.getresponse()
    assert len(r.read()) == down
    conn.close()


def direct_call(comfy_url: str, home: Path, v: dict[str, Any], i: int) -> float:
    """ComfyUI running the same nodes from files in its input folder, on loopback."""
    graph: dict[str, Any]
    if "latent" in v:
        from safetensors.torch import save_file

        name = f"wan-{i}.latent"
        save_file({"latent_tensor": v["latent"]["samples"].contiguous()}, str(home / "input" / name))
        graph = {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
            "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 0.5}},
            "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": f"wan{i}"}},
        }
    else:
        graph = {}
        img = None
        for k, data in enumerate(v["pngs"]):
            name = f"wan-{i}-{k}.png"
            (home / "input" / name).write_bytes(data)
            graph[f"l{k}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            if img is None:
                img = [f"l{k}", 0]
            else:
                graph[f"b{k}"] = {"class_type": "ImageBatch", "inputs": {"image1": img, "image2": [f"l{k}", 0]}}
                img = [f"b{k}", 0]
        graph["inv"] = {"class_type": "ImageInvert", "inputs": {"image": img}}
        graph["3"] = {"class_type": "SaveImage", "inputs": {"images": ["inv", 0], "filename_prefix": f"wan{i}"}}
    t0 = time.perf_counter()
    r = request("POST", f"{comfy_url}/prompt", json.dumps({"prompt": graph, "client_id": "bench"}).encode(),
                {"Content-Type": "application/json"})
    pid = r.json()["prompt_id"]
    while True:
        h = request("GET", f"{comfy_url}/history/{pid}").json()
        if pid in h:
            assert h[pid]["status"]["status_str"] == "success", h[pid]["status"]
            return time.perf_counter() - t0
        time.sleep(0.002)


def wait_listening(proc: subprocess.Popen, port: int) -> None:
    import socket

    while proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"process {proc.args} exited ({proc.returncode})")


# ---------------------------------------------------------------- codec


def codec_section(frame: np.ndarray, runs: int) -> tuple[list[str], dict[str, float]]:
    data = png(frame)
    image = from_png(data)
    u8 = frame

    def ours() -> int:
        body = codec.encode([("image", "IMAGE", image)], codecs=codec.CODECS)
        back = codec.decode(body)[0][2]
        assert torch.equal(back.view(torch.int32), image.view(torch.int32))
        return len(body)

    def pil() -> int:
        b = png(u8)
        np.array(Image.open(io.BytesIO(b)))
        return len(b)

    def med(fn: Callable[[], int]) -> tuple[float, int]:
        fn()
        ts = []
        n = 0
        for _ in range(runs):
            t0 = time.perf_counter()
            n = fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), n

    (t_ours, b_ours), (t_png, b_png) = med(ours), med(pil)
    h, w, _ = frame.shape
    lines = [
        f"Codec, on the photo as an IMAGE [1,{h},{w},3] from its PNG (values k/255), median of {runs}:",
        "",
        "| | bytes | vs PNG | encode + decode |",
        "|---|---|---|---|",
        f"| PNG (PIL, compress_level {PNG_LEVEL}, as SaveImage) | {b_png:,} | 1.00x | {t_png * 1000:.0f} ms |",
        f"| comfy-remote container, packed (`u8-grad-zstd`), bit-identical | {b_ours:,} | {b_ours / b_png:.2f}x | "
        f"{t_ours * 1000:.0f} ms ({t_png / t_ours:.1f}x faster) |",
        "",
    ]
    return lines, {"bytes_vs_png": b_ours / b_png, "speed_vs_png": t_png / t_ours}


# ---------------------------------------------------------------- main


def fmt_t(t: float | None) -> str:
    return "n/a" if t is None else (f"{t * 1000:.0f} ms" if t < 10 else f"{t:.1f} s")


def fmt_b(b: int | None) -> str:
    if b is None:
        return "n/a"
    return f"{b / 1e6:.2f} MB" if b >= 100_000 else f"{b / 1e3:.1f} kB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--photo", type=Path, help="a photo for the image payloads (else a synthetic one)")
    ap.add_argument("--profiles", default="100:40,1000:10", help="MBIT:RTT_MS,... (default 100:40,1000:10)")
    ap.add_argument("--only", default="tiny,image,batch,latent")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_DIR") or sys.exit("set COMFYUI_DIR to a ComfyUI checkout"))
    import comfy_sdk  # noqa: F401  (fail early when the peers are missing)

    proxy_exe = shutil.which("comfy-api-proxy") or str(Path(sys.executable).parent / "comfy-api-proxy")
    py = comfyui_python(comfyui, wheel())
    big = photo(args.photo, 1024)
    payloads = [p for p in [
        Payload("tiny", "tiny: IMAGE 1x8x8x3", [big[::128, ::128].copy()]),
        Payload("image", "IMAGE 1x1024x1024x3 from a PNG", [big]),
        Payload("batch", "IMAGE batch 4x1024x1024x3", [np.ascontiguousarray(np.rot90(big, k)) for k in range(4)]),
        Payload("latent", "LATENT 1x4x128x128", latent=(1, 4, 128, 128)),
    ] if p.key in args.only.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="cr-wan-"))
    procs: list[Any] = []
    out: list[str] = []
    checks: dict[str, Any] = {}
    try:
        workers = {
            "image": start_worker(IMAGE_WF, comfyui=comfyui, python=py, home=tmp / "w-image", spool=tmp / "s-image"),
            "latent": start_worker(LATENT_WF, comfyui=comfyui, python=py, home=tmp / "w-latent", spool=tmp / "s-latent"),
        }
        procs += workers.values()
        seeds = {}
        for kind, w in workers.items():
            port = free_port()
            logf = open(tmp / f"seed-{kind}.log", "ab")
            p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "seed_endpoint.py"), "--worker", w.url,
                                  "--port", str(port)], stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            seeds[kind] = f"http://127.0.0.1:{port}"
            wait_listening(p, port)
        home = tmp / "plain"
        plain = start_comfyui(py, comfyui, home)
        procs.append(plain)
        (home / "input").mkdir(parents=True, exist_ok=True)
        pport = free_port()
        plog = open(tmp / "proxy.log", "ab")
        proxy = subprocess.Popen([proxy_exe, "run", "--comfyui", plain.url, "--port", str(pport),
                                  "--state-dir", str(tmp / "proxy-state")],
                                 stdout=plog, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proxy)
        wait_answers(proxy, f"http://127.0.0.1:{pport}/api/v2/health", tmp / "proxy.log", "comfy-api-proxy")
        echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        threading.Thread(target=echo.serve_forever, daemon=True).start()

        codec_lines, checks["codec"] = codec_section(big, max(args.runs, 5))
        out += codec_lines
        counter = 1000
        for prof in args.profiles.split(","):
            mbit, rtt = (float(x) for x in prof.split(":"))
            links = {
                "ours-image": Relay(int(workers["image"].url.rsplit(":", 1)[1]), mbit=mbit, rtt_ms=rtt),
                "ours-latent": Relay(int(workers["latent"].url.rsplit(":", 1)[1]), mbit=mbit, rtt_ms=rtt),
                "seed-image": Relay(int(seeds["image"].rsplit(":", 1)[1]), mbit=mbit, rtt_ms=rtt),
                "seed-latent": Relay(int(seeds["latent"].rsplit(":", 1)[1]), mbit=mbit, rtt_ms=rtt),
                "proxy": Relay(pport, mbit=mbit, rtt_ms=rtt),
                "floor": Relay(echo.server_address[1], mbit=mbit, rtt_ms=rtt),
            }
            # The relay listens on loopback, where the client sends plain
            # tensors by default; an endpoint on another host (what the relay
            # stands for) gets them packed, so ask for that here.
            ours_c = {k: Client(links[f"ours-{k}"].url, timeout=600.0, packing="always") for k in ("image", "latent")}
            codecs = {k: tuple(c.upload_codecs()) for k, c in ours_c.items()}
            seed_c = {k: Client(links[f"seed-{k}"].url + "/run", timeout=600.0, mode="json", poll_interval=SEED_POLL_S)
                      for k in ("image", "latent")}
            os.environ["COMFY_BASE_URL"] = links["proxy"].url
            os.environ.pop("COMFY_API_KEY", None)
            sdk = comfy_sdk.Comfy(timeout=600.0)
            label = f"{mbit:g} Mbit/s, {rtt:g} ms RTT"
            out += [f"### {label}", "",
                    "| payload | ours | the seed's protocol | comfy-api-proxy + comfy-sdk | floor | ComfyUI direct "
                    "| ours / floor | ours vs seed | ours vs proxy |",
                    "|---|---|---|---|---|---|---|---|---|"]
            for p in payloads:
                kind = "latent" if p.latent else "image"
                res: dict[str, list[tuple[float, int]]] = {k: [] for k in ("ours", "seed", "proxy", "floor")}
                direct: list[float] = []
                for i in range(args.runs + 1):
                    counter += 1
                    v = p.variant(counter)
                    up = v.get("raw") or sum(map(len, v["pngs"]))
                    down = v.get("raw") or v["out_png_bytes"]
                    r = {
                        "ours": timed_call(links[f"ours-{kind}"], lambda: ours_call(ours_c[kind], codecs[kind], v),
                                           ours_check(v)),
                        "seed": timed_call(links[f"seed-{kind}"], lambda: seed_call(seed_c[kind], v)),
                        "floor": timed_call(links["floor"], lambda: floor_call(links["floor"], up, down)),
                    }
                    if kind == "image":
                        r["proxy"] = timed_call(links["proxy"], lambda: proxy_call(sdk, v))
                    d = direct_call(plain.url, home, v, counter)
                    if i == 0:
                        continue
                    for k, x in r.items():
                        res[k].append(x)
                    direct.append(d)
                    log(f"{label} {p.key} #{i}: " + ", ".join(f"{k} {x[0] * 1000:.0f} ms {x[1]}" for k, x in r.items())
                        + f", direct {d * 1000:.0f} ms")

                def med(k: str) -> tuple[float | None, int | None]:
                    if not res[k]:
                        return None, None
                    return statistics.median(t for t, _ in res[k]), int(statistics.median(b for _, b in res[k]))

                (to, bo), (ts, bs), (tp, bp), (tf, bf) = med("ours"), med("seed"), med("proxy"), med("floor")
                td = statistics.median(direct)
                floor_t = (tf or 0) + td
                checks[f"{prof} {p.key}"] = {"ours_s": to, "seed_s": ts, "proxy_s": tp, "floor_s": floor_t,
                                            "ours_bytes": bo, "seed_bytes": bs, "proxy_bytes": bp,
                                            "floor_bytes": bf, "direct_s": td, "rtt_ms": rtt}
                vs = (lambda a, b: "n/a" if a is None or b is None else f"{b / a:.1f}x faster")
                out.append(f"| {p.label} | {fmt_t(to)}, {fmt_b(bo)} | {fmt_t(ts)}, {fmt_b(bs)} | "
                           f"{fmt_t(tp) + ', ' + fmt_b(bp) if tp is not None else 'cannot carry a LATENT'} | "
                           f"{fmt_t(floor_t)}, {fmt_b(bf)} | {fmt_t(td)} | {to / floor_t:.2f}x | "
                           f"{vs(to, ts)} | {vs(to, tp)} |")
            out.append("")
            sdk.close()
            for link in links.values():
                link.close()
        text = "\n".join(out)
        print(text)
        print(json.dumps(checks, indent=1), file=sys.stderr)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    finally:
        for p in reversed(procs):
            try:
                p.stop() if hasattr(p, "stop") else (p.terminate(), p.wait(10))
            except Exception as e:  # noqa: BLE001 - best-effort teardown
                log(f"stop: {e}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
