"""The Remote API node (run a remote workflow as one local node) and the
Remote Result Pick node (one value out of a multi-output result).

The node is thin: values go through ``comfy_remote.codec``; HTTP, retries,
event streams, polling, cancel and the matching of inputs to the remote
signature are the native client's (``comfy_remote._native.Client``). What
stays here is ComfyUI's part: the schema, progress bar and text, previews
and interrupts.

Its shape follows the endpoint. Where this ComfyUI's schema accepts inputs
it does not declare (``compat.ACCEPTS_ALL_INPUTS``), the pack's frontend
extension (``web/comfy_remote.js``) shows one input per remote input, named
``input:<name>`` in the prompt and matched by name, and one output per
Remote Output, whose names it keeps in the ``remote_outputs`` widget (a JSON
list, one name per output slot; ``""`` is the result: the value, or a
REMOTE_RESULT bundle of several). Without a known signature, and on older
ComfyUI, inputs are positional (``value0``, ``value1``, ...) and the one
output is the result.
"""

from __future__ import annotations

import asyncio
import io as _bytesio
import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from comfy_api.latest import io

from comfy_remote import _native, codec, secrets
from comfy_remote._native import DEFAULT_ENDPOINT, ENV, NAMED_INPUT_PREFIX, Client, RemoteError
from comfy_remote.nodes import compat

CATEGORY = "comfy-remote"
MAX_INPUTS = 32
# Older ComfyUI (before 0.3.76) has no io.Autogrow: a fixed set of optional inputs.
FALLBACK_INPUTS = 8
HAS_AUTOGROW = compat.HAS_AUTOGROW
# Named inputs and one output per Remote Output (see the module's docstring).
NAMED = compat.ACCEPTS_ALL_INPUTS
# Output slots the node declares where it is NAMED: the result, then one per Remote Output.
MAX_OUTPUTS = 16
OUTPUTS_KEY = "remote_outputs"
# The type of the bundle several outputs come back as.
RESULT_TYPE = "REMOTE_RESULT"
# How often the interrupt flag is checked while waiting on the remote job.
INTERRUPT_CHECK_S = 0.1

log = logging.getLogger("comfy_remote")

# Clients kept for reuse: calls to one endpoint share its connections and its
# signature (GET /v1/info, asked again after a few seconds).
MAX_CLIENTS = 16
_clients: OrderedDict[tuple[Any, ...], Client] = OrderedDict()
_clients_lock = threading.Lock()


def _client(url: str, headers: list[tuple[str, str]], timeout: float | None, mode: str,
            images_8bit: bool = False) -> Client:
    """The shared client for these settings, created on first use."""
    key = (url, tuple(headers), timeout, mode, images_8bit)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = Client(url, headers=headers, timeout=timeout, mode=mode, images_8bit=images_8bit)
            _clients[key] = client
            while len(_clients) > MAX_CLIENTS:
                _clients.popitem(last=False)
        else:
            _clients.move_to_end(key)
        return client


# COMFY_REMOTE_TRACE=1: one stderr line per phase of a call, in ms since it began.
_TRACE = os.environ.get(ENV["TRACE"], "") not in ("", "0")


class _Trace:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, what: str) -> None:
        if _TRACE:
            sys.stderr.write(f"[comfy-remote trace] {(time.perf_counter() - self.t0) * 1000:8.1f} ms {what}\n")


class RemoteResult(Mapping[str, Any]):
    """Type ``REMOTE_RESULT``: the outputs of a remote workflow with several
    Remote Output nodes, in order. Index it by output name or position
    (``result["image"]``, ``result[0]``), or use the Remote Result Pick node."""

    def __init__(self, outputs: list[tuple[str, str | None, Any]]):
        self._names = [n for n, _, _ in outputs]
        self._types = {n: t for n, t, _ in outputs}
        self._values = {n: v for n, _, v in outputs}

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            if not -len(self._names) <= key < len(self._names):
                raise IndexError(
                    f"remote result has {len(self._names)} outputs ({', '.join(self._names)}); no index {key}"
                )
            return self._values[self._names[key]]
        if key not in self._values:
            raise KeyError(f"remote result has no output {key!r}; it has {', '.join(self._names) or 'none'}")
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def type_of(self, name: str) -> str | None:
        """The Comfy type the remote declared for output ``name``."""
        return self._types.get(name)

    def __repr__(self) -> str:
        items = ", ".join(f"{n}: {self._types.get(n) or '?'}" for n in self._names)
        return f"RemoteResult({items})"


