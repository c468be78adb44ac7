"""The Modal web front publishes the same signature as the worker: order by
numeric node id, optional only with a default link, refusal of bad workflows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from comfy_remote.modal_runtime.web import signature  # noqa: E402


def _write(tmp_path: Path, wf: dict) -> str:
    p = tmp_path / "remote.json"
    p.write_text(json.dumps(wf))
    return str(p)


def test_inputs_are_ordered_by_numeric_node_id_and_optional_only_with_a_default(tmp_path: Path) -> None:
    wf = {
        "10": {"class_type": "RemoteInput", "inputs": {"name": "b", "type": "INT"}},
        "9": {"class_type": "RemoteInput", "inputs": {"name": "a", "type": "IMAGE", "default": ["3", 0]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "11": {"class_type": "RemoteOutput", "inputs": {"name": "out", "value": ["9", 0]}},
    }
    sig = signature(_write(tmp_path, wf))
    assert [(i["name"], i["type"], i["optional"], i["node_id"]) for i in sig["inputs"]] == [
        ("a", "IMAGE", True, "9"),
        ("b", "INT", False, "10"),
    ]
    assert [o["name"] for o in sig["outputs"]] == ["out"]


def test_a_workflow_the_worker_refuses_is_refused_here_too(tmp_path: Path) -> None:
    wf = {"1": {"class_type": "RemoteInput", "inputs": {"name": "x"}}}
    with pytest.raises(ValueError, match="RemoteOutput"):
        signature(_write(tmp_path, wf))
