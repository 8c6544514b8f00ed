"""The scene-file format (nerfcodec_ns/scenefile/header.py, payload.py, container.py): round trips,
size accounting, fuzzing, files.

The format modules must work without torch (checked in a fresh interpreter below, with a stand-in
for the package, whose ``__init__`` imports torch for the checkpoint shims).
"""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import REPO

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.scenefile.container import (
    MAGIC,
    SIZE_HEADER,
    SIZE_MAGIC_VERSION,
    SIZE_SECTION_COUNT,
    Bitstream,
    Section,
    pack,
    read_file,
    section_framing,
    section_sizes,
    unpack,
)
from nerfcodec_ns.scenefile.header import (
    ARCHITECTURES,
    CAMERA_MODELS,
    FORMAT_VERSION,
    MAX_BACKBONE_CHANNELS,
    MAX_CHANNELS,
    MAX_GRID_RESOLUTION,
    MAX_HEADER_JSON_BYTES,
    MAX_IMAGE_SIDE,
    MAX_LATENT_GAIN,
    MAX_LATENT_SYMBOLS,
    MAX_LEVELS,
    MAX_MAGNITUDE,
    MAX_MLP_WIDTH,
    MAX_PLANE_VALUES,
    MAX_RESOLUTION,
    MAX_SAMPLES_PER_RAY,
    MIN_FOCAL,
    MIN_IMAGE_SIDE,
    MIN_LATENT_GAIN,
    MODEL_ID,
    BackboneId,
    BitstreamError,
    CameraSet,
    CodecSettings,
    FieldArch,
    Header,
    LevelShape,
    RenderSettings,
    decode_header,
    encode_header,
    header_json,
)
from nerfcodec_ns.scenefile.payload import (
    DTYPE_CODES,
    decode_array,
    decode_strings,
    encode_array,
    encode_strings,
)

# database=None: no example database is written into the checkout
FAST = settings(max_examples=60, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Helpers and strategies
# ----------------------------------------------------------------------------------------------


def make_header(**changes) -> "Header":
    fields = dict(
        model_id=MODEL_ID,
        backbone=BackboneId("bmshj2018-hyperprior", 128, 192, "0123456789abcdef" * 4,
                            "zoo:bmshj2018-hyperprior/mse/q6 (bmshj2018-hyperprior-6.pth.tar)"),
        field=FieldArch((16, 32), 8, "product", 64, 15, 64, 4),
        levels=(LevelShape(16, (64, 64), (1, 1)), LevelShape(32, (64, 64), (1, 1))),
        codec=CodecSettings(8, 8, True, True),
        render=RenderSettings((-1.5, -1.5, -1.5, 1.5, 1.5, 1.5), 0.0173, 32, 0.0, 1e-4, 0.05, "white"),
        cameras=CameraSet("PERSPECTIVE", 800, 800, 1111.1110311937682, 1111.1110311937682, 400.0, 400.0,
                          ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)), 0.3333),
        extra=(("exporter", "nerfcodec 0.1.0"),),
    )
    fields.update(changes)
    return Header(**fields)


def small_bitstream() -> "Bitstream":
    rng = np.random.default_rng(0)
    return Bitstream(make_header(), (
        Section("y.0", encode_strings([rng.bytes(40), rng.bytes(33), rng.bytes(0)])),
        Section("z.0", encode_strings([b"\x01\x02", b"\x03", b"\x04\x05\x06"])),
        Section("head", encode_array(rng.integers(-127, 128, (8, 4, 3, 3), dtype=np.int8))),
        Section("norm.0", encode_array(rng.standard_normal((2, 3, 8)).astype(np.float16))),
        Section("empty", b""),
        Section("cameras", encode_array(rng.standard_normal((2, 3, 4)).astype(np.float32))),
    ))


def frame(header_bytes: bytes, sections, version: int = FORMAT_VERSION, magic: bytes = b"NFC\x00") -> bytes:
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
        unpack(data)
    message = str(info.value)
    assert "\n" not in message and message == message.strip() and message
    return message


