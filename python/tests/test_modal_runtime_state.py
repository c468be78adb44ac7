"""The Modal runtime's parts that need no ComfyUI: job records and their event ids, the stand-in store's
doorbells, Modal object names, and the native rules the web front takes (no GPU, no network)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from comfy_remote.modal_runtime.local import LocalStore
from comfy_remote.modal_runtime.state import Record, event_id, parse_event_id

QUEUED = {"status": "queued", "progress": {"fraction": 0.0, "phase": "queued"}}
RUNNING = {"status": "running", "progress": {"fraction": 0.0, "phase": "starting"}}
STEP = {"status": "running", "progress": {"fraction": 0.5, "phase": "running"}}
DONE = {"status": "succeeded", "progress": {"fraction": 1.0, "phase": "done"}}


def test_records_name_what_changed_and_their_event_ids_only_grow() -> None:
    r1 = Record(0).after(QUEUED)
    r2 = r1.after(RUNNING)
    r3 = r2.after(STEP)
    r4 = r3.with_preview({"mime": "image/jpeg", "data": "AA=="})
    r5 = r4.after(DONE)
    assert [r.events for r in (r1, r2, r3, r4, r5)] == [
        ["status"], ["status", "progress"], ["progress"], ["preview"], ["status", "progress", "done"]]
    ids = [event_id(r.seq, name) for r in (r1, r2, r3, r4, r5) for name in r.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert r5.terminal and not r4.terminal and r4.view == STEP
    assert Record.from_json(r4.to_json()) == r4
    assert r3.after(STEP).events == []  # nothing changed: nothing to write


@pytest.mark.parametrize("text,parsed", [
    ("21", (5, 1)), ("20", (5, 0)), ("23", (5, 3)), (" 22 ", (5, 2)),
    (None, None), ("", None), ("-1", None), ("x", None), ("1.5", None)])
def test_last_event_ids_name_a_record_and_a_slot(text: str | None, parsed: tuple[int, int] | None) -> None:
    assert parse_event_id(text) == parsed


def test_a_ring_wakes_a_watcher_on_another_thread_and_is_not_lost_before_the_wait() -> None:
    store = LocalStore()

    async def watch() -> list[bool]:
        async with store.watch("job") as bell:
            got = [await bell.wait(0, 0.01)]  # nothing rung yet: times out
            threading.Timer(0.05, lambda: asyncio.run(store.ring("job", 1))).start()
            got.append(await bell.wait(0, 30))  # woken by the other thread
            await store.ring("job", 2)
            got.append(await bell.wait(1, 0))  # rung before the wait: returns at once
            got.append(await bell.wait(2, 0.01))
            return got

    assert asyncio.run(watch()) == [False, True, True, False]


def test_the_stand_in_store_holds_json_text_only() -> None:
    store = LocalStore()
    with pytest.raises(TypeError, match="JSON text"):
        asyncio.run(store.put("k", {"a": 1}))  # type: ignore[arg-type]
    assert asyncio.run(store.put_if_absent("k", "1")) is True
    assert asyncio.run(store.put_if_absent("k", "2")) is False
    assert asyncio.run(store.get("k")) == "1"


def test_modal_object_names_stay_under_modals_limit_and_apart() -> None:
    pytest.importorskip("modal")
    from comfy_remote.modal_runtime.modal_backend import ModalStore, object_name

    assert object_name("my-app-jobs", "-bells") == "my-app-jobs-bells"
    long_a, long_b = "a" * 60 + "-x-jobs", "a" * 60 + "-y-jobs"
    assert len(object_name(long_a, "-bells")) < 64 and object_name(long_a, "-bells").endswith("-bells")
    assert object_name(long_a, "-bells") != object_name(long_b, "-bells")
    ModalStore("my-app-jobs")  # lazy: no network until first use


def test_the_native_rules_of_the_front() -> None:
    from comfy_remote import _native

    wf = json.dumps({
        "1": {"class_type": "RemoteInput", "inputs": {"name": "image", "type": "IMAGE"}},
        "2": {"class_type": "RemoteOutput", "inputs": {"name": "image", "value": ["1", 0]}},
    })
    front = _native.Front("wf.json", wf, max_body_bytes=1000, token="tok")
    front.check_auth("Bearer tok")
    front.check_auth("Bearer  tok ")
    for bad in (None, "Bearer nope", "tok", "Basic tok"):
        with pytest.raises(_native.ApiError) as e:
            front.check_auth(bad)
        assert e.value.status == 401 and json.loads(e.value.body)["error"]["code"] == "unauthorized"
    with pytest.raises(_native.ApiError) as e:
        front.check_content_length("container", "1001")
    assert e.value.status == 413 and json.loads(e.value.body)["error"]["details"] == {"max_body_bytes": 1000}
    assert front.media_kind("application/json; charset=utf-8") == "json"
    with pytest.raises(_native.ApiError) as e:
        front.media_kind("text/plain")
    assert e.value.status == 415
    err = _native.api_error("conflict", "taken", json.dumps({"job_id": "j"}))
    assert (err.status, err.code, json.loads(err.body)) == (
        409, "conflict", {"error": {"code": "conflict", "message": "taken", "details": {"job_id": "j"}}})
    assert _native.api_error("expired", "gone").status == 410
    assert _native.api_error("not_ready", "wait").retry_after == 1
    info = json.loads(front.info_json())
    assert info["limits"]["max_body_bytes"] == 1000 and [i["name"] for i in info["inputs"]] == ["image"]
    # A published info for another workflow is not used.
    other = {**info, "workflow": {"name": "wf.json", "sha256": "0" * 64},
             "outputs": [{**info["outputs"][0], "type": "IMAGE"}]}
    assert json.loads(front.info_json(json.dumps(other)))["outputs"][0]["type"] == "*"
    same = {**other, "workflow": info["workflow"]}
    assert json.loads(front.info_json(json.dumps(same)))["outputs"][0]["type"] == "IMAGE"
