"""Scene-file format, part 1: the format's limits, its error type and the typed :class:`Header`.

The header is everything a decoder needs besides the big binary sections: the backbone it must
hold, the field architecture, the plane shapes, the codec settings, the render settings and the
cameras' intrinsics. Its dataclasses validate (and normalise) every field on construction, against
the same limits the reader enforces (:func:`limits`), so every file the exporter can write is
within them. On disk the header is canonical JSON (sorted keys, no spaces, ASCII) compressed with
zlib (:func:`encode_header` / :func:`decode_header`). docs/bitstream.md documents every field.

The other format modules: :mod:`~nerfcodec_ns.scenefile.payload` (what goes in a section) and
:mod:`~nerfcodec_ns.scenefile.container` (the file: sections, CRCs, reading). None imports torch
(tested): they are loaded by tools that only inspect files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

FORMAT_VERSION = 7
"""Version this writer writes. 2 added ``CodecSettings.packing`` (packed parameter sections), 3
``CodecSettings.tables`` (entropy-coding tables that every CPU chooses the same), 4
``CodecSettings.mix_images`` (channel mixing, ``mix.<level>`` sections), 5 real captures:
``FieldArch.contraction``, ``RenderSettings.grid_levels`` and ``cone_angle`` (unbounded scenes) and
the optional ``intrinsics`` section (per-camera intrinsics, camera models and distortion), 6
``FieldArch.mlp_bits`` (an int8 ``mlp`` section), 7 ``RenderSettings.grid_source``,
``grid_threshold`` and ``grid_points`` (an occupancy grid the decoder derives from the decoded field,
no ``grid`` section)."""
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
"""Versions this reader reads (a version-1 file has raw parameter sections only; versions 1 and 2
have float tables; versions 1 to 3 no channel mixing; versions 1 to 4 bounded scenes and shared
intrinsics only; versions 1 to 5 a float16 MLP; versions 1 to 6 a sent grid)."""
#: Most RGB images per plane with channel mixing (``CodecSettings.mix_images``); the format imports
#: nothing of the codec, so the codec's ``MAX_MIX_IMAGES`` is the same number (tested).
MAX_MIX_IMAGES = 8
#: Header fields added by a format version: (part, name, version, what files before it mean).
FIELDS_ADDED = (("codec", "packing", 2, "raw"), ("codec", "tables", 3, "float"), ("codec", "mix_images", 4, 0),
                ("field", "contraction", 5, "none"), ("render", "grid_levels", 5, 1),
                ("render", "cone_angle", 5, 0.0), ("field", "mlp_bits", 6, 16),
                ("render", "grid_source", 7, "sent"), ("render", "grid_threshold", 7, 0.01),
                ("render", "grid_points", 7, 1))
#: Where the occupancy grid comes from (``RenderSettings.grid_source``): the ``grid`` section, or the
#: decoded field (the sampler's ``OccupancySampler.derive``).
GRID_SOURCES = ("sent", "derived")
#: Most points per cell and axis of a derived grid (``RenderSettings.grid_points``): points**3 density
#: evaluations per cell bound the decoder's work.
MAX_GRID_POINTS = 4
#: Storage of the MLP parameters (``FieldArch.mlp_bits``; the field's ``MLP_BITS``, tested to agree).
MLP_BITS = (16, 8)
#: Scene contractions a field may use (the field's ``CONTRACTIONS``, tested to agree): none (a
#: bounded scene box), or mip-NeRF 360's contraction of all space into a box (L-inf) or ball (L2).
CONTRACTIONS = ("none", "linf", "l2")
#: Levels of the occupancy grid (level l covers the scene box scaled by 2**l about its centre).
MAX_GRID_LEVELS = 8
#: Largest cone angle of the ray marcher (step = max(t * cone_angle, render_step_size)).
MAX_CONE_ANGLE = 1.0
PACKINGS = ("raw", "lzma")
"""Storage of the codec's parameter sections (``CodecSettings.packing``)."""
TABLES = ("float", "exact")
"""How the entropy coder's tables are chosen (``CodecSettings.tables``)."""
#: Model identifier written by the current exporter (the header carries whatever the writer sets).
MODEL_ID = "nerfcodec/triplane-v1"
#: Backbone architectures a file may name (the codec's ``ARCHITECTURES``, tested to agree).
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
#: Density evaluations of a derived grid (grid levels * resolution**3 * grid_points**3): bounds the
#: decoder's work (2^25 is about 10 s on two CPU cores; lego's 128^3 at 1 point is 2^21).
MAX_GRID_EVALUATIONS = 1 << 25
#: Training cameras (poses) in the ``cameras`` section (``nerfcodec decode`` renders a view of each).
MAX_CAMERAS = 1 << 13
#: Image width and height of the cameras, in pixels.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 16384
#: Samples along the outermost grid level's diagonal (diagonal / render_step_size): bounds rendering time.
MAX_SAMPLES_PER_RAY = 1 << 16
#: Smallest focal length (px): a field of view just under 180 degrees at the largest image side.
MIN_FOCAL = 1e-2
#: Magnitude of any coordinate, focal length, transform entry or scale in the header.
MAX_MAGNITUDE = 1e6
#: Latent quantization gain, inclusive range.
MIN_LATENT_GAIN, MAX_LATENT_GAIN = 2.0**-8, 2.0**8
#: Spatial downsampling of y (the analysis transform) and of the padding (with the hyper-analysis).
LATENT_STRIDE, PAD_MULTIPLE = 16, 64
#: nerfstudio camera types a file may name (``nerfstudio.cameras.cameras.CameraType`` members): their
#: rays come from fx, fy, cx, cy and nerfstudio's 6 distortion numbers (FISHEYE624 needs 16 numbers).
CAMERA_MODELS = ("PERSPECTIVE", "FISHEYE", "EQUIRECTANGULAR", "ORTHOPHOTO")
#: Camera models whose distortion nerfstudio applies (OPENCV radial-tangential, OPENCV_FISHEYE).
DISTORTED_MODELS = ("PERSPECTIVE", "FISHEYE")
#: Bound of the u32 length fields of the file and of its payloads.
MAX_U32 = 0xFFFFFFFF
_MAX_INT = 2**31 - 1  # bound of every integer header field (they all describe sizes or counts)


