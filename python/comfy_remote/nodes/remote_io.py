"""Remote Input / Remote Output: the ingress and egress of a remote workflow.

The worker (``comfy-remote serve``) sets the advanced ``remote_job`` input
of each node in the prompt it queues: a Remote Input reads its value from
the job's input container, a Remote Output writes ``outputs/<name>.crc``
into the job directory. With ``remote_job`` empty (designing the workflow
locally) a Remote Input passes its ``default`` through and a Remote Output
shows a preview. Because ``remote_job`` differs per job, ComfyUI's cache
never serves one job's values to another.
"""

from __future__ import annotations

import os
from typing import Any

from comfy_api.latest import io, ui

from comfy_remote import _native
from comfy_remote.nodes import CATEGORY

# The types a Remote Input may declare, and the node type names: the
# contract the worker checks workflows against (crates/contract).
TYPES: list[str] = list(_native.INPUT_TYPES)


def _entries(path: str) -> dict[str, tuple[str, Any]]:
    """The job's inputs by name. The container is mapped copy-on-write, so
    tensors share the file's pages (only what a node touches is read) and
    stay valid after the worker deletes the file."""
    import mmap

    from comfy_remote import codec

    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as exc:
        raise RuntimeError(
            f"Remote Input: the job's input container {path} is missing ({exc.strerror}); "
            "was the job canceled or expired?"
        ) from exc
    return {name: (ty, value) for name, ty, value in codec.decode(memoryview(mapped))}


def _check_name(name: str, node: str) -> str:
    """The trimmed name, or ValueError with the worker's own reason."""
    return _native.io_name(node, name or "")


class RemoteInput(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=_native.REMOTE_INPUT,
            display_name="Remote Input",
            category=CATEGORY,
            description=(
                "A named input of a remote workflow. A worker injects the job's value; "
                "run locally, it passes `default` through."
            ),
            inputs=[
                io.String.Input("name", default="input"),
                io.Combo.Input("type", options=TYPES, default="*"),
                io.AnyType.Input("default", optional=True),
                io.String.Input("remote_job", default="", optional=True, advanced=True,
                                tooltip="Set by the worker; leave empty."),
            ],
            outputs=[io.AnyType.Output(display_name="value")],
        )

    @classmethod
    def execute(cls, name: str, type: str, default: Any = None, remote_job: str = "") -> io.NodeOutput:
        name = _check_name(name, "Remote Input")
        if remote_job:
            entries = _entries(remote_job)
            if name in entries:
                got, value = entries[name]
                # The protocol's type rule (an INT for a FLOAT is widened exactly).
                return io.NodeOutput(_native.conform_input(name, type, got, value))
            if default is None:
                raise ValueError(
                    f"Remote Input {name!r}: the job has no input named {name!r} "
                    f"(it sent: {', '.join(sorted(entries)) or 'nothing'}) and no default is connected"
                )
        if default is None:
            raise ValueError(
                f"Remote Input {name!r} has no value: connect a `default` to try the workflow locally, "
                "or run it through a worker (comfy-remote serve)"
            )
        return io.NodeOutput(default)


def _summary(value: Any) -> str:
    from comfy_remote import codec

    ty = codec.infer_type(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{ty} {list(shape)} {str(getattr(value, 'dtype', '')).replace('torch.', '')}"
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            s = getattr(v, "shape", None)
            parts.append(f"{k}: {list(s)}" if s is not None else f"{k}: {v!r}"[:80])
        return f"{ty} {{{', '.join(parts)}}}"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 2000 else text[:2000] + "..."


class RemoteOutput(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=_native.REMOTE_OUTPUT,
            display_name="Remote Output",
            category=CATEGORY,
            description="A named output of a remote workflow: what a job returns.",
            inputs=[
                io.String.Input("name", default="output"),
                io.AnyType.Input("value"),
                io.String.Input("remote_job", default="", optional=True, advanced=True,
                                tooltip="Set by the worker; leave empty."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, name: str, value: Any, remote_job: str = "") -> io.NodeOutput:
        from comfy_remote import codec

        name = _check_name(name, "Remote Output")
        if remote_job:
            out_dir = os.path.join(remote_job, "outputs")
            os.makedirs(out_dir, exist_ok=True)
            final = os.path.join(out_dir, f"{name}.crc")
            tmp = f"{final}.{os.getpid()}.tmp"
            # Streamed: header, then the tensors straight from their memory
            # (no container-sized buffer); renamed into place when complete.
            try:
                codec.encode_to_file([(name, codec.infer_type(value), value)], tmp)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            os.replace(tmp, final)
            return io.NodeOutput(ui=ui.PreviewText(f"sent {_summary(value)}"))
        if codec.infer_type(value) == "IMAGE":
            return io.NodeOutput(ui=ui.PreviewImage(value, cls=cls))
        return io.NodeOutput(ui=ui.PreviewText(_summary(value)))


NODES: list[type[io.ComfyNode]] = [RemoteInput, RemoteOutput]
