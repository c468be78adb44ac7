"""Comfy API v2 through its official client, comfy-sdk (pinned in requirements-test.txt), against both
servers: a user's script that only sets ``COMFY_BASE_URL`` (upload an image, set inputs, run, stream
events, download the outputs, cancel, retry under one Idempotency-Key)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from protocol_client import WORKFLOW, Server, image
from v2_client import png, read_png

comfy_sdk = pytest.importorskip("comfy_sdk", reason="comfy-sdk is not installed (pip install -r requirements-test.txt)")


@pytest.fixture
def comfy(srv: Server, monkeypatch: pytest.MonkeyPatch):
    """A comfy-sdk client pointed at the server by COMFY_BASE_URL, as a user does."""
    monkeypatch.setenv("COMFY_BASE_URL", srv.url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    c = comfy_sdk.Comfy(api_key=srv.token) if srv.token else comfy_sdk.Comfy()
    yield c
    c.close()


def track(srv: Server, job) -> None:
    """Let the suite cancel and wait for what the case left running."""
    srv.started.append(job.id)


def picture(tmp_path: Path, seed: int = 0, h: int = 8, w: int = 12) -> Path:
    p = tmp_path / f"photo-{seed}.png"
    p.write_bytes(png(image(h, w, seed=seed)))
    return p


def test_a_script_uploads_an_image_sets_inputs_runs_and_downloads(srv: Server, comfy, tmp_path: Path) -> None:
    photo = picture(tmp_path, seed=7)
    wf = comfy.workflows.from_file(WORKFLOW)
    asset = comfy.assets.from_file(photo)
    wf.set_input("1", "default", asset)   # the Remote Input `image`
    wf.set_input("3", "value", 3)         # the primitive that feeds `steps`
    job = comfy.run(wf)
    track(srv, job)
    assert job.status == "succeeded"
    assert asset.id and asset.hash and asset.hash.startswith("blake3:")
    [out] = job.get_outputs("10")
    assert (out.type, out.content_type, out.name) == ("image", "image/png", "image.png")
    saved = out.to_file(tmp_path / "out.png")
    assert read_png(saved.read_bytes()) == read_png(photo.read_bytes())
    assert out.to_bytes(range=(0, 7)) == saved.read_bytes()[:8]
    # The same bytes again: found by hash, not uploaded twice.
    again = comfy.assets.from_file(photo)
    again.commit()
    assert again.hash == asset.hash and again.created_new is False
    assert comfy.jobs.get(job.id).status == "succeeded"
    assert job.get_workflow().graph["3"]["inputs"]["value"] == 3


def test_a_script_streams_progress_previews_and_outputs(srv: Server, comfy, tmp_path: Path) -> None:
    wf = comfy.workflows.from_file(WORKFLOW)
    wf.set_input("1", "default", comfy.assets.from_file(picture(tmp_path, seed=2)))
    wf.set_input("3", "value", 5)
    wf.set_input("5", "value", 0.05)
    job = comfy.submit(wf)
    track(srv, job)
    seen = list(job.events())
    kinds = [type(e).__name__ for e in seen]
    assert isinstance(seen[-1], comfy_sdk.StatusChange) and seen[-1].status == "succeeded", kinds
    progress = [e for e in seen if isinstance(e, comfy_sdk.Progress)]
    assert any(p.current_node == "8" and p.steps == 5 and p.step for p in progress), progress
    assert [p.value for p in progress] == sorted(p.value for p in progress)
    previews = [e for e in seen if isinstance(e, comfy_sdk.Preview)]
    assert previews and previews[0].node_id == "8" and previews[0].data[:2] in (b"\xff\xd8", b"\x89P"), kinds
    [ready] = [e for e in seen if isinstance(e, comfy_sdk.OutputReady)]
    assert ready.output.node_id == "10" and ready.output.to_bytes()[:4] == b"\x89PNG"


def test_a_script_cancels_a_running_job(srv: Server, comfy, tmp_path: Path) -> None:
    wf = comfy.workflows.from_file(WORKFLOW)
    wf.set_input("1", "default", comfy.assets.from_file(picture(tmp_path, seed=3)))
    wf.set_input("3", "value", 400)
    wf.set_input("5", "value", 0.05)
    job = comfy.submit(wf)
    track(srv, job)
    for ev in job.events():
        if isinstance(ev, comfy_sdk.Progress) and ev.step:
            break
    job.cancel()
    assert job.status in ("canceling", "canceled")
    with pytest.raises(comfy_sdk.JobFailed):
        job.result()
    assert job.status == "canceled" and job.outputs == []


def test_a_retry_under_the_same_key_is_refused_and_a_refused_submit_frees_it(srv: Server, comfy, tmp_path: Path) -> None:
    wf = comfy.workflows.from_file(WORKFLOW)
    wf.set_input("1", "default", comfy.assets.from_file(picture(tmp_path, seed=4)))
    key = str(uuid.uuid4())
    first = comfy.submit(wf, idempotency_key=key)
    track(srv, first)
    with pytest.raises(comfy_sdk.IdempotencyKeyReuse) as reused:
        comfy.submit(wf, idempotency_key=key)
    assert reused.value.http_status == 422
    assert first.result().status == "succeeded"
    # A submit the server refused made no job: its key can be used again.
    other = str(uuid.uuid4())
    wrong = comfy.workflows.from_json(json.loads(json.dumps(wf.json, default=lambda a: a.as_reference())))
    wrong.set_input("8", "seconds_per_step", 9.0)  # not an input of the served workflow
    with pytest.raises(comfy_sdk.InvalidWorkflow) as refused:
        comfy.submit(wrong, idempotency_key=other)
    assert "node 8 (CRTestSlow)" in str(refused.value)
    again = comfy.submit(wf, idempotency_key=other)
    track(srv, again)
    assert again.result().status == "succeeded"


def test_a_ui_format_workflow_and_an_unknown_asset_are_typed_errors(srv: Server, comfy) -> None:
    ui = comfy.workflows.from_json({"nodes": [], "links": [], "last_node_id": 0})
    with pytest.raises(comfy_sdk.WorkflowFormatUi):
        comfy.submit(ui)
    wf = comfy.workflows.from_file(WORKFLOW)
    wf.set_input("1", "default", {"__type": "core/ASSET", "info": {"id": str(uuid.uuid4())}})
    with pytest.raises(comfy_sdk.MissingAsset):
        comfy.submit(wf)