class BitstreamError(ValueError):
    """A scene file (or a value to put in one) is malformed; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def short_repr(value: Any, limit: int = 60) -> str:
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
        "samples per ray (outer grid diagonal / step)": MAX_SAMPLES_PER_RAY,
        "magnitude of header numbers": MAX_MAGNITUDE, "focal length (px)": f">= {MIN_FOCAL:g}",
        "latent gain": f"{MIN_LATENT_GAIN:g}..{MAX_LATENT_GAIN:g}", "header JSON bytes": MAX_HEADER_JSON_BYTES,
        "camera models": ", ".join(CAMERA_MODELS), "occupancy-grid levels": MAX_GRID_LEVELS,
        "cone angle": f"0..{MAX_CONE_ANGLE:g}", "derived grid: points per cell and axis": MAX_GRID_POINTS,
        "derived grid: density evaluations": MAX_GRID_EVALUATIONS,
    }


def _bad(owner: str, name: str, expected: str, value: Any) -> BitstreamError:
    return BitstreamError(f"invalid {owner}.{name}: expected {expected}, got {short_repr(value)}")


def _int(owner: str, name: str, value: Any, lo: int = 1, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= int(value) <= hi:
        raise _bad(owner, name, f"an int in {lo}..{hi}", value)
    return int(value)


def _float(owner: str, name: str, value: Any, lo: float = -MAX_MAGNITUDE, positive: bool = False,
           hi: float = MAX_MAGNITUDE) -> float:
    low = "> 0" if positive else f">= {lo:g}"
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


def check_sequence(owner: str, name: str, value: Any, length: Union[int, None] = None) -> tuple:
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
    contraction: str = "none"
    """Scene contraction (format 5): "none" (the planes cover the scene box; zero density outside it),
    "linf" or "l2" (all space contracted into twice the box, which the planes cover). Files before
    format 5 are read as "none"."""
    mlp_bits: int = 16
    """Storage of the ``mlp`` section (format 6): 16 = every parameter float16; 8 = each weight
    matrix as int8 ``[out, in]`` followed by its float32 row scales ``[out]``, biases float16 (packed
    like the codec's parameter sections, ``CodecSettings.packing``). Files before format 6 are read as 16."""

    def __post_init__(self) -> None:
        o = "FieldArch"
        res = check_sequence(o, "resolutions", self.resolutions)
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
             sh_degree=_int(o, "sh_degree", self.sh_degree, 1, 4),
             contraction=_str(o, "contraction", self.contraction, CONTRACTIONS),
             mlp_bits=_int(o, "mlp_bits", self.mlp_bits, 8, 16))
        if self.mlp_bits not in MLP_BITS:
            raise _bad(o, "mlp_bits", f"one of {MLP_BITS}", self.mlp_bits)


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
                       enumerate(check_sequence(o, "padded_shape", self.padded_shape, 2)))
        z = tuple(_int(o, f"z_shape[{i}]", v) for i, v in enumerate(check_sequence(o, "z_shape", self.z_shape, 2)))
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
    tables: str = "float"
    """How the entropy coder's tables are chosen: ``exact`` (format 3; the same on every CPU: shipped
    Gaussian tables, the ``entropy_bottleneck`` section holds the bottleneck's quantized tables, scale
    indexes from the fixed-point ``h_s``, ``nerfcodec_ns/codec/exact.py``) or ``float`` (CompressAI's
    float tables; the section holds the bottleneck's float16 parameters). Files before format 3 have
    no such field and are read as ``float``."""

    mix_images: int = 0
    """Channel mixing (format 4, ``CodecConfig.mix_images``): 0 none; k >= 1: each plane is coded as
    k RGB images (3k y and z strings per level) with the backbone's own RGB layers, and a
    ``mix.<level>`` section holds the decoder-side 1x1 mixers (int8 weights ``[3C, 3k, 1, 1]``,
    float32 scales ``[3C]`` and bias ``[3C]``). Files before format 4 are read as 0."""

    def __post_init__(self) -> None:
        o = "CodecSettings"
        _set(self, head_bits=_int(o, "head_bits", self.head_bits, 2, 8),
             vector_bits=_int(o, "vector_bits", self.vector_bits, 2, 8),
             compensation=_bool(o, "compensation", self.compensation),
             adapt_heads=_bool(o, "adapt_heads", self.adapt_heads),
             latent_gain=_float(o, "latent_gain", self.latent_gain, MIN_LATENT_GAIN, hi=MAX_LATENT_GAIN),
             packing=_str(o, "packing", self.packing, choices=PACKINGS),
             tables=_str(o, "tables", self.tables, choices=TABLES),
             mix_images=_int(o, "mix_images", self.mix_images, 0, MAX_MIX_IMAGES))


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
    grid_levels: int = 1
    """Occupancy-grid levels (format 5): level l covers the scene box scaled by 2**l about its centre;
    the ``grid`` section holds ``[grid_levels, G, G, G]`` bits. Files before format 5 are read as 1."""
    cone_angle: float = 0.0
    """Ray-marching step growth (format 5): step = max(t * cone_angle, render_step_size) at distance t
    (0: constant steps). Files before format 5 are read as 0."""
    grid_source: str = "sent"
    """Where the occupancy grid comes from (format 7): "sent" (the ``grid`` section) or "derived" (no
    ``grid`` section: the decoder evaluates the decoded field's density at ``grid_points**3`` sub-cell
    centres of every cell, takes the largest density * ``render_step_size`` as the cell's occupancy, and
    marks the cells above min(mean occupancy, ``grid_threshold``)). Files before format 7 are read as "sent"."""
    grid_threshold: float = 0.01
    """Occupancy threshold of a derived grid (format 7; unused when sent)."""
    grid_points: int = 1
    """Points per cell and axis of a derived grid (format 7; unused when sent)."""

    def __post_init__(self) -> None:
        o = "RenderSettings"
        box = tuple(_float(o, f"aabb[{i}]", v) for i, v in enumerate(check_sequence(o, "aabb", self.aabb, 6)))
        if not all(box[i] < box[i + 3] for i in range(3)):
            raise _bad(o, "aabb", "min < max on every axis", box)
        step = _float(o, "render_step_size", self.render_step_size, positive=True)
        levels = _int(o, "grid_levels", self.grid_levels, 1, MAX_GRID_LEVELS)
        diagonal = math.sqrt(sum((box[i + 3] - box[i]) ** 2 for i in range(3))) * 2 ** (levels - 1)
        if diagonal / step > MAX_SAMPLES_PER_RAY:
            raise _bad(o, "render_step_size", f"at least the outer grid diagonal / {MAX_SAMPLES_PER_RAY} "
                       f"({diagonal / MAX_SAMPLES_PER_RAY:.3g})", step)
        _set(self, aabb=box, render_step_size=step,
             grid_resolution=_int(o, "grid_resolution", self.grid_resolution, 1, MAX_GRID_RESOLUTION),
             alpha_thre=_float(o, "alpha_thre", self.alpha_thre, 0.0, hi=1.0),
             early_stop_eps=_float(o, "early_stop_eps", self.early_stop_eps, 0.0, hi=1.0),
             near_plane=_float(o, "near_plane", self.near_plane, 0.0),
             background=_str(o, "background", self.background, ("white", "black")), grid_levels=levels,
             cone_angle=_float(o, "cone_angle", self.cone_angle, 0.0, hi=MAX_CONE_ANGLE),
             grid_source=_str(o, "grid_source", self.grid_source, GRID_SOURCES),
             grid_threshold=_float(o, "grid_threshold", self.grid_threshold, 0.0, hi=1.0),
             grid_points=_int(o, "grid_points", self.grid_points, 1, MAX_GRID_POINTS))
        evaluations = self.grid_levels * self.grid_resolution ** 3 * self.grid_points ** 3
        if self.grid_source == "derived" and evaluations > MAX_GRID_EVALUATIONS:
            raise _bad(o, "grid_points", f"at most {MAX_GRID_EVALUATIONS} density evaluations for a derived grid "
                       f"(levels * resolution^3 * points^3 = {evaluations})", self.grid_points)


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
        rows = check_sequence(o, "dataparser_transform", self.dataparser_transform, 3)
        transform = tuple(
            tuple(_float(o, f"dataparser_transform[{i}][{j}]", v) for j, v in
                  enumerate(check_sequence(o, f"dataparser_transform[{i}]", row, 4)))
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
        levels = check_sequence(o, "levels", self.levels)
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
        for i, item in enumerate(check_sequence(o, "extra", self.extra)):
            key, value = check_sequence(o, f"extra[{i}]", item, 2)
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
        raise BitstreamError(f"{where}: expected a JSON object, got {short_repr(value)}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in value]
    unknown = sorted(k for k in value if k not in names)
    if missing:
        raise BitstreamError(f"{where}: missing field '{missing[0]}'")
    if unknown:
        raise BitstreamError(f"{where}: unknown field {short_repr(unknown[0])}")
    kwargs = dict(value)
    if cls is Header:
        for name, sub in _NESTED.items():
            kwargs[name] = _from_json(sub, value[name], f"{where}.{name}")
        if not isinstance(value["levels"], list):
            raise BitstreamError(f"{where}.levels: expected a JSON array, got {short_repr(value['levels'])}")
        kwargs["levels"] = tuple(_from_json(LevelShape, v, f"{where}.levels[{i}]")
                                 for i, v in enumerate(value["levels"]))
    return cls(**kwargs)


def _reject_constant(name: str) -> Any:
    raise BitstreamError(f"header: non-finite number {name} in JSON")


def _unique_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BitstreamError(f"header: duplicate JSON key {short_repr(key)}")
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

    ``version``: the file's format version. A header of a version before a field was added
    (:data:`FIELDS_ADDED`) has no such field and gets the value files of then mean; otherwise every
    field is required."""
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
    for part, name, added_in, before in FIELDS_ADDED:
        if version < added_in and isinstance(value, dict) and isinstance(value.get(part), dict):
            if name in value[part]:
                raise BitstreamError(f"header: format version {version} has no {part}.{name} field")
            value[part][name] = before
    try:
        return _from_json(Header, value, "header")
    except BitstreamError as exc:
        message = str(exc)
        raise BitstreamError(message if message.startswith("header") else f"header: {message}") from None
