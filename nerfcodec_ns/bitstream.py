"""The container format of a compressed scene file (``SCENE.nfc``), independent of torch.

A file is a small typed :class:`Header` (everything a decoder needs besides the big payloads) and
a tuple of named binary :class:`Section` s (entropy-coded strings, quantised weights, camera
poses). This module only packs and unpacks the container; filling it from a trained model and
decoding it back live elsewhere. The byte layout, header fields and error messages are documented
in ``docs/bitstream.md``.

Byte layout (all integers little-endian)::

    magic "NFC\\0" | u16 version | u32 header length | header | u32 CRC32(header)
    | u16 section count | per section: u8 name length | name | u32 payload length | payload
    | u32 CRC32(name + payload)

The header is canonical JSON (sorted keys, no spaces, ASCII) compressed with zlib. Every reader
error is a :class:`BitstreamError` with a one-line message; :func:`unpack` never reads or allocates
more than the data it was given.

This module must not import torch (tested): it is loaded by tools that only inspect files.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import math
import numbers
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "MAGIC",
    "MAX_FILE_BYTES",
    "MAX_LEVELS",
    "MAX_RESOLUTION",
    "MAX_CHANNELS",
    "MAX_PLANE_VALUES",
    "MAX_LATENT_SYMBOLS",
    "MAX_BACKBONE_CHANNELS",
    "MAX_MLP_WIDTH",
    "MAX_GRID_RESOLUTION",
    "MAX_CAMERAS",
    "MIN_IMAGE_SIDE",
    "MAX_IMAGE_SIDE",
    "MAX_SAMPLES_PER_RAY",
    "MAX_MAGNITUDE",
    "MIN_FOCAL",
    "MIN_LATENT_GAIN",
    "MAX_LATENT_GAIN",
    "CAMERA_MODELS",
    "limits",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "PACKINGS",
    "pack_lzma",
    "unpack_lzma",
    "pack_smallest",
    "unpack_smallest",
    "MODEL_ID",
    "ARCHITECTURES",
    "BitstreamError",
    "BackboneId",
    "FieldArch",
    "LevelShape",
    "CodecSettings",
    "RenderSettings",
    "CameraSet",
    "Header",
    "Section",
    "Bitstream",
    "header_json",
    "encode_header",
    "decode_header",
    "encode_array",
    "decode_array",
    "encode_strings",
    "decode_strings",
    "pack",
    "unpack",
    "section_sizes",
    "section_framing",
    "SIZE_MAGIC_VERSION",
    "SIZE_HEADER",
    "SIZE_SECTION_COUNT",
    "DTYPE_CODES",
    "write_atomic",
    "read_file",
]

MAGIC = b"NFC\x00"
FORMAT_VERSION = 2
"""Version this writer writes. 2 added ``CodecSettings.packing`` (packed parameter sections)."""
READABLE_VERSIONS = (1, 2)
"""Versions this reader reads (a version-1 file has raw parameter sections only)."""
PACKINGS = ("raw", "lzma")
"""Storage of the codec's parameter sections (``CodecSettings.packing``)."""
#: Model identifier written by the current exporter (the header carries whatever the writer sets).
MODEL_ID = "nerfcodec/triplane-v1"
ARCHITECTURES = ("bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor")

#: Most bytes the decompressed header JSON may have (checked on both sides; also bounds zlib).
MAX_HEADER_JSON_BYTES = 1 << 20

