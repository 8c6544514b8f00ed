"""Structured, CRC-valid fuzzing of scene files (``SCENE.nfc``): "opening a scene file from anyone is safe".

Two halves:

* :func:`mutations` (torch-free) derives damaged files from a valid one. Every file it makes is
  *container-valid*: magic, lengths, header CRC and section CRCs are recomputed, so the damage
  reaches the header validation, the section checks and the decoder behind them instead of stopping
  at the CRC check. Families (:data:`FAMILIES`): header leaf values, header structure, sections,
  entropy-coded strings, arrays, compression bombs and packing markers. Files are written with a
  small raw writer (:func:`write_raw`) that follows the byte layout of :mod:`nerfcodec_ns.scenefile.container`
  but checks nothing, so it can write what :func:`~nerfcodec_ns.scenefile.container.pack` refuses (NaN in the
  header JSON, duplicate sections, unknown versions, ...).
* :func:`run_case` decodes one file in a forked child (fork server: the parent imports torch and the
  decoder once) under an address-space limit and a timeout, and classifies the outcome
  (:data:`OUTCOMES`); :func:`campaign` runs many cases and writes a JSON report.

The outcome a decoder should give every damaged file is ``rejected`` (its own one-line error) or
``decoded`` (the damage was harmless and the result is finite and renders).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import lzma
import math
import os
import random
import re
import select
import signal
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from nerfcodec_ns.scenefile.container import MAGIC, unpack
from nerfcodec_ns.scenefile.header import BitstreamError, header_json
from nerfcodec_ns.scenefile.payload import (
    DTYPE_CODES,
    decode_array,
    decode_strings,
    encode_array,
    encode_strings,
    pack_lzma,
    pack_smallest,
    unpack_smallest,
)

__all__ = [
    "FAMILIES",
    "OUTCOMES",
    "GOOD_OUTCOMES",
    "Mutation",
    "RawFile",
    "CaseResult",
    "Target",
    "mutations",
    "write_raw",
    "read_raw",
    "header_block",
    "lzma2_bomb",
    "xz_bomb",
    "xz_concat_bomb",
    "zlib_bomb",
    "run_case",
    "campaign",
]

FAMILIES = ("header-leaf", "header-structure", "sections", "strings", "arrays", "bombs", "packing-marker")
"""Mutation families, in the order :func:`mutations` interleaves them."""
#: How many cases of each family one round of :func:`mutations` takes (the first 15 cover all).
_WEIGHTS = {
    "header-leaf": 4,
    "header-structure": 3,
    "sections": 2,
    "strings": 2,
    "arrays": 2,
    "bombs": 1,
    "packing-marker": 1,
}
OUTCOMES = ("rejected", "decoded", "broken", "foreign-error", "crash", "hang", "memory", "nondeterministic")
"""Outcome classes of :func:`run_case` (and ``nondeterministic`` from :func:`campaign`)."""
GOOD_OUTCOMES = ("rejected", "decoded")

#: Codec parameter sections: LZMA-packed (``pack_smallest``) when the header's codec.packing is "lzma".
_PACKED_PREFIXES = ("head", "vectors.", "mix.", "entropy_bottleneck", "context_model")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MiB = 1 << 20
_GiB = 1 << 30


def _crc(*parts: bytes) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc & 0xFFFFFFFF


class Mutation(NamedTuple):
    """One generated case: a container-valid file with one kind of damage."""

    id: int
    """Position in the generated sequence (0-based)."""
    family: str
    """One of :data:`FAMILIES`."""
    description: str
    """What was changed, one line."""
    data: bytes
    """The whole file."""


# ----------------------------------------------------------------------------------------------
# Raw container writer / reader (layout of nerfcodec_ns.scenefile.container, no validation of the contents)
# ----------------------------------------------------------------------------------------------


@dataclass
class RawFile:
    """A scene file split at its framing only (nothing inside the header or payloads is checked)."""

    version: int
    header: bytes
    """The stored header block (zlib-compressed JSON, as written)."""
    sections: List[Tuple[bytes, bytes]]
    """(name bytes, payload) in file order; names may repeat."""


def write_raw(version: int, header: bytes, sections: Sequence[Tuple[Union[str, bytes], bytes]]) -> bytes:
    """``magic | u16 version | u32 len | header | u32 CRC | u16 count | sections`` with correct lengths
    and CRCs; names are written as given (1..255 bytes, any content)."""
    out = [
        MAGIC,
        _U16.pack(version & 0xFFFF),
        _U32.pack(len(header)),
        header,
        _U32.pack(_crc(header)),
        _U16.pack(len(sections)),
    ]
    for name, payload in sections:
        raw_name = name.encode("latin-1") if isinstance(name, str) else bytes(name)
        if len(raw_name) > 255:
            raise ValueError(f"section name of {len(raw_name)} bytes does not fit the u8 length")
        out += [
            bytes((len(raw_name),)),
            raw_name,
            _U32.pack(len(payload)),
            payload,
            _U32.pack(_crc(raw_name, payload)),
        ]
    return b"".join(out)


def read_raw(data: bytes) -> RawFile:
    """Split a file at its framing, checking magic, lengths, the header CRC, every section CRC and that
    nothing trails; raises ``ValueError`` otherwise."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ValueError("bad magic")
    pos = 4

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise ValueError(f"truncated at byte {pos}: {n} bytes needed")
        out = bytes(view[pos : pos + n])
        pos += n
        return out

    version = _U16.unpack(take(2))[0]
    header = take(_U32.unpack(take(4))[0])
    if _U32.unpack(take(4))[0] != _crc(header):
        raise ValueError("header CRC mismatch")
    sections = []
    for i in range(_U16.unpack(take(2))[0]):
        name = take(take(1)[0])
        payload = take(_U32.unpack(take(4))[0])
        if _U32.unpack(take(4))[0] != _crc(name, payload):
            raise ValueError(f"section #{i} CRC mismatch")
        sections.append((name, payload))
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} trailing bytes")
    return RawFile(version, header, sections)


class _Raw(NamedTuple):
    """A JSON token written verbatim (numbers json.dumps cannot write, invalid JSON)."""

    token: str


def _dump_json(value: Any, ensure_ascii: bool = True) -> bytes:
    """Canonical header JSON (sorted keys, no spaces) allowing NaN/Infinity and :class:`_Raw` tokens."""
    raws: List[str] = []

    def sub(v: Any) -> Any:
        if isinstance(v, _Raw):
            raws.append(v.token)
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    text = json.dumps(
        sub(value), sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=ensure_ascii
    )
    for i, token in enumerate(raws):
        text = text.replace(f'"\\u0000RAW{i}\\u0000"', token)
    return text.encode("utf-8")


def header_block(value: Any, ensure_ascii: bool = True) -> bytes:
    """The stored header bytes of a header JSON value: :func:`_dump_json`, zlib level 9."""
    return zlib.compress(_dump_json(value, ensure_ascii), 9)


# ----------------------------------------------------------------------------------------------
# Compression bombs (cheap to build: repeated LZMA2 chunks, concatenated xz streams)
# ----------------------------------------------------------------------------------------------

_BOMB_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": 1 << 20}]


@lru_cache(maxsize=8)
def _lzma2_chunk(byte: int) -> Tuple[bytes, int]:
    """One self-contained LZMA2 chunk (dictionary + state reset) of ~2 MiB of ``byte``: (chunk, size)."""
    out = lzma.compress(bytes([byte]) * (1 << 21), format=lzma.FORMAT_RAW, filters=_BOMB_FILTERS)
    ctrl = out[0]
    if ctrl < 0xE0:  # not a compressed chunk with dictionary reset: cannot be repeated
        raise RuntimeError("unexpected LZMA2 encoder output")
    size = ((ctrl & 0x1F) << 16) + (out[1] << 8 | out[2]) + 1
    packed = (out[3] << 8 | out[4]) + 1
    return out[: 6 + packed], size


def lzma2_bomb(size: int, byte: int = 0, prefix: bytes = b"") -> bytes:
    """A raw LZMA2 stream (:func:`nerfcodec_ns.scenefile.payload.unpack_lzma` reads it) of ``prefix`` + ``size``
    bytes equal to ``byte``; about 190 bytes per MiB, built in milliseconds (one compressed chunk that
    resets the dictionary, repeated)."""
    chunk, unit = _lzma2_chunk(byte)
    n, rest = divmod(size, unit)
    head = b""
    if prefix or rest:  # a first stream without its end marker (0x00), then the repeated chunks
        head = lzma.compress(
            bytes(prefix) + bytes([byte]) * rest, format=lzma.FORMAT_RAW, filters=_BOMB_FILTERS
        )[:-1]
    return head + chunk * n + b"\x00"


def _xz_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes((n,)))


