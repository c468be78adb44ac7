"""Type stubs for ``comfy_remote._native``, the Rust extension module (crates/py)."""

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict, final

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
    "JOB_KEY",
    "NAMED_INPUT_PREFIX",
    "ENV",
    "workflow_signature",
    "ui_to_api",
    "io_name",
    "job_output_file",
    "accepts",
    "conform_input",
    "Client",
    "Job",
    "RemoteError",
    "CodecError",
    "CODECS",
    "container_header_len",
    "decode_container",
    "ModalDeployError",
    "modal_deploy",
    "fetch_models",
    "modal_stop",
    "modal_status",
    "ApiError",
    "Front",
    "api_error",
    "check_idempotency_key",
    "parse_retry_query",
    "openapi_json",
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

CODECS: list[str]
"""The packings this build reads and writes (docs/protocol.md §2.7)."""

def _unpack(codec: str, dtype: str, shape: list[int], data: bytes, max_bytes: int) -> bytearray:
    """The plain bytes of a ``$packed`` tensor (private to ``comfy_remote.codec``)."""

def _encode_container(
    tree_json: str,
    tensors: Sequence[tuple[str, Sequence[int], _TensorData]],
    *,
    codecs: Sequence[str] = ...,
    quantize_images: bool = False,
) -> bytes:
    """Build a container from a value tree (``t<i>`` names ``tensors[i]``) and ``(dtype, shape, data)`` tensors (private to ``comfy_remote.codec``)."""

def _encode_container_to_file(
    tree_json: str,
    tensors: Sequence[tuple[str, Sequence[int], _TensorData]],
    path: _StrPath,
    *,
    codecs: Sequence[str] = ...,
    quantize_images: bool = False,
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

NAMED_INPUT_PREFIX: str
"""``"input:"``: a local input named ``input:<name>`` fills the remote input ``<name>`` (``Client.plan_inputs``)."""

class RemoteError(Exception):
    """A remote call failed; ``kind`` says how (``http``, ``unreachable``, ``job_failed``, ``canceled``, ``timeout``, ...)."""

    kind: str
    status: int | None
    """HTTP status, for ``kind == "http"``."""
    input: str | None
    """The offending input, for ``kind == "signature"``."""
    job_id: str | None
    """The remote job, for ``job_failed``, ``canceled`` and ``timeout``."""
    code: str | None
    """The endpoint's error code, for ``http`` (the error body's) and ``job_failed`` (the job's)."""

class _SignatureItem(TypedDict):
    name: str
    type: str
    optional: bool
    default: NotRequired[bool | int | float | str]
    """What an omitted optional input takes, when the endpoint's workflow gives it as a constant."""

class _Signature(TypedDict):
    """An endpoint's ``GET /v1/info``, as ``Client.signature()`` returns it."""

    protocol: str
    inputs: list[_SignatureItem]
    outputs: list[_SignatureItem]
    codecs: list[str]
    """The packings the endpoint reads in a submit (docs/protocol.md §2.7)."""
    features: list[str]

_JobEvent = tuple[str, Any]
"""``(kind, data)``: ``submitted`` dict, ``status`` str, ``progress`` dict (its ``json`` key: the
protocol's Progress object as JSON), ``preview`` (mime, bytes, node_id), ``done`` container."""

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
        images_8bit: bool = False,
        submit_wait: float = 1.0,
        packing: str | None = None,
    ) -> Client:
        """Bind to ``endpoint``; ``mode`` is ``"auto"``, ``"native"`` or ``"json"`` (ValueError otherwise).

        ``images_8bit``: accept IMAGE and MASK results rounded to 8 bits (lossy, smaller).
        ``submit_wait``: seconds a submit may wait for the job to end and carry its result
        back (one round trip for a short job); 0 to follow every job by its events.
        ``packing``: ``"auto"``, ``"always"`` or ``"never"`` (default: ``COMFY_REMOTE_PACK``, else auto:
        packed unless the endpoint is on this machine)."""
    def signature(self) -> _Signature | None:
        """The endpoint's signature (fetched once per client), or None for simple JSON endpoints."""
    def upload_codecs(self) -> list[str]:
        """The packings to encode a submit with: the endpoint's, where tensors travel packed (not to
        this machine by default; ``COMFY_REMOTE_PACK``), else none."""
    def plan_inputs(self, inputs: Sequence[tuple[str, str | None]]) -> list[str]:
        """Check ``[(local_name, comfy_type | None)]`` against the signature (``input:<name>`` by name,
        ``value<N>`` by position); return the names to send."""
    def start(self, body: bytes | bytearray) -> Job:
        """Submit container bytes and follow the job in the background."""
    def cancel_job(self, job_id: str) -> bool:
        """Ask the endpoint to cancel its job ``job_id`` without following it; False when it cannot cancel."""

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
    def view_json(self) -> str | None:
        """The latest JobView (JSON) a comfy-remote endpoint sent for the job; None for simple JSON endpoints."""

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
    sdist: _StrPath | None = None,
    source: str | None = None,
    comfyui_dir: _StrPath | None = None,
    object_info: str | None = None,
    custom_nodes: Sequence[_StrPath] = ...,
    model_dirs: Mapping[str, Sequence[_StrPath]] = ...,
    uv: _StrPath | None = None,
    deploy: bool = False,
    clean: bool = False,
    force_rebuild: bool = False,
    delete_remote: bool = False,
    log: Callable[[str], object] | None = None,
) -> str:
    """Generate the Modal project for ``workflow`` and run the lifecycle switches; return the report as JSON.

    ``object_info`` (the JSON of the running ComfyUI's ``/object_info``), ``custom_nodes`` and
    ``model_dirs`` (its ``folder_paths``) describe the ComfyUI the workflow was made in: a
    UI-format workflow is converted with its node definitions, and the custom node packs and
    model files the workflow needs are found there. ``uv`` resolves the image's packages
    (default: ``$COMFY_REMOTE_UV``, else ``uv`` on PATH)."""

