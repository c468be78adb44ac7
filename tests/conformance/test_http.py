"""Conformance, docs/protocol.md §4 and §4.6-4.7: headers, the error body, routes, auth, info, health."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from protocol_client import CONTAINER, Server, assert_error, raw

JOB_ROUTES = [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("POST", "/cancel")]


def test_every_response_carries_the_protocol_header(srv: Server) -> None:
    job = srv.start()
    answers = [
        srv.get("/healthz", auth=False), srv.get("/readyz", auth=False), srv.get("/openapi.json", auth=False),
        srv.get("/v1/info"), srv.get("/no/such/route"), raw(srv, "DELETE", "/v1/info"),
        srv.get(f"/v1/jobs/{uuid.uuid4()}"), srv.submit(b"x", "text/plain"), srv.get(f"/v1/jobs/{job['id']}"),
        srv.post(f"/v1/jobs/{job['id']}/cancel"), srv.get(f"/v1/jobs/{job['id']}/events"),
    ]
    if srv.token:
        answers.append(srv.get("/v1/info", auth=False))
    for r in answers:
        assert r.headers.get("comfy-remote-protocol") == "comfy-remote/1", (r.status, r.headers)


@pytest.mark.parametrize("path", ["/no/such/route", "/v1/nope", "/v1/jobs/x/y/z"])
def test_an_unknown_route_is_404_not_found_with_the_error_body(srv: Server, path: str) -> None:
    assert_error(srv.get(path), 404, "not_found")


@pytest.mark.parametrize("method,path", [
    ("DELETE", "/v1/jobs"), ("GET", "/v1/jobs"), ("PUT", "/v1/info"), ("POST", "/healthz"),
    ("GET", "/v1/jobs/{id}/cancel"), ("DELETE", "/v1/jobs/{id}"),
])
def test_a_wrong_method_is_405_method_not_allowed_with_the_error_body(srv: Server, method: str, path: str) -> None:
    r = raw(srv, method, path.format(id=uuid.uuid4()), b"" if method in ("PUT", "POST", "DELETE") else None)
    assert_error(r, 405, "method_not_allowed")


@pytest.mark.parametrize("job_id", [None, "not-a-uuid"])
@pytest.mark.parametrize("method,suffix", JOB_ROUTES)
def test_a_job_id_the_server_does_not_hold_is_404_on_every_job_route(
        srv: Server, job_id: str | None, method: str, suffix: str) -> None:
    path = f"/v1/jobs/{job_id or uuid.uuid4()}{suffix}"
    r = srv.get(path) if method == "GET" else srv.post(path)
    assert_error(r, 404, "not_found")


def test_healthz_readyz_and_openapi_answer_without_a_token(srv: Server) -> None:
    h = srv.get("/healthz", auth=False)
    assert h.status == 200 and h.json() == {"status": "ok"}
    r = srv.get("/readyz", auth=False)
    if r.status == 200:
        assert r.json()["ready"] is True and set(r.json()) == {"ready", "reason"}, r.body
    else:
        err = assert_error(r, 503, "not_ready")
        assert r.headers.get("retry-after"), r.headers
        assert set(err["details"]) == {"ready", "reason"} and err["details"]["ready"] is False
    o = srv.get("/openapi.json", auth=False)
    assert o.status == 200
    doc = o.json()
    assert doc["openapi"].startswith("3.1") and "/v1/jobs" in doc["paths"], list(doc)


def test_info_describes_the_workflow_and_the_limits(srv: Server) -> None:
    info = srv.info()
    assert info["protocol"] == "comfy-remote/1"
    assert isinstance(info["server_version"], str)
    assert isinstance(info["workflow"]["name"], str)
    assert re.fullmatch(r"[0-9a-f]{64}", info["workflow"]["sha256"]), info["workflow"]
    for item in info["inputs"] + info["outputs"]:
        assert set(item) >= {"name", "type", "optional", "node_id"}, item
        assert isinstance(item["optional"], bool) and isinstance(item["node_id"], str)
    # The suite's workflow, in node-id order; optional exactly where a default is linked.
    assert [(i["name"], i["type"], i["optional"]) for i in info["inputs"]] == [
        ("image", "IMAGE", False), ("steps", "INT", True), ("seconds_per_step", "FLOAT", True),
        ("fail", "BOOLEAN", True)]
    assert [(o["name"], o["type"]) for o in info["outputs"]] == [("image", "IMAGE")]
    limits = info["limits"]
    assert set(limits) >= {"max_body_bytes", "max_tensors", "max_rank", "max_concurrent_jobs"}, limits
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values()), limits
    assert limits["max_body_bytes"] > 0


def test_metrics_are_prometheus_text(srv: Server) -> None:
    r = srv.get("/metrics")
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"].startswith("text/plain")
    assert any(line.startswith("# TYPE ") for line in r.body.decode().splitlines())


def _auth_cases(srv: Server) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    jid = uuid.uuid4()
    return [
        ("GET", "/v1/info", None, {}),
        ("POST", "/v1/jobs", b"{}", {"Content-Type": "application/json"}),
        ("GET", f"/v1/jobs/{jid}", None, {}),
        ("GET", f"/v1/jobs/{jid}/events", None, {}),
        ("GET", f"/v1/jobs/{jid}/result", None, {}),
        ("POST", f"/v1/jobs/{jid}/cancel", b"", {}),
        ("GET", "/metrics", None, {}),
    ]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_v1_and_metrics_need_the_bearer_token(srv: Server, authorization: str | None) -> None:
    if not srv.token:
        pytest.skip("the server was given no --token")
    for method, path, body, headers in _auth_cases(srv):
        h = {**headers, **({"Authorization": authorization} if authorization else {})}
        r = raw(srv, method, path, body, h, auth=False)
        assert_error(r, 401, "unauthorized")
    # With the token the same requests get past auth.
    for method, path, body, headers in _auth_cases(srv):
        assert raw(srv, method, path, body, headers).status != 401, path


def test_a_bad_request_keeps_the_server_serving(srv: Server) -> None:
    """After every kind of bad request in this suite, a good job still runs."""
    for body, ctype in ((b"\0" * 64, CONTAINER), (b"{", "application/json"), (b"x", "text/plain")):
        assert 400 <= srv.submit(body, ctype).status < 500
    job = srv.start()
    assert srv.wait(job["id"])["status"] == "succeeded"
    assert json.loads(srv.get("/healthz", auth=False).body) == {"status": "ok"}
