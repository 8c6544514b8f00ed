"""Fuzzing scene files ("opening a scene file from anyone is safe"): the mutation generator (deterministic,
distinct, container-valid, every family), the fork-server runner (every outcome class) and a fast fuzz
subset of the tiny run's file."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import lzma
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from conftest import REPO
from nerfcodec_ns.scenefile import fuzz
from nerfcodec_ns.scenefile.container import Bitstream, Section, pack, section_sizes, unpack
from nerfcodec_ns.scenefile.header import (
    MODEL_ID,
    BackboneId,
    BitstreamError,
    CameraSet,
    CodecSettings,
    FieldArch,
    Header,
    LevelShape,
    RenderSettings,
)
from nerfcodec_ns.scenefile.payload import (
    decode_array,
    decode_strings,
    encode_array,
    encode_bits,
    encode_strings,
    pack_smallest,
    unpack_lzma,
    unpack_smallest,
)



# ----------------------------------------------------------------------------------------------
# A valid file made without training (generator tests), and an independent framing reader
# ----------------------------------------------------------------------------------------------


def _synthetic_nfc(packing: str = "lzma") -> bytes:
    """A container-valid, header-valid scene file shaped like the tiny run's (random payloads)."""
    rng = np.random.default_rng(0)
    res, C = (16, 32), 8

    def arrays(*arrs: np.ndarray) -> bytes:
        raw = encode_strings([encode_array(a) for a in arrs])
        return pack_smallest(raw) if packing == "lzma" else raw

    sections = []
    for level in range(len(res)):
        sections += [
            Section(f"y.{level}", encode_strings([rng.bytes(40) for _ in range(3)])),
            Section(f"z.{level}", encode_strings([rng.bytes(8) for _ in range(3)])),
            Section(f"norm.{level}", encode_array(rng.random((2, 3, C)).astype(np.float16))),
        ]
    for level in range(len(res)):
        sections.append(
            Section(
                f"vectors.{level}",
                arrays(
                    rng.integers(-128, 127, (3, C, res[level]), dtype=np.int8),
                    rng.random((3, C)).astype(np.float32),
                ),
            )
        )
    sections += [
        Section(
            "head", arrays(np.zeros((16, C, 5, 5), np.int8), np.ones(C, np.float32), np.zeros(C, np.float32))
        ),
        Section(
            "entropy_bottleneck", arrays(*[rng.random((16, 3, 1)).astype(np.float16) for _ in range(3)])
        ),
        Section(
            "mlp",
            encode_strings(
                [encode_array(rng.random(s).astype(np.float16)) for s in ((64, 16), (64,), (3, 64))]
            ),
        ),
        Section("grid", encode_bits(rng.random((8, 8, 8)) > 0.5)),
        Section("cameras", lzma.compress(encode_array(rng.random((4, 3, 4)).astype(np.float32)))),
    ]
    header = Header(
        model_id=MODEL_ID,
        backbone=BackboneId("bmshj2018-hyperprior", 16, 24, "ab" * 32, "file:tiny_backbone.pt"),
        field=FieldArch(res, C, "product", 64, 15, 64, 4),
        levels=tuple(LevelShape(r, (64, 64), (1, 1)) for r in res),
        codec=CodecSettings(8, 8, True, True, 1.0, packing),
        render=RenderSettings((-1.5, -1.5, -1.5, 1.5, 1.5, 1.5), 0.01, 8, 0.01, 1e-4, 0.0, "white"),
        cameras=CameraSet(
            "PERSPECTIVE",
            32,
            32,
            44.4,
            44.4,
            16.0,
            16.0,
            ((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0)),
            1.0,
        ),
        extra=(("codec_stage", "2"),),
    )
    return pack(Bitstream(header, tuple(sections)))


def _check_framing(data: bytes) -> int:
    """Independent of fuzz.read_raw: magic, every length, header CRC, section CRCs, nothing trailing.
    Returns the section count."""
    assert data[:4] == b"NFC\x00", "magic"
    pos = 6
    (hlen,) = struct.unpack_from("<I", data, pos)
    header = data[pos + 4 : pos + 4 + hlen]
    assert len(header) == hlen, "header truncated"
    pos += 4 + hlen
    assert struct.unpack_from("<I", data, pos)[0] == zlib.crc32(header), "header CRC"
    pos += 4
    (count,) = struct.unpack_from("<H", data, pos)
    pos += 2
    for i in range(count):
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n]
        (plen,) = struct.unpack_from("<I", data, pos + 1 + n)
        payload = data[pos + 5 + n : pos + 5 + n + plen]
        assert len(payload) == plen, f"section #{i} truncated"
        pos += 5 + n + plen
        assert struct.unpack_from("<I", data, pos)[0] == zlib.crc32(payload, zlib.crc32(name)), (
            f"section #{i} CRC"
        )
        pos += 4
    assert pos == len(data), "trailing bytes"
    return count


@pytest.fixture(scope="module")
def synthetic() -> bytes:
    return _synthetic_nfc()


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def _key(m: fuzz.Mutation):
    return m.id, m.family, m.description, hashlib.sha256(m.data).hexdigest()