# Limits of the format. Writer and reader check the same numbers (the header dataclasses validate on
# construction), so every file the exporter can write is inside them, and a decoder's memory and time
# are bounded by them before anything is allocated or decoded. docs/bitstream.md lists them.
#: Largest scene file the reader opens (bytes).
MAX_FILE_BYTES = 256 << 20
#: Plane levels per field.
MAX_LEVELS = 8
#: Plane side R of one level.
MAX_RESOLUTION = 1024
#: Feature channels C per plane.
MAX_CHANNELS = 128
#: All plane values of a field together (3 x C x R^2 summed over levels): 256 MiB as float32.
MAX_PLANE_VALUES = 1 << 26
#: Latent symbols of one coded plane (M x (H/16) x (W/16)); bounds each entropy decoder's work and pad.
MAX_LATENT_SYMBOLS = 1 << 20
#: Channels N and M of the backbone.
MAX_BACKBONE_CHANNELS = 1024
#: Width of any MLP layer, and the geometry feature size.
MAX_MLP_WIDTH = 1024
#: Occupancy-grid resolution (the renderer's occupancy estimator holds about 40 bytes a cell and twice
#: that while it is built: 160^3 is 0.3 GB, 256^3 needed over 1 GB, 512^3 3.2 GB).
MAX_GRID_RESOLUTION = 160
#: Training cameras (poses) in the ``cameras`` section (``nerfcodec decode`` renders a view of each).
MAX_CAMERAS = 1 << 13
#: Image width and height of the cameras, in pixels.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 16384
#: Samples along the scene box's diagonal (diagonal / render_step_size): bounds rendering time.
MAX_SAMPLES_PER_RAY = 1 << 16
#: Smallest focal length (px): a field of view just under 180 degrees at the largest image side.
MIN_FOCAL = 1e-2
#: Magnitude of any coordinate, focal length, transform entry or scale in the header.
MAX_MAGNITUDE = 1e6
#: Latent quantization gain, inclusive range.
MIN_LATENT_GAIN, MAX_LATENT_GAIN = 2.0**-8, 2.0**8
#: Spatial downsampling of y (the analysis transform) and of the padding (with the hyper-analysis).
LATENT_STRIDE, PAD_MULTIPLE = 16, 64
#: nerfstudio camera types a file may name (``nerfstudio.cameras.cameras.CameraType`` members) that
#: render from fx, fy, cx, cy alone (the file stores no distortion; FISHEYE624 needs 16 more numbers).
CAMERA_MODELS = ("PERSPECTIVE", "FISHEYE", "EQUIRECTANGULAR", "ORTHOPHOTO")
MAX_SECTIONS = 0xFFFF
MAX_SECTION_NAME = 64
_MAX_U32 = 0xFFFFFFFF
_MAX_INT = 2**31 - 1  # bound of every integer header field (they all describe sizes or counts)

# Fixed-overhead entries of section_sizes(); they contain a space, which section names cannot.
SIZE_MAGIC_VERSION = "magic + version"
SIZE_HEADER = "header block"
SIZE_SECTION_COUNT = "section count"

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SECTION_NAME_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_SECTION_NAME)


class BitstreamError(ValueError):
    """A scene file (or a value to put in one) is malformed; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded ``repr`` of a value for error messages."""
    try:
        text = " ".join(repr(value).split())
    except Exception:  # e.g. an int too long for repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Field checks shared by the header dataclasses (normalise on construction, reject bad values)
# ----------------------------------------------------------------------------------------------


def limits() -> Dict[str, Any]:
    """The decoder's limits by name (what ``nerfcodec info --limits`` prints and docs/bitstream.md lists)."""
    return {
        "file bytes": MAX_FILE_BYTES, "plane levels": MAX_LEVELS, "plane resolution": MAX_RESOLUTION,
        "plane channels": MAX_CHANNELS, "plane values (all levels)": MAX_PLANE_VALUES,
        "latent symbols per plane": MAX_LATENT_SYMBOLS, "backbone N and M": MAX_BACKBONE_CHANNELS,
        "MLP width": MAX_MLP_WIDTH, "occupancy-grid resolution": MAX_GRID_RESOLUTION,
        "cameras": MAX_CAMERAS, "image side (px)": f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}",
        "samples per ray (box diagonal / step)": MAX_SAMPLES_PER_RAY,
        "magnitude of header numbers": MAX_MAGNITUDE, "focal length (px)": f">= {MIN_FOCAL:g}",
        "latent gain": f"{MIN_LATENT_GAIN:g}..{MAX_LATENT_GAIN:g}", "header JSON bytes": MAX_HEADER_JSON_BYTES,
        "camera models": ", ".join(CAMERA_MODELS),
    }


def _bad(owner: str, name: str, expected: str, value: Any) -> BitstreamError:
    return BitstreamError(f"invalid {owner}.{name}: expected {expected}, got {_short(value)}")


