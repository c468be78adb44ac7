"""Modal Deployment node: scaffold, check and (optionally) deploy a remote workflow to Modal; outputs the service URL.

Thin: the native module (Rust, crates/deploy) does the work; this node
declares the widgets, resolves paths against ComfyUI's directories, hands over
what the ComfyUI it runs in knows (its node definitions, custom node folders
and model folders: UI-format workflows are converted with them, and the packs
and model files a workflow needs are found there) and relays the lifecycle's
log lines to the node's progress text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from comfy_api.latest import io, ui

from comfy_remote import _native

log = logging.getLogger("comfy_remote.modal_deploy")
CATEGORY = "comfy-remote"


def _lines(text: str) -> list[str]:
    return [p.strip() for p in text.replace(",", "\n").splitlines() if p.strip()]


def _comfy_dir(kind: str) -> Path | None:
    try:
        import folder_paths

        return Path(getattr(folder_paths, f"get_{kind}_directory")())
    except Exception:  # outside ComfyUI (unit tests)
        return None


def resolve_workflow(path: str) -> Path:
    """An absolute path, else relative to ComfyUI's saved workflows, its input directory, or the cwd."""
    p = Path(os.path.expanduser(path.strip()))
    if p.is_absolute():
        return p
    user, inp = _comfy_dir("user"), _comfy_dir("input")
    for base in filter(None, [user and user / "default" / "workflows", inp, Path.cwd()]):
        if (base / p).is_file():
            return base / p
    return p


def local_comfyui() -> dict[str, Any]:
    """What the running ComfyUI offers the deploy: its ``/object_info`` (asked of its own server),
    its custom node folders and model folders (``folder_paths``), and the ``uv`` that resolves
    the image's packages (a dependency of this package). Empty outside ComfyUI."""
    out: dict[str, Any] = {}
    try:
        import folder_paths
    except ImportError:  # outside ComfyUI (unit tests)
        return out
    out["custom_nodes"] = list(folder_paths.get_folder_paths("custom_nodes"))
    out["model_dirs"] = {
        name: list(paths)
        for name, (paths, _exts) in folder_paths.folder_names_and_paths.items()
        if name not in ("custom_nodes", "configs")
    }
    # The server of the ComfyUI this runs in; never imported here (importing it starts ComfyUI's
    # model management), so a script that only has ComfyUI on its path reads no /object_info.
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is not None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{instance.port}/object_info", timeout=120) as r:
                out["object_info"] = r.read().decode("utf-8")
        except Exception as e:  # noqa: BLE001 - without it only API-format workflows convert
            log.warning("could not read this ComfyUI's /object_info (%s): UI-format workflows will not convert", e)
    try:
        import uv

        out["uv"] = uv.find_uv_bin()
    except Exception:  # noqa: BLE001 - the native module then looks on PATH
        pass
    return out


def _project_dir(explicit: str, app_name: str, workflow: Path) -> Path:
    if explicit.strip():
        return Path(os.path.expanduser(explicit.strip()))
    base = _comfy_dir("user") or Path.cwd()
    return base / "comfy-remote" / "modal" / (app_name.strip() or workflow.stem)


