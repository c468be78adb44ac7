"""Type stubs for ``comfy_remote._native``, the Rust extension module (crates/py)."""

import os
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, final

# Names with a leading underscore exist only in this stub, not at runtime.
_StrPath = str | os.PathLike[str]
_Strings = list[str] | tuple[str, ...]

__all__ = [
    "__version__",
    "PROTOCOL_VERSION",
    "run_cli",
    "NODE_TYPES",
    "INPUT_TYPES",
    "REMOTE_API",
    "REMOTE_RESULT_PICK",
    "REMOTE_INPUT",
    "REMOTE_OUTPUT",
    "MODAL_DEPLOYMENT",
    "DEFAULT_ENDPOINT",
    "ENV",
    "workflow_signature",
    "io_name",
    "accepts",
    "conform_input",
    "Client",
    "Job",
    "RemoteError",
    "CodecError",
    "container_header_len",
    "decode_container",
    "ModalDeployError",
    "modal_deploy",
    "modal_stop",
    "modal_status",
]

__version__: str
"""Version of the comfy-remote crates the module was built from."""

PROTOCOL_VERSION: str
"""The wire protocol this build speaks (``"comfy-remote/1"``)."""

# --- cli.rs ---------------------------------------------------------------

def run_cli(argv: _Strings) -> int:
    """Run the comfy-remote command line with ``argv`` (program name first); return its exit code."""

# --- codec.rs -------------------------------------------------------------

class CodecError(ValueError):
    """A value could not be encoded, or bytes are not a valid comfy-remote container."""

    kind: str
    """Stable name of the failed check (``"too_large"``, ``"dangling_ref"``, ...)."""

_TensorData = bytes | object
"""A tensor's bytes: ``bytes``, or a C-contiguous CPU torch tensor or numpy array the call reads from (checked)."""

def _encode_container(
    tree_json: str,
    tensors: Sequence[tuple[str, Sequence[int], _TensorData]],
) -> bytes:
    """Build a container from a value tree (``t<i>`` names ``tensors[i]``) and ``(dtype, shape, data)`` tensors (private to ``comfy_remote.codec``)."""

def _encode_container_to_file(
    tree_json: str,
    tensors: Sequence[tuple[str, Sequence[int], _TensorData]],
    path: _StrPath,
) -> int:
    """Like ``_encode_container``, but streams the container into ``path`` (created or truncated); returns its size."""

def container_header_len(
    prefix: bytes,
    total_len: int,
    *,
    max_total_bytes: int | None = None,
    max_header_bytes: int | None = None,
) -> int:
    """How many leading bytes of a ``total_len``-byte container hold its header, from at least its first 8."""

def decode_container(
    header: bytes,
    total_len: int,
    *,
    max_total_bytes: int | None = None,
    max_header_bytes: int | None = None,
    max_tensors: int | None = None,
    max_rank: int | None = None,
    max_elements: int | None = None,
    max_depth: int | None = None,
) -> tuple[str, list[tuple[str, str, tuple[int, ...], int, int]]]:
    """Validate a container from its header: ``(tree_json, [(name, dtype, shape, start, end), ...])``."""

# --- client.rs ------------------------------------------------------------

class RemoteError(Exception):
    """A remote call failed; ``kind`` says how (``http``, ``unreachable``, ``job_failed``, ``canceled``, ``timeout``, ...)."""

    kind: str
    status: int | None
    """HTTP status, for ``kind == "http"``."""
    input: str | None
    """The offending input, for ``kind == "signature"``."""
    job_id: str | None
    """The remote job, for ``job_failed``, ``canceled`` and ``timeout``."""

class _SignatureItem(TypedDict):
    name: str
    type: str
    optional: bool

class _Signature(TypedDict):
    """An endpoint's ``GET /v1/info``, as ``Client.signature()`` returns it."""

    protocol: str
    inputs: list[_SignatureItem]
    outputs: list[_SignatureItem]

_JobEvent = tuple[str, Any]
"""``(kind, data)``: ``submitted`` dict, ``status`` str, ``progress`` dict, ``preview`` (mime, bytes, node_id), ``done`` container."""