def _value_inputs() -> list[Any]:
    if NAMED:
        # Undeclared: the frontend extension adds value<N> or input:<name>
        # sockets, and accept_all_inputs hands them to execute().
        return []
    tip = "A value for the remote workflow's Remote Input of the same position (any type)."
    if HAS_AUTOGROW:
        return [
            io.Autogrow.Input(
                "values",
                template=io.Autogrow.TemplatePrefix(
                    input=io.AnyType.Input("value", tooltip=tip),
                    prefix="value",
                    min=0,
                    max=MAX_INPUTS,
                ),
                tooltip="Inputs sent to the remote workflow, matched to its Remote Inputs by order. "
                "Connecting the last one adds another.",
            )
        ]
    return [io.AnyType.Input(f"value{i}", optional=True, tooltip=tip) for i in range(FALLBACK_INPUTS)]


def _outputs() -> list[Any]:
    result = io.AnyType.Output(
        "result",
        tooltip="The remote result as a Comfy value of its type. With several Remote Outputs: a "
        "REMOTE_RESULT bundle (pick values with Remote Result Pick), unless the node shows one "
        "output per Remote Output.",
    )
    if not NAMED:
        return [result]
    more = [
        io.AnyType.Output(f"output{i}", tooltip="The remote workflow's Remote Output shown on this socket.")
        for i in range(1, MAX_OUTPUTS)
    ]
    return [result, *more]


def _slot(key: str) -> str | None:
    """``value<N>`` for a positional input key: ``value<N>``, or
    ``values.value<N>`` as the Autogrow input was saved in the prompt."""
    key = key.removeprefix("values.")
    return key if key.startswith("value") and key[5:].isdigit() else None


