"""The scene-file container (nerfcodec_ns/bitstream.py): round trips, size accounting, fuzzing, files.

The module is loaded from its file, not through the package: ``nerfcodec_ns/__init__`` imports
torch (seconds), and ``bitstream.py`` must work without it (checked in a fresh interpreter below).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MODULE_PATH = Path(__file__).resolve().parents[1] / "nerfcodec_ns" / "bitstream.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("_nerfcodec_bitstream_under_test", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the classes
    spec.loader.exec_module(module)
    return module


nb = _load_module()
BitstreamError = nb.BitstreamError

# database=None: no example database is written into the checkout
FAST = settings(max_examples=60, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Helpers and strategies
# ----------------------------------------------------------------------------------------------


def make_header(**changes) -> "nb.Header":
    fields = dict(
        model_id=nb.MODEL_ID,
        backbone=nb.BackboneId("bmshj2018-hyperprior", 128, 192, "0123456789abcdef" * 4,
                               "zoo:bmshj2018-hyperprior/mse/q6 (bmshj2018-hyperprior-6.pth.tar)"),
        field=nb.FieldArch((16, 32), 8, "product", 64, 15, 64, 4),
        levels=(nb.LevelShape(16, (64, 64), (1, 1)), nb.LevelShape(32, (64, 64), (1, 1))),
        codec=nb.CodecSettings(8, 8, True, True),
        render=nb.RenderSettings((-1.5, -1.5, -1.5, 1.5, 1.5, 1.5), 0.0173, 32, 0.0, 1e-4, 0.05, "white"),
        cameras=nb.CameraSet("PERSPECTIVE", 800, 800, 1111.1110311937682, 1111.1110311937682, 400.0, 400.0,
                             ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)), 0.3333),
        extra=(("exporter", "nerfcodec 0.1.0"),),
    )
    fields.update(changes)
    return nb.Header(**fields)


def small_bitstream() -> "nb.Bitstream":
    rng = np.random.default_rng(0)
    return nb.Bitstream(make_header(), (
        nb.Section("y.0", nb.encode_strings([rng.bytes(40), rng.bytes(33), rng.bytes(0)])),
        nb.Section("z.0", nb.encode_strings([b"\x01\x02", b"\x03", b"\x04\x05\x06"])),
        nb.Section("head", nb.encode_array(rng.integers(-127, 128, (8, 4, 3, 3), dtype=np.int8))),
        nb.Section("norm.0", nb.encode_array(rng.standard_normal((2, 3, 8)).astype(np.float16))),
        nb.Section("empty", b""),
        nb.Section("cameras", nb.encode_array(rng.standard_normal((2, 3, 4)).astype(np.float32))),
    ))


def frame(header_bytes: bytes, sections, version: int = nb.FORMAT_VERSION, magic: bytes = b"NFC\x00") -> bytes:
    """A file assembled by hand from the layout in docs/bitstream.md (any header bytes, any names)."""
    out = magic + struct.pack("<H", version)
    out += struct.pack("<I", len(header_bytes)) + header_bytes + struct.pack("<I", zlib.crc32(header_bytes))
    out += struct.pack("<H", len(sections))
    for name, payload in sections:
        raw = name.encode("ascii")
        out += bytes([len(raw)]) + raw + struct.pack("<I", len(payload)) + payload
        out += struct.pack("<I", zlib.crc32(raw + payload))
    return out


def error_of(data: bytes) -> str:
    with pytest.raises(BitstreamError) as info:
        nb.unpack(data)
    message = str(info.value)
    assert "\n" not in message and message == message.strip() and message
    return message


finite = st.floats(-nb.MAX_MAGNITUDE, nb.MAX_MAGNITUDE, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.0, max_value=nb.MAX_MAGNITUDE, exclude_min=True, allow_nan=False,
                     allow_infinity=False)
focal = st.floats(nb.MIN_FOCAL, nb.MAX_MAGNITUDE)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
nonneg = st.floats(min_value=0.0, max_value=nb.MAX_MAGNITUDE, allow_nan=False, allow_infinity=False)
widths = st.integers(1, nb.MAX_MLP_WIDTH)
small = st.integers(1, nb.MAX_RESOLUTION)
section_names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


def _level(r: int) -> "nb.LevelShape":
    side = -(-r // 64) * 64
    return nb.LevelShape(r, (side, side), (side // 64, side // 64))


@st.composite
def headers(draw) -> "nb.Header":
    """Any header within the format's limits."""
    channels = draw(st.integers(1, nb.MAX_CHANNELS))
    resolutions = draw(st.lists(small, min_size=1, max_size=nb.MAX_LEVELS).filter(
        lambda rs: sum(3 * channels * r * r for r in rs) <= nb.MAX_PLANE_VALUES))
    levels = tuple(_level(r) for r in resolutions)
    largest = max(lv.latent_symbols(1) for lv in levels)
    M = draw(st.integers(1, min(nb.MAX_BACKBONE_CHANNELS, nb.MAX_LATENT_SYMBOLS // largest)))
    box = [draw(st.tuples(finite, finite).filter(lambda t: t[0] < t[1])) for _ in range(3)]
    diagonal = math.sqrt(sum((b[1] - b[0]) ** 2 for b in box))
    step = draw(st.floats(diagonal / nb.MAX_SAMPLES_PER_RAY * 1.001 + 1e-300, nb.MAX_MAGNITUDE))
    return nb.Header(
        model_id=draw(st.text(min_size=1, max_size=30)),
        backbone=nb.BackboneId(draw(st.sampled_from(nb.ARCHITECTURES)), draw(st.integers(1, nb.MAX_BACKBONE_CHANNELS)),
                               M, draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
                               draw(st.text(max_size=40))),
        field=nb.FieldArch(tuple(resolutions), channels, draw(st.sampled_from(["product", "sum"])),
                           draw(widths), draw(widths), draw(widths), draw(st.integers(1, 4))),
        levels=levels,
        codec=nb.CodecSettings(draw(st.integers(2, 8)), draw(st.integers(2, 8)), draw(st.booleans()),
                               draw(st.booleans()),
                               draw(st.floats(nb.MIN_LATENT_GAIN, nb.MAX_LATENT_GAIN))),
        render=nb.RenderSettings(tuple(b[0] for b in box) + tuple(b[1] for b in box), step,
                                 draw(st.integers(1, nb.MAX_GRID_RESOLUTION)), draw(unit), draw(unit),
                                 draw(nonneg), draw(st.sampled_from(["white", "black"]))),
        cameras=nb.CameraSet(draw(st.sampled_from(nb.CAMERA_MODELS)),
                             draw(st.integers(nb.MIN_IMAGE_SIDE, nb.MAX_IMAGE_SIDE)),
                             draw(st.integers(nb.MIN_IMAGE_SIDE, nb.MAX_IMAGE_SIDE)), draw(focal),
                             draw(focal), draw(finite), draw(finite),
                             tuple(tuple(draw(finite) for _ in range(4)) for _ in range(3)),
                             draw(st.floats(1 / nb.MAX_MAGNITUDE, nb.MAX_MAGNITUDE))),
        extra=tuple(draw(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=50)), max_size=4,
                                  unique_by=lambda kv: kv[0]))),
    )


