"""The container format of a compressed scene file (``SCENE.nfc``), independent of torch.

A file is a small typed :class:`Header` (everything a decoder needs besides the big payloads) and
a tuple of named binary :class:`Section` s (entropy-coded strings, quantised weights, camera
poses). This module only packs, unpacks and reads the container; filling it from a trained model and
decoding it back live elsewhere. The byte layout, header fields and error messages are documented
in ``docs/bitstream.md``.

Byte layout (all integers little-endian)::

    magic "NFC\\0" | u16 version | u32 header length | header | u32 CRC32(header)
    | u16 section count | per section: u8 name length | name | u32 payload length | payload
    | u32 CRC32(name + payload)

The header (canonical JSON compressed with zlib) is :mod:`~nerfcodec_ns.scenefile.header`, the
section payloads are :mod:`~nerfcodec_ns.scenefile.payload`. Every reader error is a
:class:`~nerfcodec_ns.scenefile.header.BitstreamError` with a one-line message; :func:`unpack`
never reads or allocates more than the data it was given. Files are written with
:func:`nerfcodec_ns.atomic.write_atomic`.

This module must not import torch (tested): it is loaded by tools that only inspect files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from nerfcodec_ns.scenefile.header import (
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    MAX_U32,
    READABLE_VERSIONS,
    BitstreamError,
    Header,
    check_sequence,
    decode_header,
    encode_header,
    short_repr,
)
from nerfcodec_ns.scenefile.payload import U16, U32, ByteReader, as_bytes_view

MAGIC = b"NFC\x00"
MAX_SECTIONS = 0xFFFF
MAX_SECTION_NAME = 64

# Fixed-overhead entries of section_sizes(); they contain a space, which section names cannot.
SIZE_MAGIC_VERSION = "magic + version"
SIZE_HEADER = "header block"
SIZE_SECTION_COUNT = "section count"

_SECTION_NAME_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_SECTION_NAME)


# ----------------------------------------------------------------------------------------------
# Sections and the whole file
# ----------------------------------------------------------------------------------------------


def _check_section_name(name: Any) -> str:
    if not isinstance(name, str) or not _SECTION_NAME_RE.fullmatch(name):
        raise BitstreamError(
            f"invalid section name {short_repr(name)}: expected 1..{MAX_SECTION_NAME} printable ASCII characters"
            " without spaces"
        )
    return name


@dataclass(frozen=True)
class Section:
    """A named binary payload. Names: 1..64 printable ASCII characters, no spaces."""

    name: str
    payload: bytes = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"Section(name={self.name!r}, payload=<{len(self.payload)} bytes>)"

    def __post_init__(self) -> None:
        _check_section_name(self.name)
        if isinstance(self.payload, (bytearray, memoryview)):
            object.__setattr__(self, "payload", bytes(self.payload))
        if not isinstance(self.payload, bytes):
            kind = type(self.payload).__name__
            raise BitstreamError(f"section '{self.name}': payload must be bytes, got {kind}")
        if len(self.payload) > MAX_U32:
            raise BitstreamError(f"section '{self.name}': payload of {len(self.payload)} bytes is over 4 GiB")


@dataclass(frozen=True)
class Bitstream:
    """A decoded scene file: the header and the sections in file order (names unique)."""

    header: Header
    sections: Tuple[Section, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise BitstreamError(f"Bitstream.header must be a Header, got {type(self.header).__name__}")
        sections = check_sequence("Bitstream", "sections", self.sections)
        seen = set()
        for s in sections:
            if not isinstance(s, Section):
                raise BitstreamError(f"Bitstream.sections must hold Section objects, got {type(s).__name__}")
            if s.name in seen:
                raise BitstreamError(f"duplicate section '{s.name}'")
            seen.add(s.name)
        if len(sections) > MAX_SECTIONS:
            raise BitstreamError(f"too many sections: {len(sections)} (at most {MAX_SECTIONS})")
        object.__setattr__(self, "sections", sections)

    @property
    def names(self) -> Tuple[str, ...]:
        """Section names in file order."""
        return tuple(s.name for s in self.sections)

    def has_section(self, name: str) -> bool:
        return any(s.name == name for s in self.sections)

    def section(self, name: str) -> bytes:
        """The payload of section ``name``; ``BitstreamError("missing section 'name'")`` if absent."""
        for s in self.sections:
            if s.name == name:
                return s.payload
        raise BitstreamError(f"missing section '{name}'")


def _crc(*parts: bytes) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc & MAX_U32


def pack(bs: Bitstream) -> bytes:
    """The bytes of ``bs`` (deterministic: equal bitstreams give equal bytes)."""
    if not isinstance(bs, Bitstream):
        raise BitstreamError(f"pack expects a Bitstream, got {type(bs).__name__}")
    header = encode_header(bs.header)
    out = [MAGIC, U16.pack(FORMAT_VERSION), U32.pack(len(header)), header, U32.pack(_crc(header)),
           U16.pack(len(bs.sections))]
    for s in bs.sections:
        name = s.name.encode("ascii")
        crc = _crc(name, s.payload)
        out += [bytes((len(name),)), name, U32.pack(len(s.payload)), s.payload, U32.pack(crc)]
    return b"".join(out)


def _parse(data: Any) -> Tuple[Bitstream, Dict[str, int]]:
    """Parse and validate a whole file; returns the bitstream and the byte count of every part."""
    view = as_bytes_view(data)
    if len(view) == 0:
        raise BitstreamError("empty file (0 bytes): not a NeRFCodec scene file")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise BitstreamError(f"bad magic {short_repr(head)}: not a NeRFCodec scene file (expected {MAGIC!r})")
    r = ByteReader(view)
    r.take(len(MAGIC), "magic")
    version = r.u16("format version")
    if version not in READABLE_VERSIONS:
        known = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise BitstreamError(f"unsupported format version {version} (this reader knows {known})")
    sizes = {SIZE_MAGIC_VERSION: r.pos}

    start = r.pos
    header_bytes = bytes(r.take(r.u32("header length"), "header"))
    if r.u32("header CRC") != _crc(header_bytes):
        raise BitstreamError("header is corrupt (CRC mismatch)")
    sizes[SIZE_HEADER] = r.pos - start

    count = r.u16("section count")
    sizes[SIZE_SECTION_COUNT] = 2
    sections = []
    for i in range(count):
        start = r.pos
        name_len = r.u8(f"section #{i} name length")
        if not 1 <= name_len <= MAX_SECTION_NAME:
            raise BitstreamError(f"section #{i}: name length {name_len} is not in 1..{MAX_SECTION_NAME}")
        raw_name = bytes(r.take(name_len, f"section #{i} name"))
        try:
            name = _check_section_name(raw_name.decode("ascii"))
        except (UnicodeDecodeError, BitstreamError):
            raise BitstreamError(
                f"section #{i}: invalid name {short_repr(raw_name)} (expected printable ASCII without spaces)"
            ) from None
        payload = bytes(r.take(r.u32(f"section '{name}' payload length"), f"section '{name}' payload"))
        if r.u32(f"section '{name}' CRC") != _crc(raw_name, payload):
            raise BitstreamError(f"section '{name}' is corrupt (CRC mismatch)")
        if name in sizes:  # earlier section names (fixed entries contain a space, names cannot)
            raise BitstreamError(f"duplicate section '{name}'")
        sections.append(Section(name, payload))
        sizes[name] = r.pos - start
    if r.left:
        plural = "s" if r.left != 1 else ""
        raise BitstreamError(f"trailing bytes: {r.left} byte{plural} after the last section")
    return Bitstream(decode_header(header_bytes, version), tuple(sections)), sizes


def unpack(data: Union[bytes, bytearray, memoryview]) -> Bitstream:
    """Read a file written by :func:`pack`, validating everything (see docs/bitstream.md)."""
    return _parse(data)[0]


def section_sizes(data: Union[bytes, bytearray, memoryview]) -> Dict[str, int]:
    """Bytes of every part of a (valid) file, in file order; the values sum to ``len(data)``.

    Entries: ``"magic + version"`` (6), ``"header block"`` (length field + compressed header + CRC),
    ``"section count"`` (2), then one entry per section under its own name, framing included
    (1 + len(name) + 4 + len(payload) + 4). Section names never contain a space, so they cannot
    collide with the fixed entries. Raises the same errors as :func:`unpack`.
    """
    return _parse(data)[1]


def section_framing(name: str) -> int:
    """Bytes a section named ``name`` adds on top of its payload: name length, name, length, CRC."""
    return 1 + len(_check_section_name(name)) + 4 + 4


def read_file(path: Union[str, os.PathLike]) -> Bitstream:
    """Read and validate a scene file; errors name the path (one line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a scene file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BitstreamError(f"{path}: {size} bytes is more than a scene file may have ({MAX_FILE_BYTES})")
    try:
        return unpack(path.read_bytes())
    except BitstreamError as exc:
        raise BitstreamError(f"{path}: {exc}") from None
