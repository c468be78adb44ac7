"""comfy_remote.codec: round trips, golden vectors, safety and safetensors interop."""

from __future__ import annotations

import json
import math
import pickle
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from comfy_remote import codec
from comfy_remote.codec import CodecError, decode, decode_file, encode, infer_type

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def same(a: Any, b: Any) -> bool:
    """Exact equality that also checks Python types, tensor dtypes and NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        # Compare bytes, so NaNs and -0.0 inside tensors count too.
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.numel() == 0:
            return True
        raw = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
        return torch.equal(raw(a), raw(b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def round_trip(value: Any, comfy_type: str | None = None) -> Any:
    [(name, _, back)] = decode(encode([("v", comfy_type, value)]))
    assert name == "v"
    return back


# --- Round trips a ComfyUI user relies on --------------------------------------------------


def test_image_round_trips_bit_for_bit_and_keeps_its_type() -> None:
    image = torch.rand(2, 16, 16, 3)
    [(name, comfy_type, back)] = decode(encode([("image", "IMAGE", image)]))
    assert (name, comfy_type) == ("image", "IMAGE")
    assert back.dtype == torch.float32 and back.shape == image.shape
    assert torch.equal(back, image)


def test_latent_dict_round_trips_with_noise_mask_and_batch_index() -> None:
    latent = {
        "samples": torch.randn(2, 4, 8, 8),
        "noise_mask": torch.rand(2, 1, 8, 8),
        "batch_index": [0, 1],
    }
    [(_, comfy_type, back)] = decode(encode([("latent", None, latent)]))
    assert comfy_type == "LATENT"
    assert same(back, latent)


def test_audio_and_primitives_keep_their_python_types() -> None:
    values = [
        ("audio", None, {"waveform": torch.randn(1, 2, 100), "sample_rate": 44100}),
        ("s", None, "naïve ✓"),
        ("i", None, 7),
        ("f", None, 7.0),
        ("b", None, False),
        ("n", None, None),
        ("t", None, (1, 2.0, "x", (None,))),
        ("l", None, [1, [2, [3]]]),
        ("d", None, {"$t": 1, "nested": {"$dict": (1,)}}),
        ("raw", None, b"\x00\xff"),
        ("big", None, 2**63 - 1),
        ("neg0", None, -0.0),
        ("nonfinite", None, [math.nan, math.inf, -math.inf]),
    ]
    decoded = decode(encode(values))
    assert [t for _, t, _ in decoded] == [
        "AUDIO", "STRING", "INT", "FLOAT", "BOOLEAN", "*", "*", "*", "*", "*", "INT", "FLOAT", "*",
    ]
    for (name, _, value), (dname, _, back) in zip(values, decoded):
        assert name == dname
        assert same(back, value), name


def test_every_dtype_round_trips() -> None:
    dtypes = [
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32,
        torch.uint32, torch.int64, torch.uint64, torch.float16, torch.bfloat16,
        torch.float32, torch.float64,
    ]
    for dt in dtypes:
        t = torch.arange(12).reshape(3, 4).to(dt) if dt != torch.bool else torch.rand(3, 4) > 0.5
        back = round_trip(t)
        assert back.dtype == dt and same(back, t), dt


def test_non_contiguous_and_zero_size_tensors() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).transpose(0, 2)
    assert same(round_trip(t), t.contiguous())
    empty = torch.zeros(0, 5)
    assert same(round_trip(empty), empty)


def test_numpy_arrays_and_scalars_are_accepted() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = round_trip(a)
    assert isinstance(back, torch.Tensor) and torch.equal(back, torch.from_numpy(a))
    assert round_trip(np.float32(0.5)) == 0.5
    assert type(round_trip(np.int64(3))) is int
    big_endian = np.arange(4, dtype=">i4")
    assert round_trip(big_endian).tolist() == [0, 1, 2, 3]


def test_long_strings_travel_in_the_data_section() -> None:
    text = "x" * (codec.INLINE_STR_MAX + 1)
    data = encode([("s", None, text)])
    (n,) = struct.unpack("<Q", data[:8])
    assert n < 1024  # the header stays small
    assert round_trip(text) == text


def test_encoding_is_deterministic() -> None:
    values = [("a", "IMAGE", torch.ones(1, 2, 2, 3)), ("b", None, {"x": (1, 2.5)})]
    assert encode(values) == encode(values)


# --- Zero-copy and writability ----------------------------------------------------------------


def test_tensors_share_a_writable_buffer_and_copy_from_bytes() -> None:
    image = torch.rand(1, 4, 4, 3)
    data = encode([("image", "IMAGE", image)])
    shared = bytearray(data)
    [(_, _, back)] = decode(shared)
    back[0, 0, 0, 0] = 42.0  # writes through to the buffer
    [(_, _, again)] = decode(shared)
    assert again[0, 0, 0, 0] == 42.0
    [(_, _, from_bytes)] = decode(data)
    from_bytes += 1  # a private, writable copy: no warning, bytes untouched
    assert decode(data)[0][2][0, 0, 0, 0] == image[0, 0, 0, 0]


def test_decode_file(tmp_path: Path) -> None:
    path = tmp_path / "x.crc"
    path.write_bytes(encode([("m", "MASK", torch.rand(1, 3, 3))]))
    [(name, comfy_type, mask)] = decode_file(path)
    assert (name, comfy_type, mask.shape) == ("m", "MASK", (1, 3, 3))


# --- What cannot travel, and pickle ----------------------------------------------------------


def test_model_objects_fail_with_a_message_naming_type_and_fix() -> None:
    with pytest.raises(CodecError) as err:
        encode([("model", "MODEL", torch.nn.Linear(2, 2))])
    msg = str(err.value)
    assert "torch.nn.modules.linear.Linear" in msg and "file names" in msg
    assert isinstance(err.value, ValueError)


def test_conditioning_with_a_model_object_names_the_path() -> None:
    cond = [[torch.zeros(1, 2, 3), {"pooled_output": torch.zeros(1, 3), "control": torch.nn.Identity()}]]
    with pytest.raises(CodecError, match=r"cond\[0\]\[1\]\.control"):
        encode([("cond", "CONDITIONING", cond)])
    # Without the model object it travels.
    cond[0][1].pop("control")
    assert same(round_trip(cond), cond)


class Custom:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.x == self.x


def test_unsupported_values_fail_without_a_pickle_secret() -> None:
    for bad in [Custom(1), {1: "int key"}, 2**64, {1, 2}, torch.zeros(2, dtype=torch.complex64)]:
        with pytest.raises(CodecError):
            encode([("v", None, bad)])


def test_signed_pickle_needs_the_secret_on_both_ends() -> None:
    secret = b"shared secret"
    data = encode([("obj", None, Custom(5))], pickle_secret=secret)
    [(_, _, back)] = decode(data, pickle_secret=secret)
    assert back == Custom(5)
    with pytest.raises(CodecError, match="pickle_secret"):
        decode(data)
    with pytest.raises(CodecError, match="bad signature"):
        decode(data, pickle_secret=b"other secret")


class Boom:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (pytest.fail, ("unpickled a payload with a bad signature",))


def test_tampered_pickle_is_never_unpickled() -> None:
    secret = b"k"
    # A container whose pickle is signed with another key.
    evil = pickle.dumps(Boom())
    forged = encode([("obj", None, Boom())], pickle_secret=b"attacker")
    with pytest.raises(CodecError, match="bad signature"):
        decode(forged, pickle_secret=secret)
    # A hand-built container with a malicious pickle and a made-up signature.
    bad = _container_with_pickle(evil, "0" * 64)
    with pytest.raises(CodecError, match="bad signature"):
        decode(bad, pickle_secret=secret)
    with pytest.raises(CodecError, match="pickle_secret"):
        decode(bad)


def _container_with_pickle(data: bytes, sig: str) -> bytes:
    tree = json.dumps({"v": 1, "entries": [{"name": "p", "type": None, "value": {"$pickle": "t0", "sig": sig}}]})
    header = json.dumps(
        {"__metadata__": {"comfy_remote": tree}, "t0": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


# --- Bad input ------------------------------------------------------------------------------


def test_invalid_containers_raise_codec_error_with_a_kind() -> None:
    good = encode([("image", "IMAGE", torch.rand(1, 2, 2, 3))])
    cases = {
        b"": "truncated",
        b"\xff" * 8: "header_too_large",
        good[:-1]: "invalid_container",
        struct.pack("<Q", 2) + b"[]": "invalid_header",
    }
    for data, kind in cases.items():
        with pytest.raises(CodecError) as err:
            decode(data)
        assert err.value.kind == kind, (data[:16], err.value)


def test_limits_can_be_tightened_per_call() -> None:
    data = encode([("image", "IMAGE", torch.rand(1, 2, 2, 3))])
    with pytest.raises(CodecError, match="over the limit") as err:
        decode(data, max_total_bytes=100)
    assert err.value.kind == "too_large"
    with pytest.raises(CodecError):
        decode(data, max_rank=3)


def test_random_mutations_never_crash() -> None:
    rng = random.Random(1234)
    good = encode(
        [
            ("image", "IMAGE", torch.rand(1, 4, 4, 3)),
            ("latent", None, {"samples": torch.rand(1, 4, 2, 2), "x": (1, "a", None)}),
        ]
    )
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            op = rng.random()
            if op < 0.6:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.8:
                del data[rng.randrange(len(data)) :]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        try:
            decode(data)
        except CodecError:
            pass


def test_random_values_round_trip() -> None:
    rng = random.Random(99)

    def gen(depth: int) -> Any:
        kinds = ["none", "bool", "int", "float", "str", "bytes", "tensor"]
        if depth < 4:
            kinds += ["list", "tuple", "dict"] * 2
        k = rng.choice(kinds)
        if k == "none":
            return None
        if k == "bool":
            return rng.random() < 0.5
        if k == "int":
            return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randint(-(10**12), 10**12)])
        if k == "float":
            return rng.choice([0.1, -0.0, 1e300, 5e-324, math.nan, math.inf, rng.uniform(-1e6, 1e6)])
        if k == "str":
            return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x10FFFF)])) for _ in range(rng.randint(0, 12))).encode("utf-8", "ignore").decode("utf-8", "ignore")
        if k == "bytes":
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        if k == "tensor":
            shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 4))]
            return torch.randn(shape).to(rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.int64]))
        items = [gen(depth + 1) for _ in range(rng.randint(0, 4))]
        if k == "list":
            return items
        if k == "tuple":
            return tuple(items)
        keys = [rng.choice(["a", "$t", "samples", "", "$", "ключ"]) + str(i) for i in range(len(items))]
        return dict(zip(keys, items))

    for i in range(300):
        values = [(f"e{j}", rng.choice([None, "IMAGE", "X"]), gen(0)) for j in range(rng.randint(0, 3))]
        data = encode(values)
        decoded = decode(data)
        for (name, ty, value), (dname, dty, back) in zip(values, decoded):
            assert name == dname and dty == (ty or infer_type(back)), i
            assert same(back, value), (i, name)
        assert encode([(n, t, v) for (n, t, _), (_, _, v) in zip(values, decoded)]) == data


# --- Golden vectors and interop -------------------------------------------------------------


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["file"])
def test_golden_vectors_reencode_byte_identically(vector: dict[str, Any]) -> None:
    data = (VECTORS / vector["file"]).read_bytes()
    decoded = decode(data)
    expected = vector["entries"]
    assert [name for name, _, _ in decoded] == [e["name"] for e in expected]
    for (_, comfy_type, _), e in zip(decoded, expected):
        assert comfy_type == (e["declared_type"] or e["inferred_type"])
    # A packed vector re-encodes to its bytes when the same codecs are allowed.
    codecs = codec.CODECS if vector["packed"] else ()
    reencoded = encode([(name, e["declared_type"], value) for (name, _, value), e in zip(decoded, expected)],
                       codecs=codecs)
    assert reencoded == data


def test_an_8_bit_image_packs_to_a_fraction_and_comes_back_bit_identical() -> None:
    k = torch.randint(0, 256, (2, 64, 96, 3), generator=torch.Generator().manual_seed(3))
    image = k.to(torch.float32) / 255.0  # how ComfyUI's loader makes an IMAGE
    plain = encode([("image", "IMAGE", image)])
    packed = encode([("image", "IMAGE", image)], codecs=codec.CODECS)
    assert len(packed) * 3 < len(plain)
    ((name, ty, back),) = decode(packed)
    assert (name, ty) == ("image", "IMAGE")
    assert back.dtype == torch.float32 and back.shape == image.shape
    assert torch.equal(back.view(torch.int32), image.view(torch.int32)), "bit for bit"
    # Not 8-bit data: sent as it is (a random image does not shrink) or packed
    # another way, and always back bit for bit.
    other = 1.0 - image
    ((_, _, back),) = decode(encode([("image", "IMAGE", other)], codecs=codec.CODECS))
    assert torch.equal(back.view(torch.int32), other.view(torch.int32))
    # Rounded to 8 bits only when asked: values a PNG writer would store.
    lossy = encode([("image", "IMAGE", other)], codecs=codec.CODECS, quantize_images=True)
    ((_, _, back),) = decode(lossy)
    assert torch.equal((back * 255).round(), (other.clamp(0, 1) * 255).round())
    assert encode([("image", "IMAGE", image)], codecs=()) == plain


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["file"])
def test_encode_to_file_writes_the_same_bytes_as_encode(vector: dict[str, Any], tmp_path: Path) -> None:
    data = (VECTORS / vector["file"]).read_bytes()
    codecs = codec.CODECS if vector["packed"] else ()
    values = [(name, e["declared_type"], value) for (name, _, value), e in zip(decode(data), vector["entries"])]
    path = tmp_path / "out.crc"
    path.write_bytes(b"previous, longer content " * 100)  # truncated, not kept
    assert codec.encode_to_file(values, path, codecs=codecs) == len(data)
    assert path.read_bytes() == encode(values, codecs=codecs) == data


def test_encode_to_file_streams_tensors_from_torch_and_numpy(tmp_path: Path) -> None:
    values = [
        ("image", "IMAGE", torch.rand(2, 16, 16, 3)),
        ("mask", None, np.arange(24, dtype=">f4").reshape(2, 3, 4)),  # non-native byte order
        ("latent", "LATENT", {"samples": torch.randn(1, 4, 8, 8).to(torch.bfloat16).transpose(2, 3)}),
        ("misc", None, {"s": "x" * (codec.INLINE_STR_MAX + 1), "b": b"\x00\x01", "t": (1, 2.5, None)}),
    ]
    path = tmp_path / "mixed.crc"
    assert codec.encode_to_file(values, str(path)) == path.stat().st_size
    assert path.read_bytes() == encode(values)
    assert all(same(a[2], b[2]) for a, b in zip(values[:1], decode_file(path)[:1]))


def test_encode_to_file_refuses_before_creating_the_file(tmp_path: Path) -> None:
    path = tmp_path / "never.crc"
    with pytest.raises(CodecError) as err:
        codec.encode_to_file([("v", None, object())], path)
    assert err.value.kind == "unsupported"
    assert not path.exists()
    with pytest.raises(OSError):
        codec.encode_to_file([("v", None, 1)], tmp_path / "missing-dir" / "x.crc")


def test_safetensors_package_reads_our_tensors() -> None:
    from safetensors import safe_open
    from safetensors.torch import load

    image = torch.rand(1, 4, 4, 3)
    latent = torch.randn(1, 4, 2, 2).to(torch.bfloat16)
    data = encode([("image", "IMAGE", image), ("latent", "LATENT", {"samples": latent})])
    tensors = load(data)
    assert torch.equal(tensors["t0"], image)
    assert torch.equal(tensors["t1"], latent)


def test_safetensors_package_reads_every_golden_vector(tmp_path: Path) -> None:
    from safetensors import safe_open

    for vector in MANIFEST["vectors"]:
        with safe_open(VECTORS / vector["file"], framework="pt") as f:
            tree = json.loads(f.metadata()["comfy_remote"])
            assert tree["v"] == 1
            for name in f.keys():
                f.get_tensor(name)


def test_infer_type_mirrors_the_rust_rules() -> None:
    assert infer_type(torch.rand(1, 2, 2, 3)) == "IMAGE"
    assert infer_type(torch.rand(1, 2, 2)) == "MASK"
    assert infer_type(torch.zeros(1, 2, 2, dtype=torch.int32)) == "*"
    assert infer_type(np.zeros((1, 2, 2, 3), dtype=np.float16)) == "IMAGE"
    assert infer_type({"samples": torch.zeros(1)}) == "LATENT"
    assert infer_type({"waveform": torch.zeros(1), "sample_rate": 8000}) == "AUDIO"
    assert infer_type({"waveform": torch.zeros(1), "sample_rate": True}) == "*"
    assert [infer_type(v) for v in ["s", True, 1, 1.0, None, b"", (1,)]] == [
        "STRING", "BOOLEAN", "INT", "FLOAT", "*", "*", "*",
    ]