def collect_values(values: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The connected inputs: positional ones as ``("value<N>", v)`` in slot
    order (from the Autogrow dict or ``value<N>`` keyword arguments), then
    named ones as ``("input:<name>", v)`` in the order given."""
    source: dict[str, Any] = {}
    for key, value in [*(values or {}).items(), *kwargs.items()]:
        slot = _slot(key)
        if slot is not None:
            source[slot] = value
    slots = sorted((int(k[5:]), k) for k in source)
    positional = [(k, source[k]) for _, k in slots if source[k] is not None]
    named = [(k, v) for k, v in kwargs.items() if k.startswith(NAMED_INPUT_PREFIX) and v is not None]
    return positional + named


def output_slots(spec: str | None) -> list[str]:
    """The remote output each output slot gives, from the ``remote_outputs``
    value (``""``: the result). Empty or absent: the one result slot."""
    if spec is None or not str(spec).strip():
        return [""]
    try:
        names = json.loads(spec)
    except ValueError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"Remote API: {OUTPUTS_KEY} must be a JSON list of Remote Output names, one per output "
            f'socket ("" for the result), e.g. ["image", "mask"]; got {str(spec)[:80]!r}'
        )
    if len(names) > MAX_OUTPUTS:
        raise ValueError(f"Remote API: {OUTPUTS_KEY} names {len(names)} outputs; the node has {MAX_OUTPUTS}")
    return names


def linked_slots(prompt: Any, node_id: Any) -> set[int]:
    """The output slots of node ``node_id`` that nodes of ``prompt`` (the
    local prompt, read here and never sent) take an input from."""
    if not isinstance(prompt, dict) or node_id is None:
        return set()
    me = str(node_id)
    linked: set[int] = set()
    for node in prompt.values():
        for value in ((node or {}).get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == me and isinstance(value[1], int):
                linked.add(value[1])
    return linked


def check_links(slots: list[str], linked: set[int]) -> None:
    """Fail, before anything is sent, when a link leaves an output slot the node does not fill."""
    beyond = sorted(i for i in linked if i >= len(slots))
    if beyond:
        raise ValueError(
            f"Remote API: output socket {beyond[0]} is linked but the node fills {len(slots)} "
            f"({', '.join(n or 'result' for n in slots)}); set the node's endpoint again to show "
            "its outputs, or remove the link"
        )


def _no_such_output(name: str, have: list[str]) -> ValueError:
    return ValueError(
        f"Remote API: output {name!r} is linked, but the endpoint's workflow does not return it "
        f"(it returns {', '.join(have) or 'nothing'}); set the node's endpoint again to show its "
        "outputs, or remove the link"
    )


def check_output_names(slots: list[str], signature: Mapping[str, Any] | None, linked: set[int]) -> None:
    """Fail, before anything is sent, when a linked socket names an output
    the endpoint's signature does not have (nothing to check without one)."""
    if signature is None:
        return
    have = [o["name"] for o in signature["outputs"]]
    for i, name in enumerate(slots):
        if name and name not in have and i in linked:
            raise _no_such_output(name, have)


def result_value(outputs: list[tuple[str, str | None, Any]]) -> Any:
    """The result: the value of a single output, else a RemoteResult bundle."""
    return outputs[0][2] if len(outputs) == 1 else RemoteResult(outputs)


def slot_values(slots: list[str], outputs: list[tuple[str, str | None, Any]], linked: set[int]) -> list[Any]:
    """One value per output slot: the result for ``""``, else the output of
    that name. A linked slot whose output the endpoint no longer returns is
    named in the error; an unlinked one gives None."""
    result = result_value(outputs)
    by_name = {name: value for name, _, value in outputs}
    values = []
    for i, name in enumerate(slots):
        if name == "":
            values.append(result)
        elif name in by_name:
            values.append(by_name[name])
        elif i in linked:
            raise _no_such_output(name, list(by_name))
        else:
            values.append(None)
    return values


def _interrupted() -> bool:
    import comfy.model_management as mm

    return mm.processing_interrupted()


def _raise_interrupt() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
    # The flag was consumed elsewhere (another node saw it first): still an interrupt.
    raise mm.InterruptProcessingException()


class _Reporter:
    """Drives the node's progress bar, progress text and preview."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.text = ""
        self.api: Any = None

    async def progress(self, fraction: float, preview: Any = None) -> None:
        if self.node_id is None:
            return
        if self.api is None:
            self.api = compat.execution_api()
        await self.api.set_progress(
            value=round(fraction * 100.0, 2), max_value=100.0, node_id=self.node_id, preview_image=preview
        )

    def say(self, text: str) -> None:
        if self.node_id is None or text == self.text:
            return
        self.text = text
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(text, self.node_id)
        except Exception:  # no server (unit tests): text is cosmetic
            log.debug("progress text not sent: %s", text)


async def run_remote(
    client: Client, items: list[tuple[str, Any]], reporter: _Reporter, trace: _Trace | None = None
) -> list[tuple[str, str | None, Any]]:
    """Send ``items``, follow the job, return its outputs ``[(name, type, value)]`` in order."""
    trace = trace or _Trace()
    local = [(name, codec.infer_type(value)) for name, value in items]
    reporter.say("connecting")
    names = await asyncio.to_thread(client.plan_inputs, local)
    trace("planned")
    payload = [(remote, typ, value) for remote, (_, typ), (_, value) in zip(names, local, items)]
    # Packed as far as the endpoint reads packed tensors (an 8-bit-origin
    # image travels as its 8-bit values, losslessly), unless the endpoint is
    # on this machine (COMFY_REMOTE_PACK).
    codecs = tuple(await asyncio.to_thread(client.upload_codecs))
    body = await asyncio.to_thread(lambda: codec.encode(payload, codecs=codecs))
    trace(f"encoded {len(body)} bytes")
    reporter.say("uploading")
    job = await asyncio.to_thread(client.start, body)
    trace("started")
    fraction = 0.0
    try:
        while True:
            if _interrupted():
                reporter.say("canceling")
                job.cancel()
                await _wait_end(job)
                reporter.say("canceled")
                _raise_interrupt()
            event = await asyncio.to_thread(job.next_event, INTERRUPT_CHECK_S)
            if event is None:
                continue
            kind, data = event
            trace(f"event {kind}")
            if kind == "progress":
                fraction = max(fraction, float(data["fraction"]))
                reporter.say(f"remote: {data['text']}")
                await reporter.progress(fraction)
            elif kind == "status":
                reporter.say(f"remote: {data}")
            elif kind == "submitted":
                reporter.say(f"remote job {data['id']}: {data['status']}")
            elif kind == "preview":
                mime, image_bytes, _node = data
                await reporter.progress(fraction, _decode_preview(image_bytes))
            elif kind == "done":
                reporter.say("downloading result")
                outputs = await asyncio.to_thread(codec.decode, data)
                trace("decoded")
                await reporter.progress(1.0)
                reporter.say(f"done: {', '.join(n for n, _, _ in outputs)}")
                return outputs
    except asyncio.CancelledError:
        job.cancel()
        raise


async def _wait_end(job: Any, limit_s: float = 2.0) -> None:
    """After cancel: wait (bounded) for the remote cancel to be acknowledged."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not job.finished and loop.time() < end:
        try:
            await asyncio.to_thread(job.next_event, INTERRUPT_CHECK_S)
        except RemoteError:
            return


def _decode_preview(data: bytes) -> Any:
    try:
        from PIL import Image

        img = Image.open(_bytesio.BytesIO(data))
        img.load()
        return img
    except Exception:
        return None


class RemoteAPI(io.ComfyNode):
    """Run a remote workflow (a comfy-remote worker, a Modal deployment, or
    any endpoint of the simple status/poll_url shape) as one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return compat.schema(
            node_id=_native.REMOTE_API,
            display_name="Remote API",
            category=CATEGORY,
            description="Sends its inputs, with their Comfy types, to a remote workflow and returns its "
            "result as a real Comfy value, with live progress and a working Cancel.",
            inputs=[
                *_value_inputs(),
                io.String.Input(
                    "endpoint",
                    default=DEFAULT_ENDPOINT,
                    tooltip="URL of the remote workflow: a `comfy-remote serve` worker, a Modal "
                    "deployment, or an endpoint of the simple JSON shape.",
                ),
                io.Float.Input(
                    "timeout",
                    default=3600.0,
                    min=0.0,
                    max=7 * 24 * 3600.0,
                    step=1.0,
                    tooltip="Seconds the whole remote job may take (0 = no limit). Past it, "
                    "the remote job is canceled.",
                ),
                io.String.Input(
                    "token",
                    default="",
                    tooltip="Reference to a bearer token, never the token itself: an environment "
                    "variable name, or secrets:<name> for an entry of "
                    "<user dir>/comfy-remote/secrets.json. Empty = none.",
                ),
                io.String.Input(
                    "modal_key",
                    default="",
                    optional=True,
                    tooltip="Reference (env var or secrets:<name>) to a Modal proxy-auth token id "
                    "(Modal-Key). Empty = none.",
                ),
                io.String.Input(
                    "modal_secret",
                    default="",
                    optional=True,
                    tooltip="Reference (env var or secrets:<name>) to the Modal proxy-auth "
                    "secret (Modal-Secret). Empty = none.",
                ),
                io.Combo.Input(
                    "transfer",
                    options=["exact", "8-bit"],
                    default="exact",
                    optional=True,
                    tooltip="exact: results come back bit for bit. 8-bit: IMAGE and MASK results "
                    "travel rounded to 8 bits (about a quarter of the bytes, less with compression); "
                    "only for images that will be saved as 8-bit files.",
                ),
                io.Combo.Input(
                    "protocol",
                    options=["auto", "native", "json"],
                    default="auto",
                    optional=True,
                    tooltip="auto: ask the endpoint (GET /v1/info). native: comfy-remote binary "
                    "protocol with live events. json: the simple status/progress/poll_url shape.",
                ),
                io.String.Input(
                    "endpoint_url",
                    optional=True,
                    force_input=True,
                    tooltip="A URL from a link (e.g. the Modal Deployment node's service URL). "
                    "When connected it overrides the endpoint widget.",
                ),
            ],
            outputs=_outputs(),
            # The node id (progress, previews) and, read here, never sent, the
            # local prompt: which output sockets are linked.
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            accept_all_inputs=NAMED,
        )

    @classmethod
    async def execute(
        cls,
        endpoint: str,
        timeout: float,
        token: str,
        modal_key: str = "",
        modal_secret: str = "",
        protocol: str = "auto",
        transfer: str = "exact",
        endpoint_url: str | None = None,
        values: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> io.NodeOutput:
        url = (endpoint_url or endpoint or "").strip()
        if not url:
            raise ValueError("Remote API: no endpoint URL; set the endpoint widget or connect endpoint_url")
        hidden = cls.hidden
        node_id = hidden.unique_id if hidden else None
        slots = output_slots(kwargs.get(OUTPUTS_KEY))
        linked = linked_slots(hidden.prompt if hidden else None, node_id)
        check_links(slots, linked)
        trace = _Trace()
        headers = secrets.auth_headers(token, modal_key, modal_secret)
        client = _client(url, headers, timeout or None, protocol or "auto", images_8bit=transfer == "8-bit")
        reporter = _Reporter(node_id)
        trace("client ready")
        try:
            if slots != [""]:
                check_output_names(slots, await asyncio.to_thread(client.signature), linked)
            outputs = await run_remote(client, collect_values(values, kwargs), reporter, trace)
        except RemoteError as e:
            if getattr(e, "kind", "") == "canceled" and _interrupted():
                _raise_interrupt()
            raise RuntimeError(f"Remote API ({url}): {e}") from e
        result = slot_values(slots, outputs, linked) if NAMED else [result_value(outputs)]
        trace("returning")
        return io.NodeOutput(*result, ui=await _shape_ui(url, client))


async def _shape_ui(url: str, client: Client) -> dict[str, Any] | None:
    """The shape the run saw (the client holds the signature it checked the
    inputs against), for the frontend extension: an endpoint_url link is
    known only once the node ran. Nothing without a signature (a client in
    `native` mode takes the endpoint on trust and holds none)."""
    try:
        signature = await asyncio.to_thread(client.signature)
    except RemoteError:
        return None
    return None if signature is None else {"comfy_remote_shape": [shape_view(url, signature)]}


def shape_view(url: str, signature: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the frontend extension shows for an endpoint: its inputs and
    outputs (None for an endpoint of the simple JSON shape, which has no
    signature: positional inputs, one result)."""
    if signature is None:
        return {"endpoint": url, "inputs": None, "outputs": None}
    pick = ("name", "type", "optional", "default")
    return {
        "endpoint": url,
        "inputs": [{k: i[k] for k in pick if k in i} for i in signature["inputs"]],
        "outputs": [{k: o[k] for k in ("name", "type")} for o in signature["outputs"]],
    }


class RemoteResultPick(io.ComfyNode):
    """One value out of a REMOTE_RESULT bundle, by name or index."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=_native.REMOTE_RESULT_PICK,
            display_name="Remote Result Pick",
            category=CATEGORY,
            description="Picks one output of a multi-output Remote API result.",
            inputs=[
                io.AnyType.Input("result", tooltip="The Remote API node's result (a REMOTE_RESULT bundle)."),
                io.String.Input(
                    "name",
                    default="",
                    tooltip="Name of the remote workflow's Remote Output to pick. Empty = use index.",
                ),
                io.Int.Input(
                    "index",
                    default=0,
                    min=-MAX_INPUTS,
                    max=1024,
                    tooltip="Position of the output to pick (0 = first) when name is empty.",
                ),
            ],
            outputs=[io.AnyType.Output("value", tooltip="The picked value, a Comfy value of its type.")],
        )

    @classmethod
    def execute(cls, result: Any, name: str = "", index: int = 0) -> io.NodeOutput:
        if not isinstance(result, RemoteResult):
            if name.strip() == "" and index in (0, -1):
                return io.NodeOutput(result)  # a single-output result passes through
            raise ValueError(
                "Remote Result Pick: the input is a single value, not a REMOTE_RESULT bundle; "
                "connect it directly instead"
            )
        key: str | int = name.strip() if name.strip() else index
        try:
            return io.NodeOutput(result[key])
        except (KeyError, IndexError) as e:
            raise ValueError(f"Remote Result Pick: {e.args[0]}") from None


NODES: list[type[io.ComfyNode]] = [RemoteAPI, RemoteResultPick]
