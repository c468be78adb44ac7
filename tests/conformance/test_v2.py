"""Conformance, docs/protocol.md §5.1: Comfy API v2 as both servers serve it (jobs of the served
workflow, errors, single-use keys, assets, outputs, events, cancel)."""

from __future__ import annotations

import json

import pytest

from protocol_client import Server, image, raw
from v2_client import (
    BLAKE3,
    V2,
    assert_v2_error,
    check_job,
    events,
    graph,
    job,
    job_graph,
    png,
    read_png,
    start,
    submit,
    upload,
    wait,
)

SLOW = {"steps": 400, "seconds": 0.05}


def uploaded(srv: Server, data: bytes) -> dict:
    r = upload(srv, data)
    assert r.status in (200, 201), (r.status, r.body[:300])
    return r.json()


def photo(srv: Server) -> str:
    """An uploaded image's asset id, for the workflow's one required input."""
    return str(uploaded(srv, png(image(8, 8, seed=5)))["id"])


def test_health_needs_no_token_and_jobs_do(srv: Server) -> None:
    r = srv.get(V2 + "/health", auth=False)
    assert r.status == 200 and r.json()["status"] == "healthy"
    if srv.token is None:
        pytest.skip("the server has no token (pass --token)")
    r = raw(srv, "POST", V2 + "/jobs", json.dumps({"workflow": graph()}).encode(),
            {"Content-Type": "application/json"}, auth=False)
    assert_v2_error(r, 401, "unauthorized")
    assert_v2_error(srv.get(V2 + "/jobs/7f3d2c1b-9a8e-4d6f-b012-3c4d5e6f7a8b"), 404, "not_found")
    assert_v2_error(srv.get(V2 + "/assets/not-an-id"), 404, "not_found")


