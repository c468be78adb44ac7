"""Conformance, docs/protocol.md §4.1-4.2: submit, its body checks, idempotency keys, job URLs."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urljoin

import pytest

from protocol_client import (
    CONTAINER, MAX_BODY, Server, Tensor, assert_error, base64_form, check_view, container, image, job_body, raw,
)

def test_submit_is_202_with_the_queued_job_and_its_location(srv: Server) -> None:
    r = srv.submit(job_body())
    assert r.status == 202, r.body
    v = r.json()
    check_view(v)
    assert v["status"] == "queued" and v["progress"]["phase"] == "queued", v
    assert r.headers["location"] == v["poll_url"]
    # Location resolves, against the URL the client called, to the job.
    assert srv.get(urljoin(srv.url + "/", v["poll_url"])[len(srv.url):]).json()["id"] == v["id"]
    assert urljoin(srv.url + "/v1/jobs", v["poll_url"]) == f"{srv.url}/v1/jobs/{v['id']}"


@pytest.mark.local_only
def test_urls_are_absolute_from_the_host_the_client_used_port_kept(srv: Server) -> None:
    v = srv.submit(job_body()).json()
    assert v["poll_url"] == f"{srv.url}/v1/jobs/{v['id']}", v["poll_url"]
    other = raw(srv, "POST", "/v1/jobs", job_body(), {"Content-Type": CONTAINER, "Host": "conformance.example:8443"})
    assert other.status == 202, other.body
    srv.started.append(other.json()["id"])
    me = f"http://conformance.example:8443/v1/jobs/{other.json()['id']}"
    assert other.json()["poll_url"] == me and other.headers["location"] == me
    assert srv.get(f"/v1/jobs/{other.json()['id']}", {"Host": "conformance.example:8443"}).json()["urls"]["result"] \
        == me + "/result"


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Host": "evil.example/phish?x="},
    {"X-Forwarded-Host": "evil.example\\@x", "X-Forwarded-Proto": "javascript"},
    pytest.param({"Host": "evil.example/phish?"}, marks=pytest.mark.local_only),
    pytest.param({"Host": "user@evil.example"}, marks=pytest.mark.local_only),
])
def test_a_forged_host_header_cannot_inject_a_url(srv: Server, headers: dict[str, str]) -> None:
    r = raw(srv, "POST", "/v1/jobs", job_body(), {"Content-Type": CONTAINER, **headers})
    if r.status >= 400:
        assert r.status < 500, r.body  # refusing the request is fine too
        return
    v = r.json()
    srv.started.append(v["id"])
    for url in (v["poll_url"], *v["urls"].values(), r.headers["location"]):
        assert "evil" not in url and "javascript" not in url, url
        assert url.endswith(f"/v1/jobs/{v['id']}" + url.split(v["id"], 1)[1]), url


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded"])
def test_a_body_of_another_media_type_is_415(srv: Server, content_type: str | None) -> None:
    assert_error(srv.submit(job_body(), content_type), 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", [f"{CONTAINER}; charset=binary", "APPLICATION/VND.COMFY-REMOTE.CONTAINER"])
def test_media_type_parameters_and_case_are_ignored(srv: Server, content_type: str) -> None:
    assert srv.submit(job_body(), content_type).status == 202


def test_a_declared_content_length_over_the_limit_is_413_before_the_body(srv: Server) -> None:
    limit = srv.info()["limits"]["max_body_bytes"]
    # Only the headers are sent: the server must answer from Content-Length alone.
    r = raw(srv, "POST", "/v1/jobs", None, {"Content-Type": CONTAINER, "Content-Length": str(limit + 1)})
    err = assert_error(r, 413, "payload_too_large")
    assert err["details"]["max_body_bytes"] == limit


def test_a_streamed_body_over_the_limit_is_413(srv: Server) -> None:
    limit = srv.info()["limits"]["max_body_bytes"]
    if limit > 64 << 20:
        pytest.skip(f"max_body_bytes is {limit}: too large to stream in a test")
    chunk = b"\0" * 65536
    r = raw(srv, "POST", "/v1/jobs", None, {"Content-Type": CONTAINER},
            chunks=iter([chunk] * (limit // len(chunk) + 2)))
    err = assert_error(r, 413, "payload_too_large")
    assert err["details"]["max_body_bytes"] == limit


@pytest.mark.local_only
def test_the_limit_advertised_is_the_limit_enforced(srv: Server) -> None:
    assert srv.info()["limits"]["max_body_bytes"] == MAX_BODY
    # A container just under the limit is accepted.
    body = job_body(image(288, 288))
    assert MAX_BODY - 8192 < len(body) <= MAX_BODY
    assert srv.submit(body).status == 202


def _header_lies(data: bytes) -> bytes:
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["t0"]["shape"] = [1, 64, 64, 3]
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    return struct.pack("<Q", len(raw_header)) + raw_header + data[8 + n:]


def _tree(entries: list, version: int = 1) -> bytes:
    """A tensor-free container with a value tree written by hand."""
    import struct

    header = {"__metadata__": {"comfy_remote": json.dumps({"v": version, "entries": entries})}}
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    return struct.pack("<Q", len(raw_header)) + raw_header


INVALID = [
    ("too short", b"\x01\x02\x03", CONTAINER, "truncated"),
    ("header past the end", b"\x40\x00\x00\x00\x00\x00\x00\x00{}", CONTAINER, "truncated"),
    ("header over the cap", (1 << 40).to_bytes(8, "little") + b"{}", CONTAINER, "header_too_large"),
    ("not JSON", (8).to_bytes(8, "little") + b"notjson!", CONTAINER, "invalid_header"),
    ("no metadata", (8).to_bytes(8, "little") + b"{}      ", CONTAINER, "missing_metadata"),
    ("tree version 2", _tree([], version=2), CONTAINER, "unsupported_version"),
    ("unknown tag", _tree([{"name": "image", "type": None, "value": {"$zip": 1}}]), CONTAINER, "unknown_tag"),
    ("dangling tensor", _tree([{"name": "image", "type": "IMAGE", "value": {"$t": "t9"}}]), CONTAINER,
     "dangling_ref"),
    ("duplicate entry", _tree([{"name": "fail", "type": None, "value": True}] * 2), CONTAINER, "duplicate_entry"),
    ("F8 dtype", container(("image", "IMAGE", Tensor("F8_E4M3", (1, 1, 1, 3), b"\0\0\0"))), CONTAINER,
     "unsupported_dtype"),
    ("shape x dtype != bytes", _header_lies(job_body()), CONTAINER, "length_mismatch"),
    ("base64 of garbage", base64_form(b"abc"), "application/json", "truncated"),
    ("inputs form with a tensor reference", json.dumps({"inputs": {"image": {"$t": "t0"}}}).encode(),
     "application/json", "dangling_ref"),
]


@pytest.mark.parametrize("what,body,content_type,kind", INVALID, ids=[c[0] for c in INVALID])
def test_a_container_that_fails_decoding_is_400_invalid_payload_naming_the_check(
        srv: Server, what: str, body: bytes, content_type: str, kind: str) -> None:
    err = assert_error(srv.submit(body, content_type), 400, "invalid_payload")
    assert err["details"]["kind"] == kind, (what, err)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"foo": 1}', b'{"inputs": {}, "extra": 1}', b""])
def test_a_json_body_that_is_neither_form_is_400_bad_request(srv: Server, body: bytes) -> None:
    assert_error(srv.submit(body, "application/json"), 400, "bad_request")


INPUT_CASES = [
    ("unknown name", container(("image", "IMAGE", image()), ("picture", None, 1)), "picture"),
    ("missing required input", container(("steps", "INT", 3)), "image"),
    ("declared type other than the input's", container(("image", "STRING", "a cat")), "image"),
    ("value not of its type", container(("image", "IMAGE", image()), ("steps", "INT", "three")), "steps"),
    ("value not of its inferred type", container(("image", None, image()), ("fail", None, "yes")), "fail"),
    ("IMAGE of the wrong rank", container(("image", "IMAGE", Tensor("F32", (8, 8), b"\0" * 256))), "image"),
    ("inputs form without the image", json.dumps({"inputs": {"steps": 3}}).encode(), "image"),
]


@pytest.mark.parametrize("what,body,name", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_inputs_that_do_not_match_the_signature_are_422_naming_the_input(
        srv: Server, what: str, body: bytes, name: str) -> None:
    ctype = "application/json" if body.startswith(b"{") else CONTAINER
    err = assert_error(srv.submit(body, ctype), 422, "invalid_input")
    assert err["details"]["input"] == name, (what, err)


@pytest.mark.parametrize("query,status", [("?retry=true", 202), ("?retry=1", 202), ("?retry=false", 202),
                                          ("?retry=0", 202), ("?retry=maybe", 400), ("?retry=", 400)])
def test_the_retry_query(srv: Server, query: str, status: int) -> None:
    r = srv.submit(job_body(), query=query)
    if status == 400:
        assert_error(r, 400, "bad_request")
    else:
        assert r.status == status, r.body


def test_the_json_forms_are_accepted(srv: Server) -> None:
    assert srv.submit(base64_form(job_body()), "application/json").status == 202
    # The inputs form cannot carry the IMAGE; the rest of the checks pass.
    err = assert_error(srv.submit(json.dumps({"inputs": {"steps": 1}}).encode(), "application/json"),
                       422, "invalid_input")
    assert err["details"]["input"] == "image"


def test_a_replayed_idempotency_key_returns_the_same_job(srv: Server) -> None:
    key = {"Idempotency-Key": "conf-" + uuid.uuid4().hex}
    body = job_body(image(seed=1))
    first = srv.submit(body, CONTAINER, key)
    assert first.status == 202, first.body
    again = srv.submit(body, CONTAINER, key)
    assert again.status == 200, again.body
    assert again.json()["id"] == first.json()["id"]
    check_view(again.json(), first.json()["id"])
    # After the job ended: the job as it is now, never a second job.
    done = srv.wait(first.json()["id"])
    later = srv.submit(body, CONTAINER, key)
    assert later.status == 200 and later.json()["id"] == done["id"] and later.json()["status"] == done["status"]


def test_a_key_reused_with_another_body_is_409_conflict_naming_the_first_job(srv: Server) -> None:
    key = {"Idempotency-Key": "conf-" + uuid.uuid4().hex}
    first = srv.submit(job_body(image(seed=2)), CONTAINER, key).json()
    err = assert_error(srv.submit(job_body(image(seed=3)), CONTAINER, key), 409, "conflict")
    assert err["details"]["job_id"] == first["id"]
    # The same inputs in another form are another body.
    err = assert_error(srv.submit(base64_form(job_body(image(seed=2))), "application/json", key), 409, "conflict")
    assert err["details"]["job_id"] == first["id"]
    # The body is checked before the key is looked up.
    assert_error(srv.submit(container(("steps", "INT", 1)), CONTAINER, key), 422, "invalid_input")


@pytest.mark.parametrize("key,status", [
    ("", 400),
    ("k" * 201, 400),
    ("with space", 400),
    ("tab\there", 400),
    ("k" * 200, 202),
    ("!#$%&'*+-.^_`|~09AZaz", 202),
])
def test_an_idempotency_key_is_1_to_200_visible_ascii_characters(srv: Server, key: str, status: int) -> None:
    key = key if status == 400 or len(key) < 30 else key[:-32] + uuid.uuid4().hex
    r = srv.submit(job_body(), CONTAINER, {"Idempotency-Key": key})
    if status == 400:
        assert_error(r, 400, "bad_request")
    else:
        assert r.status == 202, (r.status, r.body)
