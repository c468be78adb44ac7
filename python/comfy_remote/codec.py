"""Python values <-> comfy-remote containers (protocol ``comfy-remote/1``).

A container is a safetensors file whose metadata carries the value tree
(see ``docs/protocol.md``). This module walks Python values (torch tensors,
numpy arrays, tuples, dicts, ...) into that tree; the native module
(``comfy_remote._native``, Rust) plans, writes and validates the container.

- ``encode`` copies each tensor once, into the returned ``bytes``;
  ``encode_to_file`` streams the same bytes into a file (header, then each
  tensor straight from its memory), without the container in memory.
- ``decode`` validates the header in Rust, then builds tensors over the
  input buffer without copying when it is writable (``bytearray``,
  ``decode_file``); from read-only ``bytes`` each tensor is copied once so
  callers always get tensors they may modify in place.
- Python types round-trip exactly: ``tuple`` stays ``tuple``, ``int`` vs
  ``float`` vs ``bool``, ``None``, nested ``dict``/``list``.
- Pickle is refused unless both sides pass the same ``pickle_secret``; a
  pickle's HMAC-SHA256 signature is checked before it is unpickled.

torch is imported only when a tensor is decoded (or already imported by the
caller when one is encoded), so primitives work without torch installed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from comfy_remote import _native

__all__ = [
    "CodecError",
    "INLINE_STR_MAX",
    "decode",
    "decode_file",
    "encode",
    "encode_to_file",
    "infer_type",
]

#: Raised for any value that cannot be encoded and any invalid container.
#: A ``ValueError``; its ``kind`` attribute, when set, names the check that
#: failed (``"too_large"``, ``"dangling_ref"``, ...).
CodecError: type[ValueError] = _native.CodecError
# The packings this build reads and writes (docs/protocol.md §2.7).
CODECS: tuple[str, ...] = tuple(_native.CODECS)

#: Strings longer than this (in UTF-8 bytes) travel in the data section.
INLINE_STR_MAX = 64 * 1024

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1

# Protocol dtype -> (numpy dtype to read the bytes as, torch dtype name).
# BF16 has no numpy dtype: its bytes are read as int16 and viewed as bf16.
_DTYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("bool", "bool"),
    "U8": ("uint8", "uint8"),
    "I8": ("int8", "int8"),
    "I16": ("int16", "int16"),
    "U16": ("uint16", "uint16"),
    "I32": ("int32", "int32"),
    "U32": ("uint32", "uint32"),
    "I64": ("int64", "int64"),
    "U64": ("uint64", "uint64"),
    "F16": ("float16", "float16"),
    "BF16": ("int16", "bfloat16"),
    "F32": ("float32", "float32"),
    "F64": ("float64", "float64"),
}
_FROM_TORCH = {torch_name: proto for proto, (_, torch_name) in _DTYPES.items()}
_FROM_NUMPY = {np_name: proto for proto, (np_name, _) in _DTYPES.items() if proto != "BF16"}
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

_MODEL_HINT = (
    "it holds a live model object (MODEL, CLIP, VAE, CONTROL_NET, ...) that cannot travel; "
    "run the loader on the remote side and pass file names instead"
)
_GENERIC_HINT = (
    "only None, bool, int, float, str, bytes, list, tuple, dict with str keys, torch tensors "
    "and numpy arrays can travel; convert it, or pass the same pickle_secret on both sides "
    "to send it as a signed pickle"
)


def _error(message: str, kind: str) -> ValueError:
    err = CodecError(message)
    err.kind = kind  # type: ignore[attr-defined]
    return err


def _torch_if_loaded() -> Any | None:
    """torch, if the caller already imported it (a torch tensor implies it)."""
    return sys.modules.get("torch")


def _torch_or_none() -> Any | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _is_tensor(value: Any) -> bool:
    torch = _torch_if_loaded()
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _tensor_dtype(value: Any) -> str | None:
    """Protocol dtype name of a torch tensor or numpy array, if supported."""
    torch = _torch_if_loaded()
    if torch is not None and isinstance(value, torch.Tensor):
        return _FROM_TORCH.get(str(value.dtype).removeprefix("torch."))
    return _FROM_NUMPY.get(value.dtype.name)


def _describe(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _looks_like_model(value: Any) -> bool:
    torch = _torch_if_loaded()
    if torch is not None and isinstance(value, torch.nn.Module):
        return True
    module = type(value).__module__ or ""
    return module == "comfy" or module.startswith(("comfy.", "comfy_extras."))


class _Encoder:
    """Walks values into the JSON tree, collecting tensor data by reference."""

    def __init__(self, pickle_secret: bytes | None) -> None:
        self.pickle_secret = pickle_secret
        # (dtype, shape, data) where data is bytes or a contiguous CPU tensor/array.
        self.tensors: list[tuple[str, list[int], Any]] = []

    def _ref(self, dtype: str, shape: list[int], data: Any) -> str:
        self.tensors.append((dtype, shape, data))
        return f"t{len(self.tensors) - 1}"

    def node(self, value: Any, path: str) -> Any:
        # bool before int: bool is an int subclass.
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise _error(
                    f"cannot encode the int at {path}: {value} does not fit in 64 bits; "
                    "send it as a string",
                    "unsupported",
                )
            return int(value)
        if isinstance(value, float):
            if math.isnan(value):
                return {"$f": "nan"}
            if math.isinf(value):
                return {"$f": "inf" if value > 0 else "-inf"}
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, list):
            return [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"$tuple": [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            members: dict[str, Any] = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _error(
                        f"cannot encode the dict at {path}: key {k!r} is a {_describe(k)}, "
                        "only str keys can travel",
                        "unsupported",
                    )
                members[k] = self.node(v, f"{path}.{k}")
            if any(k.startswith("$") for k in members):
                return {"$dict": members}
            return members
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            return {"$bytes": self._ref("U8", [len(data)], data)}
        if _is_tensor(value):
            return {"$t": self._tensor(value, path)}
        np = sys.modules.get("numpy")
        if np is not None and isinstance(value, np.generic):
            return self.node(value.item(), path)
        return self._pickle(value, path)

    def _tensor(self, value: Any, path: str) -> str:
        dtype = _tensor_dtype(value)
        if dtype is None:
            raise _error(
                f"cannot encode the tensor at {path}: dtype {value.dtype} does not travel; "
                "convert it (e.g. .float()) first",
                "unsupported",
            )
        torch = _torch_if_loaded()
        if torch is not None and isinstance(value, torch.Tensor):
            if value.layout != torch.strided:
                raise _error(
                    f"cannot encode the tensor at {path}: {value.layout} tensors do not travel; "
                    "call .to_dense() first",
                    "unsupported",
                )
            t = value.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.resolve_conj().resolve_neg().contiguous()
            return self._ref(dtype, list(t.shape), t)
        import numpy as np

        a = value
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        a = np.ascontiguousarray(a)
        return self._ref(dtype, list(a.shape), a)

    def _pickle(self, value: Any, path: str) -> dict[str, str]:
        hint = _MODEL_HINT if _looks_like_model(value) else _GENERIC_HINT
        if self.pickle_secret is None:
            raise _error(f"cannot encode the {_describe(value)} at {path}: {hint}", "unsupported")
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # any pickling failure is the caller's value
            raise _error(
                f"cannot pickle the {_describe(value)} at {path}: {exc}", "unsupported"
            ) from exc
        sig = hmac.new(self.pickle_secret, data, hashlib.sha256).hexdigest()
        return {"$pickle": self._ref("U8", [len(data)], data), "sig": sig}


def _plan(
    values: Sequence[tuple[str, str | None, Any]], pickle_secret: bytes | None
) -> tuple[str, list[tuple[str, list[int], Any]]]:
    """The value tree (JSON) and the tensors it refers to, for the native writer."""
    enc = _Encoder(pickle_secret)
    entries = []
    for item in values:
        name, comfy_type, value = item
        if not isinstance(name, str):
            raise _error(f"entry names must be str, got {_describe(name)}", "unsupported")
        if comfy_type is not None and not isinstance(comfy_type, str):
            raise _error(
                f"the type of entry {name!r} must be a str or None, got {_describe(comfy_type)}",
                "unsupported",
            )
        entries.append({"name": name, "type": comfy_type, "value": enc.node(value, name)})
    tree = json.dumps(
        {"v": 1, "entries": entries}, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return tree, enc.tensors


def _lone_surrogate(exc: UnicodeEncodeError) -> ValueError:
    return _error(
        f"cannot encode a string that is not valid Unicode (lone surrogate): {exc}",
        "invalid_utf8",
    )


def encode(
    values: Sequence[tuple[str, str | None, Any]],
    *,
    pickle_secret: bytes | None = None,
    codecs: Sequence[str] = (),
    quantize_images: bool = False,
) -> bytes:
    """Encode named values into a container.

    ``values`` holds ``(name, comfy_type, value)``; ``comfy_type`` (``"IMAGE"``,
    ``"LATENT"``, ...) may be ``None`` to let the receiver infer it. Tensors
    may live on any device (they are moved to the CPU and made contiguous).
    The same values always give the same bytes.

    ``codecs`` are the packings the receiver announced (``codecs`` in its
    ``GET /v1/info``; docs/protocol.md §2.7): tensors are packed losslessly
    where that pays (an 8-bit-origin image as its 8-bit values). With
    ``quantize_images`` IMAGE and MASK values are rounded to 8 bits (lossy:
    only for values that will be saved as 8-bit images).

    Raises ``CodecError`` for values that cannot travel, naming the value's
    path and Python type and what to do instead.
    """
    tree, tensors = _plan(values, pickle_secret)
    try:
        return _native._encode_container(tree, tensors, codecs=list(codecs), quantize_images=quantize_images)
    except UnicodeEncodeError as exc:
        raise _lone_surrogate(exc) from exc


def encode_to_file(
    values: Sequence[tuple[str, str | None, Any]],
    path: str | os.PathLike[str],
    *,
    pickle_secret: bytes | None = None,
    codecs: Sequence[str] = (),
) -> int:
    """Encode named values into the file at ``path`` (created or truncated).

    The bytes are exactly those of ``encode(values)``, but they are streamed:
    the header, then each tensor straight from its memory, so the container
    is never held in memory (the file is written with the GIL released).
    Returns the container's size. Not atomic: write to a temporary name and
    ``os.replace`` it when readers must never see a partial file. Raises
    ``CodecError`` as ``encode`` does, ``OSError`` when the file cannot be
    written.
    """
    tree, tensors = _plan(values, pickle_secret)
    try:
        return _native._encode_container_to_file(tree, tensors, os.fspath(path), codecs=list(codecs))
    except UnicodeEncodeError as exc:
        raise _lone_surrogate(exc) from exc


class _Decoder:
    """Walks the validated tree, building values over the container buffer."""

    def __init__(
        self,
        view: memoryview,
        slots: dict[str, tuple[str, tuple[int, ...], int, int]],
        pickle_secret: bytes | None,
    ) -> None:
        self.view = view
        self.slots = slots
        self.pickle_secret = pickle_secret
        self.copy = view.readonly
        self._torch: Any | None = None

    def value(self, node: Any, path: str) -> Any:
        if isinstance(node, list):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict):
            return node
        if "$tuple" in node:
            return tuple(self.value(v, f"{path}[{i}]") for i, v in enumerate(node["$tuple"]))
        if "$dict" in node:
            return {k: self.value(v, f"{path}.{k}") for k, v in node["$dict"].items()}
        if "$f" in node:
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[node["$f"]]
        if "$t" in node:
            return self.tensor(node["$t"])
        if "$bytes" in node:
            return bytes(self.data(node["$bytes"]))
        if "$str" in node:
            try:
                return str(self.data(node["$str"]), "utf-8")
            except UnicodeDecodeError as exc:
                raise _error(f"the string at {path} is not valid UTF-8", "invalid_utf8") from exc
        if "$pickle" in node:
            return self.unpickle(node["$pickle"], node["sig"], path)
        if "$packed" in node:
            return self.packed(node)
        return {k: self.value(v, f"{path}.{k}") for k, v in node.items()}

    def data(self, name: str) -> memoryview:
        _, _, start, end = self.slots[name]
        return self.view[start:end]

    def tensor(self, name: str) -> Any:
        import numpy as np

        dtype, shape, start, end = self.slots[name]
        np_dtype, torch_dtype = _DTYPES[dtype]
        count = (end - start) // np.dtype(np_dtype).itemsize
        if count == 0:
            arr = np.empty(shape, dtype=np_dtype)
        else:
            arr = np.frombuffer(self.view, dtype=np_dtype, count=count, offset=start).reshape(shape)
            # Read-only input (bytes) or memory torch cannot use as is: one
            # copy, so the caller gets tensors it may modify in place.
            if self.copy or not arr.flags.aligned:
                arr = arr.copy()
        return self._from_numpy(arr, dtype, name)

    def _from_numpy(self, arr: Any, dtype: str, name: str) -> Any:
        if self._torch is None:
            self._torch = _torch_or_none()
        torch = self._torch
        if torch is None:
            if dtype == "BF16":
                raise _error(f"tensor {name!r} is BF16, which needs torch to decode", "unsupported")
            return arr
        t = torch.from_numpy(arr)
        if dtype == "BF16":
            t = t.view(torch.bfloat16)
        return t

    def packed(self, node: dict[str, Any]) -> Any:
        """A `$packed` tensor, unpacked by the native module into memory of its
        own (the decoder checked the declared sizes against the limits)."""
        import numpy as np

        dtype, shape = node["dtype"], tuple(node["shape"])
        plain = _native._unpack(node["codec"], dtype, list(shape), bytes(self.data(node["$packed"])), 1 << 62)
        np_dtype, _ = _DTYPES[dtype]
        arr = np.frombuffer(plain, dtype=np_dtype).reshape(shape)
        return self._from_numpy(arr, dtype, node["$packed"])

    def unpickle(self, name: str, sig: str, path: str) -> Any:
        if self.pickle_secret is None:
            raise _error(
                f"the value at {path} is a pickle; pickles are refused unless both sides "
                "pass the same pickle_secret",
                "pickle_refused",
            )
        data = bytes(self.data(name))
        expected = hmac.new(self.pickle_secret, data, hashlib.sha256).hexdigest()
        # The signature is checked before a single byte is unpickled.
        if not hmac.compare_digest(expected, sig):
            raise _error(
                f"the pickle at {path} has a bad signature (a different pickle_secret, or "
                "tampered data); refusing to unpickle it",
                "bad_signature",
            )
        return pickle.loads(data)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    pickle_secret: bytes | None = None,
    **limits: int,
) -> list[tuple[str, str, Any]]:
    """Decode a container into ``(name, comfy_type, value)`` triples.

    ``comfy_type`` is the declared type, or the inferred one (``infer_type``)
    when the sender left it out. Tensors come back as torch tensors (numpy
    arrays when torch is not installed). Over a writable buffer
    (``bytearray``) they share its memory: the buffer stays alive as long as
    any of them does. ``limits`` override the decoder's limits
    (``max_total_bytes``, ``max_header_bytes``, ``max_tensors``, ``max_rank``,
    ``max_elements``, ``max_depth``).

    Raises ``CodecError`` for anything that is not a valid container.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    total = view.nbytes
    size_limits = {k: v for k, v in limits.items() if k in ("max_total_bytes", "max_header_bytes")}
    header_len = _native.container_header_len(bytes(view[:8]), total, **size_limits)
    tree_json, slot_list = _native.decode_container(bytes(view[:header_len]), total, **limits)
    slots = {name: (dtype, shape, start, end) for name, dtype, shape, start, end in slot_list}
    decoder = _Decoder(view, slots, pickle_secret)
    out: list[tuple[str, str, Any]] = []
    for entry in json.loads(tree_json)["entries"]:
        value = decoder.value(entry["value"], entry["name"])
        comfy_type = entry["type"] if entry["type"] is not None else infer_type(value)
        out.append((entry["name"], comfy_type, value))
    return out