def fetch_models(plan: _StrPath, mount: _StrPath, *, log: Callable[[str], object] | None = None) -> str:
    """Fetch the model files of a project's ``build/models.json`` that the Volume at ``mount`` lacks, each checked against its sha256; return the paths fetched as JSON."""

def modal_stop(app: str, *, log: Callable[[str], object] | None = None) -> bool:
    """``modal app stop -y <app>``; False when there was no such app."""

def modal_status(app: str) -> str:
    """The app's state from ``modal app list --json``, as JSON (``state`` null when not listed)."""

# --- front.rs -------------------------------------------------------------

class ApiError(Exception):
    """An HTTP error answer, built by the native rules."""

    status: int
    """The HTTP status (docs/protocol.md §4.6)."""
    code: str
    """The stable error code (``not_found``, ``invalid_input``, ...)."""
    body: str
    """The response body: ``{"error": {"code", "message", "details"}}`` as JSON."""
    retry_after: int | None
    """Seconds for a ``Retry-After`` header, when the answer has one."""

def api_error(code: str, message: str, details: str | None = None) -> ApiError:
    """An ``ApiError`` for ``code`` with its HTTP status, ``message`` and ``details`` (JSON text); ValueError for an unknown code."""

def check_idempotency_key(key: str) -> None:
    """Raise ``ApiError`` 400 unless ``key`` is 1 to 200 visible ASCII characters."""

def parse_retry_query(value: str | None = None) -> bool:
    """The ``retry`` query of a submit (``true``/``1``, ``false``/``0``, absent); ``ApiError`` 400 otherwise."""

def openapi_json() -> str:
    """The OpenAPI 3.1 document the worker serves, as JSON."""

