"""Scene-file format, part 2: the payloads of sections (no torch).

Arrays (:func:`encode_array`: dtype code, shape, little-endian data), lists of byte strings
(:func:`encode_strings`: LEB128 varint counts and lengths), lossless packing (:func:`pack_lzma`,
:func:`pack_smallest`) and bit masks (:func:`encode_bits`, the occupancy grid). Every decoder here
is bounded: it never reads past its input nor produces more than the caller allows, and every
error is a one-line :class:`~nerfcodec_ns.scenefile.header.BitstreamError`.
"""

from __future__ import annotations

import lzma
import math
import struct
from typing import Any, List, Sequence, Union

import numpy as np

from nerfcodec_ns.scenefile.header import MAX_U32, BitstreamError

U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


class ByteReader:
    """A cursor over a file or payload that never reads past its end (an overrun is a
    'truncated' error)."""

    def __init__(self, data: memoryview, kind: str = "file") -> None:
        self.data = data
        self.kind = kind
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left:
            raise BitstreamError(f"truncated {self.kind}: {what} needs {n} bytes, {self.left} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return U16.unpack(self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return U32.unpack(self.take(4, what))[0]


def as_bytes_view(data: Any) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return memoryview(data).cast("B")


#: dtype code byte of encode_array (an allow-list; codes are part of the format).
DTYPE_CODES = {"int8": 1, "uint8": 2, "int16": 3, "int32": 4, "float16": 5, "float32": 6, "uint16": 7}
_CODE_DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
MAX_ARRAY_NDIM = 16


def encode_array(arr: np.ndarray) -> bytes:
    """``u8 dtype code | u8 ndim | ndim x u32 dims | data`` (C order, little-endian)."""
    if not isinstance(arr, np.ndarray):
        raise BitstreamError(f"encode_array expects a numpy array, got {type(arr).__name__}")
    name = arr.dtype.name
    if name not in DTYPE_CODES or arr.dtype.kind not in "iuf":
        raise BitstreamError(f"unsupported array dtype {arr.dtype} (allowed: {', '.join(DTYPE_CODES)})")
    if arr.ndim > MAX_ARRAY_NDIM or any(d > MAX_U32 for d in arr.shape):
        raise BitstreamError(f"unsupported array shape {arr.shape} (at most {MAX_ARRAY_NDIM} dims < 2**32)")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return bytes((DTYPE_CODES[name], arr.ndim)) + struct.pack(f"<{arr.ndim}I", *arr.shape) + data


def decode_array(payload: Union[bytes, bytearray, memoryview]) -> np.ndarray:
    """Inverse of :func:`encode_array`: a new, writable, native-endian array."""
    r = ByteReader(as_bytes_view(payload), "array")
    code = r.u8("dtype code")
    if code not in _CODE_DTYPES:
        raise BitstreamError(f"array: unknown dtype code {code}")
    dtype = _CODE_DTYPES[code]
    ndim = r.u8("ndim")
    if ndim > MAX_ARRAY_NDIM:
        raise BitstreamError(f"array: {ndim} dimensions, at most {MAX_ARRAY_NDIM} supported")
    shape = struct.unpack(f"<{ndim}I", r.take(4 * ndim, "shape"))
    count = math.prod(shape)
    if count * dtype.itemsize != r.left:
        raise BitstreamError(
            f"array: shape {tuple(shape)} of {dtype.name} needs {count * dtype.itemsize} data bytes,"
            f" got {r.left}"
        )
    try:
        flat = np.frombuffer(r.take(r.left, "data"), dtype=dtype.newbyteorder("<"), count=count)
        return flat.astype(dtype).reshape(shape)  # astype copies: writable, native byte order
    except ValueError as exc:  # e.g. a zero-size array whose shape overflows numpy's size limit
        raise BitstreamError(f"array: shape {tuple(shape)} is not supported ({exc})") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(r: ByteReader, what: str) -> int:
    value = shift = 0
    for i in range(5):
        byte = r.u8(what)
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if (byte == 0 and i > 0) or value > MAX_U32:
                raise BitstreamError(f"strings: {what} is not a canonical u32 varint")
            return value
        shift += 7
    raise BitstreamError(f"strings: {what} is longer than 5 bytes")


def encode_strings(strings: Sequence[bytes]) -> bytes:
    """``varint count | per string: varint length | bytes`` (LEB128 varints, at most u32)."""
    if isinstance(strings, (bytes, bytearray, str)):
        raise BitstreamError("encode_strings expects a list of bytes, not a single string")
    items = list(strings)
    out = [_varint(len(items))]
    for i, s in enumerate(items):
        if not isinstance(s, (bytes, bytearray, memoryview)):
            raise BitstreamError(f"encode_strings: item {i} is {type(s).__name__}, not bytes")
        s = bytes(s)
        if len(s) > MAX_U32:
            raise BitstreamError(f"encode_strings: item {i} is over 4 GiB")
        out += [_varint(len(s)), s]
    return b"".join(out)


def decode_strings(payload: Union[bytes, bytearray, memoryview]) -> List[bytes]:
    """Inverse of :func:`encode_strings`; the payload must end exactly after the last string."""
    r = ByteReader(as_bytes_view(payload), "strings")
    count = _read_varint(r, "string count")
    if count > r.left:  # every string takes at least its 1-byte length
        raise BitstreamError(f"truncated strings: {count} strings need at least {count} bytes, {r.left} left")
    out = [bytes(r.take(_read_varint(r, f"string #{i} length"), f"string #{i}")) for i in range(count)]
    if r.left:
        raise BitstreamError(f"strings: {r.left} trailing bytes after {count} strings")
    return out


# ----------------------------------------------------------------------------------------------
# Lossless packing (raw LZMA2) and bit masks (the occupancy grid)
# ----------------------------------------------------------------------------------------------

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]