def decode_file(
    path: str | os.PathLike[str],
    *,
    pickle_secret: bytes | None = None,
    **limits: int,
) -> list[tuple[str, str, Any]]:
    """Decode a container file, read once into a ``bytearray`` so tensors
    share its memory (no copy beyond the read)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if got != size:
        raise _error(f"{os.fspath(path)} changed while it was read", "truncated")
    return decode(buf, pickle_secret=pickle_secret, **limits)


def infer_type(value: Any) -> str:
    """The Comfy type a receiver infers for a value without a declared type.

    Mirrors the Rust ``ComfyType::infer``: a 4-D float tensor is ``IMAGE``,
    3-D float ``MASK``; a dict with a ``samples`` tensor is ``LATENT``, with a
    ``waveform`` tensor and an int ``sample_rate`` ``AUDIO``; str, bool, int,
    float are ``STRING``, ``BOOLEAN``, ``INT``, ``FLOAT``; anything else ``*``.
    """
    if _is_tensor(value):
        if _tensor_dtype(value) in _FLOAT_DTYPES and value.ndim in (3, 4):
            return "IMAGE" if value.ndim == 4 else "MASK"
        return "*"
    if isinstance(value, dict):
        if _is_tensor(value.get("samples")):
            return "LATENT"
        rate = value.get("sample_rate")
        if (
            _is_tensor(value.get("waveform"))
            and isinstance(rate, int)
            and not isinstance(rate, bool)
        ):
            return "AUDIO"
        return "*"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    return "*"