def xz_bomb(prefix: bytes, size: int) -> bytes:
    """One xz stream (``lzma.decompress`` reads it) of ``prefix`` + ``size`` zero bytes, built in
    milliseconds: the container (stream header, one block without check, index, footer) written here
    around :func:`lzma2_bomb` data."""
    data = lzma2_bomb(size, 0, prefix)
    flags = b"\x00\x00"  # check: none
    stream_header = b"\xfd7zXZ\x00" + flags + _U32.pack(zlib.crc32(flags))
    # block header: size byte, flags (1 filter, no sizes), LZMA2 filter (0x21), 1 property byte: 1 MiB dict
    body = b"\x00" + b"\x21\x01\x10"
    hsize = -(-(1 + len(body) + 4) // 4) * 4
    block_header = bytes((hsize // 4 - 1,)) + body + bytes(hsize - 4 - 1 - len(body))
    block_header += _U32.pack(zlib.crc32(block_header))
    block = block_header + data + bytes(-len(data) % 4)
    index = (
        b"\x00" + _xz_varint(1) + _xz_varint(len(block_header) + len(data)) + _xz_varint(len(prefix) + size)
    )
    index += bytes(-len(index) % 4)
    index += _U32.pack(zlib.crc32(index))
    backward = _U32.pack(len(index) // 4 - 1) + flags
    footer = _U32.pack(zlib.crc32(backward)) + backward + b"YZ"
    return stream_header + block + index + footer


@lru_cache(maxsize=4)
def _xz_zero_stream(size: int) -> bytes:
    """One xz stream of ``size`` zero bytes (compressed in 1 MiB pieces, cached)."""
    comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=0)
    block = bytes(_MiB)
    parts = [comp.compress(block) for _ in range(size // _MiB)]
    return b"".join(parts) + comp.compress(bytes(size % _MiB)) + comp.flush()


def xz_concat_bomb(prefix: bytes, size: int) -> bytes:
    """Concatenated xz streams (``lzma.decompress`` reads them all) of ``prefix`` + ``size`` zeros: a small
    stream with the prefix, then copies of cached streams of 64 MiB and 1 MiB zeros."""
    big, rest = divmod(size, 64 * _MiB)
    mid, small = divmod(rest, _MiB)
    parts = [lzma.compress(bytes(prefix) + bytes(small), format=lzma.FORMAT_XZ, preset=0)]
    parts += [_xz_zero_stream(64 * _MiB)] * big + [_xz_zero_stream(_MiB)] * mid
    return b"".join(parts)


def _chunked(size: int, byte: int, compressor: Any) -> bytes:
    """``size`` bytes equal to ``byte`` through a (zlib or lzma) compressor object, 1 MiB at a time."""
    block = bytes([byte]) * _MiB
    parts = [compressor.compress(block) for _ in range(size // _MiB)]
    return b"".join(parts) + compressor.compress(bytes([byte]) * (size % _MiB)) + compressor.flush()


def zlib_bomb(size: int, byte: int = 0) -> bytes:
    """A zlib stream of ``size`` bytes equal to ``byte`` (a whole number of MiB), built fast: one 1 MiB
    deflate segment ended by a full flush (byte-aligned, no back references across it) repeated, an
    empty final block and the Adler-32 of the whole."""
    block = bytes([byte]) * _MiB
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    n = size // _MiB
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    return (first + again * (n - 1) if n else first[:2]) + b"\x03\x00" + struct.pack(">I", adler)


def _alone_bomb(prefix: bytes, size: int) -> bytes:
    """A legacy ``.lzma`` (lzma-alone) stream of ``prefix`` + ``size`` zeros."""
    comp = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=0)
    return comp.compress(prefix) + _chunked(size, 0, comp)


def _array_prefix(dtype: str, shape: Sequence[int]) -> bytes:
    """The ``encode_array`` header (dtype code, ndim, dims) of an array, without its data."""
    return bytes((DTYPE_CODES[dtype], len(shape))) + struct.pack(f"<{len(shape)}I", *shape)


# ----------------------------------------------------------------------------------------------
# Mutation generation
# ----------------------------------------------------------------------------------------------


@dataclass
class _Case:
    """A file being mutated: version, header JSON value (or a verbatim header block) and sections."""

    version: int
    header: Any
    sections: List[List[Any]]
    """[name (str or bytes), payload] pairs."""
    block: Optional[bytes] = None
    """Stored header bytes to use instead of compressing ``header``."""

    def names(self) -> List[Any]:
        return [s[0] for s in self.sections]

    def get(self, name: str) -> bytes:
        return next(p for n, p in self.sections if n == name)

    def set(self, name: str, payload: bytes) -> None:
        for s in self.sections:
            if s[0] == name:
                s[1] = payload
                return
        raise KeyError(name)

    def build(self) -> bytes:
        block = self.block if self.block is not None else header_block(self.header)
        return write_raw(self.version, block, [(n, p) for n, p in self.sections])


@dataclass
class _Source:
    """The parsed source file that every case starts from."""

    version: int
    header: Dict[str, Any]
    sections: List[Tuple[str, bytes]]
    packing: str = field(init=False)

    def __post_init__(self) -> None:
        self.packing = str(self.header.get("codec", {}).get("packing", "raw"))

    def fresh(self) -> _Case:
        return _Case(self.version, copy.deepcopy(self.header), [[n, p] for n, p in self.sections])

    def names(self) -> List[str]:
        return [n for n, _ in self.sections]

    def packed(self, name: str) -> bool:
        int8_mlp = name == "mlp" and self.header.get("field", {}).get("mlp_bits", 16) == 8
        return self.packing == "lzma" and (name.startswith(_PACKED_PREFIXES) or int8_mlp)

    def level_count(self) -> int:
        return len(self.header.get("levels", []))


_Gen = Iterator[Tuple[str, _Case]]


def _leaves(value: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for k in sorted(value):
            yield from _leaves(value[k], path + (k,))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    else:
        yield path, value


def _containers(value: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    """Every dict and list in a JSON value (itself included), with its path."""
    if isinstance(value, (dict, list)):
        yield path, value
        items = sorted(value.items()) if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from _containers(v, path + (k,))


def _path_str(path: Sequence[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _get(value: Any, path: Sequence[Any]) -> Any:
    for p in path:
        value = value[p]
    return value


def _put(value: Any, path: Sequence[Any], new: Any) -> Any:
    """Set ``path`` in ``value`` (in place; returns the root, which changes for the empty path)."""
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


_BIG_DIGITS = _Raw("1" + "0" * 5000)
#: (label, value) boundary values for every header leaf.
_BOUNDARY: Tuple[Tuple[str, Any], ...] = (
    ("0", 0),
    ("-1", -1),
    ("1", 1),
    ("2", 2),
    ("2**31-1", 2**31 - 1),
    ("2**31", 2**31),
    ("2**32", 2**32),
    ("2**63", 2**63),
    ("-2**63", -(2**63)),
    ("1e308", 1e308),
    ("-1e308", -1e308),
    ("5e-324", 5e-324),
    ("1e-300", 1e-300),
    ("-0.0", -0.0),
    ("0.5", 0.5),
    ("10**400", 10**400),
    ("5000-digit int", _BIG_DIGITS),
    ("literal 1e999 (inf)", _Raw("1e999")),
    ("literal -1e999", _Raw("-1e999")),
    ("NaN", math.nan),
    ("Infinity", math.inf),
    ("-Infinity", -math.inf),
    ('""', ""),
    ("100k-char string", "A" * 100_000),
    ("null", None),
    ("true", True),
    ("false", False),
    ("[]", []),
    ("{}", {}),
)


def _type_swaps(value: Any) -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = [("wrapped in a list", [value]), ("wrapped in an object", {"v": value})]
    if isinstance(value, bool):
        out += [("bool as int", int(value)), ("bool as string", str(value).lower())]
    elif isinstance(value, int):
        out += [("int as string", str(value)), ("int as float", float(value)), ("int as bool", bool(value))]
    elif isinstance(value, float):
        out += [
            ("float as string", repr(value)),
            ("float as int", int(value) if math.isfinite(value) else 0),
            ("float as bool", bool(value)),
        ]
    elif isinstance(value, str):
        out += [
            ("string as int", 1),
            ("string upper-cased", value.upper() + "X"),
            ("string with a NUL", value + "\x00"),
            ("non-ASCII string", value + "\u00e9\u4e2d"),
        ]
    return out


def _shuffled(src: "_Source", rng: random.Random, cases: List[Tuple[str, Callable[["_Case"], Any]]]) -> _Gen:
    """The fixed cases of a family in a seeded random order, each applied to a fresh copy of the file."""
    rng.shuffle(cases)
    for desc, fn in cases:
        case = src.fresh()
        fn(case)
        yield desc, case


def _fam_header_leaf(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    leaves = list(_leaves(src.header))
    plan = [(p, label, v) for p, old in leaves for label, v in _BOUNDARY + tuple(_type_swaps(old))]
    rng.shuffle(plan)
    for path, label, value in plan:
        case = src.fresh()
        if label == "non-ASCII string":
            case.block = header_block(_put(case.header, path, value), ensure_ascii=False)
        else:
            case.header = _put(case.header, path, value)
        yield f"{_path_str(path)} = {label}", case
    while tail:
        path, old = leaves[rng.randrange(len(leaves))]
        kind = rng.randrange(4)
        if kind == 0:
            value = rng.choice((-1, 1)) * rng.randrange(2 ** rng.randrange(1, 70))
        elif kind == 1:
            value = rng.choice((-1, 1)) * 10.0 ** rng.uniform(-320, 308)
        elif kind == 2 and isinstance(old, (int, float)) and not isinstance(old, bool):
            value = old + rng.choice((-1, 1)) * rng.randrange(1, 1000)
        else:
            value = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 40)))
        case = src.fresh()
        case.header = _put(case.header, path, value)
        yield f"{_path_str(path)} = {value!r:.60} (random)", case


def _levels(res: Sequence[int], pad: Optional[int] = None, z: Optional[int] = None) -> List[Dict[str, Any]]:
    """Level shapes as the exporter writes them (planes padded to 64, z = padded / 64)."""
    out = []
    for r in res:
        p = pad if pad is not None else max(64, -(-r // 64) * 64)
        zz = z if z is not None else max(1, p // 64)
        out.append({"padded_shape": [p, p], "resolution": r, "z_shape": [zz, zz]})
    return out


def _grid_case(src: _Source, g: int, byte: int = 0xFF) -> _Case:
    """``grid_resolution = g`` with a matching (format-valid) grid section: g**3 bits of ``byte``."""
    case = src.fresh()
    case.header["render"]["grid_resolution"] = g
    case.set("grid", lzma2_bomb((g**3 + 7) // 8, byte))
    return case


def _repack(src: _Source, case: _Case, packing: str) -> None:
    """Store the codec parameter sections as ``packing`` says (consistently with the header)."""
    for s in case.sections:
        if isinstance(s[0], str) and s[0].startswith(_PACKED_PREFIXES):
            raw = unpack_smallest(s[1], 1 << 28) if src.packing == "lzma" else s[1]
            s[1] = pack_smallest(raw) if packing == "lzma" else raw


def _fam_header_structure(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    h = src.header
    res = list(h["field"]["resolutions"])
    nlev = len(res)
    C = h["field"]["channels"]
    cases: List[Tuple[str, Callable[[_Case], Any]]] = []

    def add(desc: str, fn: Callable[[_Case], Any]) -> None:
        cases.append((desc, fn))

    # keys removed / unknown keys added
    for path, obj in _containers(h):
        if isinstance(obj, dict):
            for key in sorted(obj):
                add(
                    f"remove key {_path_str(path + (key,))}",
                    lambda c, p=path, k=key: _get(c.header, p).pop(k),
                )
            add(
                f"add unknown key to {_path_str(path)}",
                lambda c, p=path: _get(c.header, p).__setitem__("zz_unknown", 1),
            )
    add("header is a JSON array", lambda c: setattr(c, "header", [c.header]))
    add("header is a JSON number", lambda c: setattr(c, "header", 1))
    add("header is JSON null", lambda c: setattr(c, "header", None))
    add(
        "header nested 100000 deep",
        lambda c: setattr(c, "block", zlib.compress(b"[" * 100000 + b"]" * 100000)),
    )
    add(
        "duplicate JSON key model_id",
        lambda c: setattr(c, "block", zlib.compress(b'{"model_id":"x",' + _dump_json(c.header)[1:])),
    )
    add(
        "header JSON with spaces (not canonical)",
        lambda c: setattr(c, "block", zlib.compress(json.dumps(c.header, indent=2).encode())),
    )
    add("header JSON over 1 MiB", lambda c: c.header.__setitem__("extra", [["pad", "A" * (1 << 20)]]))
    add("header zlib bomb (256 MiB of spaces)", lambda c: setattr(c, "block", zlib_bomb(256 * _MiB, 0x20)))
    add("header zlib stream truncated", lambda c: setattr(c, "block", header_block(c.header)[:-5]))
    add("header zlib stream + trailing bytes", lambda c: setattr(c, "block", header_block(c.header) + b"xyz"))
    add("header block empty", lambda c: setattr(c, "block", b""))
    add("header not zlib (plain JSON)", lambda c: setattr(c, "block", _dump_json(c.header)))
    add(
        "header JSON invalid (truncated text)",
        lambda c: setattr(c, "block", zlib.compress(_dump_json(c.header)[:-1])),
    )
    add(
        "header JSON in UTF-16",
        lambda c: setattr(c, "block", zlib.compress(json.dumps(c.header).encode("utf-16"))),
    )

    # levels
    lv = lambda c: c.header["levels"]  # noqa: E731
    add("levels truncated to the first", lambda c: c.header.__setitem__("levels", lv(c)[:1]))
    add("levels truncated to none", lambda c: c.header.__setitem__("levels", []))
    add("levels list duplicated", lambda c: c.header.__setitem__("levels", lv(c) + copy.deepcopy(lv(c))))
    add("levels reversed", lambda c: c.header.__setitem__("levels", lv(c)[::-1]))
    add(
        "levels reversed with field.resolutions",
        lambda c: (
            c.header.__setitem__("levels", lv(c)[::-1]),
            c.header["field"].__setitem__("resolutions", res[::-1]),
        ),
    )
    add(
        "levels and resolutions empty",
        lambda c: (c.header.__setitem__("levels", []), c.header["field"].__setitem__("resolutions", [])),
    )
    add(
        "levels duplicated with field.resolutions",
        lambda c: (
            c.header.__setitem__("levels", lv(c) + copy.deepcopy(lv(c))),
            c.header["field"].__setitem__("resolutions", res + res),
        ),
    )
    for n, r in ((15000, 64), (1000, 16), (64, 2048), (4, 65536)):
        add(
            f"{n} levels of R={r} (consistent)",
            lambda c, n=n, r=r: (
                c.header.__setitem__("levels", _levels([r] * n)),
                c.header["field"].__setitem__("resolutions", [r] * n),
            ),
        )
    add(
        "15000 levels of R=64 (field.resolutions unchanged)",
        lambda c: c.header.__setitem__("levels", _levels([64] * 15000)),
    )
    for new in (
        [r * 2 for r in res],
        [1] * nlev,
        [r + 1 for r in res],
        [65536] * nlev,
        [2**31 - 1] * nlev,
        [r // 2 for r in res],
    ):
        add(
            f"resolutions {new} (consistent, shapes kept)",
            lambda c, new=new: (
                c.header["field"].__setitem__("resolutions", new),
                [lvl.__setitem__("resolution", r) for lvl, r in zip(lv(c), new)],
            ),
        )
        add(
            f"resolutions {new} (consistent, shapes recomputed)",
            lambda c, new=new: (
                c.header["field"].__setitem__("resolutions", new),
                c.header.__setitem__("levels", _levels(new)),
            ),
        )
        add(
            f"field.resolutions {new} only",
            lambda c, new=new: c.header["field"].__setitem__("resolutions", new),
        )
        add(
            f"levels' resolutions {new} only",
            lambda c, new=new: [lvl.__setitem__("resolution", r) for lvl, r in zip(lv(c), new)],
        )
    for i in range(nlev):
        for z in ([0, 0], [1, 1], [2, 2], [1, 2], [64, 64], [2**31 - 1, 2**31 - 1], [1], [1, 1, 1], [-1, 1]):
            add(f"levels[{i}].z_shape = {z}", lambda c, i=i, z=z: lv(c)[i].__setitem__("z_shape", z))
        r = res[i]
        for p in (
            [r, r],
            [r - 1, r],
            [64, 128],
            [128, 128],
            [65536, 65536],
            [2**31 - 1, 2**31 - 1],
            [64, 64, 64],
            [r + 1, r + 1],
        ):
            add(
                f"levels[{i}].padded_shape = {p}", lambda c, i=i, p=p: lv(c)[i].__setitem__("padded_shape", p)
            )
        add(
            f"levels[{i}] padded 128 with z_shape 2 (consistent)",
            lambda c, i=i: lv(c)[i].update(padded_shape=[128, 128], z_shape=[2, 2]),
        )
    for ch in (1, C - 1, C + 1, C * 2, 1024, 2**31 - 1):
        add(f"field.channels = {ch}", lambda c, ch=ch: c.header["field"].__setitem__("channels", ch))
    for key, vals in (
        ("hidden_dim", (1, 65536)),
        ("geo_feat_dim", (1, 65536)),
        ("hidden_dim_color", (1, 65536)),
        ("sh_degree", (1, 2, 3)),
        ("reduce", ("sum",)),
    ):
        for v in vals:
            add(f"field.{key} = {v}", lambda c, k=key, v=v: c.header["field"].__setitem__(k, v))

    # codec flags
    cod = h["codec"]
    for flag in ("compensation", "adapt_heads"):
        add(f"codec.{flag} flipped", lambda c, f=flag: c.header["codec"].__setitem__(f, not cod[f]))
    add(
        "codec.compensation and adapt_heads flipped",
        lambda c: c.header["codec"].update(
            compensation=not cod["compensation"], adapt_heads=not cod["adapt_heads"]
        ),
    )
    other = "raw" if src.packing == "lzma" else "lzma"
    add(
        f"codec.packing = {other} (sections unchanged)",
        lambda c: c.header["codec"].__setitem__("packing", other),
    )
    add(
        f"codec.packing = {other} (sections re-packed, a valid file)",
        lambda c: (c.header["codec"].__setitem__("packing", other), _repack(src, c, other)),
    )
    add("codec.packing = zstd", lambda c: c.header["codec"].__setitem__("packing", "zstd"))
    for key in ("head_bits", "vector_bits"):
        for v in (2, 7, 1, 9):
            add(f"codec.{key} = {v}", lambda c, k=key, v=v: c.header["codec"].__setitem__(k, v))
    for g in (5e-324, 1e-300, 1e-38, 1e-6, 1e6, 1e38, 1e300, 1.7976931348623157e308):
        add(f"codec.latent_gain = {g:g}", lambda c, g=g: c.header["codec"].__setitem__("latent_gain", g))

    # backbone / model
    for key, value in (("architecture", "mbt2018-mean"), ("architecture", "cheng2020-anchor"),
                       ("sha256", "0" * 64), ("source", "zoo:bmshj2018-hyperprior/mse/q99"),
                       ("source", "../../etc/passwd")):
        add(f"backbone.{key} = {value[:40]}",
            lambda c, key=key, value=value: c.header["backbone"].__setitem__(key, value))
    add(
        "backbone.N and M doubled",
        lambda c: c.header["backbone"].update(
            N=c.header["backbone"]["N"] * 2, M=c.header["backbone"]["M"] * 2
        ),
    )
    add(
        "model_id = nerfcodec/triplane-v2",
        lambda c: c.header.__setitem__("model_id", "nerfcodec/triplane-v2"),
    )

    # cameras
    for model in (
        "UNKNOWN",
        "perspective",
        "FISHEYE",
        "EQUIRECTANGULAR",
        "OMNIDIRECTIONALSTEREO_L",
        "VR180_L",
        "ORTHOPHOTO",
        "FISHEYE624",
        "__class__",
    ):
        add(
            f"cameras.camera_model = {model}",
            lambda c, m=model: c.header["cameras"].__setitem__("camera_model", m),
        )
    for w, hh in ((1, 1), (1, 32), (2**31 - 1, 32), (32, 2**31 - 1), (2**31 - 1, 2**31 - 1), (65536, 65536)):
        add(
            f"cameras width x height = {w} x {hh}",
            lambda c, w=w, hh=hh: c.header["cameras"].update(width=w, height=hh),
        )
    for f in (5e-324, 1e-300, 1e300):
        add(f"cameras fx = fy = {f:g}", lambda c, f=f: c.header["cameras"].update(fx=f, fy=f))
    add("cameras cx, cy = 1e300", lambda c: c.header["cameras"].update(cx=1e300, cy=-1e300))
    add(
        "cameras.dataparser_transform all 1e308",
        lambda c: c.header["cameras"].__setitem__("dataparser_transform", [[1e308] * 4] * 3),
    )
    add(
        "cameras.dataparser_scale = 1e-300",
        lambda c: c.header["cameras"].__setitem__("dataparser_scale", 1e-300),
    )
    add(
        "cameras.dataparser_transform 4x4",
        lambda c: c.header["cameras"]["dataparser_transform"].append([0, 0, 0, 1]),
    )

    # render settings
    for g in (1, 2, 8, 64, 128, 256, 512, 1024, 2048):
        add(
            f"render.grid_resolution = {g} with a matching all-ones grid section",
            lambda c, g=g: _copy_into(c, _grid_case(src, g, 0xFF)),
        )
    add(
        "render.grid_resolution = 1 with a matching empty grid",
        lambda c: _copy_into(c, _grid_case(src, 1, 0)),
    )
    for g in (2**21, 2**21 + 1, 2**31 - 1, 1 << 11):
        add(
            f"render.grid_resolution = {g} (grid section unchanged)",
            lambda c, g=g: c.header["render"].__setitem__("grid_resolution", g),
        )
    for step in (5e-324, 1e-300, 1e-9, 1e300):
        add(
            f"render.render_step_size = {step:g}",
            lambda c, s=step: c.header["render"].__setitem__("render_step_size", s),
        )
    for box in (
        [-1e308] * 3 + [1e308] * 3,
        [0, 0, 0, 1e-300, 1e-300, 1e-300],
        [-1e-9] * 3 + [1e-9] * 3,
        [-1e6] * 3 + [1e6] * 3,
        [1.5] * 3 + [-1.5] * 3,
    ):
        add(f"render.aabb = {box}", lambda c, b=box: c.header["render"].__setitem__("aabb", b))
    for key, v in (
        ("near_plane", 1e300),
        ("alpha_thre", 1e300),
        ("alpha_thre", 0.0),
        ("early_stop_eps", 1e300),
        ("background", "random"),
        ("background", "last_sample"),
    ):
        add(f"render.{key} = {v}", lambda c, k=key, v=v: c.header["render"].__setitem__(k, v))

    # extra
    add("extra with a duplicate key", lambda c: c.header["extra"].extend(copy.deepcopy(c.header["extra"])))
    add(
        "extra with 20000 entries",
        lambda c: c.header.__setitem__("extra", [[f"k{i}", "v"] for i in range(20000)]),
    )
    add("extra entry of 3 items", lambda c: c.header["extra"].append(["a", "b", "c"]))
    add("extra as an object", lambda c: c.header.__setitem__("extra", {"codec_stage": "2"}))

    # format version
    def v1(c: _Case, packed_sections: bool) -> None:
        c.version = 1
        c.header["codec"].pop("packing", None)
        if not packed_sections:
            _repack(src, c, "raw")

    for ver in (0, 3, 255, 65535):
        add(f"format version {ver}", lambda c, v=ver: setattr(c, "version", v))
    add("format version 1 with codec.packing", lambda c: setattr(c, "version", 1))
    add("format version 1 without codec.packing, sections as stored", lambda c: v1(c, True))
    add("format version 1 without codec.packing, raw sections (a valid file)", lambda c: v1(c, False))

    yield from _shuffled(src, rng, cases)
    while tail:
        case = src.fresh()
        kind = rng.randrange(4)
        if kind == 0:
            n = rng.randrange(0, 40)
            r = rng.choice((1, 2, 16, 32, 64, 100, 128, 1000))
            case.header["levels"] = _levels([r] * n)
            case.header["field"]["resolutions"] = [r] * n
            desc = f"{n} levels of R={r} (random, consistent)"
        elif kind == 1:
            i = rng.randrange(nlev)
            z = [rng.randrange(0, 300), rng.randrange(0, 300)]
            p = [rng.randrange(1, 3000), rng.randrange(1, 3000)]
            case.header["levels"][i].update(z_shape=z, padded_shape=p)
            desc = f"levels[{i}] z_shape {z} padded_shape {p} (random)"
        elif kind == 2:
            ch = rng.randrange(1, 600)
            case.header["field"]["channels"] = ch
            desc = f"field.channels = {ch} (random)"
        else:
            g = rng.randrange(1, 5000)
            case.header["render"]["grid_resolution"] = g
            desc = f"render.grid_resolution = {g} (random, grid section unchanged)"
        yield desc, case


def _copy_into(dst: _Case, src: _Case) -> None:
    dst.version, dst.header, dst.sections, dst.block = src.version, src.header, src.sections, src.block


def _fam_sections(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    names = src.names()
    cases: List[Tuple[str, Callable[[_Case], Any]]] = []

    def add(desc: str, fn: Callable[[_Case], Any]) -> None:
        cases.append((desc, fn))

    def idx(c: _Case, name: str) -> int:
        return c.names().index(name)

    def rnd(n: int, salt: str) -> bytes:
        return random.Random(f"{rng.random()}/{salt}").randbytes(n)

    for name in names:
        add(f"remove section {name}", lambda c, n=name: c.sections.pop(idx(c, n)))
        add(
            f"duplicate section {name} (adjacent)",
            lambda c, n=name: c.sections.insert(idx(c, n), list(c.sections[idx(c, n)])),
        )
        add(
            f"duplicate section {name} (at the end)",
            lambda c, n=name: c.sections.append(list(c.sections[idx(c, n)])),
        )
        add(
            f"duplicate section {name} with other contents", lambda c, n=name: c.sections.append([n, b"\x00"])
        )
        for new in (
            f"x{name}",
            name.upper(),
            name + "\x00",
            name + " ",
            "",
            "\xff" + name,
            "n" * 65,
            name + "." + name,
        ):
            add(
                f"rename section {name} to {new!r:.40}",
                lambda c, n=name, new=new: c.sections[idx(c, n)].__setitem__(0, new),
            )
        add(f"truncate section {name} to 0 bytes", lambda c, n=name: c.set(n, b""))
        add(f"truncate section {name} to half", lambda c, n=name: c.set(n, c.get(n)[: len(c.get(n)) // 2]))
        add(f"truncate section {name} by 1 byte", lambda c, n=name: c.set(n, c.get(n)[:-1]))
        add(f"section {name} + 1 zero byte", lambda c, n=name: c.set(n, c.get(n) + b"\x00"))
        add(f"section {name} + 64 random bytes", lambda c, n=name: c.set(n, c.get(n) + rnd(64, n)))
        add(
            f"section {name} replaced by random bytes (same length)",
            lambda c, n=name: c.set(n, rnd(len(c.get(n)), n + "r")),
        )
        add(
            f"section {name} replaced by zeros (same length)",
            lambda c, n=name: c.set(n, bytes(len(c.get(n)))),
        )
        add(
            f"section {name} replaced by 0xff (same length)",
            lambda c, n=name: c.set(n, b"\xff" * len(c.get(n))),
        )
    for i, a in enumerate(names):
        for b in names[i + 1 :]:

            def swap(c: _Case, a: str = a, b: str = b) -> None:
                pa, pb = c.get(a), c.get(b)
                c.set(a, pb)
                c.set(b, pa)

            add(f"swap payloads of {a} and {b}", swap)
    add("sections in reverse order", lambda c: c.sections.reverse())
    add("sections sorted by name", lambda c: c.sections.sort(key=lambda s: s[0]))
    for k in range(3):
        add(f"sections shuffled (#{k})", lambda c, k=k: random.Random(k).shuffle(c.sections))
    add("no sections at all", lambda c: c.sections.clear())
    add("unknown section 'extra' (16 bytes)", lambda c: c.sections.append(["extra", bytes(16)]))
    add("unknown section first", lambda c: c.sections.insert(0, ["aaa", b"x"]))
    add("unknown section of 16 MiB", lambda c: c.sections.append(["blob", bytes(16 * _MiB)]))
    add(
        "65535 sections (unknown ones added)",
        lambda c: c.sections.extend([[f"u{i}", b""] for i in range(65535 - len(c.sections))]),
    )
    levels = src.level_count()
    for kind in ("y", "z", "norm", "vectors"):
        if f"{kind}.0" in names:
            add(
                f"section {kind}.{levels} for a level that does not exist",
                lambda c, k=kind: c.sections.append([f"{k}.{levels}", c.get(f"{k}.0")]),
            )
    yield from _shuffled(src, rng, cases)
    while tail:
        case = src.fresh()
        name = rng.choice(names)
        data = case.get(name)
        kind = rng.randrange(4)
        if kind == 0:
            n = rng.randrange(len(data) + 1)
            case.set(name, data[:n])
            desc = f"truncate section {name} to {n} of {len(data)} bytes (random)"
        elif kind == 1:
            n = rng.randrange(1, 4096)
            case.set(name, data + rng.randbytes(n))
            desc = f"section {name} + {n} random bytes (random)"
        elif kind == 2:
            a, b = sorted(rng.sample(range(len(data) + 1), 2)) if len(data) > 1 else (0, len(data))
            case.set(name, data[:a] + rng.randbytes(b - a) + data[b:])
            desc = f"section {name} bytes {a}..{b} randomised (random)"
        else:
            other = rng.choice([n for n in names if n != name])
            case.set(name, case.get(other))
            desc = f"section {name} holds the payload of {other} (random)"
        yield desc, case


def _flip(data: bytes, positions: Sequence[int], mask: int = 0xFF) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p] ^= mask
    return bytes(out)


def _fam_strings(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    names = [n for n in src.names() if re.fullmatch(r"[yz]\.\d+", n)]
    cases: List[Tuple[str, Callable[[List[bytes]], Any]]] = []
    raw_cases: List[Tuple[str, str, bytes]] = []

    def add(name: str, desc: str, fn: Callable[[List[bytes]], Any]) -> None:
        cases.append((name, f"{name}: {desc}", fn))

    for name in names:
        strings = decode_strings(src.sections[src.names().index(name)][1])
        for i, s in enumerate(strings):
            n = len(s)

            def put(v: Any, i: int = i) -> Callable[[List[bytes]], Any]:
                return lambda ss: ss.__setitem__(i, v(ss[i]) if callable(v) else v)

            add(name, f"string {i} emptied", put(b""))
            add(name, f"string {i} truncated to 1 byte", put(lambda x: x[:1]))
            add(name, f"string {i} truncated to half", put(lambda x: x[: len(x) // 2]))
            add(name, f"string {i} truncated by 1 byte", put(lambda x: x[:-1]))
            add(name, f"string {i} + 1 zero byte", put(lambda x: x + b"\x00"))
            add(name, f"string {i} + 4096 zero bytes", put(lambda x: x + bytes(4096)))
            add(
                name,
                f"string {i} + 64 random bytes",
                put(lambda x, k=f"{name}{i}": x + random.Random(k).randbytes(64)),
            )
            add(
                name,
                f"string {i} replaced by random bytes",
                put(lambda x, k=f"{name}{i}r": random.Random(k).randbytes(len(x))),
            )
            add(name, f"string {i} replaced by zeros", put(lambda x: bytes(len(x))))
            add(name, f"string {i} replaced by 0xff", put(lambda x: b"\xff" * len(x)))
            add(name, f"string {i} of 8 MiB zeros", put(bytes(8 * _MiB)))
            for pos in sorted({0, 1, n // 2, n - 1} & set(range(n))):
                add(name, f"string {i} byte {pos} flipped", put(lambda x, p=pos: _flip(x, [p])))
            add(name, f"string {i} every bit flipped", put(lambda x: _flip(x, range(len(x)))))
        add(name, "list shortened to 2", lambda ss: ss.pop())
        add(name, "list emptied", lambda ss: ss.clear())
        add(name, "list lengthened to 4 (first repeated)", lambda ss: ss.append(ss[0]))
        add(name, "list lengthened to 4 (empty string)", lambda ss: ss.append(b""))
        add(name, "list of 10000 empty strings", lambda ss: ss.extend([b""] * (10000 - len(ss))))
        add(name, "strings 0 and 2 swapped", lambda ss: ss.__setitem__(slice(None), [ss[2], ss[1], ss[0]]))
        raw_cases += [
            (name, f"{name}: non-canonical varint count", b"\x83\x00"),
            (name, f"{name}: 6-byte varint count", b"\xff\xff\xff\xff\xff\x01"),
            (name, f"{name}: count 2**32-1, no strings", b"\xff\xff\xff\xff\x0f"),
            (name, f"{name}: string length 2**32-1 with 10 bytes", b"\x01\xff\xff\xff\xff\x0f" + bytes(10)),
        ]
    plan: List[Tuple[str, str, Any]] = [(n, d, f) for n, d, f in cases] + [(n, d, p) for n, d, p in raw_cases]
    rng.shuffle(plan)
    for name, desc, how in plan:
        case = src.fresh()
        if isinstance(how, bytes):
            case.set(name, how)
        else:
            strings = decode_strings(case.get(name))
            how(strings)
            case.set(name, encode_strings(strings))
        yield desc, case
    while tail and names:
        case = src.fresh()
        name = rng.choice(names)
        strings = decode_strings(case.get(name))
        i = rng.randrange(len(strings))
        s = strings[i]
        kind = rng.randrange(3)
        if kind == 0 and s:
            k = rng.randrange(1, min(8, len(s)) + 1)
            pos = sorted(rng.sample(range(len(s)), k))
            strings[i] = _flip(s, pos, rng.randrange(1, 256))
            desc = f"{name}: string {i} bytes {pos} flipped (random)"
        elif kind == 1:
            n = rng.randrange(len(s) + 1)
            strings[i] = s[:n]
            desc = f"{name}: string {i} truncated to {n} of {len(s)} bytes (random)"
        else:
            n = rng.randrange(1, 2048)
            strings[i] = s + rng.randbytes(n)
            desc = f"{name}: string {i} + {n} random bytes (random)"
        case.set(name, encode_strings(strings))
        yield desc, case


def _array_sections(src: _Source) -> List[Tuple[str, str]]:
    """(name, kind) of every section holding arrays; kind: "single" (one ``encode_array``) or "list"."""
    out = []
    for name in src.names():
        if name.startswith("norm."):
            out.append((name, "single"))
        elif name == "mlp" or name.startswith(_PACKED_PREFIXES):
            out.append((name, "list"))
    return out


def _read_items(src: _Source, case: _Case, name: str, kind: str) -> List[bytes]:
    payload = case.get(name)
    if kind == "single":
        return [payload]
    if src.packed(name):
        payload = unpack_smallest(payload, 1 << 28)
    return decode_strings(payload)


def _write_items(src: _Source, case: _Case, name: str, kind: str, items: List[bytes]) -> None:
    if kind == "single" and len(items) == 1:
        case.set(name, items[0])
        return
    raw = encode_strings(items)
    case.set(name, pack_smallest(raw) if src.packed(name) else raw)


def _set_element(item: bytes, index: Optional[int], value: float) -> bytes:
    """An encoded array with element ``index`` (None: every element) set / scaled (``value`` as factor)."""
    arr = decode_array(item)
    flat = arr.reshape(-1)
    with np.errstate(all="ignore"):
        if index is None:  # scale everything
            if arr.dtype.kind == "f":
                flat[:] = (flat.astype(np.float64) * value).astype(arr.dtype)
            else:
                info = np.iinfo(arr.dtype)
                flat[:] = np.clip(flat.astype(np.float64) * value, info.min, info.max).astype(arr.dtype)
        else:
            flat[index] = np.array(value).astype(arr.dtype)
    return encode_array(arr)


def _with_shape(item: bytes, shape: Sequence[int], code: Optional[int] = None) -> bytes:
    """An encoded array's bytes with its dtype code and dims replaced (data bytes unchanged)."""
    ndim = item[1]
    data = item[2 + 4 * ndim :]
    return (
        bytes((item[0] if code is None else code, len(shape))) + struct.pack(f"<{len(shape)}I", *shape) + data
    )


def _fam_arrays(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    sections = _array_sections(src)
    plan: List[Tuple[str, str, str, Callable[[List[bytes]], Any]]] = []
    base = src.fresh()
    float_values = (
        ("NaN", math.nan),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("1e30", 1e30),
        ("0", 0.0),
        ("-1e30", -1e30),
        ("65504", 65504.0),
        ("1e-30", 1e-30),
    )
    int_values = (("0", 0), ("max", None), ("min", None))
    codes = sorted(set(DTYPE_CODES.values())) + [0, 7, 255]
    for name, kind in sections:
        items = _read_items(src, base, name, kind)
        for a, item in enumerate(items):
            arr = decode_array(item)
            shape = list(arr.shape)

            def on(fn: Callable[[bytes], bytes], a: int = a) -> Callable[[List[bytes]], Any]:
                return lambda its: its.__setitem__(a, fn(its[a]))

            where = f"{name}[{a}] {arr.dtype.name}{tuple(shape)}"
            positions = sorted({0, arr.size - 1, arr.size // 2}) if arr.size else []
            if arr.dtype.kind == "f":
                for label, v in float_values:
                    for p in positions[: 2 if label in ("NaN", "inf") else 1]:
                        plan.append(
                            (
                                name,
                                kind,
                                f"{where}: element {p} = {label}",
                                on(lambda x, p=p, v=v: _set_element(x, p, v)),
                            )
                        )
            else:
                info = np.iinfo(arr.dtype)
                for label, v in int_values:
                    v = info.max if label == "max" else info.min if label == "min" else v
                    for p in positions[:1]:
                        plan.append(
                            (
                                name,
                                kind,
                                f"{where}: element {p} = {label}",
                                on(lambda x, p=p, v=v: _set_element(x, p, v)),
                            )
                        )
            for factor in (1e6, -1.0, 0.0):
                plan.append(
                    (
                        name,
                        kind,
                        f"{where}: all elements x {factor:g}",
                        on(lambda x, f=factor: _set_element(x, None, f)),
                    )
                )
            for code in codes:
                if code != item[0]:
                    plan.append(
                        (
                            name,
                            kind,
                            f"{where}: dtype code {item[0]} -> {code}",
                            on(lambda x, c=code: _with_shape(x, list(decode_array(x).shape), c)),
                        )
                    )
            for d in range(len(shape)):
                for new in (shape[d] + 1, 0, 2**32 - 1, max(shape[d] - 1, 0)):
                    s = shape[:d] + [new] + shape[d + 1 :]
                    plan.append(
                        (name, kind, f"{where}: dim {d} = {new}", on(lambda x, s=s: _with_shape(x, s)))
                    )
            plan.append(
                (name, kind, f"{where}: flattened to 1-D", on(lambda x, n=arr.size: _with_shape(x, [n])))
            )
            plan.append(
                (name, kind, f"{where}: shape reversed", on(lambda x, s=shape[::-1]: _with_shape(x, s)))
            )
            plan.append((name, kind, f"{where}: 17 dims of 1", on(lambda x: _with_shape(x, [1] * 17))))
            plan.append((name, kind, f"{where}: 0-D", on(lambda x: _with_shape(x, []))))
            plan.append((name, kind, f"{where}: data + 2 bytes", on(lambda x: x + b"\x00\x00")))
            plan.append(
                (
                    name,
                    kind,
                    f"{where}: dims too large for numpy (data empty)",
                    on(lambda x: _with_shape(x, [2**32 - 1] * 4 + [0])[: 2 + 4 * 5]),
                )
            )
            if kind == "list":
                plan.append((name, kind, f"{where}: array dropped", lambda its, a=a: its.pop(a)))
                plan.append(
                    (name, kind, f"{where}: array duplicated", lambda its, a=a: its.insert(a, its[a]))
                )
        if kind == "list" and len(items) > 1:
            plan.append(
                (
                    name,
                    kind,
                    f"{name}: arrays 0 and 1 swapped",
                    lambda its: its.__setitem__(slice(0, 2), [its[1], its[0]]),
                )
            )
            plan.append((name, kind, f"{name}: no arrays", lambda its: its.clear()))
    rng.shuffle(plan)
    for name, kind, desc, fn in plan:
        case = src.fresh()
        items = _read_items(src, case, name, kind)
        fn(items)
        _write_items(src, case, name, kind, items)
        yield desc, case
    while tail and sections:
        case = src.fresh()
        name, kind = rng.choice(sections)
        items = _read_items(src, case, name, kind)
        a = rng.randrange(len(items))
        arr = decode_array(items[a])
        if not arr.size:
            continue
        p = rng.randrange(arr.size)
        if arr.dtype.kind == "f":
            v = rng.choice(
                (math.nan, math.inf, -math.inf, rng.uniform(-1, 1) * 10.0 ** rng.randrange(-40, 40))
            )
        else:
            info = np.iinfo(arr.dtype)
            v = rng.randrange(int(info.min), int(info.max) + 1)
        items[a] = _set_element(items[a], p, v)
        _write_items(src, case, name, kind, items)
        yield f"{name}[{a}] {arr.dtype.name}{arr.shape}: element {p} = {v!r} (random)", case


def _fam_bombs(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    names = src.names()
    cases: List[Tuple[str, Callable[[_Case], Any]]] = []

    def add(desc: str, fn: Callable[[_Case], Any]) -> None:
        cases.append((desc, fn))

    # camera poses: xz of an encode_array of float32 [N, 3, 4] zeros
    for n in (89478485, 22369621, 2**24, 10_000_000, 1_000_000):
        size = n * 48
        add(
            f"cameras: xz of float32 [{n}, 3, 4] zeros ({size / _GiB:.2f} GiB raw)",
            lambda c, n=n, s=size: c.set("cameras", xz_bomb(_array_prefix("float32", [n, 3, 4]), s)),
        )
    add(
        "cameras: xz of 4 GiB zeros, shape says [1, 3, 4]",
        lambda c: c.set("cameras", xz_bomb(_array_prefix("float32", [1, 3, 4]), 4 * _GiB)),
    )
    add(
        "cameras: xz of 16 GiB zeros, shape [1431655765, 3, 4] (array data over 64 GiB)",
        lambda c: c.set("cameras", xz_bomb(_array_prefix("float32", [1431655765, 3, 4]), 16 * _GiB)),
    )
    add("cameras: xz of 4 GiB zeros, no array header", lambda c: c.set("cameras", xz_bomb(b"", 4 * _GiB)))
    add(
        "cameras: xz of float32 [1, 3, 4] zeros + 4 GiB zeros after the array",
        lambda c: c.set("cameras", xz_bomb(_array_prefix("float32", [1, 3, 4]) + bytes(48), 4 * _GiB)),
    )
    for n in (89478485, 1_000_000):
        add(
            f"cameras: concatenated xz streams of float32 [{n}, 3, 4] zeros",
            lambda c, n=n: c.set("cameras", xz_concat_bomb(_array_prefix("float32", [n, 3, 4]), n * 48)),
        )
    add(
        "cameras: lzma-alone (.lzma) stream of float32 [1398101, 3, 4] zeros (64 MiB)",
        lambda c: c.set("cameras", _alone_bomb(_array_prefix("float32", [1398101, 3, 4]), 1398101 * 48)),
    )
    # packed parameter sections: 0x01 + raw LZMA2 expanding to hundreds of MiB
    for name in names:
        if name.startswith(_PACKED_PREFIXES):
            for size in (256 * _MiB, 768 * _MiB):

                def bomb(c: _Case, name: str = name, size: int = size) -> None:
                    c.set(name, b"\x01" + lzma2_bomb(size))
                    if src.packing != "lzma":
                        c.header["codec"]["packing"] = "lzma"

                add(f"{name}: packed, LZMA2 of {size // _MiB} MiB zeros", bomb)
    # occupancy grid: raw LZMA2 of packed bits, expanding hugely
    for size in (256 * _MiB, 2 * _GiB):
        add(
            f"grid: LZMA2 of {size // _MiB} MiB 0xff (grid_resolution unchanged)",
            lambda c, s=size: c.set("grid", lzma2_bomb(s, 0xFF)),
        )
    for g in (512, 1024, 2048, 4096):
        add(
            f"grid: grid_resolution {g} with a matching LZMA2 section of {(g**3 // 8) / _MiB:g} MiB 0xff",
            lambda c, g=g: _copy_into(c, _grid_case(src, g)),
        )
    # a big but honest plane: y string of zeros, and a header zlib bomb
    add("header: zlib of 1 GiB zeros", lambda c: setattr(c, "block", zlib_bomb(_GiB)))
    for desc, fn in cases:  # not shuffled: the cheap, most important ones first
        case = src.fresh()
        fn(case)
        yield desc, case
    while tail:
        case = src.fresh()
        kind = rng.randrange(3)
        if kind == 0:
            n = rng.randrange(1, 2**32)
            size = rng.choice((256 * _MiB, _GiB, 4 * _GiB))
            case.set("cameras", xz_bomb(_array_prefix("float32", [n, 3, 4]), size))
            desc = f"cameras: xz of {size // _MiB} MiB zeros, shape [{n}, 3, 4] (random)"
        elif kind == 1:
            packed = [n for n in names if n.startswith(_PACKED_PREFIXES)]
            if not packed:
                continue
            name = rng.choice(packed)
            size = rng.randrange(1, 1024) * _MiB
            case.set(name, b"\x01" + lzma2_bomb(size, rng.randrange(256)))
            case.header["codec"]["packing"] = "lzma"
            desc = f"{name}: packed, LZMA2 of {size // _MiB} MiB (random)"
        else:
            size = rng.randrange(1, 4096) * _MiB
            case.set("grid", lzma2_bomb(size, 0xFF))
            desc = f"grid: LZMA2 of {size // _MiB} MiB 0xff (random)"
        yield desc, case


def _fam_packing_marker(src: _Source, rng: random.Random, tail: bool) -> _Gen:
    names = [n for n in src.names() if n.startswith(_PACKED_PREFIXES)]
    cases: List[Tuple[str, Callable[[_Case], Any]]] = []

    def add(desc: str, fn: Callable[[_Case], Any]) -> None:
        cases.append((desc, fn))

    def for_name(name: str) -> None:  # a function per name: the closures below bind this name

        def packed_view(c: _Case) -> bytes:
            """The section as a ``pack_smallest`` payload (header switched to lzma for a raw source)."""
            if src.packing != "lzma":
                c.header["codec"]["packing"] = "lzma"
                return pack_smallest(c.get(name))
            return c.get(name)

        def unpacked(c: _Case) -> bytes:
            """The section's ``encode_strings`` bytes (header switched to lzma for a raw source)."""
            c.header["codec"]["packing"] = "lzma"
            return unpack_smallest(c.get(name), 1 << 28) if src.packing == "lzma" else c.get(name)

        def set_marker(c: _Case, m: int) -> None:
            p = packed_view(c)
            c.set(name, bytes((m,)) + p[1:])

        for m in (0x00, 0x01, 0x02, 0x80, 0xFF):
            add(f"{name}: packing marker -> 0x{m:02x}", lambda c, m=m: set_marker(c, m))
        add(f"{name}: packing marker removed", lambda c, n=name: c.set(n, packed_view(c)[1:]))
        add(f"{name}: marker only (1 byte)", lambda c, n=name: c.set(n, packed_view(c)[:1]))
        add(f"{name}: empty payload", lambda c, n=name: (packed_view(c), c.set(n, b"")))
        add(f"{name}: 0x01 + raw (unpacked) data", lambda c, n=name: c.set(n, b"\x01" + unpacked(c)))
        add(
            f"{name}: 0x00 + raw data (stored, a valid file)",
            lambda c, n=name: c.set(n, b"\x00" + unpacked(c)),
        )
        add(
            f"{name}: 0x01 + LZMA2 of the data (a valid file)",
            lambda c, n=name: c.set(n, b"\x01" + pack_lzma(unpacked(c))),
        )
        add(
            f"{name}: 0x01 + LZMA2 + trailing byte",
            lambda c, n=name: c.set(n, b"\x01" + pack_lzma(unpacked(c)) + b"\x00"),
        )
        add(
            f"{name}: 0x01 + xz container instead of raw LZMA2",
            lambda c, n=name: c.set(n, b"\x01" + lzma.compress(unpacked(c))),
        )
        add(
            f"{name}: packed payload, header says packing raw",
            lambda c, n=name: (c.set(n, packed_view(c)), c.header["codec"].__setitem__("packing", "raw")),
        )

    for name in names:
        for_name(name)
    plan = list(cases)
    rng.shuffle(plan)
    for desc, fn in plan:
        case = src.fresh()
        fn(case)
        yield desc, case
    while tail and names:
        case = src.fresh()
        name = rng.choice(names)
        m = rng.randrange(2, 256)
        p = case.get(name) if src.packing == "lzma" else pack_smallest(case.get(name))
        case.header["codec"]["packing"] = "lzma"
        k = rng.randrange(0, 3)
        case.set(name, bytes((m,)) + p[1 : len(p) - k])
        yield f"{name}: packing marker -> 0x{m:02x}, {k} bytes cut (random)", case


_FAMILY_GENS: Dict[str, Callable[[_Source, random.Random, bool], _Gen]] = {
    "header-leaf": _fam_header_leaf,
    "header-structure": _fam_header_structure,
    "sections": _fam_sections,
    "strings": _fam_strings,
    "arrays": _fam_arrays,
    "bombs": _fam_bombs,
    "packing-marker": _fam_packing_marker,
}


def _source(data: bytes) -> _Source:
    bs = unpack(data)  # the source must be a valid file
    version = _U16.unpack(bytes(data[4:6]))[0]
    header = json.loads(header_json(bs.header))
    if version < 2:
        header["codec"].pop("packing", None)
    return _Source(version, header, [(s.name, s.payload) for s in bs.sections])


def mutations(
    data: bytes, seed: int = 0, count: Optional[int] = None, families: Sequence[str] = FAMILIES
) -> Iterator[Mutation]:
    """Container-valid damaged copies of the scene file ``data`` (deterministic given ``seed``).

    Families are interleaved (4 header-leaf, 3 header-structure, 2 sections, 2 strings, 2 arrays,
    1 bomb, 1 packing-marker case per round), so any prefix of 15 or more cases covers every family
    (bombs come first in their family, cheapest and most important first; other families are
    shuffled by ``seed``). ``count=None``: each family's systematic cases (a finite list, about 3500
    to 4200 for the two-level tiny test file); ``count=N``: exactly N cases, families that run out of
    systematic cases go on with random variants. Duplicate files (and the unchanged source) are
    skipped. ``families``: a subset of :data:`FAMILIES`.
    """
    src = _source(data)
    unknown = [f for f in families if f not in _FAMILY_GENS]
    if unknown:
        raise ValueError(f"unknown mutation families {unknown} (known: {', '.join(FAMILIES)})")
    tail = count is not None
    gens = {f: _FAMILY_GENS[f](src, random.Random(f"{seed}/{f}"), tail) for f in families}
    seen = {hashlib.sha256(bytes(data)).digest()}
    stale = {f: 0 for f in families}
    produced = 0
    while gens and (count is None or produced < count):
        for fam in list(gens):
            for _ in range(_WEIGHTS.get(fam, 1)):
                if fam not in gens or (count is not None and produced >= count):
                    break
                try:
                    desc, case = next(gens[fam])
                except StopIteration:
                    del gens[fam]
                    break
                out = case.build()
                digest = hashlib.sha256(out).digest()
                if digest in seen:
                    stale[fam] += 1
                    if stale[fam] > 500:  # a family that only repeats itself: drop it
                        del gens[fam]
                    continue
                seen.add(digest)
                stale[fam] = 0
                yield Mutation(produced, fam, desc, out)
                produced += 1


# ----------------------------------------------------------------------------------------------
# Running one case in a forked child
# ----------------------------------------------------------------------------------------------


class CaseResult(NamedTuple):
    """How decoding one file went (see :data:`OUTCOMES`)."""

    outcome: str
    message: str
    """The error message (first 2000 characters) or a short note."""
    error_type: Optional[str]
    """Exception type name, or the signal name for a crash."""
    digest: Optional[str]
    """SHA-256 (hex) of the decoded planes + MLP + grid + poses bytes; None when nothing decoded."""
    wall_s: float
    """Wall-clock seconds of the child, fork to exit."""
    peak_rss_bytes: Optional[int]
    """The child's ``ru_maxrss`` (bytes, includes pages shared with the fork server); None if killed."""


Target = Callable[[Path, Optional[Path]], Any]
"""What a child runs: (path, weights) -> a DecodedScene (rendered and checked) or None (nothing to check)."""

_MEMORY_PATTERNS = (
    "can't allocate",
    "cannot allocate",
    "not enough memory",
    "defaultcpuallocator",
    "unable to allocate",
    "out of memory",
    "bad_alloc",
    "memoryerror",
    "failed to allocate",
)
_PREPARED = False


def _prepare_parent() -> None:
    """Import torch and the decoder once (the fork server); no torch compute here."""
    global _PREPARED
    if _PREPARED:
        return
    import torch  # noqa: F401

    import nerfcodec_ns.codec.plane  # noqa: F401  (lazily imported by decode_bitstream: import once here)
    import nerfcodec_ns.field.field  # noqa: F401
    import nerfcodec_ns.field.sampler  # noqa: F401
    import nerfcodec_ns.model  # noqa: F401
    import nerfcodec_ns.scenefile.decode  # noqa: F401
    from nerfstudio.cameras import cameras  # noqa: F401
    from nerfstudio.data import scene_box  # noqa: F401

    # what the decoder, model and renderer import lazily (compressai alone takes seconds)
    for name in (
        "compressai",
        "compressai.models",
        "compressai.models.utils",
        "compressai.models.base",
        "compressai.layers",
        "compressai.ops",
        "compressai.entropy_models",
        "compressai.zoo",
        "compressai.zoo.image",
        "compressai.ans",
        "nerfacc",
        "nerfcodec_ns.scenefile.export",
        "PIL.Image",
    ):
        try:
            importlib.import_module(name)
        except ImportError:  # optional parts (e.g. an extension not built): the child imports what it needs
            pass

    _PREPARED = True


def _vm_size(pid: Union[int, str] = "self") -> Optional[int]:
    """VmSize (bytes) of a process, from /proc; None when gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _is_memory_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(p in text for p in _MEMORY_PATTERNS)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return (text if text else type(exc).__name__)[:2000]


def _classify_exception(exc: BaseException, stage: str) -> Dict[str, Any]:
    from nerfcodec_ns.scenefile.decode import DecodeError

    name = type(exc).__name__
    if _is_memory_error(exc):
        return {"outcome": "memory", "message": f"{stage}: {_one_line(exc)}", "error_type": name}
    if stage == "decode" and isinstance(exc, (DecodeError, BitstreamError)):
        return {"outcome": "rejected", "message": _one_line(exc), "error_type": name}
    if stage == "decode":
        return {"outcome": "foreign-error", "message": _one_line(exc), "error_type": name}
    return {"outcome": "broken", "message": f"{stage}: {name}: {_one_line(exc)}", "error_type": name}


def _default_target(path: Path, weights: Optional[Path]) -> Any:
    from nerfcodec_ns.scenefile.decode import decode_file

    return decode_file(path, weights)


def _check_scene(scene: Any) -> Dict[str, Any]:
    """Digest, finiteness and one 16-px render of a decoded scene (in the child)."""
    import warnings

    import torch

    from nerfcodec_ns.scenefile.cameras import camera_batch
    from nerfcodec_ns.scenefile.decode import build_model

    h = hashlib.sha256()
    for t in list(scene.planes) + list(scene.mlp) + [scene.grid]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(scene.poses).tobytes())
    out: Dict[str, Any] = {"digest": h.hexdigest()}
    bad = [f"planes[{i}]" for i, p in enumerate(scene.planes) if not bool(torch.isfinite(p).all())]
    bad += [f"mlp[{i}]" for i, p in enumerate(scene.mlp) if not bool(torch.isfinite(p).all())]
    if not np.isfinite(scene.poses).all():
        bad.append("poses")
    if bad:
        out.update(
            outcome="broken", message="non-finite decoded values in " + ", ".join(bad[:8]), error_type=None
        )
        return out
    stage = "build_model"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(scene)
            stage = "render"
            cams = camera_batch(scene.header, scene.poses[:1], size=16)
            rgb = model.get_outputs_for_camera(cams[0:1])["rgb"]
    except Exception as exc:
        out.update(_classify_exception(exc, stage))
        return out
    if rgb.numel() == 0:
        out.update(outcome="broken", message=f"render: empty image {tuple(rgb.shape)}", error_type=None)
    elif not bool(torch.isfinite(rgb).all()):
        out.update(outcome="broken", message="render: non-finite rgb", error_type=None)
    else:
        out.update(outcome="decoded", message=f"rendered {tuple(rgb.shape)}", error_type=None)
    return out


def _child(path: Path, weights: Optional[Path], target: Target, wfd: int, as_limit: int, log: str) -> None:
    """The forked child: limits, decode, check, report JSON on ``wfd``; never returns."""
    code = 0
    try:
        import faulthandler

        faulthandler.disable()  # the parent's handler writes to the parent's terminal
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        import sys

        sys.stdout = open(1, "w", closefd=False)  # fresh file objects: no lock inherited from a thread
        sys.stderr = open(2, "w", closefd=False)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        import torch

        torch.set_num_threads(1)
        try:
            scene = target(path, weights)
        except Exception as exc:  # noqa: BLE001  (classifying every escape is the point)
            report = _classify_exception(exc, "decode")
        else:
            from nerfcodec_ns.scenefile.decode import DecodedScene

            try:
                if isinstance(scene, DecodedScene):
                    report = _check_scene(scene)
                else:
                    report = {"outcome": "decoded", "message": "target returned no scene", "error_type": None}
            except Exception as exc:  # noqa: BLE001
                report = _classify_exception(exc, "check")
        report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        payload = json.dumps(report).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(wfd, view) :]
    except BaseException:  # noqa: BLE001
        code = 3
    finally:
        os._exit(code)


def _log_tail(log: str, limit: int = 4000) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_case(
    path: Path,
    timeout_s: float = 60.0,
    memory_limit_bytes: int = _GiB,
    weights: Optional[Path] = None,
    target: Optional[Target] = None,
) -> CaseResult:
    """Decode ``path`` in a forked child and classify the outcome.

    The child's address space is limited to the parent's current size + ``memory_limit_bytes``; it is
    killed (SIGKILL) after ``timeout_s`` seconds. It runs ``target(path, weights)`` (default:
    ``decode_file``) and, when that returns a decoded scene, builds the model, renders the first camera
    at 16 px and checks that planes, MLP and image are finite. Call from the main thread of a process
    that has not run multi-threaded torch compute (the fork server: this imports torch once).
    """
    _prepare_parent()
    target = target or _default_target
    base = _vm_size() or 0
    as_limit = base + int(memory_limit_bytes)
    fd, log = tempfile.mkstemp(prefix="nfc-fuzz-", suffix=".log")
    os.close(fd)
    rfd, wfd = os.pipe()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child inherits one intra-op thread (and no OpenMP pool)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(rfd)
        _child(Path(path), weights, target, wfd, as_limit, log)
    torch.set_num_threads(threads)  # leave the caller's setting as it was
    os.close(wfd)
    chunks: List[bytes] = []
    deadline = t0 + timeout_s
    peak_vm = 0
    timed_out = False
    status = None
    try:
        eof = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not eof:
                ready, _, _ = select.select([rfd], [], [], min(remaining, 0.05))
                if ready:
                    chunk = os.read(rfd, 1 << 16)
                    if chunk:
                        chunks.append(chunk)
                    else:
                        eof = True
            else:
                time.sleep(min(remaining, 0.01))
            vm = _vm_size(pid)
            if vm is not None:
                peak_vm = max(peak_vm, vm)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                while True:  # drain what is left in the pipe
                    chunk = os.read(rfd, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                break
        if timed_out:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
    finally:
        os.close(rfd)
    wall = time.monotonic() - t0
    tail = _log_tail(log)
    os.unlink(log)
    if timed_out:
        return CaseResult("hang", f"no result after {timeout_s:g} s (killed)", None, None, wall, None)
    report: Optional[Dict[str, Any]] = None
    if chunks:
        try:
            report = json.loads(b"".join(chunks))
        except ValueError:
            report = None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            sig_name = signal.Signals(sig).name
        except ValueError:
            sig_name = str(sig)
        last = tail.strip().splitlines()[-1][:300] if tail.strip() else ""
        near = peak_vm >= base + 0.9 * memory_limit_bytes
        if near or any(p in tail.lower() for p in _MEMORY_PATTERNS):
            return CaseResult(
                "memory",
                f"killed by {sig_name} near the memory limit"
                f" (VmSize {peak_vm / _MiB:.0f} MiB seen) {last}".strip(),
                sig_name,
                None,
                wall,
                None,
            )
        return CaseResult(
            "crash", f"killed by {sig_name}" + (f": {last}" if last else ""), sig_name, None, wall, None
        )
    if report is None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        last = tail.strip().splitlines()[-1][:300] if tail.strip() else ""
        if any(p in tail.lower() for p in _MEMORY_PATTERNS):
            return CaseResult(
                "memory", f"exited with status {code} without reporting: {last}", None, None, wall, None
            )
        return CaseResult(
            "crash",
            f"exited with status {code} without reporting" + (f": {last}" if last else ""),
            None,
            None,
            wall,
            None,
        )
    return CaseResult(
        str(report["outcome"]),
        str(report.get("message", "")),
        report.get("error_type"),
        report.get("digest"),
        wall,
        report.get("peak_rss_bytes"),
    )


# ----------------------------------------------------------------------------------------------
# Campaign
# ----------------------------------------------------------------------------------------------


def campaign(
    source: Path,
    out_dir: Optional[Path] = None,
    count: int = 2000,
    seed: int = 0,
    timeout_s: float = 60.0,
    memory_limit_bytes: int = _GiB,
    progress: bool = False,
    weights: Optional[Path] = None,
    report_name: str = "fuzz_campaign.json",
    keep_failures: bool = False,
    families: Sequence[str] = FAMILIES,
) -> Dict[str, Any]:
    """Fuzz the decoder with ``count`` mutations of ``source`` and return a JSON-able report.

    Every case is written to a temporary folder, decoded by :func:`run_case` and deleted; cases that
    decode (``decoded`` or ``broken``) are decoded a second time in a fresh child and become
    ``nondeterministic`` when the digests differ. The report: settings, the unmodified source's
    outcome (``baseline``), totals per outcome and per family, and every case whose outcome is not
    ``rejected``/``decoded`` (``failures``). With ``out_dir`` it is also written to
    ``out_dir/report_name``; ``keep_failures`` copies the failing files to ``out_dir/failures/``.
    """
    source = Path(source)
    data = source.read_bytes()
    t_start = time.monotonic()
    baseline = run_case(source, timeout_s, memory_limit_bytes, weights)
    totals = {o: 0 for o in OUTCOMES}
    per_family: Dict[str, Dict[str, int]] = {f: {o: 0 for o in OUTCOMES} for f in families}
    failures: List[Dict[str, Any]] = []
    slowest: List[Tuple[float, int]] = []
    max_rss = 0
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("[bold]fuzz"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            auto_refresh=False,
        )  # no refresh thread while forking
        bar.start()
        task = bar.add_task("", total=count)
    fail_dir = Path(out_dir) / "failures" if (out_dir is not None and keep_failures) else None
    if fail_dir is not None:
        fail_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="nfc-fuzz-") as tmp:
            for m in mutations(data, seed, count, families):
                path = Path(tmp) / f"case-{m.id:05d}.nfc"
                path.write_bytes(m.data)
                res = run_case(path, timeout_s, memory_limit_bytes, weights)
                outcome, message = res.outcome, res.message
                if outcome in ("decoded", "broken"):
                    again = run_case(path, timeout_s, memory_limit_bytes, weights)
                    if again.digest != res.digest or again.outcome != res.outcome:
                        message = (
                            f"first run {res.outcome} digest {str(res.digest)[:16]}, second run "
                            f"{again.outcome} digest {str(again.digest)[:16]} ({again.message[:200]})"
                        )
                        outcome = "nondeterministic"
                totals[outcome] += 1
                per_family[m.family][outcome] += 1
                max_rss = max(max_rss, res.peak_rss_bytes or 0)
                slowest = sorted(slowest + [(res.wall_s, m.id)], reverse=True)[:5]
                if outcome not in GOOD_OUTCOMES:
                    failures.append(
                        {
                            "id": m.id,
                            "family": m.family,
                            "description": m.description,
                            "outcome": outcome,
                            "error_type": res.error_type,
                            "message": message,
                            "wall_s": round(res.wall_s, 3),
                            "peak_rss_bytes": res.peak_rss_bytes,
                            "file_bytes": len(m.data),
                        }
                    )
                    if fail_dir is not None:
                        (fail_dir / f"case-{m.id:05d}-{m.family}.nfc").write_bytes(m.data)
                path.unlink()
                if bar is not None:
                    bad = sum(totals[o] for o in OUTCOMES if o not in GOOD_OUTCOMES)
                    bar.update(task, advance=1, description=f"{bad} failing, last: {m.family} -> {outcome}")
                    bar.refresh()
    finally:
        if bar is not None:
            bar.stop()
    report = {
        "source": str(source),
        "source_bytes": len(data),
        "seed": seed,
        "count": sum(totals.values()),
        "timeout_s": timeout_s,
        "memory_limit_bytes": int(memory_limit_bytes),
        "weights": str(weights) if weights is not None else None,
        "baseline": {
            "outcome": baseline.outcome,
            "message": baseline.message,
            "wall_s": round(baseline.wall_s, 3),
        },
        "wall_s": round(time.monotonic() - t_start, 1),
        "max_peak_rss_bytes": max_rss,
        "slowest_cases": [{"id": i, "wall_s": round(w, 3)} for w, i in slowest],
        "totals": totals,
        "families": per_family,
        "failures": failures,
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / report_name).write_text(json.dumps(report, indent=1) + "\n", "utf8")
    return report