finite = st.floats(-MAX_MAGNITUDE, MAX_MAGNITUDE, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.0, max_value=MAX_MAGNITUDE, exclude_min=True, allow_nan=False,
                     allow_infinity=False)
focal = st.floats(MIN_FOCAL, MAX_MAGNITUDE)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
nonneg = st.floats(min_value=0.0, max_value=MAX_MAGNITUDE, allow_nan=False, allow_infinity=False)
widths = st.integers(1, MAX_MLP_WIDTH)
small = st.integers(1, MAX_RESOLUTION)
section_names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


def _level(r: int) -> "LevelShape":
    side = -(-r // 64) * 64
    return LevelShape(r, (side, side), (side // 64, side // 64))


@st.composite
def headers(draw) -> "Header":
    """Any header within the format's limits."""
    channels = draw(st.integers(1, MAX_CHANNELS))
    resolutions = draw(st.lists(small, min_size=1, max_size=MAX_LEVELS).filter(
        lambda rs: sum(3 * channels * r * r for r in rs) <= MAX_PLANE_VALUES))
    levels = tuple(_level(r) for r in resolutions)
    largest = max(lv.latent_symbols(1) for lv in levels)
    M = draw(st.integers(1, min(MAX_BACKBONE_CHANNELS, MAX_LATENT_SYMBOLS // largest)))
    box = [draw(st.tuples(finite, finite).filter(lambda t: t[0] < t[1])) for _ in range(3)]
    diagonal = math.sqrt(sum((b[1] - b[0]) ** 2 for b in box))
    step = draw(st.floats(diagonal / MAX_SAMPLES_PER_RAY * 1.001 + 1e-300, MAX_MAGNITUDE))
    return Header(
        model_id=draw(st.text(min_size=1, max_size=30)),
        backbone=BackboneId(draw(st.sampled_from(ARCHITECTURES)), draw(st.integers(1, MAX_BACKBONE_CHANNELS)),
                            M, draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
                            draw(st.text(max_size=40))),
        field=FieldArch(tuple(resolutions), channels, draw(st.sampled_from(["product", "sum"])),
                        draw(widths), draw(widths), draw(widths), draw(st.integers(1, 4))),
        levels=levels,
        codec=CodecSettings(draw(st.integers(2, 8)), draw(st.integers(2, 8)), draw(st.booleans()),
                            draw(st.booleans()),
                            draw(st.floats(MIN_LATENT_GAIN, MAX_LATENT_GAIN))),
        render=RenderSettings(tuple(b[0] for b in box) + tuple(b[1] for b in box), step,
                              draw(st.integers(1, MAX_GRID_RESOLUTION)), draw(unit), draw(unit),
                              draw(nonneg), draw(st.sampled_from(["white", "black"]))),
        cameras=CameraSet(draw(st.sampled_from(CAMERA_MODELS)),
                          draw(st.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)),
                          draw(st.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)), draw(focal),
                          draw(focal), draw(finite), draw(finite),
                          tuple(tuple(draw(finite) for _ in range(4)) for _ in range(3)),
                          draw(st.floats(1 / MAX_MAGNITUDE, MAX_MAGNITUDE))),
        extra=tuple(draw(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=50)), max_size=4,
                                  unique_by=lambda kv: kv[0]))),
    )


sections_strategy = st.lists(st.tuples(section_names, st.binary(max_size=3000)), max_size=6,
                             unique_by=lambda t: t[0])


# ----------------------------------------------------------------------------------------------
# Independence from torch
# ----------------------------------------------------------------------------------------------


def test_format_modules_do_not_import_torch():
    package = REPO / "nerfcodec_ns"
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('nerfcodec_ns'); pkg.__path__ = [{str(package)!r}]\n"
        "sys.modules['nerfcodec_ns'] = pkg  # the package __init__ imports torch (checkpoint shims)\n"
        "from nerfcodec_ns import atomic\n"
        "from nerfcodec_ns.scenefile import cameras, container, header, payload\n"
        "assert container.MAGIC and header.FORMAT_VERSION == 7 and payload.decode_array and cameras.decode_poses\n"
        "print('torch' in sys.modules, 'nerfstudio' in sys.modules)\n"
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
    bs = Bitstream(header, tuple(Section(n, p) for n, p in sections))
    data = pack(bs)
    back = unpack(data)
    assert back == bs
    assert pack(back) == data  # byte-exact too (catches -0.0 vs 0.0, int vs float)
    assert data[:4] == MAGIC and struct.unpack("<H", data[4:6])[0] == FORMAT_VERSION
    assert frame(encode_header(header), sections) == data  # the documented layout, built by hand
    assert decode_header(encode_header(header)) == header
    for name, payload in sections:
        assert back.section(name) == payload


@FAST
@given(finite)
def test_json_float_repr_round_trips_exactly(x):
    y = json.loads(json.dumps(x))
    assert type(y) is float and struct.pack("<d", y) == struct.pack("<d", x)


def test_header_types_are_normalised_and_exact():
    h = make_header(render=RenderSettings([-1, -1, -1, 1, 1, 1], 1, 32, 0, 0, 0, "black"))
    assert all(type(v) is float for v in h.render.aabb) and type(h.render.near_plane) is float
    assert isinstance(h.levels, tuple) and isinstance(h.field.resolutions, tuple)
    back = unpack(pack(Bitstream(h)))
    assert back.header == h and back.sections == ()
    assert type(back.header.codec.compensation) is bool and type(back.header.field.channels) is int
    assert back.header.get_extra("exporter") == "nerfcodec 0.1.0" and back.header.get_extra("x") is None
    # canonical JSON: sorted keys, no spaces, ASCII
    text = header_json(h).decode("ascii")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert '": ' not in text and '", "' not in text


@pytest.mark.parametrize("build, fragment", [
    (lambda: make_header(codec=CodecSettings(8, 8, 1, True)),
     "CodecSettings.compensation: expected a bool"),
    (lambda: make_header(codec=CodecSettings(9, 8, True, True)), "CodecSettings.head_bits"),
    (lambda: make_header(field=FieldArch((16, 32), True, "product", 64, 15, 64, 4)), "FieldArch.channels"),
    (lambda: make_header(field=FieldArch((16, 32), 8, "max", 64, 15, 64, 4)), "FieldArch.reduce"),
    (lambda: make_header(levels=(LevelShape(16, (64, 64), (1, 1)),)), "Header.levels"),
    (lambda: LevelShape(16, (8, 64), (1, 1)), "LevelShape.padded_shape[0]"),
    (lambda: LevelShape(16, (128, 128), (2, 2)), "LevelShape.padded_shape: expected (64, 64)"),
    (lambda: LevelShape(100, (128, 128), (1, 2)), "LevelShape.z_shape: expected (2, 2)"),
    (lambda: LevelShape(MAX_RESOLUTION + 1, (1088, 1088), (17, 17)), "LevelShape.resolution"),
    (lambda: make_header(field=FieldArch((16, 32), 2**31 - 1, "product", 64, 15, 64, 4)), "FieldArch.channels"),
    (lambda: make_header(field=FieldArch((16,) * (MAX_LEVELS + 1), 8, "product", 64, 15, 64, 4)),
     "FieldArch.resolutions"),
    (lambda: make_header(field=FieldArch((1024, 1024), 128, "product", 64, 15, 64, 4),
                         levels=(_level(1024), _level(1024))), "plane values"),
    (lambda: make_header(codec=CodecSettings(8, 8, True, True, 5e-324)), "CodecSettings.latent_gain"),
    (lambda: RenderSettings((0, 0, 0, 1, 1, 1), 0.1, 1024, 0, 0, 0, "white"), "grid_resolution"),
    (lambda: RenderSettings((0, 0, 0, 1, 1, 1), 1e-9, 64, 0, 0, 0, "white"), "render_step_size"),
    (lambda: CameraSet("NOT_A_MODEL", 64, 64, 50.0, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.camera_model"),
    (lambda: CameraSet("PERSPECTIVE", 1, 64, 50.0, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.width"),
    (lambda: CameraSet("PERSPECTIVE", 64, 64, 1e300, 50.0, 32.0, 32.0, ((1, 0, 0, 0),) * 3, 1.0),
     "CameraSet.fx"),
    (lambda: BackboneId("bmshj2018-hyperprior", 1, 1, "AB" * 32, ""), "BackboneId.sha256"),
    (lambda: BackboneId("vit", 1, 1, "ab" * 32, ""), "BackboneId.architecture"),
    (lambda: RenderSettings((0, 0, 0, 1, 1, 0), 0.1, 8, 0, 0, 0, "white"), "RenderSettings.aabb"),
    (lambda: RenderSettings((0, 0, 0, 1, 1, 1), math.nan, 8, 0, 0, 0, "white"), "render_step_size"),
    (lambda: make_header(extra=(("a", "1"), ("a", "2"))), "unique keys"),
    (lambda: make_header(extra=(("a", 1),)), "Header.extra[0] value"),
    (lambda: Section("has space", b""), "invalid section name"),
    (lambda: Section("x" * 65, b""), "invalid section name"),
    (lambda: Section("", b""), "invalid section name"),
    (lambda: Section("é", b""), "invalid section name"),
    (lambda: Bitstream(make_header(), (Section("a", b""), Section("a", b"1"))),
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


@pytest.mark.parametrize("dtype", sorted(DTYPE_CODES))
@FAST
@given(st.data())
def test_array_identity(dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    arr = data.draw(hnp.arrays(np.dtype(dtype), shape))
    if data.draw(st.booleans()):  # byte order and memory layout of the input do not matter
        arr = arr.astype(np.dtype(dtype).newbyteorder(">"))
    if arr.ndim >= 2 and data.draw(st.booleans()):
        arr = arr.T
    payload = encode_array(arr)
    out = decode_array(payload)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.shape == arr.shape
    assert out.tobytes() == np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()  # bit-exact, NaNs too
    assert out.flags.writeable and out.flags.c_contiguous
    assert len(payload) == 2 + 4 * arr.ndim + arr.size * arr.itemsize


def test_array_prefix_and_errors():
    payload = encode_array(np.array([[1, 2, 3]], dtype=np.int16))
    assert payload == bytes([3, 2]) + struct.pack("<2I", 1, 3) + struct.pack("<3h", 1, 2, 3)
    for bad in (np.zeros(2, np.float64), np.zeros(2, bool), np.zeros(2, np.int64), [1, 2]):
        with pytest.raises(BitstreamError, match="unsupported array dtype|expects a numpy array"):
            encode_array(bad)
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
            decode_array(bad)
        assert fragment in str(info.value), (bad, str(info.value))


@FAST
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_strings_identity(strings):
    payload = encode_strings(strings)
    assert decode_strings(payload) == strings


def test_strings_format_and_errors():
    assert encode_strings([]) == b"\x00"
    assert encode_strings([b"ab", b"x" * 200]) == b"\x02\x02ab\xc8\x01" + b"x" * 200
    with pytest.raises(BitstreamError):
        encode_strings(b"abc")
    with pytest.raises(BitstreamError):
        encode_strings(["text"])
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
            decode_strings(bad)
        assert fragment in str(info.value), (bad, str(info.value))


def test_payload_decoders_on_garbage():
    rng = random.Random(7)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(24)))
        for decode in (decode_array, decode_strings):
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
    data = pack(Bitstream(header, tuple(Section(n, p) for n, p in sections)))
    sizes = section_sizes(data)
    assert sum(sizes.values()) == len(data)
    fixed = [SIZE_MAGIC_VERSION, SIZE_HEADER, SIZE_SECTION_COUNT]
    assert list(sizes) == fixed + [n for n, _ in sections]
    assert sizes[SIZE_MAGIC_VERSION] == 6 and sizes[SIZE_SECTION_COUNT] == 2
    assert sizes[SIZE_HEADER] == 4 + len(encode_header(header)) + 4
    for name, payload in sections:
        assert sizes[name] == 1 + len(name) + 4 + len(payload) + 4 == section_framing(name) + len(payload)


# ----------------------------------------------------------------------------------------------
# Bad files: specific messages
# ----------------------------------------------------------------------------------------------


def test_specific_errors():
    bs = small_bitstream()
    data = pack(bs)
    header = encode_header(bs.header)
    sections = [(s.name, s.payload) for s in bs.sections]
    y0 = data.index(b"y.0")  # name of the first section; its payload starts 4 bytes after the name

    assert error_of(b"") == "empty file (0 bytes): not a NeRFCodec scene file"
    assert error_of(b"PK\x03\x04rest").startswith("bad magic b'PK\\x03\\x04': not a NeRFCodec scene file")
    assert error_of(b"NF") == "truncated file: magic needs 4 bytes, 2 left"
    assert error_of(data[:5]) == "truncated file: format version needs 2 bytes, 1 left"
    assert error_of(frame(header, sections, version=8)) == (
        "unsupported format version 8 (this reader knows 1, 2, 3, 4, 5, 6, 7)")
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
    good = json.loads(header_json(make_header()))
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
        _zheader(b" " * (MAX_HEADER_JSON_BYTES + 1)): "larger than",
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
    assert unpack(_zheader(json.dumps(good).encode())).header == make_header()


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
    doc = json.loads(header_json(make_header()))
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
        bs = unpack(_zheader(json.dumps(doc).encode()))
    except BitstreamError as exc:
        assert "\n" not in str(exc)
    else:
        assert unpack(pack(bs)) == bs


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
        result = unpack(mutated)
    except BitstreamError as exc:
        assert "\n" not in str(exc) and mutated != original
    else:
        assert mutated == original and result == expected, "a changed file was accepted"


def test_truncation_at_every_position():
    bs = small_bitstream()
    data = pack(bs)
    for n in range(len(data)):
        with pytest.raises(BitstreamError, match="^(truncated file|empty file)"):
            unpack(data[:n])
    assert unpack(data) == bs


def test_fuzz_mutated_files():
    bs = small_bitstream()
    data = pack(bs)
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
    for candidate in (blob, MAGIC + blob, MAGIC + b"\x01\x00" + blob):
        try:
            unpack(candidate)
        except BitstreamError as exc:
            assert "\n" not in str(exc)


def test_unpack_accepts_bytes_like_and_rejects_other_types():
    data = pack(small_bitstream())
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == small_bitstream()
    with pytest.raises(TypeError):
        unpack("NFC")
    assert repr(Section("y.0", b"abc")) == "Section(name='y.0', payload=<3 bytes>)"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_write_and_read_file(tmp_path):
    data = pack(small_bitstream())
    path = write_atomic(tmp_path / "SCENE.nfc", data)
    assert path.read_bytes() == data and read_file(path) == small_bitstream()
    assert [p.name for p in tmp_path.iterdir()] == ["SCENE.nfc"]


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="scene file not found"):
        read_file(tmp_path / "absent.nfc")
    bad = tmp_path / "bad.nfc"
    bad.write_bytes(b"NFC\x00\x08\x00")
    with pytest.raises(BitstreamError) as info:
        read_file(bad)
    assert str(info.value) == f"{bad}: unsupported format version 8 (this reader knows 1, 2, 3, 4, 5, 6, 7)"


def test_version_1_files_still_read_and_cannot_claim_packed_sections():
    """Files written before format version 2 have no ``codec.packing`` in their header: they read as
    ``raw``. A version-1 file whose header says ``lzma`` is refused."""
    import json as _json

    sections = [("y.0", b"abc")]

    def legacy_header(drop, adapt=True, **codec):
        """A header as writers before format 5 made it, without the codec fields in ``drop``."""
        value = _json.loads(header_json(make_header(codec=CodecSettings(8, 8, True, adapt, 1.0, **codec))))
        for name in drop:
            del value["codec"][name]
        del value["field"]["contraction"], value["render"]["grid_levels"], value["render"]["cone_angle"]
        del value["field"]["mlp_bits"]
        for name in GRID_FIELDS:
            del value["render"][name]
        return zlib.compress(_json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii"))

    back = unpack(frame(legacy_header(("packing", "tables", "mix_images")), sections, version=1))  # what a version-1 writer produced
    assert back.header == make_header() and back.header.codec.packing == "raw" and back.header.codec.tables == "float"
    packed = legacy_header(("tables", "mix_images"), packing="lzma")  # a version-2 writer's
    back = unpack(frame(packed, sections, version=2))
    assert back.header.codec.packing == "lzma" and back.header.codec.tables == "float"
    assert error_of(frame(legacy_header(("tables", "mix_images")), sections, version=1)) == (
        "header: format version 1 has no codec.packing field")
    # format 3 names its tables; versions before it cannot
    exact = legacy_header(("mix_images",), packing="lzma", tables="exact")  # a version-3 writer's
    assert unpack(frame(exact, sections, version=3)).header.codec.tables == "exact"
    assert error_of(frame(exact, sections, version=2)) == "header: format version 2 has no codec.tables field"
    assert "missing field 'tables'" in error_of(frame(legacy_header(("tables", "mix_images")), sections, version=3))
    # format 4 names its channel mixing; versions before it cannot, and read as none
    assert unpack(frame(exact, sections, version=3)).header.codec.mix_images == 0
    mixed = legacy_header((), adapt=False, packing="lzma", tables="exact", mix_images=2)
    assert unpack(frame(mixed, sections, version=4)).header.codec.mix_images == 2
    assert error_of(frame(mixed, sections, version=3)) == "header: format version 3 has no codec.mix_images field"
    assert "missing field 'mix_images'" in error_of(frame(exact, sections, version=4))
    for bad in (-1, 9, 1.5, True):
        value = _json.loads(header_json(make_header()))
        value["codec"]["mix_images"] = bad
        blob = zlib.compress(_json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii"))
        assert "mix_images" in error_of(frame(blob, sections, version=7))
    # format 5 names the contraction, grid levels and cone angle; versions before it cannot
    assert unpack(frame(mixed, sections, version=4)).header.render.grid_levels == 1
    assert unpack(frame(mixed, sections, version=4)).header.field.contraction == "none"
    assert error_of(frame(encode_header(make_header()), sections, version=4)) == (
        "header: format version 4 has no field.contraction field")
    assert "missing field 'contraction'" in error_of(frame(mixed, sections, version=5))
    # format 6 names the MLP's storage; versions before it cannot, and read as float16
    v6 = _json.loads(header_json(make_header()))
    for name in GRID_FIELDS:
        del v6["render"][name]
    current = zlib.compress(_json.dumps(v6, sort_keys=True, separators=(",", ":")).encode("ascii"))
    assert unpack(frame(current, sections, version=6)).header.field.mlp_bits == 16
    assert error_of(frame(current, sections, version=5)) == "header: format version 5 has no field.mlp_bits field"
    v5 = dict(v6, field={k: v for k, v in v6["field"].items() if k != "mlp_bits"})
    v5 = zlib.compress(_json.dumps(v5, sort_keys=True, separators=(",", ":")).encode("ascii"))
    assert unpack(frame(v5, sections, version=5)).header.field.mlp_bits == 16
    assert "missing field 'mlp_bits'" in error_of(frame(v5, sections, version=6))
    # format 7 names where the grid comes from; versions before it cannot, and read as sent
    assert unpack(frame(current, sections, version=6)).header.render.grid_source == "sent"
    seven = encode_header(make_header())
    assert error_of(frame(seven, sections, version=6)) == "header: format version 6 has no render.grid_source field"
    assert "missing field 'grid_source'" in error_of(frame(current, sections, version=7))
    assert unpack(frame(seven, sections, version=7)).header == make_header()


#: Render-settings fields added by format 7 (a derived occupancy grid).
GRID_FIELDS = ("grid_source", "grid_threshold", "grid_points")


def test_derived_grid_settings_are_checked():
    """A derived grid names a known source, a threshold in [0, 1], 1..MAX_GRID_POINTS points per cell
    and axis, and at most MAX_GRID_EVALUATIONS density evaluations in all."""
    import dataclasses

    from nerfcodec_ns.scenefile.header import MAX_GRID_EVALUATIONS, MAX_GRID_POINTS, RenderSettings

    render = make_header().render
    ok = dataclasses.replace(render, grid_source="derived", grid_points=2, grid_threshold=0.02)
    assert (ok.grid_source, ok.grid_points, ok.grid_threshold) == ("derived", 2, 0.02)
    for bad in (dict(grid_source="guessed"), dict(grid_points=0), dict(grid_points=MAX_GRID_POINTS + 1),
                dict(grid_threshold=-0.1), dict(grid_threshold=1.5)):
        with pytest.raises(BitstreamError, match=next(iter(bad))):
            dataclasses.replace(render, **{"grid_source": "derived", "grid_points": 1, **bad})
    big = dict(grid_resolution=160, grid_levels=8, render_step_size=1.0, grid_points=2)
    assert 8 * 160**3 * 2**3 > MAX_GRID_EVALUATIONS  # too much work to derive, fine to send
    assert RenderSettings(**{**dataclasses.asdict(render), **big}).grid_source == "sent"
    with pytest.raises(BitstreamError, match="density evaluations"):
        RenderSettings(**{**dataclasses.asdict(render), **big, "grid_source": "derived"})
    assert RenderSettings(**{**dataclasses.asdict(render), **big, "grid_source": "derived", "grid_points": 1})


def test_version_5_unbounded_fields_are_checked():
    """Contraction names, grid levels and cone angles outside the format's range are refused, and the
    sample bound counts the outermost grid level."""
    import dataclasses

    from nerfcodec_ns.scenefile.header import MAX_SAMPLES_PER_RAY, FieldArch, RenderSettings

    h = make_header()
    for bad in ("sphere", "", 1):
        with pytest.raises(BitstreamError, match="contraction"):
            FieldArch(**{**dataclasses.asdict(h.field), "contraction": bad})
    render = dataclasses.asdict(h.render)
    for name, bad in (("grid_levels", 0), ("grid_levels", 9), ("cone_angle", -0.1), ("cone_angle", 2.0)):
        with pytest.raises(BitstreamError, match=name):
            RenderSettings(**{**render, name: bad})
    box = render["aabb"]
    diagonal = sum((box[i + 3] - box[i]) ** 2 for i in range(3)) ** 0.5
    step = 1.01 * diagonal / MAX_SAMPLES_PER_RAY
    RenderSettings(**{**render, "render_step_size": step})
    with pytest.raises(BitstreamError, match="outer grid diagonal"):
        RenderSettings(**{**render, "render_step_size": step, "grid_levels": 2})
    ok = RenderSettings(**{**render, "grid_levels": 4, "cone_angle": 1 / 256})
    assert (ok.grid_levels, ok.cone_angle) == (4, 1 / 256)


def test_the_format_and_the_codec_agree_on_names_and_bounds():
    """The torch-free format imports nothing of the codec, so it repeats these; they must agree."""
    from nerfcodec_ns.codec import settings
    from nerfcodec_ns.scenefile import header

    assert header.MAX_MIX_IMAGES == settings.MAX_MIX_IMAGES
    assert header.ARCHITECTURES == settings.ARCHITECTURES
    from nerfcodec_ns.field import contraction

    assert header.CONTRACTIONS == contraction.CONTRACTIONS