def _int(owner: str, name: str, value: Any, lo: int = 1, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= int(value) <= hi:
        raise _bad(owner, name, f"an int in {lo}..{hi}", value)
    return int(value)


def _float(owner: str, name: str, value: Any, lo: float = -MAX_MAGNITUDE, positive: bool = False,
           hi: float = MAX_MAGNITUDE) -> float:
    low = f"> 0" if positive else f">= {lo:g}"
    what = f"a finite float {low} and <= {hi:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(owner, name, what, value)
    try:
        out = float(value)
    except (OverflowError, ValueError):
        raise _bad(owner, name, what, value) from None
    if not math.isfinite(out) or out < lo or out > hi or (positive and out <= 0):
        raise _bad(owner, name, what, value)
    return out


def _bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(owner, name, "a bool", value)
    return bool(value)


def _str(owner: str, name: str, value: Any, choices: Sequence[str] = (), nonempty: bool = False) -> str:
    if choices and value not in choices:
        raise _bad(owner, name, "one of " + "|".join(choices), value)
    if not isinstance(value, str) or (nonempty and not value):
        raise _bad(owner, name, "a non-empty str" if nonempty else "a str", value)
    return str(value)


def _seq(owner: str, name: str, value: Any, length: Union[int, None] = None) -> tuple:
    """``value`` as a tuple (lists and tuples accepted; strings/bytes/dicts are not sequences here)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise _bad(owner, name, f"a sequence of {length}" if length is not None else "a sequence", value)
    return tuple(value)


def _set(obj: Any, **values: Any) -> None:
    for key, value in values.items():
        object.__setattr__(obj, key, value)


# ----------------------------------------------------------------------------------------------
# Header containers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneId:
    """The CompressAI backbone whose frozen parts (``g_s`` trunk, ``h_s``) the decoder must hold."""

    architecture: str
    """One of :data:`ARCHITECTURES`."""
    N: int
    M: int
    sha256: str
    """Lower-case hex SHA-256 of the frozen weights (``codec.frozen_weights_sha256``)."""
    source: str
    """Where the weights came from (``BackboneInfo.source``), informative only."""

    def __post_init__(self) -> None:
        o = "BackboneId"
        sha = self.sha256
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise _bad(o, "sha256", "64 lower-case hex digits", sha)
        _set(self, architecture=_str(o, "architecture", self.architecture, ARCHITECTURES),
             N=_int(o, "N", self.N, 1, MAX_BACKBONE_CHANNELS), M=_int(o, "M", self.M, 1, MAX_BACKBONE_CHANNELS),
             source=_str(o, "source", self.source))


@dataclass(frozen=True)
class FieldArch:
    """The tri-plane field's architecture (``FieldSpec``): plane sizes and MLP widths."""

    resolutions: Tuple[int, ...]
    """Plane side R of every level, coarse to fine."""
    channels: int
    """Feature channels C per plane."""
    reduce: str
    """How the three planes' features combine: "product" or "sum"."""
    hidden_dim: int
    geo_feat_dim: int
    hidden_dim_color: int
    sh_degree: int
    """Spherical-harmonics degree of the view-direction encoding, 1..4."""

    def __post_init__(self) -> None:
        o = "FieldArch"
        res = _seq(o, "resolutions", self.resolutions)
        if not 1 <= len(res) <= MAX_LEVELS:
            raise _bad(o, "resolutions", f"1..{MAX_LEVELS} levels", self.resolutions)
        resolutions = tuple(_int(o, f"resolutions[{i}]", r, 1, MAX_RESOLUTION) for i, r in enumerate(res))
        channels = _int(o, "channels", self.channels, 1, MAX_CHANNELS)
        values = sum(3 * channels * r * r for r in resolutions)
        if values > MAX_PLANE_VALUES:
            raise _bad(o, "resolutions", f"at most {MAX_PLANE_VALUES} plane values (3 x channels x R^2 summed)",
                       f"{values} values")
        _set(self, resolutions=resolutions, channels=channels,
             reduce=_str(o, "reduce", self.reduce, ("product", "sum")),
             hidden_dim=_int(o, "hidden_dim", self.hidden_dim, 1, MAX_MLP_WIDTH),
             geo_feat_dim=_int(o, "geo_feat_dim", self.geo_feat_dim, 1, MAX_MLP_WIDTH),
             hidden_dim_color=_int(o, "hidden_dim_color", self.hidden_dim_color, 1, MAX_MLP_WIDTH),
             sh_degree=_int(o, "sh_degree", self.sh_degree, 1, 4))


@dataclass(frozen=True)
class LevelShape:
    """Shapes of one plane level in the codec: side R, padded planes (H, W), latent z (h, w)."""

    resolution: int
    padded_shape: Tuple[int, int]
    """Padded plane size (H, W), each >= resolution."""
    z_shape: Tuple[int, int]
    """Spatial size (h, w) of the hyper-latent z."""

    def __post_init__(self) -> None:
        o = "LevelShape"
        r = _int(o, "resolution", self.resolution, 1, MAX_RESOLUTION)
        padded = tuple(_int(o, f"padded_shape[{i}]", v, r) for i, v in
                       enumerate(_seq(o, "padded_shape", self.padded_shape, 2)))
        z = tuple(_int(o, f"z_shape[{i}]", v) for i, v in enumerate(_seq(o, "z_shape", self.z_shape, 2)))
        # the codec pads every plane to the next multiple of PAD_MULTIPLE, and z is 1/PAD_MULTIPLE of it
        side = -(-r // PAD_MULTIPLE) * PAD_MULTIPLE
        if padded != (side, side):
            raise _bad(o, "padded_shape", f"({side}, {side}) for resolution {r}", padded)
        if z != (side // PAD_MULTIPLE,) * 2:
            raise _bad(o, "z_shape", f"({side // PAD_MULTIPLE}, {side // PAD_MULTIPLE}) for resolution {r}", z)
        _set(self, resolution=r, padded_shape=padded, z_shape=z)

    def latent_symbols(self, M: int) -> int:
        """Symbols of one plane's latent y: M x (H/16) x (W/16)."""
        return int(M) * (self.padded_shape[0] // LATENT_STRIDE) * (self.padded_shape[1] // LATENT_STRIDE)


@dataclass(frozen=True)
class CodecSettings:
    """Codec options that change what the sections contain (``CodecConfig``)."""

    head_bits: int
    """Bits of the decoder head's integer weights, 2..8."""
    vector_bits: int
    """Bits of the compensation vectors, 2..8."""
    compensation: bool
    """Whether ``vectors.<level>`` sections are present and applied."""
    adapt_heads: bool
    """False: the encoder/decoder heads are built from the backbone (no ``head`` section needed)."""
    latent_gain: float = 1.0
    """Quantization gain of the latent y (``CodecConfig.latent_gain``), > 0."""
    packing: str = "raw"
    """How the codec's parameter sections (``head``, ``vectors.<level>``, ``entropy_bottleneck``,
    ``context_model``) are stored: ``raw`` (as written by :func:`encode_strings`) or ``lzma`` (that
    payload through :func:`pack_smallest`: LZMA2 when it is smaller). Format-version-1 files have no
    such field and are read as ``raw``."""

    def __post_init__(self) -> None:
        o = "CodecSettings"
        _set(self, head_bits=_int(o, "head_bits", self.head_bits, 2, 8),
             vector_bits=_int(o, "vector_bits", self.vector_bits, 2, 8),
             compensation=_bool(o, "compensation", self.compensation),
             adapt_heads=_bool(o, "adapt_heads", self.adapt_heads),
             latent_gain=_float(o, "latent_gain", self.latent_gain, MIN_LATENT_GAIN, hi=MAX_LATENT_GAIN),
             packing=_str(o, "packing", self.packing, choices=PACKINGS))


@dataclass(frozen=True)
class RenderSettings:
    """What the renderer needs: scene box, occupancy grid and ray-marching settings."""

    aabb: Tuple[float, float, float, float, float, float]
    """Scene box (x0, y0, z0, x1, y1, z1), min < max on every axis."""
    render_step_size: float
    grid_resolution: int
    """Occupancy-grid resolution."""
    alpha_thre: float
    early_stop_eps: float
    near_plane: float
    background: str
    """"white" or "black"."""

    def __post_init__(self) -> None:
        o = "RenderSettings"
        box = tuple(_float(o, f"aabb[{i}]", v) for i, v in enumerate(_seq(o, "aabb", self.aabb, 6)))
        if not all(box[i] < box[i + 3] for i in range(3)):
            raise _bad(o, "aabb", "min < max on every axis", box)
        step = _float(o, "render_step_size", self.render_step_size, positive=True)
        diagonal = math.sqrt(sum((box[i + 3] - box[i]) ** 2 for i in range(3)))
        if diagonal / step > MAX_SAMPLES_PER_RAY:
            raise _bad(o, "render_step_size", f"at least the box diagonal / {MAX_SAMPLES_PER_RAY} "
                       f"({diagonal / MAX_SAMPLES_PER_RAY:.3g})", step)
        _set(self, aabb=box, render_step_size=step,
             grid_resolution=_int(o, "grid_resolution", self.grid_resolution, 1, MAX_GRID_RESOLUTION),
             alpha_thre=_float(o, "alpha_thre", self.alpha_thre, 0.0, hi=1.0),
             early_stop_eps=_float(o, "early_stop_eps", self.early_stop_eps, 0.0, hi=1.0),
             near_plane=_float(o, "near_plane", self.near_plane, 0.0),
             background=_str(o, "background", self.background, ("white", "black")))


@dataclass(frozen=True)
class CameraSet:
    """Intrinsics shared by all cameras, and the dataparser's world transform.

    The camera-to-world poses themselves are a binary section (``cameras``)."""

    camera_model: str
    """nerfstudio camera type name, e.g. "PERSPECTIVE"."""
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dataparser_transform: Tuple[Tuple[float, float, float, float], ...]
    """3x4 transform the dataparser applied to the original poses (rows)."""
    dataparser_scale: float
    """Scale the dataparser applied after the transform (> 0)."""

    def __post_init__(self) -> None:
        o = "CameraSet"
        rows = _seq(o, "dataparser_transform", self.dataparser_transform, 3)
        transform = tuple(
            tuple(_float(o, f"dataparser_transform[{i}][{j}]", v) for j, v in
                  enumerate(_seq(o, f"dataparser_transform[{i}]", row, 4)))
            for i, row in enumerate(rows)
        )
        _set(self, camera_model=_str(o, "camera_model", self.camera_model, CAMERA_MODELS),
             width=_int(o, "width", self.width, MIN_IMAGE_SIDE, MAX_IMAGE_SIDE),
             height=_int(o, "height", self.height, MIN_IMAGE_SIDE, MAX_IMAGE_SIDE),
             fx=_float(o, "fx", self.fx, MIN_FOCAL), fy=_float(o, "fy", self.fy, MIN_FOCAL),
             cx=_float(o, "cx", self.cx), cy=_float(o, "cy", self.cy), dataparser_transform=transform,
             dataparser_scale=_float(o, "dataparser_scale", self.dataparser_scale, 1.0 / MAX_MAGNITUDE,
                                     hi=MAX_MAGNITUDE))


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the binary sections."""

    model_id: str
    """Which model/decoder the file is for, e.g. :data:`MODEL_ID`."""
    backbone: BackboneId
    field: FieldArch
    levels: Tuple[LevelShape, ...]
    """One per ``field.resolutions`` entry, same order and resolutions."""
    codec: CodecSettings
    render: RenderSettings
    cameras: CameraSet
    extra: Tuple[Tuple[str, str], ...] = ()
    """Free (key, value) strings for later additions; keys unique, order kept."""

    def __post_init__(self) -> None:
        o = "Header"
        model_id = _str(o, "model_id", self.model_id, nonempty=True)
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise _bad(o, name, f"a {cls.__name__}", getattr(self, name))
        levels = _seq(o, "levels", self.levels)
        for i, level in enumerate(levels):
            if not isinstance(level, LevelShape):
                raise _bad(o, f"levels[{i}]", "a LevelShape", level)
        level_res = tuple(level.resolution for level in levels)
        if level_res != self.field.resolutions:
            raise _bad(o, "levels", f"resolutions {list(self.field.resolutions)} (field.resolutions)",
                       list(level_res))
        for i, level in enumerate(levels):
            symbols = level.latent_symbols(self.backbone.M)
            if symbols > MAX_LATENT_SYMBOLS:
                raise _bad(o, f"levels[{i}]", f"at most {MAX_LATENT_SYMBOLS} latent symbols per plane "
                           f"(M x (H/16) x (W/16))", f"{symbols}")
        extra = []
        for i, item in enumerate(_seq(o, "extra", self.extra)):
            key, value = _seq(o, f"extra[{i}]", item, 2)
            extra.append((_str(o, f"extra[{i}] key", key), _str(o, f"extra[{i}] value", value)))
        keys = [k for k, _ in extra]
        if len(set(keys)) != len(keys):
            raise _bad(o, "extra", "unique keys", keys)
        _set(self, model_id=model_id, levels=levels, extra=tuple(extra))

    def get_extra(self, key: str, default: Union[str, None] = None) -> Union[str, None]:
        """The value of ``key`` in :attr:`extra`, or ``default``."""
        return dict(self.extra).get(key, default)


_NESTED = {"backbone": BackboneId, "field": FieldArch, "codec": CodecSettings, "render": RenderSettings,
           "cameras": CameraSet}


# ----------------------------------------------------------------------------------------------
# Header <-> bytes (canonical JSON, zlib)
# ----------------------------------------------------------------------------------------------


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(cls: type, value: Any, where: str) -> Any:
    """Build dataclass ``cls`` from its JSON object, with exact key checks (nested ones recursively)."""
    if not isinstance(value, dict):
        raise BitstreamError(f"{where}: expected a JSON object, got {_short(value)}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in value]
    unknown = sorted(k for k in value if k not in names)
    if missing:
        raise BitstreamError(f"{where}: missing field '{missing[0]}'")
    if unknown:
        raise BitstreamError(f"{where}: unknown field {_short(unknown[0])}")
    kwargs = dict(value)
    if cls is Header:
        for name, sub in _NESTED.items():
            kwargs[name] = _from_json(sub, value[name], f"{where}.{name}")
        if not isinstance(value["levels"], list):
            raise BitstreamError(f"{where}.levels: expected a JSON array, got {_short(value['levels'])}")
        kwargs["levels"] = tuple(_from_json(LevelShape, v, f"{where}.levels[{i}]")
                                 for i, v in enumerate(value["levels"]))
    return cls(**kwargs)


def _reject_constant(name: str) -> Any:
    raise BitstreamError(f"header: non-finite number {name} in JSON")


def _unique_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BitstreamError(f"header: duplicate JSON key {_short(key)}")
        out[key] = value
    return out


def header_json(header: Header) -> bytes:
    """The canonical JSON of ``header`` (sorted keys, no spaces, ASCII), before compression."""
    if not isinstance(header, Header):
        raise BitstreamError(f"expected a Header, got {type(header).__name__}")
    return json.dumps(_to_json(header), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def encode_header(header: Header) -> bytes:
    """The header bytes stored in the file: :func:`header_json` compressed with zlib (level 9)."""
    text = header_json(header)
    if len(text) > MAX_HEADER_JSON_BYTES:
        raise BitstreamError(f"header JSON is {len(text)} bytes, more than {MAX_HEADER_JSON_BYTES}")
    return zlib.compress(text, 9)


def decode_header(data: bytes, version: int = FORMAT_VERSION) -> Header:
    """Inverse of :func:`encode_header`; any problem is a one-line :class:`BitstreamError`.

    ``version``: the file's format version. Version 1 headers have no ``codec.packing`` (read as
    ``raw``); from version 2 on every field is required."""
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(bytes(data), MAX_HEADER_JSON_BYTES + 1)
        if len(text) > MAX_HEADER_JSON_BYTES:
            raise BitstreamError(f"header: JSON is larger than {MAX_HEADER_JSON_BYTES} bytes")
        if not inflater.eof:
            raise BitstreamError("header: incomplete zlib stream")
        if inflater.unused_data:
            raise BitstreamError(f"header: {len(inflater.unused_data)} bytes after the zlib stream")
    except zlib.error as exc:
        raise BitstreamError(f"header: not a valid zlib stream ({exc})") from None
    try:
        value = json.loads(text.decode("ascii"), parse_constant=_reject_constant,
                           object_pairs_hook=_unique_object)
    except BitstreamError:
        raise
    except UnicodeDecodeError:
        raise BitstreamError("header: JSON is not ASCII") from None
    except json.JSONDecodeError as exc:
        raise BitstreamError(f"header: invalid JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # e.g. int too long to convert, nesting too deep
        raise BitstreamError(f"header: invalid JSON ({type(exc).__name__})") from None
    if version < 2 and isinstance(value, dict) and isinstance(value.get("codec"), dict):
        if "packing" in value["codec"]:
            raise BitstreamError("header: format version 1 has no codec.packing field")
        value["codec"]["packing"] = "raw"
    try:
        return _from_json(Header, value, "header")
    except BitstreamError as exc:
        message = str(exc)
        raise BitstreamError(message if message.startswith("header") else f"header: {message}") from None


# ----------------------------------------------------------------------------------------------
# Sections and the whole file
# ----------------------------------------------------------------------------------------------


def _check_section_name(name: Any) -> str:
    if not isinstance(name, str) or not _SECTION_NAME_RE.fullmatch(name):
        raise BitstreamError(
            f"invalid section name {_short(name)}: expected 1..{MAX_SECTION_NAME} printable ASCII characters"
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
        if len(self.payload) > _MAX_U32:
            raise BitstreamError(f"section '{self.name}': payload of {len(self.payload)} bytes is over 4 GiB")


@dataclass(frozen=True)
class Bitstream:
    """A decoded scene file: the header and the sections in file order (names unique)."""

    header: Header
    sections: Tuple[Section, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise BitstreamError(f"Bitstream.header must be a Header, got {type(self.header).__name__}")
        sections = _seq("Bitstream", "sections", self.sections)
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
    return crc & _MAX_U32


def pack(bs: Bitstream) -> bytes:
    """The bytes of ``bs`` (deterministic: equal bitstreams give equal bytes)."""
    if not isinstance(bs, Bitstream):
        raise BitstreamError(f"pack expects a Bitstream, got {type(bs).__name__}")
    header = encode_header(bs.header)
    out = [MAGIC, _U16.pack(FORMAT_VERSION), _U32.pack(len(header)), header, _U32.pack(_crc(header)),
           _U16.pack(len(bs.sections))]
    for s in bs.sections:
        name = s.name.encode("ascii")
        crc = _crc(name, s.payload)
        out += [bytes((len(name),)), name, _U32.pack(len(s.payload)), s.payload, _U32.pack(crc)]
    return b"".join(out)


class _Reader:
    """A cursor over the file that never reads past its end (every overrun is a 'truncated' error)."""

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
        return _U16.unpack(self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]


def _as_bytes_view(data: Any) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return memoryview(data).cast("B")


def _parse(data: Any) -> Tuple[Bitstream, Dict[str, int]]:
    """Parse and validate a whole file; returns the bitstream and the byte count of every part."""
    view = _as_bytes_view(data)
    if len(view) == 0:
        raise BitstreamError("empty file (0 bytes): not a NeRFCodec scene file")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise BitstreamError(f"bad magic {_short(head)}: not a NeRFCodec scene file (expected {MAGIC!r})")
    r = _Reader(view)
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
                f"section #{i}: invalid name {_short(raw_name)} (expected printable ASCII without spaces)"
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


# ----------------------------------------------------------------------------------------------
# Payload helpers (no torch)
# ----------------------------------------------------------------------------------------------

#: dtype code byte of encode_array (an allow-list; codes are part of the format).
DTYPE_CODES = {"int8": 1, "uint8": 2, "int16": 3, "int32": 4, "float16": 5, "float32": 6}
_CODE_DTYPES = {code: np.dtype(name) for name, code in DTYPE_CODES.items()}
MAX_ARRAY_NDIM = 16


def encode_array(arr: np.ndarray) -> bytes:
    """``u8 dtype code | u8 ndim | ndim x u32 dims | data`` (C order, little-endian)."""
    if not isinstance(arr, np.ndarray):
        raise BitstreamError(f"encode_array expects a numpy array, got {type(arr).__name__}")
    name = arr.dtype.name
    if name not in DTYPE_CODES or arr.dtype.kind not in "iuf":
        raise BitstreamError(f"unsupported array dtype {arr.dtype} (allowed: {', '.join(DTYPE_CODES)})")
    if arr.ndim > MAX_ARRAY_NDIM or any(d > _MAX_U32 for d in arr.shape):
        raise BitstreamError(f"unsupported array shape {arr.shape} (at most {MAX_ARRAY_NDIM} dims < 2**32)")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return bytes((DTYPE_CODES[name], arr.ndim)) + struct.pack(f"<{arr.ndim}I", *arr.shape) + data


def decode_array(payload: Union[bytes, bytearray, memoryview]) -> np.ndarray:
    """Inverse of :func:`encode_array`: a new, writable, native-endian array."""
    r = _Reader(_as_bytes_view(payload), "array")
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


def _read_varint(r: _Reader, what: str) -> int:
    value = shift = 0
    for i in range(5):
        byte = r.u8(what)
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if (byte == 0 and i > 0) or value > _MAX_U32:
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
        if len(s) > _MAX_U32:
            raise BitstreamError(f"encode_strings: item {i} is over 4 GiB")
        out += [_varint(len(s)), s]
    return b"".join(out)


def decode_strings(payload: Union[bytes, bytearray, memoryview]) -> List[bytes]:
    """Inverse of :func:`encode_strings`; the payload must end exactly after the last string."""
    r = _Reader(_as_bytes_view(payload), "strings")
    count = _read_varint(r, "string count")
    if count > r.left:  # every string takes at least its 1-byte length
        raise BitstreamError(f"truncated strings: {count} strings need at least {count} bytes, {r.left} left")
    out = [bytes(r.take(_read_varint(r, f"string #{i} length"), f"string #{i}")) for i in range(count)]
    if r.left:
        raise BitstreamError(f"strings: {r.left} trailing bytes after {count} strings")
    return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Union[str, os.PathLike], data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` all-or-nothing: a temp file in the same folder, fsync, then rename.

    Refuses an existing ``path`` unless ``overwrite`` (``FileExistsError``, one line; the existing
    file is untouched). On any failure no partial file and no temp file is left. Returns the path.
    """
    path = Path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomic expects bytes, got {type(data).__name__}")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    exists = f"{path} already exists (pass overwrite=True to replace it)"
    if path.exists() and not overwrite:
        raise FileExistsError(exists)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:  # link() fails if path appeared meanwhile, so a racing writer is never clobbered
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(exists) from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise FileExistsError(exists) from None
                os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink(missing_ok=True)
    try:  # make the rename durable; best effort (not every platform can fsync a folder)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


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


# ----------------------------------------------------------------------------------------------
# Lossless packing (raw LZMA2) and bit masks (the occupancy grid)
# ----------------------------------------------------------------------------------------------

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]


def pack_lzma(data: bytes) -> bytes:
    """``data`` compressed with raw LZMA2 (no container header: the filters are fixed here)."""
    return lzma.compress(bytes(data), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def unpack_lzma(payload: Union[bytes, bytearray, memoryview], max_size: int, what: str = "payload") -> bytes:
    """Inverse of :func:`pack_lzma`. Never produces more than ``max_size`` bytes: a longer or broken
    stream is a :class:`BitstreamError` naming ``what``."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        raw = dec.decompress(bytes(payload), max_length=max_size + 1)
    except lzma.LZMAError as err:
        raise BitstreamError(f"corrupt {what}: {err}") from None
    if len(raw) > max_size:
        raise BitstreamError(f"corrupt {what}: unpacks to more than {max_size} bytes")
    if not dec.eof or dec.unused_data:
        raise BitstreamError(f"corrupt {what}: incomplete or trailing LZMA data")
    return raw


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
