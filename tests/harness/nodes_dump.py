"""Test-only ComfyUI custom nodes. ``CRTestDump`` writes any value, encoded
with comfy_remote.codec, to ``<output dir>/cr_dump/<name>.crc`` so tests
can compare values bit for bit outside ComfyUI. Loaded by the end-to-end
tests from a temporary custom_nodes directory; never shipped."""

from __future__ import annotations

import os
from typing import Any

import folder_paths

from comfy_remote import codec


class AnyType(str):
    def __ne__(self, other: object) -> bool:
        return False


class CRTestDump:
    CATEGORY = "comfy-remote/testing"
    FUNCTION = "dump"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (AnyType("*"),), "name": ("STRING", {"default": "value"})}}

    def dump(self, value: Any, name: str) -> dict[str, Any]:
        out = os.path.join(folder_paths.get_output_directory(), "cr_dump")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{name}.crc"), "wb") as f:
            f.write(codec.encode([(name, None, value)]))
        return {}


NODE_CLASS_MAPPINGS = {"CRTestDump": CRTestDump}


class CRTestSink:
    """Consumes any value and does nothing: an output node that costs nothing,
    so benchmarks time the work upstream of it."""

    CATEGORY = "comfy-remote/testing"
    FUNCTION = "sink"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": (AnyType("*"),)}}

    def sink(self, value: Any) -> dict[str, Any]:
        return {}


NODE_CLASS_MAPPINGS["CRTestSink"] = CRTestSink