def pack_lzma(data: bytes) -> bytes:
    """``data`` compressed with raw LZMA2 (no container header: the filters are fixed here)."""
    return lzma.compress(bytes(data), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def decompress_at_most(dec: lzma.LZMADecompressor, payload: Union[bytes, bytearray, memoryview],
                       max_size: int, what: str, too_long: str = "", stream: str = "LZMA") -> bytes:
    """All of ``payload`` through a fresh decompressor ``dec``, producing at most ``max_size`` bytes:
    a longer, broken, incomplete or trailing stream is a :class:`BitstreamError` naming ``what``
    (``too_long``: what to say of a longer one; ``stream``: the stream's name in messages)."""
    try:
        raw = dec.decompress(bytes(payload), max_length=max_size + 1)
    except lzma.LZMAError as err:
        raise BitstreamError(f"corrupt {what}: {err}") from None
    if len(raw) > max_size:
        raise BitstreamError(f"corrupt {what}: {too_long or f'unpacks to more than {max_size} bytes'}")
    if not dec.eof or dec.unused_data:
        raise BitstreamError(f"corrupt {what}: incomplete or trailing {stream} data")
    return raw


def unpack_lzma(payload: Union[bytes, bytearray, memoryview], max_size: int, what: str = "payload") -> bytes:
    """Inverse of :func:`pack_lzma`. Never produces more than ``max_size`` bytes: a longer or broken
    stream is a :class:`BitstreamError` naming ``what``."""
    return decompress_at_most(lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS), payload,
                              max_size, what)


def pack_smallest(data: bytes) -> bytes:
    """``data`` with a 1-byte marker: ``0x01`` + :func:`pack_lzma` (data) when that is smaller, else
    ``0x00`` + data (incompressible data costs one byte, never more)."""
    data = bytes(data)
    packed = pack_lzma(data)
    return b"\x01" + packed if len(packed) < len(data) else b"\x00" + data


def unpack_smallest(payload: Union[bytes, bytearray, memoryview], max_size: int, what: str = "payload") -> bytes:
    """Inverse of :func:`pack_smallest`, producing at most ``max_size`` bytes."""
    payload = bytes(payload)
    if not payload or payload[0] not in (0, 1):
        raise BitstreamError(f"corrupt {what}: unknown packing marker {payload[:1].hex() or 'missing'}")
    if payload[0] == 1:
        return unpack_lzma(payload[1:], max_size, what)
    if len(payload) - 1 > max_size:
        raise BitstreamError(f"corrupt {what}: more than {max_size} bytes")
    return payload[1:]


def encode_bits(mask: np.ndarray) -> bytes:
    """A boolean array as packed bits (C order, most significant bit first) compressed with raw
    LZMA2. The shape is not stored: the reader must know it (``decode_bits``)."""
    return pack_lzma(np.packbits(np.ascontiguousarray(mask, dtype=bool).reshape(-1)).tobytes())


def decode_bits(payload: Union[bytes, bytearray, memoryview], shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_bits` for a mask of ``shape``; refuses any other length."""
    count = int(np.prod([int(s) for s in shape], dtype=np.int64))
    expected = (count + 7) // 8
    raw = unpack_lzma(payload, expected, "bit mask")
    if len(raw) != expected:
        raise BitstreamError(f"corrupt bit mask: expected {expected} bytes for shape {tuple(shape)}")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count).astype(bool).reshape(tuple(shape))
