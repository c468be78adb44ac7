#!/usr/bin/env python3
"""ComfyUI's own frontend as the oracle for UI-format workflows: every workflow of the corpus is
loaded in headless Chromium against a real ComfyUI, `app.graphToPrompt()` gives the API workflow,
and comfy-remote's conversion (`comfy_remote._native.ui_to_api`, the Rust code `serve` and
`deploy` use) must give the same.

The corpus: the UI workflows ComfyUI's `comfyui-workflow-templates` packages ship (read from
ComfyUI's environment, never copied here) and the small hand-made ones in tests/ui_workflows/,
one per conversion case. Writes tests/ui_oracle/oracle.json: per workflow, hashes of the UI file
and of the frontend's API workflow (whole, and without `_meta`), plus the versions it was made
with and the compared/matched counts. `tests/test_ui_format.py` checks our conversion against
that file over the whole corpus, and against the live frontend for a sample.

Usage:
  scripts/ui_oracle.py                 # regenerate tests/ui_oracle/oracle.json (needs COMFYUI_DIR, Chromium)
  scripts/ui_oracle.py --make-cases    # rebuild tests/ui_workflows/*.json in the frontend, then regenerate

Run it with the test virtualenv (the one with the comfy-remote wheel): COMFY_REMOTE_WHEEL names the
wheel ComfyUI's environment gets, as for the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

ORACLE = ROOT / "tests" / "ui_oracle" / "oracle.json"
DIFFERENCES = ROOT / "tests" / "ui_oracle" / "differences.json"
CASES = ROOT / "tests" / "ui_workflows"
TEMPLATES_PACKAGE = "comfyui_workflow_templates_json"


def log(msg: str) -> None:
    print(f"ui-oracle: {msg}", file=sys.stderr, flush=True)


def canonical(value: Any) -> Any:
    """The form two API workflows are compared in: keys sorted, whole floats as integers (JavaScript
    writes 1.0 as 1)."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def digest(value: Any) -> str:
    text = json.dumps(canonical(value), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_meta(api: dict[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in api.items()}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def templates_dir(comfy_python: Path) -> Path | None:
    """The templates package's directory in ComfyUI's environment."""
    import subprocess

    out = subprocess.run(
        [str(comfy_python), "-c", f"import {TEMPLATES_PACKAGE} as m, os; print(os.path.dirname(m.__file__))"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        return None
    d = Path(out.stdout.strip()) / "templates"
    return d if d.is_dir() else None


def package_versions(comfy_python: Path) -> dict[str, str]:
    import subprocess

    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('comfyui_frontend_package', 'comfyui_workflow_templates', 'comfyui_workflow_templates_json'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([str(comfy_python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def corpus(templates: Path | None) -> list[tuple[str, Path]]:
    """(name, path) of every UI workflow: the templates, then the hand-made cases."""
    out: list[tuple[str, Path]] = []
    if templates:
        for p in sorted(templates.glob("*.json")):
            try:
                ui = json.loads(p.read_text())
            except ValueError:
                continue
            if isinstance(ui, dict) and isinstance(ui.get("nodes"), list) and isinstance(ui.get("links"), list):
                out.append((p.name, p))
    for p in sorted(CASES.glob("*.json")):
        out.append((f"cases/{p.name}", p))
    return out


def ours(ui_text: str, name: str, object_info: str) -> tuple[dict[str, Any] | None, str | None]:
    from comfy_remote import _native

    try:
        return json.loads(_native.ui_to_api(name, ui_text, object_info)), None
    except ValueError as e:
        return None, str(e)


def compare(entries: dict[str, dict[str, Any]], differences: dict[str, str]) -> dict[str, Any]:
    """Counts of a comparison: `entries` carry `ours` (hash pair or error) beside the oracle's."""
    compared = matched = titles = justified = 0
    mismatched: list[str] = []
    for name, e in entries.items():
        if e.get("oracle_error") or e.get("missing"):
            continue
        compared += 1
        if e.get("ours_api") == e["api"]:
            matched += 1
        elif e.get("ours_inputs") == e["inputs"]:
            matched += 1
            titles += 1
        elif name in differences:
            justified += 1
        else:
            mismatched.append(name)
    return {"compared": compared, "matched": matched, "matched_but_titles": titles,
            "justified_differences": justified, "mismatched": mismatched}


# The hand-made cases, built in the frontend (so the files are what ComfyUI saves). `add(type, x, y)`
# adds a node; `w(node, name)` is a widget.
CASE_SCRIPTS: dict[str, str] = {
    "widgets.json": """
      const w = (n, name) => n.widgets.find(x => x.name === name);
      const img = add("EmptyImage", 0, 0);
      w(img, "width").value = 64; w(img, "batch_size").value = 2; w(img, "color").value = 255;
      const height = add("PrimitiveInt", 0, 300); w(height, "value").value = 32;
      height.connect(0, img, img.findInputSlot("height"));
      const inv = add("ImageInvert", 350, 0); img.connect(0, inv, 0);
      const blur = add("ImageBlur", 650, 0); inv.connect(0, blur, 0);
      w(blur, "blur_radius").value = 3; w(blur, "sigma").value = 0.5;
      const prev = add("PreviewImage", 950, 0); blur.connect(0, prev, 0);
      const noise = add("RandomNoise", 0, 500); w(noise, "noise_seed").value = 1234;
      const text = add("CLIPTextEncode", 350, 400);
      w(text, "text").value = "a photo /* of */ of a cat // a note\\nsecond line";
      const scale = add("ImageScale", 650, 300); img.connect(0, scale, 0);
      w(scale, "upscale_method").value = "bilinear"; w(scale, "width").value = 16;
      const prev2 = add("PreviewImage", 950, 300); scale.connect(0, prev2, 0);
    """,
    "reroute_primitive.json": """
      const w = (n, name) => n.widgets.find(x => x.name === name);
      const img = add("EmptyImage", 0, 0);
      const r1 = add("Reroute", 300, 0); const r2 = add("Reroute", 400, 0);
      img.connect(0, r1, 0); r1.connect(0, r2, 0);
      const inv = add("ImageInvert", 500, 0); r2.connect(0, inv, 0);
      const prev = add("PreviewImage", 800, 0); inv.connect(0, prev, 0);
      const img2 = add("EmptyImage", 0, 300);
      const prim = add("PrimitiveNode", -300, 150);
      prim.connect(0, img, img.findInputSlot("width"));
      await sleep(100);
      prim.connect(0, img2, img2.findInputSlot("width"));
      await sleep(100);
      prim.widgets[0].value = 48; prim.widgets[0].callback?.(48);
      const prev2 = add("PreviewImage", 800, 300); img2.connect(0, prev2, 0);
      const dangling = add("Reroute", 500, 500); const prev3 = add("PreviewImage", 800, 500);
      dangling.connect(0, prev3, 0);
    """,
    "mute_bypass.json": """
      const img = add("EmptyImage", 0, 0);
      const inv = add("ImageInvert", 300, 0); img.connect(0, inv, 0); inv.mode = 4;
      const blur = add("ImageBlur", 600, 0); inv.connect(0, blur, 0);
      const prev = add("PreviewImage", 900, 0); blur.connect(0, prev, 0);
      const muted = add("ImageInvert", 300, 300); img.connect(0, muted, 0); muted.mode = 2;
      const after = add("ImageBlur", 600, 300); muted.connect(0, after, 0);
      const prev2 = add("PreviewImage", 900, 300); after.connect(0, prev2, 0);
      const mask = add("SolidMask", 0, 600);
      const toImg = add("MaskToImage", 300, 600); mask.connect(0, toImg, 0); toImg.mode = 4;
      const prev3 = add("PreviewImage", 600, 600); toImg.connect(0, prev3, 0);
      const mutedOut = add("PreviewImage", 900, 600); img.connect(0, mutedOut, 0); mutedOut.mode = 2;
    """,
    "notes.json": """
      const note = add("Note", 0, 300); note.widgets[0].value = "a note";
      const md = add("MarkdownNote", 300, 300); md.widgets[0].value = "# heading";
      const img = add("EmptyImage", 0, 0); const prev = add("PreviewImage", 300, 0); img.connect(0, prev, 0);
    """,
    "subgraph.json": """
      const w = (n, name) => n.widgets.find(x => x.name === name);
      const img = add("EmptyImage", 0, 0);
      const inv = add("ImageInvert", 300, 0); img.connect(0, inv, 0);
      const blur = add("ImageBlur", 600, 0); inv.connect(0, blur, 0); w(blur, "sigma").value = 2.5;
      const radius = add("PrimitiveInt", 300, 300); w(radius, "value").value = 5;
      radius.connect(0, blur, blur.findInputSlot("blur_radius"));
      const prev = add("PreviewImage", 900, 0); blur.connect(0, prev, 0);
      const inner = app.graph.convertToSubgraph(new Set([inv, blur])).node;
      await sleep(100);
      const outer = app.graph.convertToSubgraph(new Set([inner, prev])).node;
      await sleep(100);
      const img2 = add("EmptyImage", 0, 500);
      const inv2 = add("ImageInvert", 300, 500); img2.connect(0, inv2, 0);
      const blur2 = add("ImageBlur", 600, 500); inv2.connect(0, blur2, 0);
      const prev4 = add("PreviewImage", 900, 500); blur2.connect(0, prev4, 0);
      const third = app.graph.convertToSubgraph(new Set([blur2])).node;
      await sleep(100);
      third.mode = 4;
    """,
    "remote_workflow.json": """
      const w = (n, name) => n.widgets.find(x => x.name === name);
      const input = add("RemoteInput", 0, 0); w(input, "name").value = "image"; w(input, "type").value = "IMAGE";
      const inv = add("ImageInvert", 300, 0); input.connect(0, inv, 0);
      const blur = add("ImageBlur", 600, 0); inv.connect(0, blur, 0); blur.mode = 4;
      const r = add("Reroute", 850, 0); blur.connect(0, r, 0);
      const out = add("RemoteOutput", 1000, 0); w(out, "name").value = "image"; r.connect(0, out, out.findInputSlot("value"));
      const note = add("Note", 0, 300); note.widgets[0].value = "a remote workflow saved in the UI format";
    """,
}


def make_cases(fe: Any) -> None:
    CASES.mkdir(parents=True, exist_ok=True)
    for name, body in CASE_SCRIPTS.items():
        ui = fe.build(body)
        (CASES / name).write_text(json.dumps(ui, indent=1) + "\n")
        log(f"wrote {CASES / name} ({len(ui.get('nodes', []))} nodes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (default: $COMFYUI_DIR)")
    ap.add_argument("--make-cases", action="store_true", help="rebuild tests/ui_workflows/*.json first")
    ap.add_argument("--out", type=Path, default=ORACLE)
    args = ap.parse_args()
    if not args.comfyui:
        log("set COMFYUI_DIR (or --comfyui) to a ComfyUI checkout")
        return 2
    from harness import comfyui_python, start_comfyui, wheel
    from harness.frontend import Frontend, FrontendError, available

    if not available():
        log("Chromium is missing (/usr/bin/chromium): apt-get install -y chromium")
        return 2
    comfy_python = comfyui_python(Path(args.comfyui), wheel())
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="cr-ui-oracle-"))
    comfy = start_comfyui(comfy_python, Path(args.comfyui), home)
    fe = None
    try:
        object_info = urllib.request.urlopen(f"{comfy.url}/object_info", timeout=60).read().decode()
        stats = json.loads(urllib.request.urlopen(f"{comfy.url}/system_stats", timeout=10).read())
        fe = Frontend(comfy.url)
        if args.make_cases:
            make_cases(fe)
        templates = templates_dir(comfy_python)
        known = set(json.loads(object_info))
        differences = json.loads(DIFFERENCES.read_text()) if DIFFERENCES.exists() else {}
        entries: dict[str, dict[str, Any]] = {}
        started = time.monotonic()
        files = corpus(templates)
        log(f"{len(files)} workflows to convert in the frontend")
        for n, (name, path) in enumerate(files, 1):
            if n % 50 == 0:
                log(f"{n}/{len(files)} ({time.monotonic() - started:.0f} s)")
            text = path.read_text()
            ui = json.loads(text)
            entry: dict[str, Any] = {"ui": file_digest(path)}
            try:
                api = fe.to_api(ui, name)
            except FrontendError as e:
                entry["oracle_error"] = str(e).splitlines()[0][:200]
                entries[name] = entry
                continue
            missing = sorted({v.get("class_type") or "?" for v in api.values()} - known)
            if missing:
                entry["missing"] = missing
            entry["api"] = digest(api)
            entry["inputs"] = digest(without_meta(api))
            got, error = ours(text, name, object_info)
            if got is not None:
                entry["ours_api"] = digest(got)
                entry["ours_inputs"] = digest(without_meta(got))
            elif not missing:
                entry["ours_error"] = (error or "")[:300]
            entries[name] = entry
        summary = compare(entries, differences)
        log(f"converted {len(entries)} workflows in the frontend in {time.monotonic() - started:.0f} s")
        record = {
            "comfyui": stats.get("system", {}).get("comfyui_version"),
            "packages": package_versions(comfy_python),
            "summary": summary,
            # Only what the comparison needs; ours_* are recomputed by the test.
            "entries": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("ours_")} for k, v in entries.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        log(f"wrote {args.out}")
        print(json.dumps(summary, indent=1))
        for name in summary["mismatched"]:
            e = entries[name]
            log(f"mismatch: {name}" + (f" ({e['ours_error']})" if e.get("ours_error") else ""))
        return 0 if not summary["mismatched"] else 1
    finally:
        if fe is not None:
            fe.close()
        comfy.stop()


if __name__ == "__main__":
    sys.exit(main())
