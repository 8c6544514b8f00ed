"""Opening a scene file from anyone is safe: one test per failure class of the fuzz campaign in the issue.

Every damaged file is made from a file the current code writes (the ``tiny_nfc`` fixture) with the
container kept valid (CRCs and lengths recomputed, ``nerfcodec_ns.scenefile.fuzz.write_raw``), so the damage
reaches the decoder itself. Cases that once crashed or read past a buffer run in a forked child
(``fuzz.run_case``) with a memory limit and a timeout, so a regression fails the test instead of
killing the test run.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from conftest import REPO
from nerfcodec_ns.scenefile import fuzz
from nerfcodec_ns.scenefile.decode import DecodeError, decode_file
from nerfcodec_ns.scenefile.header import CAMERA_MODELS, MAX_GRID_RESOLUTION, BitstreamError, limits
from nerfcodec_ns.scenefile.payload import (
    decode_array,
    decode_strings,
    encode_array,
    encode_strings,
    pack_smallest,
    unpack_smallest,
)

ERRORS = (DecodeError, BitstreamError)


@pytest.fixture(scope="module")
def source(tiny_nfc):
    path, _ = tiny_nfc
    return path.read_bytes()


@pytest.fixture(scope="module")
def sent_source(tiny_sent_nfc):
    """The tiny run with its grid sent (the ``grid`` section; ``source`` derives it)."""
    return tiny_sent_nfc[0].read_bytes()


@pytest.fixture(scope="module")
def float_source(tiny_float_nfc):
    """The same run with CompressAI's float tables (``tables="float"``, the format-2 coding)."""
    return tiny_float_nfc.read_bytes()


def _header(data: bytes) -> dict:
    return json.loads(zlib.decompress(fuzz.read_raw(data).header))


def _rewrite(data: bytes, header: dict | None = None, sections: dict | None = None, drop=()) -> bytes:
    """The file with its header JSON and/or some section payloads replaced (CRCs recomputed)."""
    raw = fuzz.read_raw(data)
    head = fuzz.header_block(header) if header is not None else raw.header
    out = []
    for name, payload in raw.sections:
        key = name.decode()
        if key in drop:
            continue
        out.append((name, (sections or {}).get(key, payload)))
    return fuzz.write_raw(raw.version, head, out)