@final
class Front:
    """The protocol rules of a web front serving one workflow (the Modal web front)."""

    def __new__(
        cls,
        name: str,
        text: str,
        *,
        max_body_bytes: int | None = None,
        token: str | None = None,
        public_url: str | None = None,
        trust_forwarded: bool = False,
    ) -> Front:
        """Parse the workflow as the worker does (ValueError for one it would refuse)."""
    def info_json(self, published: str | None = None) -> str:
        """The ``GET /v1/info`` document as JSON; ``published``: a GPU worker's info for the same workflow (its output types)."""
    def outputs_json(self) -> str:
        """The workflow's outputs as ``[{"name", "type"}]`` JSON."""
    def check_auth(self, authorization: str | None = None) -> None:
        """Raise ``ApiError`` 401 unless the ``Authorization`` header carries the token (when one is set)."""
    def base_url(
        self,
        host: str | None = None,
        forwarded_host: str | None = None,
        forwarded_proto: str | None = None,
        scheme: str = "http",
    ) -> str:
        """The base of job URLs for a request; "" (relative URLs) when the host is not a plain ``host[:port]``."""
    def media_kind(self, content_type: str | None = None) -> str:
        """``"container"`` or ``"json"`` for a submit's Content-Type; ``ApiError`` 415 otherwise."""
    def body_limit(self, kind: str) -> int:
        """The largest submit body of ``kind``."""
    def too_large(self, kind: str) -> ApiError:
        """The 413 answer for a body of ``kind`` over its limit."""
    def check_content_length(self, kind: str, content_length: str | None = None) -> None:
        """Raise ``ApiError`` 400/413 for a declared Content-Length that is not a number or too large."""
    def check_submit(self, kind: str, body: bytes) -> tuple[bytes | None, str]:
        """Decode and check a submit body against the signature (``ApiError`` 400/413/422);
        returns ``(container or None when the body is one, sha256 of the body)``."""
    def job_view(
        self, state: str | None, *, job_id: str, created_at: str, base: str, canceling: bool = False
    ) -> str:
        """The JobView (JSON) of a job from its stored state (None: not picked up yet), URLs under ``base``."""
    def json_form(self, container: bytes) -> str:
        """The base64 JSON form of a container, its tensors plain (unpacked)."""
    def prefer_wait(self, headers: dict[str, str]) -> int | None:
        """The seconds a submit may wait for its job (``Prefer: wait=N``, capped); None when not asked."""
    def result_answer(
        self, container: bytes, *, job_id: str, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` of a result download for a request with ``headers`` (lower-case
        names): packed as ``Comfy-Remote-Codecs``/``-Images`` allow, whole or ranged, with an ETag;
        ``ApiError`` 416 for a range past the end."""


# --- front_v2.rs ----------------------------------------------------------

class V2Front:
    """Comfy API v2's rules for a web front serving one workflow (the Modal web front)."""

    max_asset_bytes: int
    retention_ms: int

    def __new__(
        cls,
        name: str,
        text: str,
        *,
        max_body_bytes: int | None = None,
        max_asset_bytes: int | None = None,
        retention_s: int | None = None,
    ) -> V2Front: ...
    def served_graph(self) -> str:
        """The served workflow's graph (JSON)."""
    def key(self, raw: str) -> str:
        """An ``Idempotency-Key`` by v2's rule; ``ApiError`` 400 otherwise."""
    def plan(self, body: bytes) -> str:
        """A checked submit body's input values (JSON ``{inputs, assets, workflow}``); ``ApiError`` 400/422."""
    def container(self, plan: str, files: dict[str, tuple[str | None, str, bytes]]) -> bytes:
        """The inputs container of a plan, assets by label as ``(file_path, content_type, bytes)``."""
    def job(self, view: str, outputs: str, base: str) -> str:
        """The v2 job (JSON) of a v1 job view with its output records (JSON list)."""
    def status_event(self, view: str) -> str: ...
    def progress(self, progress: str) -> str: ...
    def preview(self, preview: str) -> str: ...
    def split(self, result: bytes) -> list[tuple[str, str, str, str, bytes, str]]:
        """A result container as ``(node_id, name, kind, content_type, bytes, hash)`` files."""
    def asset(self, record: str, base: str, created_new: bool | None = None) -> str:
        """An asset record (JSON, times in ms) as the asset's JSON."""
    def upload_fields(
        self, fields: dict[str, str], has_file: bool, part_type: str | None = None
    ) -> tuple[str, str, str | None, int | None]:
        """``(file_path, content_type, expected_hash, expires_in)`` of an upload form; ``ApiError`` 400."""
    def expires_in(self, raw: str | None = None) -> int | None: ...
    def check_hash(self, expected: str | None, actual: str) -> None:
        """``ApiError`` 409 ``hash_mismatch`` unless they agree."""
    def byte_range(self, header: str | None, len: int) -> tuple[int, int] | None:
        """The one byte range of a ``Range`` header (None: all); ``ApiError`` 416."""
    def error(self, code: str, message: str, details: str | None = None) -> ApiError: ...
    def too_large(self) -> ApiError: ...
    def key_reused(self) -> ApiError: ...
    def missing_assets(self, labels: list[str]) -> ApiError: ...

class FormReader:
    """An incremental ``multipart/form-data`` reader (``ApiError`` 415 for another type)."""

    def __new__(cls, content_type: str | None = None) -> FormReader: ...
    def feed(self, chunk: bytes) -> list[tuple]:
        """``("field", name, value)``, ``("file", name, filename, content_type)``, ``("data", bytes)``, ``("end",)``."""
    def finish(self) -> None: ...

class ContentHasher:
    """``blake3:<hex>`` of bytes fed in pieces."""

    def __new__(cls) -> ContentHasher: ...
    def update(self, data: bytes) -> None: ...
    def finish(self) -> str: ...

def is_blake3(s: str) -> bool: ...


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
JOB_KEY: str
"""``"remote_job"``: the key the worker sets in a Remote Input/Output's prompt inputs (docs/protocol.md §6)."""
ENV: dict[str, str]
"""Every environment variable's name by its role (``ENV["TOKEN"] == "COMFY_REMOTE_TOKEN"``)."""

def workflow_signature(name: str, text: str) -> str:
    """A remote workflow's inputs and outputs as JSON (``{"inputs": [...], "outputs": [...]}``), as the worker publishes them; ValueError for a workflow the worker would refuse."""

def ui_to_api(name: str, text: str, object_info: str) -> str:
    """The API workflow (JSON text) ComfyUI's frontend makes of the UI-format workflow ``text``, with the node definitions of ``object_info`` (the JSON text of ``/object_info``); ValueError saying why it cannot be converted."""

def io_name(node: str, name: str) -> str:
    """The trimmed name of a Remote Input/Output; ValueError (starting with ``node``) when it cannot be one."""

def job_output_file(job_dir: _StrPath, name: str) -> pathlib.Path:
    """The file the Remote Output ``name`` writes in the job directory ``job_dir``."""

def accepts(declared: str, actual: str) -> bool:
    """Whether an input declared ``declared`` takes a value of type ``actual`` (the protocol's type rule)."""

def conform_input(name: str, declared: str, actual: str, value: Any) -> Any:
    """A job's value for the Remote Input ``name``, brought to ``declared`` (an int for a FLOAT becomes a float); ValueError naming the input when the type does not fit."""
