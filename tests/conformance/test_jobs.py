"""Conformance, docs/protocol.md §4.2 and §4.4-4.5: job views, results, cancel."""

from __future__ import annotations

import base64

import pytest

from protocol_client import CONTAINER, Server, assert_error, check_view, image, job_body, read_container, wait_until

# Long enough to be running for the whole case; canceled at the end.
SLOW = {"steps": 400, "seconds_per_step": 0.05}


def running(srv: Server, job_id: str) -> dict:
    return srv.wait(job_id, ("running", "succeeded", "failed", "canceled"))


def test_a_succeeded_job_has_its_result_as_the_outputs_container(srv: Server) -> None:
    img = image(12, 20, seed=5)
    job = srv.start(job_body(img, steps=3))
    done = srv.wait(job["id"])
    assert done["status"] == "succeeded", done
    check_view(done, job["id"])
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["phase"] == "done", done["progress"]
    assert done["result"]["url"] == done["urls"]["result"]
    assert [(o["name"], o["type"]) for o in done["result"]["outputs"]] == [("image", "IMAGE")]
    assert done.get("error") is None
    r = srv.get(f"/v1/jobs/{job['id']}/result")
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"].split(";")[0] == CONTAINER
    assert int(r.headers["content-length"]) == len(r.body)
    outputs = read_container(r.body)
    assert list(outputs) == ["image"]
    typ, out = outputs["image"]
    assert typ == "IMAGE"
    # The test nodes pass the image through: the same tensor, bit for bit.
    assert (out.dtype, out.shape, out.data) == (img.dtype, img.shape, img.data)


def test_a_result_asked_for_as_json_is_the_base64_form(srv: Server) -> None:
    job = srv.start()
    assert srv.wait(job["id"])["status"] == "succeeded"
    binary = srv.get(f"/v1/jobs/{job['id']}/result").body
    r = srv.get(f"/v1/jobs/{job['id']}/result", {"Accept": "application/json"})
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    form = r.json()
    assert form["format"] == "comfy-remote/1+base64"
    assert base64.b64decode(form["data"]) == binary


def test_the_result_of_an_unfinished_job_is_409_conflict(srv: Server) -> None:
    job = srv.start(**SLOW)
    assert srv.job(job["id"])["status"] in ("queued", "running")
    assert_error(srv.get(f"/v1/jobs/{job['id']}/result"), 409, "conflict")


def test_a_failed_job_reports_its_error_and_its_result_is_409_with_it(srv: Server) -> None:
    job = srv.start(fail=True)
    done = srv.wait(job["id"])
    assert done["status"] == "failed", done
    check_view(done, job["id"])
    assert done["error"]["code"] == "execution_failed", done["error"]
    assert "CRTestFail" in done["error"]["message"] or "failing on request" in done["error"]["message"], done["error"]
    text = str(done["error"])
    assert "Traceback" not in text and '.py"' not in text, text
    err = assert_error(srv.get(f"/v1/jobs/{job['id']}/result"), 409, "conflict")
    assert err["details"] == done["error"]


def test_a_running_job_is_canceled_through_canceling(srv: Server) -> None:
    job = srv.start(**SLOW)
    assert running(srv, job["id"])["status"] == "running"
    r = srv.cancel(job["id"])
    assert r.status == 202, r.body
    check_view(r.json(), job["id"])
    assert r.json()["status"] in ("canceling", "canceled"), r.json()
    again = srv.cancel(job["id"])
    assert again.status == 202 and again.json()["status"] in ("canceling", "canceled"), again.body
    end = srv.wait(job["id"])
    assert end["status"] == "canceled", end
    assert end["error"]["code"] == "canceled", end
    err = assert_error(srv.get(f"/v1/jobs/{job['id']}/result"), 409, "conflict")
    assert err["details"] == end["error"]
    # Its events end with that `done`.
    events = srv.events(job["id"])
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "canceled", events[-1]


def test_a_queued_job_is_canceled_without_running(srv: Server) -> None:
    ahead = srv.start(**SLOW)
    running(srv, ahead["id"])
    queued = srv.start(**SLOW)
    assert srv.job(queued["id"])["status"] == "queued"
    r = srv.cancel(queued["id"])
    assert r.status == 202, r.body
    assert r.json()["status"] in ("canceled", "canceling"), r.json()
    assert srv.wait(queued["id"])["status"] == "canceled"
    # It never ran: the job ahead still is.
    assert srv.job(ahead["id"])["status"] == "running"


def test_canceling_a_finished_job_returns_it_unchanged(srv: Server) -> None:
    job = srv.start()
    done = srv.wait(job["id"])
    assert done["status"] == "succeeded"
    r = srv.cancel(job["id"])
    assert r.status == 202, r.body
    assert r.json()["status"] == "succeeded" and r.json()["result"]["outputs"] == done["result"]["outputs"]
    assert srv.get(f"/v1/jobs/{job['id']}/result").status == 200
    failed = srv.start(fail=True)
    srv.wait(failed["id"])
    r = srv.cancel(failed["id"])
    assert r.status == 202 and r.json()["status"] == "failed" and r.json()["error"]["code"] == "execution_failed"


def test_a_view_is_complete_on_every_poll(srv: Server) -> None:
    job = srv.start(steps=3)
    seen = []

    def poll() -> bool:
        v = srv.job(job["id"])
        check_view(v, job["id"])
        seen.append(v["status"])
        return v["status"] in ("succeeded", "failed", "canceled", "expired")

    wait_until(poll, "the job to end", interval=0.01)
    assert seen[-1] == "succeeded", seen


@pytest.mark.late
def test_the_result_of_an_expired_job_is_410_expired(srv: Server) -> None:
    if srv.expired_job is None:
        pytest.skip("pass --expired-job JOB_ID (a job whose result the server has dropped) to check 410")
    job = srv.wait(srv.expired_job, ("expired",))
    check_view(job, srv.expired_job)
    assert job["error"]["code"] == "expired", job
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["phase"] == "done"
    assert_error(srv.get(f"/v1/jobs/{srv.expired_job}/result"), 410, "expired")
    # Canceling it changes nothing.
    r = srv.cancel(srv.expired_job)
    assert r.status == 202 and r.json()["status"] == "expired"
