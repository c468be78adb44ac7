"""The ComfyUI node pack (V3 schema). Imported only inside ComfyUI.

Each node family lives in its own module and exposes ``NODES``, a list of
``io.ComfyNode`` subclasses; this module gathers them into the extension,
which also adds the pack's routes (``routes``) for its frontend extension
(``WEB_DIRECTORY``).
"""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import ComfyExtension, io

CATEGORY = "comfy-remote"
# The frontend extension ComfyUI serves to the browser (the custom node
# module hands it over as its WEB_DIRECTORY).
WEB_DIRECTORY = str(Path(__file__).resolve().parent.parent / "web")


def _node_classes() -> list[type[io.ComfyNode]]:
    from comfy_remote.nodes import modal_deploy, remote_api, remote_io

    return [*remote_api.NODES, *remote_io.NODES, *modal_deploy.NODES]


class RemoteExtension(ComfyExtension):
    async def on_load(self) -> None:
        from comfy_remote.nodes import routes

        routes.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _node_classes()


async def comfy_entrypoint() -> ComfyExtension:
    return RemoteExtension()
