"""Tests of nerfcodec_ns.bench.baselines: every classic plane coder round-trips within its own error bound,
image-codec quality and CompressAI gain act as rate knobs, and bad payloads raise BaselineError.

Fast: tiny smooth planes, and a tiny random CompressAI model (N=16, M=24) instead of the embedded one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from nerfcodec_ns.bench.baselines import (
    BaselineError,
    CompressAICoder,
    ImageCoder,
    PlaneCoder,
    QuantCoder,
    RawCoder,
    avif_supported,
    default_coders,
)
from nerfcodec_ns.scenefile.payload import encode_strings

PACKAGE_DIR = REPO / "nerfcodec_ns"
SHAPES = [(3, 4, 16, 16), (3, 4, 32, 32), (3, 5, 20, 20)]  # the last one needs padding and a 2-group fill
CONSTANT = (0, 1, 2)  # (level, plane, channel) set to a constant
CONSTANT_VALUE = 0.5  # exact in float16 too


def smooth_level(rng: np.random.Generator, shape) -> np.ndarray:
    """Random low-frequency planes: a few cosine products per (plane, channel), values ~ +-1."""
    _, C, R, _ = shape
    u = np.cos(np.pi * np.outer(np.arange(3), (np.arange(R) + 0.5) / R))  # [3 frequencies, R]
    coef = rng.normal(size=(3, C, 3, 3)) / np.array([1.0, 2.0, 4.0])[:, None]
    return np.einsum("pckl,ky,lx->pcyx", coef, u, u).astype(np.float32)


@pytest.fixture(scope="module")
def levels():
    rng = np.random.default_rng(1234)
    out = [smooth_level(rng, s) for s in SHAPES]
    lvl, p, c = CONSTANT
    out[lvl][p, c] = CONSTANT_VALUE
    return out


def classic_coders():
    return default_coders()


CLASSIC = {c.name: c for c in classic_coders()}


def errors(a, b):
    return [float(np.abs(x - y).max()) for x, y in zip(a, b)]


def sq_error(a, b):
    return sum(float(((x.astype(np.float64) - y) ** 2).sum()) for x, y in zip(a, b))


def check_decoded(levels, decoded):
    assert isinstance(decoded, list) and len(decoded) == len(levels)
    for x, y in zip(levels, decoded):
        assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))


# ----------------------------------------------------------------------------------------------
# Import independence
# ----------------------------------------------------------------------------------------------


def test_modules_do_not_import_torch():
    # The package's __init__ imports torch (checkpoint compatibility shim), so the modules are loaded
    # under a bare stand-in package: what is checked is that baselines/rd themselves need no torch.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('nerfcodec_ns'); pkg.__path__ = [%r]; sys.modules['nerfcodec_ns'] = pkg\n"
        "import numpy as np\n"
        "import nerfcodec_ns.bench.baselines as b, nerfcodec_ns.bench.rd as rd\n"
        "coders = b.default_coders()\n"
        "x = [np.linspace(0, 1, 3 * 2 * 8 * 8, dtype=np.float32).reshape(3, 2, 8, 8)]\n"
        "for c in coders: c.decode(c.encode(x))\n"
        "rd.bd_rate([(1, 30), (2, 32)], [(1, 31), (2, 33)])\n"
        "print('torch' in sys.modules, 'compressai' in sys.modules)\n"
    ) % str(PACKAGE_DIR)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------------
# Classic coders
# ----------------------------------------------------------------------------------------------


def test_default_coders():
    coders = default_coders()
    names = [c.name for c in coders]
    assert len(set(names)) == len(names)
    assert names[:8] == ["float32", "float16", "quant8-zlib", "quant8-lzma", "quant8-zstd",
                         "quant6-lzma", "quant6-zstd", "png"]
    assert "jpeg-q95" in names and "jpeg-q15" in names and "webp-q50" in names
    assert ("avif-q90" in names) == avif_supported()
    families = {c.family for c in coders}
    assert {"float32", "float16", "quant8", "quant6", "png", "jpeg", "webp"} <= families
    assert all(isinstance(c, PlaneCoder) for c in coders)


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_round_trip_within_own_bound(levels, name):
    coder = CLASSIC[name]
    payload = coder.encode(levels)
    assert isinstance(payload, bytes)
    decoded = coder.decode(payload)
    check_decoded(levels, decoded)
    err = errors(levels, decoded)
    bound = coder.max_abs_error(levels)
    if bound is None:
        assert coder.family in ("jpeg", "webp", "avif")
        spans = [float((x.max(axis=(2, 3)) - x.min(axis=(2, 3))).max()) for x in levels]
        assert all(e < s for e, s in zip(err, spans))  # lossy, but still an approximation
    else:
        assert len(bound) == len(levels)
        assert all(e <= b for e, b in zip(err, bound)), (err, bound)
    if name == "float32":
        assert err == [0.0, 0.0, 0.0]
    # a constant channel (min == max) comes back exactly, with no division by zero
    lvl, p, c = CONSTANT
    assert np.all(decoded[lvl][p, c] == CONSTANT_VALUE)
    assert coder.encode(levels) == payload  # deterministic


def test_raw_sizes(levels):
    values = sum(x.size for x in levels)
    for dtype, itemsize in (("float32", 4), ("float16", 2)):
        overhead = len(RawCoder(dtype).encode(levels)) - values * itemsize
        assert 0 < overhead < 200  # a small header


@pytest.mark.parametrize("bits, coder", [(8, QuantCoder(8, "zlib")), (6, QuantCoder(6, "lzma")),
                                         (8, ImageCoder("PNG"))])
def test_quantized_coders_are_within_half_a_step_per_channel(levels, bits, coder):
    for x, y in zip(levels, coder.decode(coder.encode(levels))):
        step = (x.max(axis=(2, 3)) - x.min(axis=(2, 3))).astype(np.float64) / (2**bits - 1)
        err = np.abs(x.astype(np.float64) - y).max(axis=(2, 3))
        assert np.all(err <= step / 2 + 1e-6)


def test_quant_compressors_agree(levels):
    decoded = [QuantCoder(8, c).decode(QuantCoder(8, c).encode(levels)) for c in ("zlib", "lzma", "zstd")]
    for other in decoded[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(decoded[0], other))
    assert len(QuantCoder(6, "lzma").encode(levels)) < len(QuantCoder(8, "lzma").encode(levels))


@pytest.mark.parametrize("family", ["jpeg", "webp", "avif"])
def test_lossy_quality_is_a_rate_knob(levels, family):
    coders = sorted((c for c in CLASSIC.values() if c.family == family), key=lambda c: c.quality)
    if not coders:
        pytest.skip(f"this Pillow has no {family}")
    sizes, errs = [], []
    for coder in coders:
        payload = coder.encode(levels)
        sizes.append(len(payload))
        errs.append(sq_error(levels, coder.decode(payload)))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes  # strictly more bytes
    assert errs == sorted(errs, reverse=True), errs  # error does not increase with quality


def test_image_mosaic_keeps_channel_order():
    # channel c of plane p is the constant p * 10 + c: any tile mix-up shows
    x = np.zeros((3, 5, 8, 8), np.float32)
    x += (np.arange(3)[:, None] * 10 + np.arange(5)[None, :])[..., None, None]
    x[:, :, 0, 0] += 1.0  # give every channel a range, so values are quantised, not constant
    (y,) = ImageCoder("PNG").decode(ImageCoder("PNG").encode([x]))
    assert np.abs(y - x).max() <= 1.0 / 255


def test_encode_rejects_bad_levels(levels):
    coder = QuantCoder()
    bad = levels[0].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(BaselineError, match="NaN"):
        coder.encode([bad])
    with pytest.raises(BaselineError, match=r"\[3, C, R, R\]"):
        coder.encode([np.zeros((2, 4, 8, 8), np.float32)])
    with pytest.raises(BaselineError, match=r"\[3, C, R, R\]"):
        coder.encode([np.zeros((3, 4, 8, 9), np.float32)])
    with pytest.raises(BaselineError, match="non-empty list"):
        coder.encode([])
    with pytest.raises(BaselineError, match="float16 range"):
        RawCoder("float16").encode([np.full((3, 1, 2, 2), 1e6, np.float32)])


def test_constructor_errors():
    with pytest.raises(ValueError):
        RawCoder("float64")
    with pytest.raises(ValueError):
        QuantCoder(9)
    with pytest.raises(ValueError):
        QuantCoder(8, "bz2")
    with pytest.raises(ValueError):
        ImageCoder("JPEG")  # no quality
    with pytest.raises(ValueError):
        ImageCoder("PNG", 50)
    with pytest.raises(ValueError):
        ImageCoder("GIF", 50)


# ----------------------------------------------------------------------------------------------
# Bad payloads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float32", "float16", "quant8-zlib", "quant8-lzma", "quant6-zstd",
                                  "png", "jpeg-q50", "webp-q50"])
def test_truncated_payload_raises(levels, name):
    coder = CLASSIC[name]
    payload = coder.encode(levels)
    for n in (0, 1, 3, len(payload) // 2, len(payload) - 1):
        with pytest.raises(BaselineError, match=name):
            coder.decode(payload[:n])
    with pytest.raises(BaselineError):
        coder.decode(payload + b"\x00")


@pytest.mark.parametrize("name", ["float16", "quant8-zlib", "quant8-lzma", "quant8-zstd", "png", "jpeg-q50",
                                  "webp-q50"])
def test_garbled_payload_raises_or_decodes(levels, name):
    coder = CLASSIC[name]
    payload = coder.encode(levels)
    rng = np.random.default_rng(0)
    for pos in rng.integers(0, len(payload), 20):
        garbled = bytearray(payload)
        garbled[pos] ^= 0x5A
        try:
            check_decoded(levels, coder.decode(bytes(garbled)))  # e.g. a changed raw value
        except BaselineError as exc:
            assert "\n" not in str(exc)


def test_wrong_payload_kind_and_oversized_header():
    x = [np.ones((3, 1, 4, 4), np.float32)]
    with pytest.raises(BaselineError, match="not a 'image' payload"):
        ImageCoder("PNG").decode(QuantCoder().encode(x))
    header = json.dumps({"kind": "quant", "bits": 8, "compressor": "zlib", "shapes": [[3, 64, 65536, 65536]]})
    with pytest.raises(BaselineError, match="more than"):
        QuantCoder().decode(encode_strings([header.encode()]))
    header = json.dumps({"kind": "raw", "dtype": "float32", "shapes": [[3, 1, 4, 4]]})
    with pytest.raises(BaselineError, match="raw data has 5 bytes"):
        RawCoder().decode(encode_strings([header.encode(), b"12345"]))


# ----------------------------------------------------------------------------------------------
# CompressAI coder (tiny random model)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["bmshj2018-hyperprior", "mbt2018-mean"])
def tiny_model(request):
    import torch

    from nerfcodec_ns.codec.backbone import build_backbone

    torch.manual_seed(0)
    return build_backbone(request.param, 16, 24)


def test_compressai_round_trip_is_deterministic(levels, tiny_model):
    coder = CompressAICoder(tiny_model, gain=16.0)
    assert coder.family == "compressai" and coder.name.endswith("-g16")
    payload = coder.encode(levels)
    assert coder.encode(levels) == payload
    first, second = coder.decode(payload), coder.decode(payload)
    check_decoded(levels, first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # a fresh coder around the same model decodes the same (the payload carries the gain)
    assert all(np.array_equal(a, b) for a, b in zip(first, CompressAICoder(tiny_model, 1.0).decode(payload)))
    lvl, p, c = CONSTANT
    assert np.all(first[lvl][p, c] == CONSTANT_VALUE)
    assert coder.max_abs_error(levels) is None


def _unquantized_reconstruction(model, level: np.ndarray) -> np.ndarray:
    """g_s(g_a(x)) with the coder's normalisation, grouping and padding (the gain -> inf limit)."""
    import torch
    import torch.nn.functional as F

    _, C, R, _ = level.shape
    lo = level.min(axis=(2, 3), keepdims=True).astype(np.float64)
    span = level.max(axis=(2, 3), keepdims=True).astype(np.float64) - lo
    x = np.where(span > 0, (level - lo) / np.where(span > 0, span, 1), 0)
    groups = -(-C // 3)
    x = x[:, [min(i, C - 1) for i in range(3 * groups)]].reshape(3 * groups, 3, R, R)
    P = -(-R // 64) * 64
    t = F.pad(torch.from_numpy(x.astype(np.float32)), (0, P - R, 0, P - R), mode="replicate")
    with torch.no_grad():
        y = model.g_s(model.g_a(t)).clamp(0, 1)[..., :R, :R].reshape(3, 3 * groups, R, R)[:, :C]
    return (lo + y.numpy().astype(np.float64) * span).astype(np.float32)


def test_compressai_gain_is_a_rate_knob(levels, tiny_model):
    # An untrained model does not reconstruct the planes, so the distortion that the gain controls is
    # measured against the model's own unquantized reconstruction g_s(g_a(x)).
    levels = [levels[0], levels[2]]  # one padded level with a 2-channel last group is enough
    refs = [_unquantized_reconstruction(tiny_model, x) for x in levels]
    sizes, errs = [], []
    for gain in (1.0, 16.0, 256.0):
        coder = CompressAICoder(tiny_model, gain)
        payload = coder.encode(levels)
        sizes.append(len(payload))
        errs.append(sq_error(refs, coder.decode(payload)))
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert errs[0] > errs[1] > errs[2], errs
    assert max(errors(refs, coder.decode(payload))) < 1e-3 * max(float(np.ptp(x)) for x in levels)


def test_compressai_gain_1_matches_compressai_own_coder(tiny_model):
    # C = 3 and R = 64: one RGB image per plane and no padding, so CompressAI's own
    # compress/decompress applies to exactly the same images.
    import torch

    from nerfcodec_ns.codec.entropy import reproducible_convolutions

    level = smooth_level(np.random.default_rng(7), (3, 3, 64, 64))
    (decoded,) = CompressAICoder(tiny_model, 1.0).decode(CompressAICoder(tiny_model, 1.0).encode([level]))
    lo = level.min(axis=(2, 3), keepdims=True).astype(np.float64)
    span = level.max(axis=(2, 3), keepdims=True).astype(np.float64) - lo
    x = torch.from_numpy(((level - lo) / span).astype(np.float32))
    with torch.no_grad(), reproducible_convolutions():
        out = tiny_model.compress(x)
        x_hat = tiny_model.decompress(out["strings"], out["shape"])["x_hat"]
    expected = (lo + x_hat.numpy().astype(np.float64) * span).astype(np.float32)
    np.testing.assert_array_equal(decoded, expected)


def test_compressai_bad_payloads(levels, tiny_model):
    coder = CompressAICoder(tiny_model, 4.0)
    payload = coder.encode(levels[:1])
    for n in (0, 2, len(payload) // 2, len(payload) - 1):
        with pytest.raises(BaselineError, match=coder.name):
            coder.decode(payload[:n])
    from nerfcodec_ns.codec.backbone import build_backbone

    other = "mbt2018-mean" if coder.architecture == "bmshj2018-hyperprior" else "bmshj2018-hyperprior"
    with pytest.raises(BaselineError, match="model"):
        CompressAICoder(build_backbone(other, 16, 24)).decode(payload)


def test_compressai_default_coders_and_errors(tiny_model):
    extra = default_coders(tiny_model)[len(default_coders()):]
    assert [c.gain for c in extra] == [0.5, 1.0, 2.0, 4.0]
    assert all(isinstance(c, CompressAICoder) and c.family == "compressai" for c in extra)
    with pytest.raises(ValueError):
        CompressAICoder(tiny_model, gain=0.0)
    with pytest.raises(TypeError):
        CompressAICoder(object())
