"""Fewer bytes and fewer round trips, against a worker in front of a real
ComfyUI: packed tensors both ways (bit-identical), 8-bit results, a submit
that waits and answers with the result, and big transfers that survive a
link that breaks (a relay that cuts connections mid-transfer).

Needs COMFYUI_DIR. Without it this module is skipped with one line.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

if not os.environ.get("COMFYUI_DIR"):
    pytest.skip(
        "COMFYUI_DIR is not set: the transfer tests need a ComfyUI checkout (export COMFYUI_DIR=/path/to/ComfyUI)",
        allow_module_level=True,
    )

import torch  # noqa: E402

from comfy_remote import codec  # noqa: E402
from comfy_remote._native import Client  # noqa: E402
from harness import CONTAINER, request, start_worker  # noqa: E402
from harness.relay import Relay  # noqa: E402

TOKEN = "transfer-" + uuid.uuid4().hex
PACKINGS = "u8-grad-zstd, shuffle-zstd"

# image -> ImageInvert -> "inverted"; image -> "same"
WORKFLOW: dict = {
    "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "RemoteOutput", "inputs": {"name": "inverted", "value": ["2", 0]}},
    "4": {"class_type": "RemoteOutput", "inputs": {"name": "same", "value": ["1", 0]}},
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory, comfyui_dir, comfy_python):
    home = tmp_path_factory.mktemp("transfer")
    w = start_worker(WORKFLOW, comfyui=comfyui_dir, python=comfy_python, home=home, spool=home / "spool",
                     token=TOKEN)
    yield w
    w.stop()


def photo(h: int = 512, w: int = 512, batch: int = 1) -> torch.Tensor:
    """An 8-bit image loaded as LoadImage loads one (u8 / 255 in f32):
    smooth gradients with some noise, like a photo."""
    g = torch.Generator().manual_seed(7)
    y = torch.linspace(0, 1, h).view(1, h, 1, 1).expand(batch, h, w, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(batch, h, w, 1)
    base = torch.cat([x * 200 + 20, y * 180 + 40, (x + y) * 90 + 30], dim=3)
    noise = torch.randint(-6, 7, (batch, h, w, 3), generator=g)
    u8 = (base + noise).round().clamp(0, 255).to(torch.uint8)
    return u8.float() / 255.0


def png_bytes(img: torch.Tensor) -> int:
    """The size of an IMAGE as ComfyUI's SaveImage writes it (compress_level 4)."""
    import io

    from PIL import Image

    u8 = (img[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG", compress_level=4)
    return buf.tell()


def noise_image(h: int, w: int) -> torch.Tensor:
    """Values no packing helps with: the container stays its raw size."""
    return torch.rand((1, h, w, 3), generator=torch.Generator().manual_seed(3))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(bits(a), bits(b)), "not bit-identical"


def outputs(data: bytes) -> dict:
    return {name: value for name, _ty, value in codec.decode(data)}


def run(client: Client, body: bytes) -> dict:
    """Submit through the native client and follow the job to its result."""
    job = client.start(body)
    while True:
        ev = job.next_event(120.0)
        if ev is not None and ev[0] == "done":
            return outputs(ev[1])


def test_packed_inputs_and_results_are_smaller_and_bit_identical(worker):
    sig = worker.get("/v1/info").json()
    assert "u8-grad-zstd" in sig["codecs"] and {"wait", "range", "uploads"} <= set(sig["features"])
    img = photo()
    plain = codec.encode([("image", "IMAGE", img)])
    packed = codec.encode([("image", "IMAGE", img)], codecs=["u8-grad-zstd"])
    assert len(packed) * 4 < len(plain), (len(packed), len(plain))
    r = worker.submit(packed)
    assert r.status == 202, r.body
    job = worker.wait(r.json()["id"])
    assert job["status"] == "succeeded", job
    url = f"/v1/jobs/{job['id']}/result"

    exact = worker.get(url)
    assert exact.status == 200
    got = outputs(exact.body)
    assert_identical(got["same"], img)
    assert_identical(got["inverted"], 1.0 - img)

    small = request("GET", worker.url + url, headers=worker.headers({"Comfy-Remote-Codecs": PACKINGS}))
    assert small.status == 200 and len(small.body) < len(exact.body)
    got = outputs(small.body)
    assert_identical(got["same"], img)
    assert_identical(got["inverted"], 1.0 - img)

    # Every codec: the inversion (1 - k/255, not k/255) travels as a
    # palette, and both images together cost at most 1.2x their PNGs.
    every = request("GET", worker.url + url, headers=worker.headers({"Comfy-Remote-Codecs": ", ".join(codec.CODECS)}))
    assert every.status == 200
    got = outputs(every.body)
    assert_identical(got["same"], img)
    assert_identical(got["inverted"], 1.0 - img)
    as_png = png_bytes(img) + png_bytes(1.0 - img)
    assert len(every.body) <= 1.2 * as_png, (len(every.body), as_png)

    # 8-bit results: the inversion rounded as `comfy-remote run` rounds its PNGs.
    eight = request("GET", worker.url + url,
                    headers=worker.headers({"Comfy-Remote-Codecs": PACKINGS, "Comfy-Remote-Images": "8bit"}))
    assert eight.status == 200 and len(eight.body) * 3 < len(exact.body)
    got = outputs(eight.body)
    assert_identical(got["same"], img)
    u8 = (img * 255).round().to(torch.uint8)
    assert_identical(got["inverted"], (255 - u8).float() / 255.0)

    # A download that broke after some bytes resumes from there.
    etag = small.headers["etag"]
    tail = request("GET", worker.url + url,
                   headers=worker.headers({"Comfy-Remote-Codecs": PACKINGS, "Range": "bytes=1000-",
                                           "If-Range": etag}))
    assert tail.status == 206, tail.body
    assert small.body[:1000] + tail.body == small.body
    past = request("GET", worker.url + url, headers=worker.headers({"Range": f"bytes={len(exact.body)}-"}))
    assert past.status == 416 and past.json()["error"]["details"]["length"] == len(exact.body)


def test_a_short_job_answers_its_submit_with_the_result(worker):
    img = photo(64, 64)
    r = worker.submit(codec.encode([("image", "IMAGE", img)]), headers={"Prefer": "wait=30"})
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith(CONTAINER)
    job_id = r.headers["comfy-remote-job"]
    assert worker.job(job_id)["status"] == "succeeded"
    assert_identical(outputs(r.body)["inverted"], 1.0 - img)
    # The native client does the same by default: one round trip.
    client = Client(worker.url, headers=[("Authorization", f"Bearer {TOKEN}")])
    assert_identical(run(client, codec.encode([("image", "IMAGE", img)]))["inverted"], 1.0 - img)


def wait_stats(link: Relay, key: str, at_least: int) -> dict:
    for _ in range(100):
        s = link.stats()
        if s[key] >= at_least:
            return s
        time.sleep(0.02)
    return link.stats()


def settled_stats(link: Relay) -> dict:
    """The relay's counters once they stop moving (they are reported every 20 ms)."""
    last = link.stats()
    while True:
        time.sleep(0.06)
        now = link.stats()
        if now == last:
            return now
        last = now


def test_a_big_result_download_resumes_after_the_link_breaks(worker):
    img = noise_image(1024, 1024)  # a 12.6 MB result that packing cannot shrink
    body = codec.encode([("image", "IMAGE", img)])
    with Relay(int(worker.url.rsplit(":", 1)[1]), cut_down=5 << 20, cuts=1) as link:
        client = Client(link.url, headers=[("Authorization", f"Bearer {TOKEN}")], submit_wait=0)
        got = run(client, body)
        s = wait_stats(link, "cuts", 1)
    assert s["cuts"] == 1, s
    assert_identical(got["same"], img)
    assert_identical(got["inverted"], 1.0 - img)
    # The download went on from where it broke: both outputs crossed about once.
    result = 2 * img.numel() * 4
    assert s["down_bytes"] < result + (2 << 20), s


def test_a_big_upload_resumes_after_the_link_breaks(worker):
    img = noise_image(1400, 1400)  # 23.5 MB: sent as a resumable upload
    body = codec.encode([("image", "IMAGE", img)])
    with Relay(int(worker.url.rsplit(":", 1)[1]), cut_up=5 << 20, cuts=2) as link:
        client = Client(link.url, headers=[("Authorization", f"Bearer {TOKEN}")], submit_wait=0)
        got = run(client, body)
        s = wait_stats(link, "cuts", 2)
    assert s["cuts"] == 2, s
    assert_identical(got["same"], img)
    # What arrived before each cut was kept: the body crossed about once.
    assert s["up_bytes"] < len(body) + (2 << 20), s


def test_tensors_travel_packed_to_another_host_and_plain_to_this_one(worker):
    """The default packs only where the link is slower than the packer: not to
    this machine; `packing="always"` (what another host gets) packs both ways."""
    img = photo(512, 512)
    raw = img.numel() * 4
    crossed = {}
    for packing in ("auto", "always", "never"):
        with Relay(int(worker.url.rsplit(":", 1)[1])) as link:
            client = Client(link.url, headers=[("Authorization", f"Bearer {TOKEN}")], packing=packing)
            codecs = client.upload_codecs()
            got = run(client, codec.encode([("image", "IMAGE", img)], codecs=codecs))
            crossed[packing] = (bool(codecs), settled_stats(link))
        assert_identical(got["inverted"], 1.0 - img)
        assert_identical(got["same"], img)
    for packing in ("auto", "never"):  # the relay listens on loopback
        packed, s = crossed[packing]
        assert not packed and s["up_bytes"] > raw and s["down_bytes"] > 2 * raw, (packing, s)
    packed, s = crossed["always"]
    assert packed and s["up_bytes"] < raw // 3 and s["down_bytes"] < 2 * raw // 3, s
    with pytest.raises(ValueError, match="COMFY_REMOTE_PACK.*auto, always, never"):
        Client(worker.url, packing="sometimes")
