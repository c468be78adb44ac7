"""Conformance, docs/protocol.md §2.7, §4.1 and §4.4: packed results, ranged results and a submit that
waits, on every server that announces them. Packed containers are read with the comfy-remote codec (the
packings need zstd); everything else with the suite's own reader."""

from __future__ import annotations

import struct

import pytest

from protocol_client import CONTAINER, Server, assert_error, image, job_body, raw, read_container

# ((i * 7) % 251) / 250: 251 distinct values, none of them k/255 (a palette).
IMG = image(64, 64, seed=3)


def features(srv: Server) -> set[str]:
    return set(srv.info().get("features") or [])


def succeeded(srv: Server) -> str:
    job = srv.start(job_body(IMG, steps=1))
    assert srv.wait(job["id"])["status"] == "succeeded"
    return str(job["id"])


def floats(data: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(data) // 4}f", data)


def test_a_result_is_packed_only_for_a_client_that_reads_the_codecs(srv: Server) -> None:
    from comfy_remote import codec

    announced = srv.info()["codecs"]
    assert "u8-palette-zstd" in announced, announced
    job_id = succeeded(srv)
    url = f"/v1/jobs/{job_id}/result"
    plain = srv.get(url)
    assert plain.status == 200
    (_, ref), = read_container(plain.body).values()
    assert ref.data == IMG.data
    packed = srv.get(url, {"Comfy-Remote-Codecs": ", ".join(announced)})
    assert packed.status == 200 and packed.headers["content-type"].split(";")[0] == CONTAINER
    assert len(packed.body) * 4 < len(plain.body), (len(packed.body), len(plain.body))
    [(name, typ, value)] = codec.decode(packed.body)
    assert (name, typ) == ("image", "IMAGE")
    assert value.numpy().tobytes() == IMG.data, "a packed result decodes to the same bits"
    # A codec the server does not know changes nothing.
    other = srv.get(url, {"Comfy-Remote-Codecs": "zstd-from-the-future"})
    assert other.body == plain.body
    assert packed.headers.get("etag") and packed.headers["etag"] != plain.headers.get("etag")


def test_a_result_download_resumes_with_a_range(srv: Server) -> None:
    if "range" not in features(srv):
        pytest.skip("the server does not announce `range`")
    job_id = succeeded(srv)
    url = f"/v1/jobs/{job_id}/result"
    whole = srv.get(url)
    etag = whole.headers["etag"]
    assert whole.headers.get("accept-ranges") == "bytes"
    tail = srv.get(url, {"Range": "bytes=100-", "If-Range": etag})
    assert tail.status == 206, tail.body[:300]
    assert tail.headers["content-range"] == f"bytes 100-{len(whole.body) - 1}/{len(whole.body)}"
    assert whole.body[:100] + tail.body == whole.body
    # Another version of the bytes: the whole body, not a piece of it.
    stale = srv.get(url, {"Range": "bytes=100-", "If-Range": '"another-etag"'})
    assert stale.status == 200 and stale.body == whole.body
    past = srv.get(url, {"Range": f"bytes={len(whole.body)}-"})
    err = assert_error(past, 416, "range_not_satisfiable")
    assert err["details"]["length"] == len(whole.body)


def test_a_submit_that_waits_answers_with_the_result(srv: Server) -> None:
    if "wait" not in features(srv):
        pytest.skip("the server does not announce `wait`")
    r = raw(srv, "POST", "/v1/jobs", job_body(IMG, steps=1),
            {"Content-Type": CONTAINER, "Prefer": "wait=60", "Accept": f"application/json, {CONTAINER}"})
    assert r.status in (200, 202), r.body[:300]
    if r.status == 202:  # allowed (the job outlived the wait); then it is an ordinary accepted job
        srv.started.append(r.json()["id"])
        return
    job_id = r.headers["comfy-remote-job"]
    srv.started.append(job_id)
    assert r.headers["content-type"].split(";")[0] == CONTAINER
    assert r.headers.get("preference-applied", "").startswith("wait=")
    assert r.headers["location"].endswith(f"/v1/jobs/{job_id}")
    (_, out), = read_container(r.body).values()
    assert out.data == IMG.data
    assert srv.job(job_id)["status"] == "succeeded"
    # A job that fails within the wait answers with its final view.
    r = raw(srv, "POST", "/v1/jobs", job_body(IMG, fail=True), {"Content-Type": CONTAINER, "Prefer": "wait=60"})
    assert r.status in (200, 202), r.body[:300]
    view = r.json()
    srv.started.append(view["id"])
    if r.status == 200:
        assert view["status"] == "failed" and view["error"]["code"], view
