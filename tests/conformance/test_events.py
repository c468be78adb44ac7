"""Conformance, docs/protocol.md §4.3: the event stream, its ids and `Last-Event-ID`."""

from __future__ import annotations

import pytest

from protocol_client import TERMINAL, TRANSITIONS, Server, check_view, raw


def check_stream(events: list[dict], job_id: str) -> None:
    """What every stream of a job obeys: ids increase, `status` first, `done` last, views and progress well formed."""
    assert events, "no events"
    ids = [int(e["id"]) for e in events if e.get("id") is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert all(e.get("id") is not None for e in events if e["event"] != "error"), events
    assert events[-1]["event"] == "done", [e["event"] for e in events]
    assert [e["event"] for e in events].count("done") == 1
    statuses = []
    last_fraction = 0.0
    for e in events:
        if e["event"] in ("status", "done"):
            check_view(e["data"], job_id)
            statuses.append(e["data"]["status"])
        elif e["event"] == "progress":
            p = e["data"]
            assert {"value", "max", "fraction", "phase"} <= set(p), p
            if statuses and statuses[-1] in ("running", "queued"):
                assert p["fraction"] >= last_fraction, (p, last_fraction)
            last_fraction = p["fraction"]
        elif e["event"] == "preview":
            assert e["data"]["mime"] in ("image/png", "image/jpeg") and e["data"]["data"], e["data"]
    assert events[-1]["data"]["status"] in TERMINAL
    for a, b in zip(statuses, statuses[1:]):
        assert a == b or b in TRANSITIONS.get(a, set()), statuses


def test_a_stream_follows_the_job_to_done(srv: Server) -> None:
    job = srv.start(steps=5, seconds_per_step=0.05)
    events = srv.events(job["id"])
    check_stream(events, job["id"])
    assert events[0]["event"] == "status"
    done = events[-1]["data"]
    assert done["status"] == "succeeded" and done["progress"]["fraction"] == 1.0
    view = srv.job(job["id"])
    assert (view["status"], view["result"]["outputs"]) == (done["status"], done["result"]["outputs"])
    # Progress per node and step: the test node's five steps.
    steps = [(p["node"]["id"], p["step"]["value"], p["step"]["max"]) for e in events if e["event"] == "progress"
             for p in [e["data"]] if p.get("node") and p.get("step")]
    assert any(node == "8" and most == 5 and 1 <= k <= 5 for node, k, most in steps), steps
    assert any(e["data"]["phase"] == "running" for e in events if e["event"] == "progress"), events


def test_a_stream_of_a_failed_job_ends_with_done_failed(srv: Server) -> None:
    job = srv.start(fail=True)
    events = srv.events(job["id"])
    check_stream(events, job["id"])
    assert events[-1]["data"]["status"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "execution_failed"


def test_a_stream_opened_on_a_finished_job_replays_it_and_ends_with_done(srv: Server) -> None:
    job = srv.start()
    srv.wait(job["id"])
    events = srv.events(job["id"])
    check_stream(events, job["id"])
    assert events[0]["event"] == "status"
    assert events[-1]["data"]["status"] == "succeeded"


def test_the_stream_is_text_event_stream(srv: Server) -> None:
    job = srv.start()
    srv.wait(job["id"])
    r = raw(srv, "GET", f"/v1/jobs/{job['id']}/events", None, {"Accept": "text/event-stream"})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream"), r.headers
    assert b"event: done" in r.body


def test_last_event_id_resumes_after_that_event(srv: Server) -> None:
    job = srv.start(steps=6, seconds_per_step=0.05)
    original = srv.events(job["id"])
    check_stream(original, job["id"])
    # Previews MAY be left out of a replay: compare the rest.
    seen = [(int(e["id"]), e["event"]) for e in original if e["event"] != "preview"]
    # The event before `done`: exactly what came after it.
    tail = srv.events(job["id"], last_event_id=str(seen[-2][0]))
    assert [(int(e["id"]), e["event"]) for e in tail if e["event"] != "preview"] == seen[-1:], tail
    for k, (last_id, _) in enumerate(seen[:-1]):
        resumed = srv.events(job["id"], last_event_id=str(last_id))
        check_stream(resumed, job["id"])
        got = [(int(e["id"]), e["event"]) for e in resumed if e["event"] != "preview"]
        assert all(i > last_id for i, _ in got), (last_id, got)
        assert resumed[-1]["data"]["status"] == "succeeded", got
        after = seen[k + 1:]
        if got != after:
            # Events the server no longer holds: a `status` snapshot first, then what it holds after it.
            assert got[0][1] == "status", (last_id, got, after)
            rest = got[1:]
            assert rest == after[len(after) - len(rest):], (last_id, got, after)


@pytest.mark.parametrize("last_event_id", ["999999999999999", "not-a-number", "-1"])
def test_an_unknown_last_event_id_starts_with_a_status_snapshot(srv: Server, last_event_id: str) -> None:
    job = srv.start()
    srv.wait(job["id"])
    events = srv.events(job["id"], last_event_id=last_event_id)
    assert events and events[0]["event"] == "status", events
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "succeeded"