@final
class Client:
    """An HTTP client bound to one endpoint (native protocol or the simple JSON shape)."""

    def __new__(
        cls,
        endpoint: str,
        *,
        headers: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
        mode: str = "auto",
        poll_interval: float = 0.5,
        max_attempts: int = 6,
        use_events: bool = True,
    ) -> Client:
        """Bind to ``endpoint``; ``mode`` is ``"auto"``, ``"native"`` or ``"json"`` (ValueError otherwise)."""
    def signature(self) -> _Signature | None:
        """The endpoint's signature (fetched once per client), or None for simple JSON endpoints."""
    def plan_inputs(self, inputs: Sequence[tuple[str, str | None]]) -> list[str]:
        """Check ``[(local_name, comfy_type | None)]`` against the signature by order; return the names to send."""
    def start(self, body: bytes | bytearray) -> Job:
        """Submit container bytes and follow the job in the background."""

@final
class Job:
    """A running remote job."""

    def next_event(self, timeout: float) -> _JobEvent | None:
        """Wait up to ``timeout`` seconds for the next event; None on timeout; raises RemoteError if the job fails."""
    def cancel(self) -> None:
        """Cancel the job (remote cancel included); it then ends with RemoteError(kind="canceled")."""
    @property
    def finished(self) -> bool:
        """True after the last event was delivered."""

# --- deploy.rs ------------------------------------------------------------

class ModalDeployError(Exception):
    """Scaffolding, checking or deploying a Modal app failed; the message says what to do."""

def modal_deploy(
    workflow: _StrPath,
    out_dir: _StrPath | None = None,
    *,
    config: _StrPath | None = None,
    app_name: str | None = None,
    gpu: str | None = None,
    pip: _Strings = ...,
    apt: _Strings = ...,
    torch_stack: str | None = None,
    wheel: _StrPath | None = None,
    comfyui_dir: _StrPath | None = None,
    deploy: bool = False,
    clean: bool = False,
    force_rebuild: bool = False,
    delete_remote: bool = False,
    log: Callable[[str], object] | None = None,
) -> str:
    """Generate the Modal project for ``workflow`` and run the lifecycle switches; return the report as JSON."""

def modal_stop(app: str, *, log: Callable[[str], object] | None = None) -> bool:
    """``modal app stop -y <app>``; False when there was no such app."""

def modal_status(app: str) -> str:
    """The app's state from ``modal app list --json``, as JSON (``state`` null when not listed)."""

# --- contract.rs ----------------------------------------------------------

NODE_TYPES: list[str]
"""Every node type of the comfy-remote pack."""
INPUT_TYPES: list[str]
"""The types a Remote Input may declare (``"*"`` first)."""
REMOTE_API: str
REMOTE_RESULT_PICK: str
REMOTE_INPUT: str
REMOTE_OUTPUT: str
MODAL_DEPLOYMENT: str
DEFAULT_ENDPOINT: str
"""Where ``comfy-remote serve`` listens with its defaults (``http://127.0.0.1:8189``)."""
ENV: dict[str, str]
"""Every environment variable's name by its role (``ENV["TOKEN"] == "COMFY_REMOTE_TOKEN"``)."""

def workflow_signature(name: str, text: str) -> str:
    """A remote workflow's inputs and outputs as JSON (``{"inputs": [...], "outputs": [...]}``), as the worker publishes them; ValueError for a workflow the worker would refuse."""

def io_name(node: str, name: str) -> str:
    """The trimmed name of a Remote Input/Output; ValueError (starting with ``node``) when it cannot be one."""

def accepts(declared: str, actual: str) -> bool:
    """Whether an input declared ``declared`` takes a value of type ``actual`` (the protocol's type rule)."""

def conform_input(name: str, declared: str, actual: str, value: Any) -> Any:
    """A job's value for the Remote Input ``name``, brought to ``declared`` (an int for a FLOAT becomes a float); ValueError naming the input when the type does not fit."""