class ModalDeployment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=_native.MODAL_DEPLOYMENT,
            display_name="Modal Deployment",
            category=CATEGORY,
            description=(
                "Generates a Modal project for a remote workflow (saved with Save or Export (API)), finds the "
                "custom node packs and model files it needs in this ComfyUI, resolves the image's packages, and "
                "deploys it when 'deploy' is on (uploading the models the Volume lacks). Outputs the service URL for "
                "the Remote API node (empty when not deployed). Needs the `modal` client and `modal token new`."
            ),
            inputs=[
                io.String.Input("workflow_path", default="", tooltip="The remote workflow (.json), as Save or Export (API) wrote it."),
                io.String.Input("app_name", default="", tooltip="Modal app name; default comfy-remote-<file name>."),
                io.String.Input("gpu", default="H100", tooltip="Modal GPU type, or a fallback list: H100,A100-80GB. Saved in the project's modal_config.json; empty: use the project's setting."),
                io.String.Input("pip_packages", default="", multiline=True, tooltip="Extra pip requirements, one per line."),
                io.String.Input("apt_packages", default="", multiline=True, tooltip="Extra Debian packages, one per line."),
                io.Boolean.Input("deploy", default=False, tooltip="Run `modal deploy` (off: generate and check only)."),
                io.Boolean.Input("clean_build", default=False, tooltip="Remove the files the generator wrote in the project directory (never your own files, the workflow or the config), then regenerate them."),
                io.Boolean.Input("force_rebuild", default=False, tooltip="Rebuild every image layer (new build nonce, MODAL_IGNORE_CACHE=1)."),
                io.Boolean.Input("delete_remote_app", default=False, tooltip="Stop the deployed app first (`modal app stop -y`)."),
                io.String.Input("config_path", default="", optional=True, tooltip="modal_config.json (default: the project's own)."),
                io.String.Input("project_dir", default="", optional=True, tooltip="Where to generate (default: <ComfyUI user dir>/comfy-remote/modal/<app>)."),
                io.String.Input("wheel_path", default="", optional=True, tooltip="comfy-remote wheel for the image: a .whl, a folder of wheels, a glob or a URL (default: $COMFY_REMOTE_WHEEL; without one a released comfy-remote comes from the package registry, see \"comfy_remote\" in modal_config.json)."),
            ],
            outputs=[
                io.String.Output("service_url", display_name="service_url"),
                io.String.Output("message", display_name="message"),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    async def execute(
        cls,
        workflow_path: str,
        app_name: str,
        gpu: str,
        pip_packages: str,
        apt_packages: str,
        deploy: bool,
        clean_build: bool,
        force_rebuild: bool,
        delete_remote_app: bool,
        config_path: str = "",
        project_dir: str = "",
        wheel_path: str = "",
    ) -> io.NodeOutput:
        if not workflow_path.strip():
            raise ValueError("Modal Deployment: set workflow_path to a remote workflow (.json, saved with Save or Export (API))")
        workflow = resolve_workflow(workflow_path)
        out = _project_dir(project_dir, app_name, workflow)
        hidden = getattr(cls, "hidden", None)
        node_id = hidden.unique_id if hidden else None
        lines: list[str] = []

        def progress(line: str) -> None:
            lines.append(line)
            # The lifecycle marks what the user must know (a public service) with "warning: ".
            if line.startswith("warning: "):
                log.warning("%s", line.removeprefix("warning: "))
            else:
                log.info("%s", line)
            if node_id is None:
                return
            try:
                from server import PromptServer

                PromptServer.instance.send_progress_text("\n".join(lines[-12:]), node_id)
            except Exception:  # no server (unit tests)
                pass

        kwargs: dict[str, Any] = dict(
            config=config_path.strip() or None,
            app_name=app_name.strip() or None,
            gpu=gpu.strip() or None,
            pip=_lines(pip_packages),
            apt=_lines(apt_packages),
            wheel=wheel_path.strip() or None,
            deploy=deploy,
            clean=clean_build,
            force_rebuild=force_rebuild,
            delete_remote=delete_remote_app,
            log=progress,
            **(await asyncio.to_thread(local_comfyui)),
        )
        report = json.loads(await asyncio.to_thread(_native.modal_deploy, str(workflow), str(out), **kwargs))
        url: str = report.get("url") or ""
        if url:
            message = f"{'unchanged' if report.get('unchanged') else 'deployed'}: {url}"
        else:
            message = f"generated {report['project']['dir']} (not deployed: turn on 'deploy' to get a service URL)"
        message = "\n".join([message, *report.get("warnings", [])])
        # The URL, for the frontend extension: a Remote API node linked to
        # service_url shows the deployment's inputs and outputs.
        shown = {**ui.PreviewText(message).as_dict(), "comfy_remote_service_url": [url]}
        return io.NodeOutput(url, message, ui=shown)


NODES: list[type[io.ComfyNode]] = [ModalDeployment]