def test_mutations_are_deterministic_distinct_and_container_valid(synthetic):
    first = list(fuzz.mutations(synthetic, seed=0, count=250))
    assert [_key(m) for m in first] == [_key(m) for m in fuzz.mutations(synthetic, seed=0, count=250)]
    assert [m.id for m in first] == list(range(250))
    other = [_key(m)[1:] for m in fuzz.mutations(synthetic, seed=1, count=250)]
    assert other != [_key(m)[1:] for m in first]
    assert len({(m.family, m.description) for m in first}) == len(first)  # each case says what it did
    digests = {hashlib.sha256(m.data).digest() for m in first}
    assert len(digests) == len(first) and hashlib.sha256(synthetic).digest() not in digests
    container_errors = 0
    for m in first:
        _check_framing(m.data)  # every file is CRC-valid with exact lengths
        raw = fuzz.read_raw(m.data)
        assert fuzz.write_raw(raw.version, raw.header, raw.sections) == m.data
        try:
            section_sizes(m.data)
        except BitstreamError as err:  # the project's reader may reject the contents, never the framing
            assert (
                "CRC" not in str(err) and "truncated file" not in str(err) and "trailing" not in str(err)
            ), (m.description, str(err))
            container_errors += 1
    assert container_errors < len(first)  # most damage gets past the container


def test_every_family_early_and_enough_variety(synthetic):
    head = list(itertools.islice(fuzz.mutations(synthetic, seed=0, count=2000), 15))  # campaign-sized, lazy
    assert {m.family for m in head} == set(fuzz.FAMILIES)
    subset = list(fuzz.mutations(synthetic, seed=3, count=35))
    assert {m.family for m in subset} == set(fuzz.FAMILIES)
    with pytest.raises(ValueError, match="unknown mutation families"):
        next(fuzz.mutations(synthetic, families=["nope"]))


@pytest.mark.slow
def test_systematic_cases_number_at_least_2500(synthetic):
    cases = list(fuzz.mutations(synthetic, seed=0))
    assert len(cases) >= 2500
    assert len({hashlib.sha256(m.data).digest() for m in cases}) == len(cases)
    for m in cases:
        _check_framing(m.data)


def _find(synthetic: bytes, family: str, text: str) -> fuzz.Mutation:
    for m in fuzz.mutations(synthetic, seed=0, families=[family]):
        if text in m.description:
            return m
    raise AssertionError(f"no {family} case with {text!r}")


def test_families_write_what_they_say(synthetic):
    m = _find(synthetic, "header-leaf", "codec.latent_gain = NaN")
    text = zlib.decompress(fuzz.read_raw(m.data).header)
    assert b'"latent_gain":NaN' in text
    with pytest.raises(BitstreamError, match="non-finite number NaN"):
        unpack(m.data)

    m = _find(synthetic, "sections", "duplicate section mlp (adjacent)")
    assert [n for n, _ in fuzz.read_raw(m.data).sections].count(b"mlp") == 2
    with pytest.raises(BitstreamError, match="duplicate section 'mlp'"):
        unpack(m.data)

    m = _find(synthetic, "header-structure", "15000 levels of R=64 (consistent)")
    header = json.loads(zlib.decompress(fuzz.read_raw(m.data).header))
    assert len(header["levels"]) == len(header["field"]["resolutions"]) == 15000

    m = _find(synthetic, "strings", "y.1: string 2 emptied")
    assert decode_strings(unpack(m.data).section("y.1"))[2] == b""

    m = _find(synthetic, "arrays", "mlp[0] float16(64, 16): element 0 = NaN")
    assert math.isnan(decode_array(decode_strings(unpack(m.data).section("mlp"))[0]).reshape(-1)[0])
    m = _find(synthetic, "arrays", "head[1] float32(8,): element 0 = inf")  # inside an LZMA-packed section
    payload = unpack_smallest(unpack(m.data).section("head"), 1 << 20)
    assert math.isinf(decode_array(decode_strings(payload)[1])[0])

    m = _find(synthetic, "packing-marker", "head: packing marker -> 0xff")
    assert unpack(m.data).section("head")[0] == 0xFF

    m = _find(synthetic, "bombs", "cameras: xz of float32 [89478485, 3, 4] zeros")
    poses = unpack(m.data).section("cameras")
    assert len(poses) < 1 << 20  # a 4 GiB bomb in under 1 MiB
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    head = dec.decompress(poses, max_length=1 << 20)
    assert head[:14] == bytes((6, 3)) + struct.pack("<3I", 89478485, 3, 4) and not any(head[14:])


def test_bomb_builders_expand_exactly():
    for prefix, size in ((b"", 0), (b"abc", 10), (b"x" * 14, 5 << 20)):
        assert lzma.decompress(fuzz.xz_bomb(prefix, size), format=lzma.FORMAT_XZ) == prefix + bytes(size)
        assert unpack_lzma(fuzz.lzma2_bomb(size, 0xFF, prefix), 1 << 30) == prefix + b"\xff" * size
    assert zlib.decompress(fuzz.zlib_bomb(3 << 20, 0x20)) == b" " * (3 << 20)
    t0 = time.perf_counter()
    assert len(fuzz.lzma2_bomb(4 << 30)) < 1 << 20 and len(fuzz.xz_bomb(b"", 4 << 30)) < 1 << 20
    assert time.perf_counter() - t0 < 5


