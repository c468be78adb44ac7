"""Nodes of comfy-remote: modal_deploy (pending)."""

from __future__ import annotations

from comfy_api.latest import io

NODES: list[type[io.ComfyNode]] = []