sections_strategy = st.lists(st.tuples(section_names, st.binary(max_size=3000)), max_size=6,
                             unique_by=lambda t: t[0])


# ----------------------------------------------------------------------------------------------
# Independence from torch
# ----------------------------------------------------------------------------------------------


def test_module_does_not_import_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('bs_probe', {str(MODULE_PATH)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['bs_probe'] = m; spec.loader.exec_module(m)\n"
        "assert m.MAGIC and m.FORMAT_VERSION == 2\n"
        "print('torch' in sys.modules, 'nerfcodec_ns' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


@FAST
@given(headers(), sections_strategy)
def test_pack_unpack_identity(header, sections):
    bs = nb.Bitstream(header, tuple(nb.Section(n, p) for n, p in sections))
    data = nb.pack(bs)
    back = nb.unpack(data)
    assert back == bs
    assert nb.pack(back) == data  # byte-exact too (catches -0.0 vs 0.0, int vs float)
    assert data[:4] == nb.MAGIC and struct.unpack("<H", data[4:6])[0] == nb.FORMAT_VERSION
    assert frame(nb.encode_header(header), sections) == data  # the documented layout, built by hand
    assert nb.decode_header(nb.encode_header(header)) == header
    for name, payload in sections:
        assert back.section(name) == payload


@FAST
@given(finite)
def test_json_float_repr_round_trips_exactly(x):
    y = json.loads(json.dumps(x))
    assert type(y) is float and struct.pack("<d", y) == struct.pack("<d", x)


def test_header_types_are_normalised_and_exact():
    h = make_header(render=nb.RenderSettings([-1, -1, -1, 1, 1, 1], 1, 32, 0, 0, 0, "black"))
    assert all(type(v) is float for v in h.render.aabb) and type(h.render.near_plane) is float
    assert isinstance(h.levels, tuple) and isinstance(h.field.resolutions, tuple)
    back = nb.unpack(nb.pack(nb.Bitstream(h)))
    assert back.header == h and back.sections == ()
    assert type(back.header.codec.compensation) is bool and type(back.header.field.channels) is int
    assert back.header.get_extra("exporter") == "nerfcodec 0.1.0" and back.header.get_extra("x") is None
    # canonical JSON: sorted keys, no spaces, ASCII
    text = nb.header_json(h).decode("ascii")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert '": ' not in text and '", "' not in text


@pytest.mark.parametrize("build, fragment", [
    (lambda: make_header(codec=nb.CodecSettings(8, 8, 1, True)),
     "CodecSettings.compensation: expected a bool"),
    (lambda: make_header(codec=nb.CodecSettings(9, 8, True, True)), "CodecSettings.head_bits"),
    (lambda: make_header(field=nb.FieldArch((16, 32), True, "product", 64, 15, 64, 4)), "FieldArch.channels"),
    (lambda: make_header(field=nb.FieldArch((16, 32), 8, "max", 64, 15, 64, 4)), "FieldArch.reduce"),
    (lambda: make_header(levels=(nb.LevelShape(16, (64, 64), (1, 1)),)), "Header.levels"),
    (lambda: nb.LevelShape(16, (8, 64), (1, 1)), "LevelShape.padded_shape[0]"),
    (lambda: nb.LevelShape(16, (128, 128), (2, 2)), "LevelShape.padded_shape: expected (64, 64)"),
    (lambda: nb.LevelShape(100, (128, 128), (1, 2)), "LevelShape.z_shape: expected (2, 2)"),
    (lambda: nb.LevelShape(nb.MAX_RESOLUTION + 1, (1088, 1088), (17, 17)), "LevelShape.resolution"),
    (lambda: make_header(field=nb.FieldArch((16, 32), 2**31 - 1, "product", 64, 15, 64, 4)), "FieldArch.channels"),
    (lambda: make_header(field=nb.FieldArch((16,) * (nb.MAX_LEVELS + 1), 8, "product", 64, 15, 64, 4)),
     "FieldArch.resolutions"),
    (lambda: make_header(field=nb.FieldArch((1024, 1024), 128, "product", 64, 15, 64, 4),
                         levels=(_level(1024), _level(1024))), "plane values"),
    (lambda: make_header(codec=nb.CodecSettings(8, 8, True, True, 5e-324)), "CodecSettings.latent_gain"),
    (lambda: nb.RenderSettings((0, 0, 0, 1, 1, 1), 0.1, 1024, 0, 0, 0, "white"), "grid_resolution"),
    (lambda: nb.RenderSettings((0, 0, 0, 1, 1, 1), 1e-9, 64, 0, 0, 0, "white"), "render_step_size"),
    (lambda: nb.CameraSet("NOT_A_MODEL", 64, 64, 50.0, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.camera_model"),
    (lambda: nb.CameraSet("PERSPECTIVE", 1, 64, 50.0, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.width"),
    (lambda: nb.CameraSet("PERSPECTIVE", 64, 64, 1e300, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.fx"),
    (lambda: nb.BackboneId("bmshj2018-hyperprior", 1, 1, "AB" * 32, ""), "BackboneId.sha256"),
    (lambda: nb.BackboneId("vit", 1, 1, "ab" * 32, ""), "BackboneId.architecture"),
    (lambda: nb.RenderSettings((0, 0, 0, 1, 1, 0), 0.1, 8, 0, 0, 0, "white"), "RenderSettings.aabb"),
    (lambda: nb.RenderSettings((0, 0, 0, 1, 1, 1), math.nan, 8, 0, 0, 0, "white"), "render_step_size"),
    (lambda: make_header(extra=(("a", "1"), ("a", "2"))), "unique keys"),
    (lambda: make_header(extra=(("a", 1),)), "Header.extra[0] value"),
    (lambda: nb.Section("has space", b""), "invalid section name"),
    (lambda: nb.Section("x" * 65, b""), "invalid section name"),
    (lambda: nb.Section("", b""), "invalid section name"),
    (lambda: nb.Section("é", b""), "invalid section name"),
    (lambda: nb.Bitstream(make_header(), (nb.Section("a", b""), nb.Section("a", b"1"))),
     "duplicate section 'a'"),
])
def test_invalid_values_are_refused_when_built(build, fragment):
    with pytest.raises(BitstreamError, match=None) as info:
        build()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_section():
    bs = small_bitstream()
    assert bs.names == ("y.0", "z.0", "head", "norm.0", "empty", "cameras") and bs.has_section("head")
    assert bs.section("empty") == b""
    with pytest.raises(BitstreamError, match=r"^missing section 'mlp'$"):
        bs.section("mlp")


# ----------------------------------------------------------------------------------------------
# Array and string payloads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(nb.DTYPE_CODES))
@FAST
@given(st.data())
def test_array_identity(dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = data.draw(hnp.arrays(np.dtype(dtype), shape))
    if data.draw(st.booleans()):  # byte order and memory layout of the input do not matter
        arr = arr.astype(np.dtype(dtype).newbyteorder(">"))
    if arr.ndim >= 2 and data.draw(st.booleans()):
        arr = arr.T
    payload = nb.encode_array(arr)
    out = nb.decode_array(payload)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.shape == arr.shape
    assert out.tobytes() == np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()  # bit-exact, NaNs too
    assert out.flags.writeable and out.flags.c_contiguous
    assert len(payload) == 2 + 4 * arr.ndim + arr.size * arr.itemsize


def test_array_prefix_and_errors():
    payload = nb.encode_array(np.array([[1, 2, 3]], dtype=np.int16))
    assert payload == bytes([3, 2]) + struct.pack("<2I", 1, 3) + struct.pack("<3h", 1, 2, 3)
    for bad in (np.zeros(2, np.float64), np.zeros(2, bool), np.zeros(2, np.int64), [1, 2]):
        with pytest.raises(BitstreamError, match="unsupported array dtype|expects a numpy array"):
            nb.encode_array(bad)
    cases = {
        payload[:-1]: "needs 6 data bytes, got 5",
        payload + b"\0": "needs 6 data bytes, got 7",
        b"": "truncated",
        bytes([9, 0]): "unknown dtype code 9",
        bytes([3, 2, 1, 0]): "truncated",
        bytes([1, 17]): "dimensions",
        bytes([1, 1]) + struct.pack("<I", 2**32 - 1): "needs 4294967295 data bytes, got 0",
        bytes([1, 4]) + struct.pack("<4I", 0, 2**32 - 1, 2**32 - 1, 2**32 - 1): "not supported",
    }
    for bad, fragment in cases.items():
        with pytest.raises(BitstreamError) as info:
            nb.decode_array(bad)
        assert fragment in str(info.value), (bad, str(info.value))


@FAST
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_strings_identity(strings):
    payload = nb.encode_strings(strings)
    assert nb.decode_strings(payload) == strings


def test_strings_format_and_errors():
    assert nb.encode_strings([]) == b"\x00"
    assert nb.encode_strings([b"ab", b"x" * 200]) == b"\x02\x02ab\xc8\x01" + b"x" * 200
    with pytest.raises(BitstreamError):
        nb.encode_strings(b"abc")
    with pytest.raises(BitstreamError):
        nb.encode_strings(["text"])
    cases = {
        b"": "truncated",
        b"\x02\x02ab": "truncated",
        b"\x01\x05abc": "truncated",
        b"\x01\x01ab": "trailing",
        b"\x80\x00": "canonical",
        b"\xff\xff\xff\xff\x7f": "canonical",
        b"\x80\x80\x80\x80\x80\x01": "longer than 5 bytes",
        b"\xff\xff\xff\xff\x0f": "truncated",  # 2**32 - 1 strings announced, nothing follows
    }
    for bad, fragment in cases.items():
        with pytest.raises(BitstreamError) as info:
            nb.decode_strings(bad)
        assert fragment in str(info.value), (bad, str(info.value))


def test_payload_decoders_on_garbage():
    rng = random.Random(7)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(24)))
        for decode in (nb.decode_array, nb.decode_strings):
            try:
                decode(blob)
            except BitstreamError:
                pass


# ----------------------------------------------------------------------------------------------
# Size accounting
# ----------------------------------------------------------------------------------------------


@FAST
@given(headers(), sections_strategy)
def test_section_sizes_sum_to_file_size(header, sections):
    data = nb.pack(nb.Bitstream(header, tuple(nb.Section(n, p) for n, p in sections)))
    sizes = nb.section_sizes(data)
    assert sum(sizes.values()) == len(data)
    fixed = [nb.SIZE_MAGIC_VERSION, nb.SIZE_HEADER, nb.SIZE_SECTION_COUNT]
    assert list(sizes) == fixed + [n for n, _ in sections]
    assert sizes[nb.SIZE_MAGIC_VERSION] == 6 and sizes[nb.SIZE_SECTION_COUNT] == 2
    assert sizes[nb.SIZE_HEADER] == 4 + len(nb.encode_header(header)) + 4
    for name, payload in sections:
        assert sizes[name] == 1 + len(name) + 4 + len(payload) + 4 == nb.section_framing(name) + len(payload)


# ----------------------------------------------------------------------------------------------
# Bad files: specific messages
# ----------------------------------------------------------------------------------------------


def test_specific_errors():
    bs = small_bitstream()
    data = nb.pack(bs)
    header = nb.encode_header(bs.header)
    sections = [(s.name, s.payload) for s in bs.sections]
    y0 = data.index(b"y.0")  # name of the first section; its payload starts 4 bytes after the name

    assert error_of(b"") == "empty file (0 bytes): not a NeRFCodec scene file"
    assert error_of(b"PK\x03\x04rest").startswith("bad magic b'PK\\x03\\x04': not a NeRFCodec scene file")
    assert error_of(b"NF") == "truncated file: magic needs 4 bytes, 2 left"
    assert error_of(data[:5]) == "truncated file: format version needs 2 bytes, 1 left"
    assert error_of(frame(header, sections, version=3)) == (
        "unsupported format version 3 (this reader knows 1, 2)")
    assert error_of(data[:20]) == f"truncated file: header needs {len(header)} bytes, 10 left"
    assert error_of(data[: y0 + 10]) == (
        f"truncated file: section 'y.0' payload needs {len(sections[0][1])} bytes, 3 left")
    assert error_of(data[: y0 - 1]) == "truncated file: section #0 name length needs 1 bytes, 0 left"
    corrupt = bytearray(data)
    corrupt[y0 + 3 + 4 + 5] ^= 0x01
    assert error_of(bytes(corrupt)) == "section 'y.0' is corrupt (CRC mismatch)"
    corrupt = bytearray(data)
    corrupt[12] ^= 0x40
    assert error_of(bytes(corrupt)) == "header is corrupt (CRC mismatch)"
    assert error_of(data + b"\0\0") == "trailing bytes: 2 bytes after the last section"
    assert error_of(data + b"\0") == "trailing bytes: 1 byte after the last section"
    assert error_of(frame(header, sections + [("z.0", b"again")])) == "duplicate section 'z.0'"
    assert error_of(frame(header, [("a b", b"")])) == (
        "section #0: invalid name b'a b' (expected printable ASCII without spaces)")
    assert error_of(frame(header, [("", b"")])) == "section #0: name length 0 is not in 1..64"


def _zheader(text: bytes) -> bytes:
    return frame(zlib.compress(text), [])


def test_header_decode_errors():
    good = json.loads(nb.header_json(make_header()))
    no_fx = json.loads(json.dumps(good))
    del no_fx["cameras"]["fx"]
    wrong_type = json.loads(json.dumps(good))
    wrong_type["codec"]["compensation"] = 1
    unknown = dict(good, colour="red")
    cases = {
        frame(b"not zlib at all", []): "header: not a valid zlib stream",
        frame(zlib.compress(b"{}")[:-3], []): "header: incomplete zlib stream",
        frame(zlib.compress(b"{}") + b"xx", []): "header: 2 bytes after the zlib stream",
        frame(b"", []): "header: incomplete zlib stream",
        _zheader("{\"é\":1}".encode()): "header: JSON is not ASCII",
        _zheader(b"{\"a\":"): "header: invalid JSON",
        _zheader(b"[" * 100000 + b"]" * 100000): "header: invalid JSON",
        _zheader(b"1" * 5000): "header: invalid JSON",
        _zheader(b"{\"a\":NaN}"): "header: non-finite number NaN",
        _zheader(b"{\"a\":1,\"a\":2}"): "header: duplicate JSON key 'a'",
        _zheader(b"[]"): "header: expected a JSON object, got []",
        _zheader(b" " * (nb.MAX_HEADER_JSON_BYTES + 1)): "larger than",
        _zheader(json.dumps(no_fx).encode()): "header.cameras: missing field 'fx'",
        _zheader(json.dumps(unknown).encode()): "header: unknown field 'colour'",
        _zheader(json.dumps(wrong_type).encode()):
            "header: invalid CodecSettings.compensation: expected a bool, got 1",
        _zheader(json.dumps(dict(good, levels={})).encode()): "header.levels: expected a JSON array",
    }
    for data, fragment in cases.items():
        message = error_of(data)
        assert fragment in message, (fragment, message)
    # JSON that is valid but not canonical (spaces, other key order) is accepted
    assert nb.unpack(_zheader(json.dumps(good).encode())).header == make_header()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | finite | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300, deadline=2000, database=None)
@given(st.data())
def test_header_json_fuzz_gives_bitstream_error_or_valid_header(data):
    """Valid framing and CRC around a mutated header JSON: never anything but BitstreamError."""
    doc = json.loads(nb.header_json(make_header()))
    paths = list(_paths(doc))[1:]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=6))] = data.draw(json_values)
    else:
        parent.append(data.draw(json_values))
    try:
        bs = nb.unpack(_zheader(json.dumps(doc).encode()))
    except BitstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert nb.unpack(nb.pack(bs)) == bs


# ----------------------------------------------------------------------------------------------
# Fuzzing whole files
# ----------------------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # byte changes
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 2:  # insertion
        pos = rng.randrange(len(out) + 1)
        out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:  # deletion
        pos = rng.randrange(len(out))
        del out[pos : pos + rng.randint(1, 16)]
    elif kind == 4:  # a length-like field set to something large or small
        pos = rng.randrange(len(out) - 4)
        value = rng.choice([0, 1, 2**16, 2**31, 2**32 - 1, rng.randrange(2**32)])
        out[pos : pos + 4] = struct.pack("<I", value)
    elif kind == 5:  # duplicated chunk
        a = rng.randrange(len(out))
        b = min(len(out), a + rng.randint(1, 64))
        pos = rng.randrange(len(out))
        out[pos:pos] = out[a:b]
    elif kind == 6:  # garbage after a valid prefix
        keep = rng.randrange(len(out))
        out[keep:] = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    else:  # pure garbage, sometimes with the right magic and version
        prefix = data[:6] if rng.random() < 0.5 else b""
        out = bytearray(prefix + bytes(rng.randrange(256) for _ in range(rng.randrange(128))))
    return bytes(out)


def _check(mutated: bytes, original: bytes, expected) -> None:
    try:
        result = nb.unpack(mutated)
    except BitstreamError as exc:
        assert "\n" not in str(exc) and mutated != original
    else:
        assert mutated == original and result == expected, "a changed file was accepted"


def test_truncation_at_every_position():
    bs = small_bitstream()
    data = nb.pack(bs)
    for n in range(len(data)):
        with pytest.raises(BitstreamError, match="^(truncated file|empty file)"):
            nb.unpack(data[:n])
    assert nb.unpack(data) == bs


def test_fuzz_mutated_files():
    bs = small_bitstream()
    data = nb.pack(bs)
    rng = random.Random(20240611)
    start = time.perf_counter()
    for _ in range(5000):
        mutated = _mutate(rng, data)
        t0 = time.perf_counter()
        _check(mutated, data, bs)
        assert time.perf_counter() - t0 < 1.0, "unpack took over a second on a small file"
    assert time.perf_counter() - start < 15


@settings(max_examples=200, deadline=1000, database=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(blob):
    for candidate in (blob, nb.MAGIC + blob, nb.MAGIC + b"\x01\x00" + blob):
        try:
            nb.unpack(candidate)
        except BitstreamError as exc:
            assert "\n" not in str(exc)


def test_unpack_accepts_bytes_like_and_rejects_other_types():
    data = nb.pack(small_bitstream())
    assert nb.unpack(bytearray(data)) == nb.unpack(memoryview(data)) == small_bitstream()
    with pytest.raises(TypeError):
        nb.unpack("NFC")
    assert repr(nb.Section("y.0", b"abc")) == "Section(name='y.0', payload=<3 bytes>)"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_write_and_read_file(tmp_path):
    data = nb.pack(small_bitstream())
    path = nb.write_atomic(tmp_path / "SCENE.nfc", data)
    assert path.read_bytes() == data and nb.read_file(path) == small_bitstream()
    assert [p.name for p in tmp_path.iterdir()] == ["SCENE.nfc"]


def test_write_atomic_refuses_to_overwrite(tmp_path):
    path = tmp_path / "SCENE.nfc"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError) as info:
        nb.write_atomic(path, b"new")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "overwrite=True" in message
    assert path.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == ["SCENE.nfc"]
    nb.write_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["SCENE.nfc"]


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("failing", ["fsync", "replace_or_link"])
def test_write_atomic_leaves_nothing_on_failure(tmp_path, monkeypatch, overwrite, failing):
    path = tmp_path / "SCENE.nfc"
    if overwrite:
        path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("simulated disk failure")

    if failing == "fsync":
        monkeypatch.setattr(nb.os, "fsync", boom)
    else:
        monkeypatch.setattr(nb.os, "replace", boom)
        monkeypatch.setattr(nb.os, "link", boom)
    with pytest.raises(OSError, match="simulated disk failure"):
        nb.write_atomic(path, b"x" * 10000, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["SCENE.nfc"] if overwrite else [])
    if overwrite:
        assert path.read_bytes() == b"old"


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scene file not found"):
        nb.read_file(tmp_path / "absent.nfc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nb.write_atomic(tmp_path / "no" / "SCENE.nfc", b"")
    bad = tmp_path / "bad.nfc"
    bad.write_bytes(b"NFC\x00\x07\x00")
    with pytest.raises(BitstreamError) as info:
        nb.read_file(bad)
    assert str(info.value) == f"{bad}: unsupported format version 7 (this reader knows 1, 2)"
    assert not os.path.exists(tmp_path / "no")


def test_version_1_files_still_read_and_cannot_claim_packed_sections():
    """Files written before format version 2 have no ``codec.packing`` in their header: they read as
    ``raw``. A version-1 file whose header says ``lzma`` is refused."""
    import json as _json

    sections = [("y.0", b"abc")]
    legacy = _json.loads(nb.header_json(make_header()))
    del legacy["codec"]["packing"]  # what a version-1 writer produced
    text = _json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode("ascii")
    back = nb.unpack(frame(zlib.compress(text), sections, version=1))
    assert back.header == make_header() and back.header.codec.packing == "raw"
    packed = nb.encode_header(make_header(codec=nb.CodecSettings(8, 8, True, True, 1.0, "lzma")))
    assert nb.unpack(frame(packed, sections, version=2)).header.codec.packing == "lzma"
    assert error_of(frame(packed, sections, version=1)) == "header: format version 1 has no codec.packing field"
