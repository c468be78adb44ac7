"""UI-format workflows (what ComfyUI's Save writes), held to ComfyUI's own frontend.

- Over the whole corpus (the templates ComfyUI's `comfyui-workflow-templates` packages ship, in
  ComfyUI's environment, and the hand-made cases of tests/ui_workflows/): our conversion
  (`_native.ui_to_api`, the Rust code `serve` and `deploy` use) against the frontend's
  `graphToPrompt()` output recorded in tests/ui_oracle/oracle.json by scripts/ui_oracle.py.
- Live, in headless Chromium against the same ComfyUI: every hand-made case and a sample of
  templates loaded with `app.loadGraphData` and converted by the frontend while we watch.
- `comfy-remote serve` runs a remote workflow saved in the UI format and returns its result.

Each prints the number of workflows compared and matched. Needs COMFYUI_DIR; the live part also
/usr/bin/chromium.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import ui_oracle  # noqa: E402
from harness import start_comfyui  # noqa: E402
from harness import frontend  # noqa: E402

# Templates of the live sample: subgraphs (nested, promoted widgets), bypassed and muted nodes,
# PrimitiveNode, Reroute, dynamic combos, notes.
LIVE_TEMPLATES = [
    "image_z_image.json",
    "image_flux2_klein_text_to_image.json",
    "api_anthropic_claude.json",
    "video_kandinsky5_i2v.json",
    "templates-photo_to_product_vid.json",
    "image_boogu_image_0_1_turbo_t2i.json",
]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, comfyui_dir, comfy_python):
    c = start_comfyui(comfy_python, comfyui_dir, tmp_path_factory.mktemp("ui-format"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def object_info(comfy) -> str:
    return urllib.request.urlopen(f"{comfy.url}/object_info", timeout=60).read().decode()


@pytest.fixture(scope="module")
def templates(comfy_python) -> Path | None:
    return ui_oracle.templates_dir(comfy_python)


def _report(capsys: pytest.CaptureFixture[str], title: str, compared: int, matched: int, extra: str = "") -> None:
    # Printed on the terminal even when pytest captures output.
    with capsys.disabled():
        print(f"\n{title}: compared {compared}, matched {matched}{extra}", flush=True)


def test_conversion_matches_the_frontend_over_the_corpus(object_info, templates, capsys):
    record = json.loads(ui_oracle.ORACLE.read_text())
    differences = json.loads(ui_oracle.DIFFERENCES.read_text())
    files = dict(ui_oracle.corpus(templates))
    entries, stale, absent = {}, [], []
    for name, oracle in record["entries"].items():
        path = files.get(name)
        if path is None:
            absent.append(name)
            continue
        if ui_oracle.file_digest(path) != oracle["ui"]:
            stale.append(name)
            continue
        entry = dict(oracle)
        got, error = ui_oracle.ours(path.read_text(), name, object_info)
        if got is not None:
            entry["ours_api"] = ui_oracle.digest(got)
            entry["ours_inputs"] = ui_oracle.digest(ui_oracle.without_meta(got))
        else:
            entry["ours_error"] = error
        entries[name] = entry
    summary = ui_oracle.compare(entries, differences)
    _report(
        capsys, "UI format vs the frontend (cached oracle)", summary["compared"], summary["matched"],
        f" ({summary['matched_but_titles']} differ only in _meta.title), "
        f"{summary['justified_differences']} justified differences, "
        f"{len(stale)} changed since the oracle, {len(absent)} not installed",
    )
    assert summary["compared"] >= 10, f"nothing to compare: templates at {templates}, {len(stale)} changed"
    bad = {n: entries[n].get("ours_error", "different API workflow") for n in summary["mismatched"]}
    assert not bad, f"conversions that differ from the frontend's: {bad}"
    # Every listed difference still is one (a fixed one must leave the list).
    listed = [n for n in differences if n in entries and entries[n].get("ours_inputs") == entries[n].get("inputs")]
    assert not listed, f"no longer different from the frontend, remove from differences.json: {listed}"


@pytest.mark.skipif(not frontend.available(), reason=f"{frontend.CHROMIUM} is missing: apt-get install -y chromium")
def test_conversion_matches_the_live_frontend(comfy, object_info, templates, capsys):
    files = dict(ui_oracle.corpus(templates))
    sample = [n for n in files if n.startswith("cases/")] + [n for n in LIVE_TEMPLATES if n in files]
    fe = frontend.Frontend(comfy.url)
    try:
        mismatched = {}
        for name in sample:
            text = files[name].read_text()
            want = ui_oracle.canonical(fe.to_api(json.loads(text), name))
            got, error = ui_oracle.ours(text, name, object_info)
            if got is None or ui_oracle.canonical(got) != want:
                mismatched[name] = error or {"frontend": want, "ours": got}
    finally:
        fe.close()
    _report(capsys, "UI format vs the live frontend", len(sample), len(sample) - len(mismatched))
    assert len(sample) >= 6
    assert not mismatched, json.dumps(mismatched, indent=1)[:4000]


def test_serve_runs_a_workflow_saved_in_the_ui_format(start_worker_fn):
    import torch

    from comfy_remote import codec

    w = start_worker_fn(ui_oracle.CASES / "remote_workflow.json")
    info = w.get("/v1/info").json()
    assert [i["name"] for i in info["inputs"]] == ["image"]
    assert [(o["name"], o["type"]) for o in info["outputs"]] == [("image", "IMAGE")]
    x = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    r = w.submit(codec.encode([("image", "IMAGE", x)]))
    assert r.status == 202, r.body
    job = w.wait(r.json()["id"])
    assert job["status"] == "succeeded", job
    out = {name: value for name, _ty, value in codec.decode(w.result(job["id"]))}
    # RemoteInput -> ImageInvert -> (bypassed ImageBlur) -> Reroute -> RemoteOutput
    assert torch.equal(out["image"], 1.0 - x)
    assert "converted the UI-format workflow" in w.log_path.read_text()
