"""Classic coders for tri-plane feature planes: the baselines a user would try instead of NeRFCodec.

A field's planes are a list of levels; level i is a float32 array ``[3, C, R_i, R_i]`` (three
axis-aligned planes of C channels). A :class:`PlaneCoder` turns ALL levels into one ``bytes``
payload and back. The payload is self-describing (shapes, per-channel ranges and format parameters
are inside it; only the CompressAI model must be supplied to the decoder)::

    payload = encode_strings([header JSON, body part, body part, ...])   (nerfcodec_ns.scenefile.payload)

Coders: raw float32/float16 (:class:`RawCoder`), uniform quantisation + a generic compressor
(:class:`QuantCoder`), 8-bit image codecs through Pillow (:class:`ImageCoder`), and an off-the-shelf
pre-trained CompressAI RGB codec with no per-scene adaptation (:class:`CompressAICoder`).
:func:`default_coders` lists the usual set.

This module imports torch/compressai only inside :class:`CompressAICoder`.
"""

from __future__ import annotations

import io
import json
import lzma
import math
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nerfcodec_ns.scenefile.payload import decode_array, decode_strings, encode_array, encode_strings

__all__ = [
    "BaselineError",
    "PlaneCoder",
    "RawCoder",
    "QuantCoder",
    "ImageCoder",
    "CompressAICoder",
    "COMPRESSORS",
    "IMAGE_FORMATS",
    "avif_supported",
    "default_coders",
]

#: Most plane values a payload may declare in all (guards allocations on garbled headers).
MAX_VALUES = 1 << 28
COMPRESSORS = ("zlib", "lzma", "zstd")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF")
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME
_ZSTD_LEVEL = 19
_F16_MAX = 65504.0  # largest finite float16 (larger values are refused by the float16 coder)

Shape = Tuple[int, int, int, int]