def _write(tmp_path, data: bytes, name: str = "case.nfc"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _rejected(tmp_path, data, tiny_backbone, fragment: str):
    with pytest.raises(ERRORS) as info:
        decode_file(_write(tmp_path, data), weights=tiny_backbone)
    message = str(info.value)
    assert "\n" not in message and fragment in message, message
    return message


def _section_arrays(data: bytes, name: str, packed: bool):
    payload = dict((n.decode(), p) for n, p in fuzz.read_raw(data).sections)[name]
    if packed:
        payload = unpack_smallest(payload, 1 << 26)
    return [decode_array(p) for p in decode_strings(payload)]


def _section_from_arrays(arrays, packed: bool) -> bytes:
    payload = encode_strings([encode_array(a) for a in arrays])
    return pack_smallest(payload) if packed else payload


# -- the header: every number within the format's limits, checked before anything is allocated ------


@pytest.mark.parametrize("path, value, fragment", [
    (("field", "channels"), 2**31 - 1, "FieldArch.channels"),  # the 13 TB allocation
    (("codec", "latent_gain"), 5e-324, "CodecSettings.latent_gain"),  # planes full of NaN
    (("cameras", "camera_model"), "NOT_A_MODEL", "CameraSet.camera_model"),  # KeyError in nerfstudio
    (("cameras", "width"), 1, "CameraSet.width"),  # a 1-px camera
    (("render", "grid_resolution"), 1024, "RenderSettings.grid_resolution"),  # 128 MiB grid
    (("render", "grid_resolution"), 512, "RenderSettings.grid_resolution"),  # 3.2 GB occupancy estimator
    (("render", "grid_resolution"), 256, "RenderSettings.grid_resolution"),  # over 1 GB
    (("cameras", "camera_model"), "FISHEYE624", "CameraSet.camera_model"),  # needs distortion parameters
    (("render", "render_step_size"), 1e-12, "RenderSettings.render_step_size"),  # endless ray marching
    (("backbone", "M"), 10**9, "BackboneId.M"),
])
def test_header_values_out_of_range_are_rejected(source, tmp_path, tiny_backbone, path, value, fragment):
    header = _header(source)
    header[path[0]][path[1]] = value
    _rejected(tmp_path, _rewrite(source, header), tiny_backbone, fragment)


def test_wrong_latent_shape_is_rejected(source, tmp_path, tiny_backbone):
    """A z_shape that disagrees with the resolution made the rANS decoder read past its input."""
    header = _header(source)
    header["levels"][0]["z_shape"] = [64, 64]
    _rejected(tmp_path, _rewrite(source, header), tiny_backbone, "LevelShape.z_shape")


def test_thousands_of_levels_are_rejected_at_once(source, tmp_path, tiny_backbone):
    """15000 levels decoded for more than 60 s; now the header is refused while it is read."""
    import time

    header = _header(source)
    header["field"]["resolutions"] = [64] * 15000
    header["levels"] = [{"resolution": 64, "padded_shape": [64, 64], "z_shape": [1, 1]}] * 15000
    t = time.perf_counter()
    _rejected(tmp_path, _rewrite(source, header), tiny_backbone, "FieldArch.resolutions")
    assert time.perf_counter() - t < 5.0


@pytest.mark.parametrize("model", CAMERA_MODELS)
def test_every_allowed_camera_model_decodes_and_renders(source, tmp_path, tiny_backbone, model):
    header = _header(source)
    header["cameras"]["camera_model"] = model
    result = fuzz.run_case(_write(tmp_path, _rewrite(source, header)), timeout_s=120, memory_limit_bytes=1 << 30,
                           weights=tiny_backbone)
    assert result.outcome == "decoded", result


# -- sections: sizes known before unpacking; no decompression bombs -----------------------------------


def test_camera_decompression_bomb_is_refused(source, tmp_path, tiny_backbone):
    """An xz section that expands to 4 GiB (the whole file is a few kB): refused at the cap."""
    bomb = fuzz.xz_bomb(encode_array(np.zeros((0, 3, 4), np.float32))[:2], 4 << 30)
    assert len(bomb) < 2 << 20
    data = _rewrite(source, sections={"cameras": bomb})
    result = fuzz.run_case(_write(tmp_path, data), timeout_s=60, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    assert result.outcome == "rejected" and "camera poses" in result.message, result


def test_packed_section_bomb_is_refused(source, tmp_path, tiny_backbone):
    header = _header(source)
    assert header["codec"]["packing"] == "lzma"
    bomb = b"\x01" + fuzz.lzma2_bomb(256 << 20)
    data = _rewrite(source, sections={"entropy_bottleneck": bomb})
    result = fuzz.run_case(_write(tmp_path, data), timeout_s=60, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    assert result.outcome == "rejected" and "entropy_bottleneck" in result.message, result


def test_grid_bomb_is_refused(sent_source, tmp_path, tiny_backbone):
    header = _header(sent_source)
    header["render"]["grid_resolution"] = MAX_GRID_RESOLUTION  # within the limit, and no more bits
    data = _rewrite(sent_source, header, sections={"grid": fuzz.lzma2_bomb(128 << 20, 0xFF)})
    result = fuzz.run_case(_write(tmp_path, data), timeout_s=60, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    assert result.outcome == "rejected" and "bit mask" in result.message, result


# -- entropy decoding cannot read past a string ------------------------------------------------------


@pytest.mark.parametrize("change", ["empty", "truncated", "one byte less", "appended", "all 0xff"])
def test_damaged_latent_strings_are_rejected_in_bounds(source, tmp_path, tiny_backbone, change):
    """Empty or truncated strings made CompressAI's rANS decoder read past its input (SIGSEGV, or
    garbage that differed between two decodes). Now every string is decoded from a padded copy and
    must be the exact coding of its symbols."""
    y = decode_strings(dict((n.decode(), p) for n, p in fuzz.read_raw(source).sections)["y.0"])
    s = y[0]
    y[0] = {"empty": b"", "truncated": s[: len(s) // 2], "one byte less": s[:-1], "appended": s + b"\x00" * 8,
            "all 0xff": b"\xff" * len(s)}[change]
    data = _rewrite(source, sections={"y.0": encode_strings(y)})
    result = fuzz.run_case(_write(tmp_path, data), timeout_s=60, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    assert result.outcome == "rejected" and "level 0" in result.message, result


def test_bounded_decompress_equals_compressai_on_valid_strings():
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional

    from nerfcodec_ns.codec.entropy import bounded_bottleneck_decompress, bounded_decompress

    torch.manual_seed(0)
    eb = EntropyBottleneck(8)
    eb.update(force=True)
    z = torch.randn(3, 8, 4, 5) * 3
    strings = eb.compress(z)
    torch.testing.assert_close(bounded_bottleneck_decompress(eb, strings, (4, 5)), eb.decompress(strings, (4, 5)),
                               rtol=0, atol=0)
    from compressai.models.base import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    y, scales = torch.randn(2, 6, 8, 8) * 20, torch.rand(2, 6, 8, 8) * 10 + 0.05  # large values: bypass coding
    idx = gc.build_indexes(scales)
    strings = gc.compress(y, idx)
    torch.testing.assert_close(bounded_decompress(gc, strings, idx), gc.decompress(strings, idx), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not the coding of its"):
        bounded_decompress(gc, [strings[0][:-1], strings[1]], idx)


def _adversarial_target(path, weights):
    """Decode hostile strings straight through bounded_decompress: escape-heavy tables (every symbol
    coded with bypass bits) and strings of 0xff / random bytes."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.base import get_scale_table

    from nerfcodec_ns.codec.entropy import bounded_decompress

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    idx = torch.zeros(1, 64, 16, 16, dtype=torch.int32)  # the narrowest table: most symbols escape
    rng = np.random.default_rng(0)
    for string in [b"", b"\xff" * 7, b"\xff" * 4096, rng.bytes(4096), b"\x00\x00\x00\x80" * 100, rng.bytes(3)]:
        for _ in range(2):
            try:
                bounded_decompress(gc, [string], idx)
            except ValueError:
                pass
    return None


def test_hostile_strings_stay_inside_the_padded_buffer(tmp_path):
    result = fuzz.run_case(tmp_path / "unused.nfc", timeout_s=120, memory_limit_bytes=1 << 30,
                           target=_adversarial_target)
    assert result.outcome == "decoded", result  # the target returns None: nothing crashed or hung


# -- a decoded scene is finite, or the file is rejected ---------------------------------------------


def test_nan_normalisation_stats_are_rejected(source, tmp_path, tiny_backbone):
    payload = dict((n.decode(), p) for n, p in fuzz.read_raw(source).sections)["norm.0"]
    arr = decode_array(payload)
    arr[0, 0, 0] = np.nan
    data = _rewrite(source, sections={"norm.0": encode_array(arr)})
    _rejected(tmp_path, data, tiny_backbone, "norm.0")


def test_nan_in_entropy_bottleneck_is_the_projects_error(float_source, tmp_path, tiny_backbone):
    """NaN in the entropy-bottleneck parameters (float tables) raised CompressAI's own ValueError."""
    arrays = _section_arrays(float_source, "entropy_bottleneck", packed=True)
    arrays[1] = arrays[1].copy()
    arrays[1].flat[0] = np.nan
    data = _rewrite(float_source, sections={"entropy_bottleneck": _section_from_arrays(arrays, packed=True)})
    _rejected(tmp_path, data, tiny_backbone, "non-finite")


def test_huge_quantiles_are_rejected_before_building_tables(float_source, tmp_path, tiny_backbone):
    arrays = _section_arrays(float_source, "entropy_bottleneck", packed=True)
    q = next(i for i, a in enumerate(arrays) if a.ndim == 3 and a.shape[-1] == 3)
    arrays[q] = arrays[q].copy()
    arrays[q][..., 2] = np.float16(60000)
    data = _rewrite(float_source, sections={"entropy_bottleneck": _section_from_arrays(arrays, packed=True)})
    _rejected(tmp_path, data, tiny_backbone, "quantiles")


def test_float_tables_file_still_decodes(float_source, source, tmp_path, tiny_backbone):
    """A file with CompressAI's float tables (how format-2 files are coded) decodes, to nearly the
    same planes as the exact-tables file of the same run (the scale indexes differ in a few places,
    so the encoders' roundings of y can too)."""
    a = decode_file(_write(tmp_path, float_source, "float.nfc"), weights=tiny_backbone)
    b = decode_file(_write(tmp_path, source, "exact.nfc"), weights=tiny_backbone)
    assert _header(float_source)["codec"]["tables"] == "float" and _header(source)["codec"]["tables"] == "exact"
    for pa, pb in zip(a.planes, b.planes):
        assert (pa - pb).abs().mean() <= 1e-3 * (pb.abs().mean() + 1e-6) + 1e-6


def _tables(data):
    return _section_arrays(data, "entropy_bottleneck", packed=True)


@pytest.mark.parametrize("damage, fragment", [
    (lambda t: t[0].__setitem__(0, np.float16(np.nan)), "medians are not finite"),
    (lambda t: t[3].__setitem__(0, 0), "frequencies must be >= 1"),  # a zero-width symbol
    (lambda t: t[3].__setitem__(0, t[3][0] + 1), "sum to 2^16"),
    (lambda t: t[2].__setitem__(0, 1 << 20), "lengths must be in"),  # a table longer than any span
    (lambda t: t[1].__setitem__(0, 5), "offsets lie outside"),
    (lambda t: t[1].__setitem__(0, -100000), "offsets lie outside"),
])
def test_damaged_bottleneck_tables_are_rejected(source, tmp_path, tiny_backbone, damage, fragment):
    """Exact-tables files carry the bottleneck's CDF tables; the native coder never sees a table
    that is not a strictly increasing CDF ending at 2^16 with offsets inside it."""
    arrays = [a.copy() for a in _tables(source)]
    damage(arrays)
    data = _rewrite(source, sections={"entropy_bottleneck": _section_from_arrays(arrays, packed=True)})
    _rejected(tmp_path, data, tiny_backbone, fragment)


def test_bottleneck_tables_with_wrong_arrays_are_rejected(source, tmp_path, tiny_backbone):
    arrays = _tables(source)
    data = _rewrite(source, sections={"entropy_bottleneck": _section_from_arrays(arrays[:3], packed=True)})
    _rejected(tmp_path, data, tiny_backbone, "expected 4 tables")
    arrays[3] = arrays[3].astype(np.int32)
    data = _rewrite(source, sections={"entropy_bottleneck": _section_from_arrays(arrays, packed=True)})
    _rejected(tmp_path, data, tiny_backbone, "frequencies")


def test_decoded_planes_must_be_finite(source, tmp_path, tiny_backbone):
    """Finite but enormous normalisation ranges overflow the de-normalised planes to inf."""
    payload = dict((n.decode(), p) for n, p in fuzz.read_raw(source).sections)["norm.0"]
    arr = decode_array(payload)
    arr[0], arr[1] = np.float16(-65504), np.float16(65504)
    data = _rewrite(source, sections={"norm.0": encode_array(arr)})
    # either the planes come out finite (and the scene decodes) or the file is rejected; never inf
    try:
        scene = decode_file(_write(tmp_path, data), weights=tiny_backbone)
    except ERRORS as err:
        assert "not finite" in str(err) or "norm" in str(err)
    else:
        assert all(bool(torch.isfinite(p).all()) for p in scene.planes)


def test_every_dependency_error_is_wrapped(source, tmp_path, tiny_backbone, monkeypatch):
    """Whatever a library raises inside the decoder becomes the project's one-line DecodeError."""
    from nerfcodec_ns.codec.plane import PlaneCodec

    def boom(*args, **kwargs):
        raise KeyError("deep inside a dependency")

    monkeypatch.setattr(PlaneCodec, "decompress", boom)
    with pytest.raises(DecodeError, match=r"^cannot decode the scene file \(KeyError: "):
        decode_file(_write(tmp_path, source), weights=tiny_backbone)


def test_cli_rejects_a_damaged_file_with_one_line_and_leaves_nothing(source, tmp_path, tiny_backbone):
    from conftest import BIN, run_cli

    header = _header(source)
    header["field"]["channels"] = 2**31 - 1
    path = _write(tmp_path, _rewrite(source, header))
    out = tmp_path / "decoded"
    res = run_cli([str(BIN / "nerfcodec"), "decode", str(path), "--output-dir", str(out),
                   "--weights", str(tiny_backbone)])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "FieldArch.channels" in res.stderr and not out.exists()
    assert not list(tmp_path.glob(".decoded*"))


# -- determinism -----------------------------------------------------------------------------------


def test_two_decodes_of_a_damaged_but_accepted_file_are_identical(source, tmp_path, tiny_backbone):
    """A file whose damage is undetectable (a changed compensation vector and an unknown extra
    section) decodes, in two separate processes, to the same bytes."""
    packed = _header(source)["codec"]["packing"] == "lzma"
    arrays = _section_arrays(source, "vectors.0", packed=packed)
    arrays[0] = arrays[0].copy()
    arrays[0].flat[:5] = np.int8(77)
    raw = fuzz.read_raw(_rewrite(source, sections={"vectors.0": _section_from_arrays(arrays, packed)}))
    data = fuzz.write_raw(raw.version, raw.header, raw.sections + [(b"unknown.extra", b"\x00" * 10)])
    path = _write(tmp_path, data)
    first = fuzz.run_case(path, timeout_s=120, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    second = fuzz.run_case(path, timeout_s=120, memory_limit_bytes=1 << 30, weights=tiny_backbone)
    assert first.outcome == second.outcome == "decoded", (first, second)
    assert first.digest == second.digest and first.digest is not None
    original = fuzz.run_case(_write(tmp_path, source, "orig.nfc"), timeout_s=120, memory_limit_bytes=1 << 30,
                             weights=tiny_backbone)
    assert original.digest != first.digest  # the damage did reach the decoded scene


def test_limits_are_listed_in_the_docs():
    text = (REPO / "docs" / "bitstream.md").read_text()
    for name, value in limits().items():
        assert name in text, f"docs/bitstream.md does not list the limit {name!r}"


def test_symbol_range_check_catches_the_int32_minimum():
    """abs() of the int32 -2^31 is -2^31, so a check by abs().max() let it through to the re-encoder,
    whose bypass loop never ends for it; the range check compares min and max."""
    from nerfcodec_ns.codec.entropy import MAX_SYMBOL, symbols_in_range

    assert symbols_in_range(torch.tensor([0, MAX_SYMBOL, -MAX_SYMBOL], dtype=torch.int32))
    assert symbols_in_range(torch.zeros(0, dtype=torch.int32))
    assert not symbols_in_range(torch.tensor([3, -(2**31)], dtype=torch.int32))
    assert not symbols_in_range(torch.tensor([MAX_SYMBOL + 1], dtype=torch.int32))
