"""Remote Input / Remote Output: the ingress and egress of a remote workflow.

The worker (``comfy-remote serve``) sets the key ``_native.JOB_KEY`` in the
inputs of each of these nodes in the prompt it queues (docs/protocol.md §6):
a Remote Input reads its value from the job's input container, a Remote
Output writes its container into the job directory. The nodes do not
declare that key, so it is no widget and never saved into a workflow; each
reads it from its own entry of the prompt (ComfyUI's hidden PROMPT and
UNIQUE_ID). Without it (designing the workflow locally) a Remote Input
passes its ``default`` through and a Remote Output shows a preview. ComfyUI's
cache signature covers every key of a node's inputs, so one job's values are
never served to another.
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


def _hidden() -> list[io.Hidden]:
    """What the nodes ask ComfyUI for to find their own entry of the prompt
    (a new list each time: ComfyUI adds to a schema's list as it finalizes it)."""
    return [io.Hidden.prompt, io.Hidden.unique_id]


def job_path(hidden: Any) -> str:
    """The path the worker set for this node's job, or "" when run locally.

    ``hidden`` is the node's ``cls.hidden`` (``prompt``: the prompt as
    queued, ``unique_id``: this node's id in it)."""
    prompt = getattr(hidden, "prompt", None)
    node_id = getattr(hidden, "unique_id", None)
    if not isinstance(prompt, dict) or node_id is None:
        return ""
    inputs = (prompt.get(str(node_id)) or {}).get("inputs") or {}
    value = inputs.get(_native.JOB_KEY)
    return value if isinstance(value, str) else ""


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
                io.String.Input(
                    "name",
                    default="input",
                    tooltip="The input's name: what a job sends it as, and what the Remote API node shows.",
                ),
                io.Combo.Input(
                    "type",
                    options=TYPES,
                    default="*",
                    tooltip="The Comfy type the input takes (* = any). A job's value of another type is refused; "
                    "the output socket takes this type, so links are checked while you build the workflow.",
                ),
                io.AnyType.Input(
                    "default",
                    optional=True,
                    tooltip="The value used when a job sends none (and when you run the workflow locally). "
                    "Connected: the input is optional for callers.",
                ),
            ],
            outputs=[io.AnyType.Output(display_name="value", tooltip="The job's value (or the default).")],
            hidden=_hidden(),
        )

    @classmethod
    def execute(cls, name: str, type: str, default: Any = None) -> io.NodeOutput:
        name = _check_name(name, "Remote Input")
        remote_job = job_path(cls.hidden)
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
                io.String.Input(
                    "name",
                    default="output",
                    tooltip="The output's name: what a job returns it as, and what the Remote API node shows.",
                ),
                io.AnyType.Input("value", tooltip="The value a job returns under this name."),
            ],
            outputs=[],
            hidden=_hidden(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, name: str, value: Any) -> io.NodeOutput:
        from comfy_remote import codec

        name = _check_name(name, "Remote Output")
        remote_job = job_path(cls.hidden)
        if remote_job:
            final = os.fspath(_native.job_output_file(remote_job, name))
            os.makedirs(os.path.dirname(final), exist_ok=True)
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