def test_the_served_workflow_with_other_inputs_runs_and_its_outputs_are_assets(srv: Server) -> None:
    picture = png(image(6, 10, seed=3))
    asset = uploaded(srv, picture)
    r = submit(srv, job_graph(image_asset=asset["id"], steps=3))
    assert r.status == 201, r.body[:500]
    created = r.json()
    check_job(created)
    assert created["status"] in ("queued", "running")
    assert r.headers["location"] == created["urls"]["self"]
    done = wait(srv, created["id"])
    check_job(done, created["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["value"] == 1.0 and done["completed_at"] and done["started_at"], done
    assert done["metrics"]["execution_ms"] is not None, done["metrics"]
    [out] = done["outputs"]
    assert (out["node_id"], out["type"], out["content_type"], out["name"]) == ("10", "image", "image/png", "image.png")
    assert out["job_id"] == created["id"] and BLAKE3.fullmatch(out["hash"]), out
    content = srv.get(f"{V2}/assets/{out['id']}/content")
    assert content.status == 200 and len(content.body) == out["size_bytes"]
    # The test node passes the image through: the same pixels come back.
    assert read_png(content.body) == read_png(picture)
    # Every poll gives the same outputs; the output is an asset too.
    assert job(srv, created["id"])["outputs"] == done["outputs"]
    a = srv.get(f"{V2}/assets/{out['id']}").json()
    assert (a["id"], a["hash"], a["job_id"]) == (out["id"], out["hash"], created["id"])
    # Its workflow is the graph as submitted.
    w = srv.get(f"{V2}/jobs/{created['id']}/workflow").json()
    assert w["format"] == "api" and w["workflow"]["3"]["inputs"]["value"] == 3
    # And the job is the v1 job of the same id.
    v1 = srv.get(f"/v1/jobs/{created['id']}").json()
    assert v1["status"] == "succeeded"


def test_another_graph_is_refused_naming_what_differs(srv: Server) -> None:
    g = graph(**{"8": {"steps": ["2", 0], "seconds_per_step": 1.5}})
    err = assert_v2_error(submit(srv, g), 422, "invalid_workflow")
    assert "node 8 (CRTestSlow)" in err["message"] and "seconds_per_step" in err["message"], err
    g = graph()
    g["99"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}
    err = assert_v2_error(submit(srv, g), 422, "invalid_workflow")
    assert "node 99 (SaveImage)" in err["message"], err
    err = assert_v2_error(submit(srv, job_graph(photo(srv), steps="many")), 422, "invalid_workflow")  # type: ignore[arg-type]
    assert err["details"]["input"] == "steps", err


@pytest.mark.parametrize("body,status,code", [
    ({"workflow": "x"}, 422, "invalid_workflow"),
    ({"prompt": {}}, 422, "invalid_workflow"),
    ({"workflow": {"1": {}}, "inputs": {"steps": 1}}, 422, "invalid_workflow"),
    ({"workflow": {"1": {}}, "webhook_url": "http://example.com"}, 422, "invalid_workflow"),
    ({"workflow": {"1": {}}, "extra_data": {"other": 1}}, 400, "invalid_request"),
])
def test_bodies_are_checked_as_the_contract_says(srv: Server, body: dict, status: int, code: str) -> None:
    assert_v2_error(submit(srv, body=json.dumps(body).encode()), status, code)


def test_a_ui_format_graph_is_converted_or_refused_by_name(srv: Server) -> None:
    """The worker converts a UI graph with its ComfyUI's node definitions (this one has no nodes);
    the Modal front, with no ComfyUI of its own, refuses the format by name."""
    body = json.dumps({"workflow": {"nodes": [], "links": [], "last_node_id": 1}}).encode()
    r = submit(srv, body=body)
    either = r.json().get("error", {}).get("code") if srv.kind == "url" else None
    code = {"worker": "invalid_workflow", "modal": "workflow_format_ui"}.get(srv.kind, either)
    err = assert_v2_error(r, 422, code if code in ("invalid_workflow", "workflow_format_ui") else "workflow_format_ui")
    if err["code"] == "invalid_workflow":
        assert "no nodes" in err["message"], err
    else:
        assert "Export (API)" in err["message"], err


def test_a_body_that_is_not_json_or_of_another_type_is_refused(srv: Server) -> None:
    assert_v2_error(submit(srv, body=b"{not json"), 400, "invalid_request")
    assert_v2_error(submit(srv, body=b"x", content_type="text/plain"), 415, "unsupported_media_type")


def test_keys_are_single_use_and_a_refused_submit_frees_its_key(srv: Server) -> None:
    key = "conformance-" + srv.kind + "-" + str(id(srv)) + "-a"
    pic = photo(srv)
    first = submit(srv, job_graph(pic, steps=2), key=key)
    assert first.status == 201, first.body[:300]
    again = submit(srv, job_graph(pic, steps=2), key=key)
    assert_v2_error(again, 422, "idempotency_key_reuse")
    other = submit(srv, job_graph(pic, steps=9), key=key)
    assert_v2_error(other, 422, "idempotency_key_reuse")
    wait(srv, first.json()["id"])
    # A refused submit made no job: its key is free.
    key2 = key[:-1] + "b"
    assert_v2_error(submit(srv, job_graph(pic, steps="x"), key=key2), 422, "invalid_workflow")  # type: ignore[arg-type]
    ok = submit(srv, job_graph(pic, steps=2), key=key2)
    assert ok.status == 201, ok.body[:300]
    assert_v2_error(submit(srv, job_graph(pic), key="tab\tkey"), 400, "invalid_request")


def test_assets_are_content_addressed(srv: Server) -> None:
    data = png(image(5, 7, seed=11))
    r = upload(srv, data)
    assert r.status in (200, 201), r.body[:300]
    a = r.json()
    assert BLAKE3.fullmatch(a["hash"]) and a["size_bytes"] == len(data) and a["content_type"] == "image/png", a
    assert a["url"].endswith(f"{V2}/assets/{a['id']}/content") and a["file_path"] == "in.png", a
    again = upload(srv, data, expected_hash=a["hash"])
    assert again.status == 200 and again.json()["created_new"] is False and again.json()["hash"] == a["hash"]
    assert raw(srv, "HEAD", f"{V2}/assets/by-hash/{a['hash']}").status == 200
    unknown = "blake3:" + "0" * 64
    assert raw(srv, "HEAD", f"{V2}/assets/by-hash/{unknown}").status == 404
    minted = raw(srv, "POST", f"{V2}/assets/from-hash", json.dumps({"hash": a["hash"], "file_path": "b.png"}).encode(),
                 {"Content-Type": "application/json"})
    assert minted.status in (200, 201) and minted.json()["hash"] == a["hash"], minted.body[:300]
    assert minted.json()["id"] != a["id"]
    assert_v2_error(raw(srv, "POST", f"{V2}/assets/from-hash", json.dumps({"hash": unknown}).encode(),
                        {"Content-Type": "application/json"}), 404, "blob_not_found")
    assert srv.get(f"{V2}/assets/{a['id']}").json()["hash"] == a["hash"]
    assert_v2_error(upload(srv, data, expected_hash=unknown), 409, "hash_mismatch")


def test_asset_content_is_served_whole_and_in_ranges(srv: Server) -> None:
    data = png(image(9, 9, seed=1))
    a = uploaded(srv, data)
    url = f"{V2}/assets/{a['id']}/content"
    whole = srv.get(url)
    assert (whole.status, whole.body) == (200, data)
    assert whole.headers["content-type"].startswith("image/png")
    part = srv.get(url, {"Range": "bytes=2-9"})
    assert (part.status, part.body) == (206, data[2:10])
    assert part.headers["content-range"] == f"bytes 2-9/{len(data)}"
    tail = srv.get(url, {"Range": "bytes=-4"})
    assert (tail.status, tail.body) == (206, data[-4:])
    assert srv.get(url, {"Range": f"bytes={len(data) + 10}-"}).status == 416


def test_a_deleted_asset_is_gone_and_a_missing_one_refuses_the_job(srv: Server) -> None:
    a = uploaded(srv, png(image(4, 4, seed=4)))
    assert raw(srv, "DELETE", f"{V2}/assets/{a['id']}").status == 204
    assert_v2_error(srv.get(f"{V2}/assets/{a['id']}"), 404, "not_found")
    assert raw(srv, "DELETE", f"{V2}/assets/{a['id']}").status == 404
    err = assert_v2_error(submit(srv, job_graph(image_asset=a["id"])), 422, "missing_asset")
    assert a["id"] in err["details"]["missing_ids"], err
    bad = graph(**{"1": {"default": {"__type": "core/ASSET"}}})
    assert_v2_error(submit(srv, bad), 422, "missing_asset")


def test_a_stream_gives_snapshots_previews_outputs_and_ends_with_the_terminal_status(srv: Server) -> None:
    a = uploaded(srv, png(image(8, 8, seed=2)))
    created = start(srv, job_graph(image_asset=a["id"], steps=5, seconds=0.05))
    evs = events(srv, created["id"])
    names = [e["event"] for e in evs]
    assert all(e.get("id") is None for e in evs), "v2 events carry no ids"
    assert names[0] == "status" and names[-1] == "status", names
    assert evs[-1]["data"]["status"] == "succeeded"
    assert names.count("status") >= 2 and "output" in names and "preview" in names, names
    progress = [e["data"] for e in evs if e["event"] == "progress"]
    values = [p["value"] for p in progress]
    assert values == sorted(values) and values[-1] == 1.0, values
    steps = [(p["current_node"], p["step"], p["steps"]) for p in progress if p.get("step") is not None]
    assert any(node == "8" and most == 5 for node, _, most in steps), steps
    assert all({"value", "nodes_done", "nodes_total"} <= set(p) for p in progress), progress
    preview = next(e["data"] for e in evs if e["event"] == "preview")
    assert preview["content_type"] in ("image/jpeg", "image/png") and preview["data_base64"], preview
    [out] = [e["data"] for e in evs if e["event"] == "output"]
    assert out == job(srv, created["id"])["outputs"][0]
    # A stream of a finished job: its outputs and its status.
    late = events(srv, created["id"])
    assert [e["event"] for e in late][-1] == "status" and late[-1]["data"]["status"] == "succeeded"
    assert [e["data"] for e in late if e["event"] == "output"] == [out]


def test_a_failed_job_carries_the_node_and_no_traceback(srv: Server) -> None:
    created = start(srv, job_graph(photo(srv), fail=True))
    done = wait(srv, created["id"])
    check_job(done, created["id"])
    assert done["status"] == "failed", done
    e = done["error"]
    assert (e["code"], e["node_id"], e["class_type"], e["traceback"]) == ("execution_failed", "9", "CRTestFail", None), e
    assert "failing on request" in e["message"], e


def test_a_running_job_is_canceled(srv: Server) -> None:
    created = start(srv, job_graph(photo(srv), steps=SLOW["steps"], seconds=SLOW["seconds"]))
    wait(srv, created["id"], ("running",))
    r = srv.post(f"{V2}/jobs/{created['id']}/cancel")
    assert r.status == 200, r.body[:300]
    check_job(r.json(), created["id"])
    assert r.json()["status"] in ("canceling", "canceled"), r.json()
    again = srv.post(f"{V2}/jobs/{created['id']}/cancel")
    assert again.status == 200 and again.json()["status"] in ("canceling", "canceled")
    end = wait(srv, created["id"])
    assert end["status"] == "canceled" and end["outputs"] == [], end
    # Canceling a finished job changes nothing.
    assert srv.post(f"{V2}/jobs/{created['id']}/cancel").json()["status"] == "canceled"


def test_a_queued_job_reports_its_place(srv: Server) -> None:
    from harness import sse

    ahead = start(srv, job_graph(photo(srv), steps=SLOW["steps"], seconds=SLOW["seconds"]))
    wait(srv, ahead["id"], ("running",))
    queued = start(srv, job_graph(photo(srv), steps=2))
    j = job(srv, queued["id"])
    if j["status"] == "queued":
        # The place where the server knows it; the contract allows null (the Modal front's jobs wait in
        # Modal's own queue, whose order it does not see).
        if srv.kind == "worker":
            assert isinstance(j["queue_position"], int) and j["queue_position"] >= 0, j
        else:
            assert j["queue_position"] is None or j["queue_position"] >= 0, j
    stream = sse(f"{srv.url}{V2}/jobs/{queued['id']}/events", srv.auth())
    first = next(stream)
    stream.close()
    assert first["event"] == "status" and first["data"]["status"] in ("queued", "running"), first