class BaselineError(ValueError):
    """A payload cannot be decoded, or levels cannot be encoded; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------------------------
# Payload framing and shared helpers
# ----------------------------------------------------------------------------------------------


def _check_levels(levels: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The levels as float32 arrays ``[3, C, R, R]`` (any real dtype accepted), all values finite."""
    if isinstance(levels, np.ndarray) or not len(levels):
        raise BaselineError("expected a non-empty list of [3, C, R, R] arrays")
    out = []
    for i, level in enumerate(levels):
        arr = np.asarray(level)
        if (arr.ndim != 4 or arr.shape[0] != 3 or arr.shape[2] != arr.shape[3] or min(arr.shape) < 1
                or arr.dtype.kind not in "fiu"):
            raise BaselineError(f"level {i}: expected a real [3, C, R, R] array, got {arr.dtype} {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise BaselineError(f"level {i}: planes contain NaN or infinite values")
        out.append(arr)
    return out


def _pack(kind: str, params: Dict[str, Any], levels: Sequence[np.ndarray], body: Sequence[bytes]) -> bytes:
    header = dict(params, kind=kind, shapes=[list(level.shape) for level in levels])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    return encode_strings([text, *body])


def _unpack(payload: bytes, kind: str) -> Tuple[Dict[str, Any], List[Shape], List[bytes]]:
    """Header parameters, level shapes and body parts of a payload of ``kind``."""
    parts = decode_strings(payload)
    if not parts:
        raise BaselineError("empty payload")
    header = json.loads(parts[0].decode("ascii"))
    if not isinstance(header, dict) or header.get("kind") != kind:
        got = header.get("kind") if isinstance(header, dict) else None
        raise BaselineError(f"not a {kind!r} payload (kind {got!r})")
    shapes = header.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        raise BaselineError("payload header has no level shapes")
    out: List[Shape] = []
    for s in shapes:
        if (not isinstance(s, list) or len(s) != 4 or s[0] != 3 or s[2] != s[3]
                or not all(type(v) is int and v >= 1 for v in s)):
            raise BaselineError(f"bad level shape {s!r} in payload header")
        out.append((s[0], s[1], s[2], s[3]))
    if sum(math.prod(s) for s in out) > MAX_VALUES:
        raise BaselineError(f"payload declares more than {MAX_VALUES} values")
    return header, out, parts[1:]


def _take(body: List[bytes], count: int) -> List[bytes]:
    """Pop the first ``count`` parts of ``body`` (BaselineError if there are fewer)."""
    if len(body) < count:
        raise BaselineError(f"payload is missing parts ({len(body)} left, {count} needed)")
    taken = body[:count]
    del body[:count]
    return taken


def _ranges(level: np.ndarray) -> np.ndarray:
    """Per (plane, channel) ``[min, max]`` of a level: float32 ``[3, C, 2]``."""
    return np.stack([level.min(axis=(2, 3)), level.max(axis=(2, 3))], axis=-1).astype(np.float32)


def _decode_ranges(part: bytes, shape: Shape) -> np.ndarray:
    ranges = decode_array(part)
    if ranges.dtype != np.float32 or ranges.shape != (3, shape[1], 2) or not np.all(np.isfinite(ranges)):
        raise BaselineError(f"bad channel ranges {ranges.dtype} {ranges.shape} for level shape {shape}")
    return ranges


def _lo_step(ranges: np.ndarray, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """float64 offset and step ``[3, C, 1, 1]`` of a ``steps``-step uniform quantiser (step 0 for
    a constant channel)."""
    lo = ranges[..., 0].astype(np.float64)[..., None, None]
    hi = ranges[..., 1].astype(np.float64)[..., None, None]
    return lo, np.maximum(hi - lo, 0.0) / steps


def _quantize(level: np.ndarray, ranges: np.ndarray, steps: int) -> np.ndarray:
    """Values of ``level`` as integers 0..steps (uint8) on its per-channel ranges."""
    lo, step = _lo_step(ranges, steps)
    q = np.rint((level - lo) / np.where(step > 0, step, 1.0))
    return np.clip(q, 0, steps).astype(np.uint8)


def _dequantize(q: np.ndarray, ranges: np.ndarray, steps: int) -> np.ndarray:
    lo, step = _lo_step(ranges, steps)
    return (lo + q * step).astype(np.float32)


def _quant_bound(level: np.ndarray, steps: int) -> float:
    """Max-abs error bound of :func:`_quantize` + :func:`_dequantize`: half a step of the worst
    channel, plus float32 rounding of the output."""
    _, step = _lo_step(_ranges(level), steps)
    amax = float(np.abs(level).max())
    return float(step.max()) / 2 + amax * 2.0**-23


# ----------------------------------------------------------------------------------------------
# Coders
# ----------------------------------------------------------------------------------------------


class PlaneCoder:
    """A coder of all tri-plane levels into one payload.

    Subclasses set ``kind`` (the payload type), ``name`` (e.g. "jpeg-q50"), ``family`` (e.g.
    "jpeg") and implement ``_encode`` (header parameters and body parts) and ``_decode``.
    """

    kind: str = ""
    name: str
    family: str

    def encode(self, levels: Sequence[np.ndarray]) -> bytes:
        """One payload for all ``levels`` (float arrays ``[3, C, R, R]``)."""
        levels = _check_levels(levels)
        params, body = self._encode(levels)
        return _pack(self.kind, params, levels, body)

    def decode(self, payload: bytes) -> List[np.ndarray]:
        """The float32 levels of a payload from :meth:`encode`; BaselineError if it is malformed."""
        try:
            header, shapes, body = _unpack(payload, self.kind)
            levels = self._decode(header, shapes, body)
            if body:
                raise BaselineError(f"{len(body)} unused parts at the end of the payload")
            for level, shape in zip(levels, shapes):
                if level.shape != shape or level.dtype != np.float32:
                    raise BaselineError(f"decoded {level.dtype} {level.shape}, expected float32 {shape}")
        except BaselineError as exc:
            raise BaselineError(f"{self.name}: {exc}") from None
        except Exception as exc:  # any parser/codec failure on a garbled payload (zlib, PIL, ...)
            raise BaselineError(f"{self.name}: corrupt payload ({type(exc).__name__}: {exc})") from None
        return levels

    def max_abs_error(self, levels: Sequence[np.ndarray]) -> Optional[List[float]]:
        """Guaranteed max-abs reconstruction error per level, or None when there is no guarantee."""
        return None

    def _encode(self, levels: List[np.ndarray]) -> Tuple[Dict[str, Any], List[bytes]]:
        raise NotImplementedError

    def _decode(self, header: Dict[str, Any], shapes: List[Shape], body: List[bytes]) -> List[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RawCoder(PlaneCoder):
    """Raw little-endian float32 (lossless) or float16 arrays."""

    kind = "raw"

    def __init__(self, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = dtype
        self.name = self.family = dtype

    def max_abs_error(self, levels: Sequence[np.ndarray]) -> List[float]:
        if self.dtype == "float32":
            return [0.0 for _ in levels]
        # float16 rounding: relative 2**-11 for normal numbers, absolute 2**-25 for subnormals
        amax = [float(np.abs(level).max()) for level in _check_levels(levels)]
        return [a * 2.0**-11 + 2.0**-25 if a <= _F16_MAX else math.inf for a in amax]

    def _encode(self, levels: List[np.ndarray]) -> Tuple[Dict[str, Any], List[bytes]]:
        if self.dtype == "float16" and max(float(np.abs(x).max()) for x in levels) > _F16_MAX:
            raise BaselineError(f"values beyond the float16 range (|x| > {_F16_MAX})")
        dtype = np.dtype(self.dtype).newbyteorder("<")
        return {"dtype": self.dtype}, [b"".join(level.astype(dtype).tobytes() for level in levels)]

    def _decode(self, header: Dict[str, Any], shapes: List[Shape], body: List[bytes]) -> List[np.ndarray]:
        name = header.get("dtype")
        if name not in ("float32", "float16"):
            raise BaselineError(f"unknown raw dtype {name!r}")
        dtype = np.dtype(name).newbyteorder("<")
        (data,) = _take(body, 1)
        counts = [math.prod(s) for s in shapes]
        if len(data) != sum(counts) * dtype.itemsize:
            raise BaselineError(f"raw data has {len(data)} bytes, shapes need {sum(counts) * dtype.itemsize}")
        flat = np.frombuffer(data, dtype=dtype).astype(np.float32)
        ends = np.cumsum(counts)
        return [flat[end - n : end].reshape(s) for s, n, end in zip(shapes, counts, ends)]


def _compress(data: bytes, compressor: str) -> bytes:
    if compressor == "zlib":
        return zlib.compress(data, 9)
    if compressor == "lzma":
        return lzma.compress(data, preset=_LZMA_PRESET)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    raise BaselineError(f"unknown compressor {compressor!r} (expected one of {COMPRESSORS})")


def _decompress(data: bytes, compressor: str, size: int) -> bytes:
    """Decompress exactly ``size`` bytes, never producing more than ``size + 1``."""
    if compressor == "zlib":
        d = zlib.decompressobj()
        out, done = d.decompress(data, size + 1), d.eof and not d.unconsumed_tail and not d.unused_data
    elif compressor == "lzma":
        d = lzma.LZMADecompressor()
        out = d.decompress(data, max_length=size + 1)
        done = d.eof and not d.unused_data
    elif compressor == "zstd":
        import zstandard

        if zstandard.frame_content_size(data) != size:
            raise BaselineError(f"zstd frame does not declare {size} bytes")
        out, done = zstandard.ZstdDecompressor().decompress(data), True
    else:
        raise BaselineError(f"unknown compressor {compressor!r} (expected one of {COMPRESSORS})")
    if len(out) != size or not done:
        raise BaselineError(f"{compressor} stream does not hold exactly {size} bytes")
    return out


class QuantCoder(PlaneCoder):
    """Uniform ``bits``-bit quantisation per (plane, channel) on its [min, max] (float32), one value
    per byte, all levels compressed together with zlib (level 9), lzma (preset 9e) or zstd (19)."""

    kind = "quant"

    def __init__(self, bits: int = 8, compressor: str = "zlib") -> None:
        if type(bits) is not int or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
        if compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
        self.bits, self.compressor = bits, compressor
        self.family = f"quant{bits}"
        self.name = f"quant{bits}-{compressor}"

    def max_abs_error(self, levels: Sequence[np.ndarray]) -> List[float]:
        return [_quant_bound(level, 2**self.bits - 1) for level in _check_levels(levels)]

    def _encode(self, levels: List[np.ndarray]) -> Tuple[Dict[str, Any], List[bytes]]:
        steps = 2**self.bits - 1
        ranges = [_ranges(level) for level in levels]
        q = b"".join(_quantize(x, r, steps).tobytes() for x, r in zip(levels, ranges))
        body = [encode_array(r) for r in ranges] + [_compress(q, self.compressor)]
        return {"bits": self.bits, "compressor": self.compressor}, body

    def _decode(self, header: Dict[str, Any], shapes: List[Shape], body: List[bytes]) -> List[np.ndarray]:
        bits, compressor = header.get("bits"), header.get("compressor")
        if type(bits) is not int or not 1 <= bits <= 8:
            raise BaselineError(f"bad bit depth {bits!r}")
        ranges = [_decode_ranges(part, s) for part, s in zip(_take(body, len(shapes)), shapes)]
        counts = [math.prod(s) for s in shapes]
        (data,) = _take(body, 1)
        flat = np.frombuffer(_decompress(data, compressor, sum(counts)), dtype=np.uint8)
        steps = 2**bits - 1
        if flat.size and flat.max() > steps:
            raise BaselineError(f"quantised value {flat.max()} exceeds {steps}")
        out, start = [], 0
        for s, n, r in zip(shapes, counts, ranges):
            out.append(_dequantize(flat[start : start + n].reshape(s), r, steps))
            start += n
        return out


def avif_supported() -> bool:
    """Whether this Pillow can write AVIF."""
    from PIL import features

    return bool(features.check("avif"))


def _mosaic_grid(C: int) -> Tuple[int, int]:
    """(rows, columns) of the channel mosaic: ceil(sqrt(C)) columns."""
    cols = math.ceil(math.sqrt(C))
    return math.ceil(C / cols), cols


class ImageCoder(PlaneCoder):
    """8-bit quantisation per (plane, channel), then the C channels of each plane tiled into one
    grayscale mosaic (ceil(sqrt(C)) columns, unused tiles 0), coded with Pillow: 3 images per level.
    PNG is lossless (after quantisation); JPEG, WEBP and AVIF use ``quality``."""

    kind = "image"

    def __init__(self, fmt: str = "PNG", quality: Optional[int] = None) -> None:
        fmt = fmt.upper()
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"fmt must be one of {IMAGE_FORMATS}, got {fmt!r}")
        if fmt == "PNG":
            if quality is not None:
                raise ValueError("PNG is lossless: quality must be None")
        elif not (isinstance(quality, int) and 0 <= quality <= 100):
            raise ValueError(f"{fmt} needs an int quality in 0..100, got {quality!r}")
        if fmt == "AVIF" and not avif_supported():
            raise ValueError("this Pillow build cannot write AVIF")
        self.fmt, self.quality = fmt, quality
        self.family = fmt.lower()
        self.name = self.family if quality is None else f"{self.family}-q{quality}"

    def max_abs_error(self, levels: Sequence[np.ndarray]) -> Optional[List[float]]:
        if self.fmt != "PNG":
            return None
        return [_quant_bound(level, 255) for level in _check_levels(levels)]

    def _save_options(self) -> Dict[str, Any]:
        if self.fmt == "PNG":
            return {"optimize": True}
        if self.fmt == "JPEG":
            return {"quality": self.quality, "optimize": True}
        if self.fmt == "WEBP":
            return {"quality": self.quality, "method": 6}
        return {"quality": self.quality}

    def _encode(self, levels: List[np.ndarray]) -> Tuple[Dict[str, Any], List[bytes]]:
        from PIL import Image

        body = []
        for level in levels:
            ranges = _ranges(level)
            q = _quantize(level, ranges, 255)
            _, C, H, W = q.shape
            rows, cols = _mosaic_grid(C)
            body.append(encode_array(ranges))
            for plane in q:
                mosaic = np.zeros((rows * cols, H, W), np.uint8)
                mosaic[:C] = plane
                mosaic = mosaic.reshape(rows, cols, H, W).transpose(0, 2, 1, 3).reshape(rows * H, cols * W)
                buf = io.BytesIO()
                Image.fromarray(mosaic, mode="L").save(buf, format=self.fmt, **self._save_options())
                body.append(buf.getvalue())
        return {"format": self.fmt}, body

    def _decode(self, header: Dict[str, Any], shapes: List[Shape], body: List[bytes]) -> List[np.ndarray]:
        from PIL import Image

        fmt = header.get("format")
        if fmt not in IMAGE_FORMATS:
            raise BaselineError(f"unknown image format {fmt!r}")
        out = []
        for shape in shapes:
            _, C, H, W = shape
            rows, cols = _mosaic_grid(C)
            ranges = _decode_ranges(_take(body, 1)[0], shape)
            planes = []
            for i, data in enumerate(_take(body, 3)):
                image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
                if image.size != (cols * W, rows * H):
                    raise BaselineError(f"image {i} is {image.size}, expected {(cols * W, rows * H)}")
                mosaic = np.asarray(image.convert("L"), dtype=np.uint8)
                tiles = mosaic.reshape(rows, H, cols, W).transpose(0, 2, 1, 3).reshape(rows * cols, H, W)
                planes.append(tiles[:C])
            out.append(_dequantize(np.stack(planes), ranges, 255))
        return out


class CompressAICoder(PlaneCoder):
    """A pre-trained CompressAI RGB codec applied to the planes as they are (no adaptation).

    Per (plane, channel) [min, max] (float32) normalisation to [0, 1]; channels grouped 3 at a time
    as RGB images (the last group repeats the last channel: C = 16 gives 6 images per plane); images
    edge-padded to multiples of 64; the model's entropy coder on y quantised as round(gain * y) / gain
    (a rate knob: larger gain, more bytes). Supports ``bmshj2018-hyperprior`` (ScaleHyperprior) and
    ``mbt2018-mean`` (MeanScaleHyperprior) models; ``architecture`` names it for other classes with
    the same attributes (``g_a, g_s, h_a, h_s, entropy_bottleneck, gaussian_conditional``).
    """

    kind = "compressai"
    ARCHITECTURES = ("bmshj2018-hyperprior", "mbt2018-mean")
    PAD_MULTIPLE = 64

    def __init__(self, model: Any, gain: float = 1.0, name: Optional[str] = None,
                 architecture: Optional[str] = None) -> None:
        import torch
        from compressai.models import MeanScaleHyperprior, ScaleHyperprior

        if architecture is None:
            if isinstance(model, MeanScaleHyperprior):  # a subclass of ScaleHyperprior: test it first
                architecture = "mbt2018-mean"
            elif isinstance(model, ScaleHyperprior):
                architecture = "bmshj2018-hyperprior"
            else:
                raise TypeError(f"cannot tell the architecture of {type(model).__name__}: pass architecture=")
        if architecture not in self.ARCHITECTURES:
            raise ValueError(f"architecture must be one of {self.ARCHITECTURES}, got {architecture!r}")
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a finite float > 0, got {gain!r}")
        self.model, self.gain, self.architecture = model.eval(), float(gain), architecture
        self.family = "compressai"
        self.name = name if name is not None else f"{architecture}-g{self.gain:g}"
        with torch.no_grad():
            model.update(force=True)

    def _images(self, level: np.ndarray, ranges: np.ndarray) -> Any:
        """Normalised, channel-grouped, edge-padded RGB images (tensor ``[3 * G, 3, P, P]``)."""
        import torch
        import torch.nn.functional as F

        C, R = level.shape[1], level.shape[-1]
        lo, span = self._lo_span(ranges)
        x = np.where(span > 0, (level - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
        x = x[:, self._channel_index(C)].reshape(-1, 3, R, R)
        P = self._padded(R)
        t = torch.from_numpy(x).to(next(self.model.parameters()).device)
        return F.pad(t, (0, P - R, 0, P - R), mode="replicate") if P > R else t

    @staticmethod
    def _lo_span(ranges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """float64 offset and span ``[3, C, 1, 1]`` of the [0, 1] normalisation."""
        lo = ranges[..., 0].astype(np.float64)[..., None, None]
        return lo, ranges[..., 1].astype(np.float64)[..., None, None] - lo

    @staticmethod
    def _channel_index(C: int) -> List[int]:
        """Channels of the RGB groups: 0..C-1, then the last one repeated up to a multiple of 3."""
        return [min(i, C - 1) for i in range(3 * math.ceil(C / 3))]

    @classmethod
    def _padded(cls, R: int) -> int:
        return -(-R // cls.PAD_MULTIPLE) * cls.PAD_MULTIPLE

    def _gaussian_params(self, z_hat: Any, gain: float) -> Tuple[Any, Any]:
        """Gain-scaled ``(scales, means or None)`` of y from the decoded hyper-latent."""
        params = self.model.h_s(z_hat)
        if self.architecture == "mbt2018-mean":
            scales, means = params.chunk(2, 1)
            return scales * gain, means * gain
        return params * gain, None

    def _encode(self, levels: List[np.ndarray]) -> Tuple[Dict[str, Any], List[bytes]]:
        import torch

        from nerfcodec_ns.codec.entropy import reproducible_convolutions

        m, gc, gain = self.model, self.model.gaussian_conditional, self.gain
        body = []
        with torch.no_grad(), reproducible_convolutions():
            for level in levels:
                ranges = _ranges(level)
                y = m.g_a(self._images(level, ranges))
                z = m.h_a(y.abs() if self.architecture == "bmshj2018-hyperprior" else y)
                z_strings = m.entropy_bottleneck.compress(z)
                z_hat = m.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
                scales, means = self._gaussian_params(z_hat, gain)
                y_strings = gc.compress(y * gain, gc.build_indexes(scales), means=means)
                body += [encode_array(ranges), encode_strings(z_strings), encode_strings(y_strings)]
        return {"architecture": self.architecture, "gain": gain}, body

    def _decode(self, header: Dict[str, Any], shapes: List[Shape], body: List[bytes]) -> List[np.ndarray]:
        import torch

        from nerfcodec_ns.codec.entropy import reproducible_convolutions

        if header.get("architecture") != self.architecture:
            raise BaselineError(f"payload is for a {header.get('architecture')!r} model, "
                                f"this coder holds a {self.architecture!r} one")
        gain = header.get("gain")
        if not (isinstance(gain, float) and math.isfinite(gain) and gain > 0):
            raise BaselineError(f"bad gain {gain!r}")
        m, gc = self.model, self.model.gaussian_conditional
        out = []
        with torch.no_grad(), reproducible_convolutions():
            for shape in shapes:
                _, C, R, _ = shape
                ranges = _decode_ranges(_take(body, 1)[0], shape)
                z_strings, y_strings = (decode_strings(part) for part in _take(body, 2))
                images = len(self._channel_index(C))  # 3 planes x ceil(C / 3) groups
                if len(z_strings) != images or len(y_strings) != images:
                    raise BaselineError(f"level {shape}: expected {images} z and y strings, got "
                                        f"{len(z_strings)} and {len(y_strings)}")
                z_side = self._padded(R) // 64  # g_a and h_a downsample by 16 and 4
                z_hat = m.entropy_bottleneck.decompress(z_strings, (z_side, z_side))
                scales, means = self._gaussian_params(z_hat, gain)
                y_hat = gc.decompress(y_strings, gc.build_indexes(scales), z_hat.dtype, means=means) / gain
                x = m.g_s(y_hat).clamp(0, 1)[..., :R, :R].reshape(3, -1, R, R)[:, :C]
                lo, span = self._lo_span(ranges)
                out.append((lo + x.cpu().numpy().astype(np.float64) * span).astype(np.float32))
        return out


def default_coders(compressai_model: Any = None) -> List[PlaneCoder]:
    """The usual baseline set: float32, float16, quant8 x {zlib, lzma, zstd}, quant6 x {lzma, zstd},
    PNG, JPEG and WEBP at qualities 95..5, AVIF at 90..5 (when Pillow has it), and, given a
    CompressAI model, :class:`CompressAICoder` at gains 0.5, 1, 2 and 4."""
    coders: List[PlaneCoder] = [RawCoder("float32"), RawCoder("float16")]
    coders += [QuantCoder(8, c) for c in ("zlib", "lzma", "zstd")]
    coders += [QuantCoder(6, c) for c in ("lzma", "zstd")]
    coders.append(ImageCoder("PNG"))
    for fmt in ("JPEG", "WEBP"):
        coders += [ImageCoder(fmt, q) for q in (95, 85, 70, 50, 30, 15, 5)]
    if avif_supported():
        coders += [ImageCoder("AVIF", q) for q in (90, 75, 60, 45, 30, 15, 5)]
    if compressai_model is not None:
        coders += [CompressAICoder(compressai_model, gain) for gain in (0.5, 1.0, 2.0, 4.0)]
    return coders