def test_generator_imports_no_torch(tmp_path):
    probe = tmp_path / "probe.nfc"
    probe.write_bytes(_synthetic_nfc())
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('nerfcodec_ns'); pkg.__path__ = [{str(REPO / 'nerfcodec_ns')!r}]\n"
        "sys.modules['nerfcodec_ns'] = pkg  # the package __init__ imports torch (checkpoint shims)\n"
        "from nerfcodec_ns.scenefile import fuzz\n"
        f"ms = list(fuzz.mutations(open({str(probe)!r}, 'rb').read(), count=30))\n"
        "print(len(ms), 'torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["30", "False"]


# ----------------------------------------------------------------------------------------------
# Runner: every outcome class
# ----------------------------------------------------------------------------------------------


def test_runner_classifies_real_decodes(tiny_nfc, tiny_backbone, tmp_path):
    path, _ = tiny_nfc
    ok = fuzz.run_case(path, 60, 1 << 30, tiny_backbone)
    assert ok.outcome == "decoded", ok
    assert ok.digest and ok.peak_rss_bytes and ok.wall_s > 0
    assert fuzz.run_case(path, 60, 1 << 30, tiny_backbone).digest == ok.digest

    raw = fuzz.read_raw(path.read_bytes())
    no_mlp = tmp_path / "no_mlp.nfc"
    no_mlp.write_bytes(fuzz.write_raw(raw.version, raw.header, [s for s in raw.sections if s[0] != b"mlp"]))
    res = fuzz.run_case(no_mlp, 60, 1 << 30, tiny_backbone)
    assert res.outcome == "rejected" and "mlp" in res.message and "\n" not in res.message, res


def test_runner_classifies_crash_hang_memory_foreign(tiny_nfc, tiny_backbone):
    path, _ = tiny_nfc
    run = lambda target, timeout=30.0, limit=256 << 20: fuzz.run_case(path, timeout, limit, target=target)  # noqa: E731

    res = run(lambda p, w: os.kill(os.getpid(), signal.SIGSEGV))
    assert (res.outcome, res.error_type, res.peak_rss_bytes) == ("crash", "SIGSEGV", None)
    assert run(lambda p, w: ctypes.string_at(0)).outcome == "crash"
    assert run(lambda p, w: os.abort()).error_type == "SIGABRT"
    assert run(lambda p, w: os._exit(3)).outcome == "crash"  # exited without reporting

    t0 = time.monotonic()
    res = run(lambda p, w: time.sleep(60), timeout=0.5)
    assert res.outcome == "hang" and time.monotonic() - t0 < 10

    import torch

    for target in (
        lambda p, w: bytearray(1 << 32),
        lambda p, w: np.ones(1 << 31),
        lambda p, w: torch.empty(1 << 31),
    ):
        res = run(target)
        assert res.outcome == "memory", res

    res = run(lambda p, w: {}["x"])
    assert (res.outcome, res.error_type) == ("foreign-error", "KeyError")
    res = run(lambda p, w: (_ for _ in ()).throw(BitstreamError("bad\nthing")))
    assert (res.outcome, res.message) == ("rejected", "bad thing")
    assert run(lambda p, w: None).outcome == "decoded"


def test_runner_flags_non_finite_decodes_as_broken(tiny_nfc, tiny_backbone):
    import torch

    from nerfcodec_ns.scenefile.decode import decode_file

    def nan_planes(p, w):
        scene = decode_file(p, w)
        return scene._replace(planes=[torch.full_like(t, math.nan) for t in scene.planes])

    res = fuzz.run_case(tiny_nfc[0], 60, 1 << 30, tiny_backbone, target=nan_planes)
    assert res.outcome == "broken" and "planes" in res.message and res.digest, res


# ----------------------------------------------------------------------------------------------
# Fast fuzz subset of the tiny run's file
# ----------------------------------------------------------------------------------------------


def test_fast_fuzz_subset(tiny_nfc, tiny_backbone, tmp_path):
    path, _ = tiny_nfc
    report = fuzz.campaign(
        path, tmp_path, count=35, seed=0, timeout_s=60, memory_limit_bytes=1 << 30, weights=tiny_backbone
    )
    assert report["baseline"]["outcome"] == "decoded", report["baseline"]
    assert report["count"] == 35 and sum(report["totals"].values()) == 35
    assert all(sum(report["families"][f].values()) > 0 for f in fuzz.FAMILIES)
    assert json.loads((tmp_path / "fuzz_campaign.json").read_text()) == report
    unsafe = [
        f for f in report["failures"] if f["outcome"] in ("crash", "hang", "memory", "nondeterministic")
    ]
    assert not unsafe, "\n".join(
        f"#{f['id']} [{f['family']}] {f['outcome']}: {f['description']} -> "
        f"{f['error_type']} {f['message'][:200]}"
        for f in unsafe
    )
