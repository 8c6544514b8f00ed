"""NeRFCodec plane codec: a CompressAI image codec adapted to C-channel feature planes.

A pre-trained CompressAI model (the *backbone*) is turned into a :class:`PlaneCodec` for the
``[3, C, R, R]`` tri-plane levels of :mod:`nerfcodec_ns.field.field` (the three planes are a batch of
three C-channel images):

* ``g_a``: the backbone analysis transform with a new first layer taking C channels (trainable,
  encoder side only);
* ``g_s``: the backbone synthesis transform, frozen, whose last layer is replaced by a new
  content-specific *head* producing C channels (trainable, fake-quantized, transmitted);
* ``h_a`` trainable, ``h_s`` frozen, ``entropy_bottleneck`` trainable (its quantized CDF tables are
  transmitted; with ``exact_tables=False`` its float16 parameters),
  ``gaussian_conditional`` as in the backbone; for ``cheng2020-anchor`` also the trainable,
  transmitted ``context_prediction`` and ``entropy_parameters``;
* per level: min/max normalisation to [0, 1] (float16 stats), zero padding to a multiple of 64,
  and optional *feature compensation* (one learnable vector per axis and channel, added to each
  decoded plane as a rank-1 outer product).

The other codec modules hold what this one builds on: :mod:`~nerfcodec_ns.codec.settings`
(:class:`CodecConfig`), :mod:`~nerfcodec_ns.codec.backbone` (backbone files and loading),
:mod:`~nerfcodec_ns.codec.quant` (fake quantization, the quantized head) and
:mod:`~nerfcodec_ns.codec.entropy` (bounded entropy decoding, reproducible convolutions).

compressai is imported lazily (inside functions): nerfstudio imports the plugin config for every
``ns-*`` command, and this module must stay cheap to import.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int8
from torch import Tensor, nn

from nerfcodec_ns.codec.backbone import DYNAMIC_BUFFERS, BackboneInfo, load_backbone
from nerfcodec_ns.codec.exact import (
    BottleneckTables,
    ExactHyperSynthesis,
    bottleneck_tables,
    load_bottleneck_tables,
    load_gaussian_tables,
)
from nerfcodec_ns.codec.entropy import (
    bounded_bottleneck_decompress,
    bounded_decompress,
    padded,
    rans_pad_bytes,
    reproducible_convolutions,
)
from nerfcodec_ns.codec.quant import QuantizedHead, fake_quantize, quantize_int, round_ste
from nerfcodec_ns.codec.settings import CodecConfig
from nerfcodec_ns.field.field import PLANE_AXES

#: Planes are zero-padded so H and W are multiples of this (g_a downsamples by 16, h_a by 4 more).
PAD_MULTIPLE = 64
#: Largest span (and magnitude) of the entropy bottleneck's quantiles: bounds its CDF tables' length.
MAX_QUANTILE_SPAN = 1 << 14
#: Longest transmitted bottleneck CDF table (CompressAI's ``_cdf_length``) a span of
#: MAX_QUANTILE_SPAN gives: ceil of each half, the median's symbol and the tail's two entries.
MAX_TABLE_LENGTH = MAX_QUANTILE_SPAN + 5
#: Initial value of the x-axis compensation vectors (y and z start at 0; see ``PlaneCodec``).
COMPENSATION_INIT = 0.1


def bfloat16_is_native(device_type: str) -> bool:
    """Whether ``device_type`` ("cpu", "cuda") computes bfloat16 in hardware: a CUDA GPU that supports
    it, or a CPU whose ``/proc/cpuinfo`` flags list ``avx512_bf16`` or ``amx_bf16`` (Linux; False
    where the flags cannot be read). Chooses ``CodecConfig.train_precision = "auto"``."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and _cpu_has_native_bfloat16()


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


# ----------------------------------------------------------------------------------------------
# Layer surgery: C-channel encoder input and decoder head
# ----------------------------------------------------------------------------------------------


def _tiled_index(C: int, group: int = 1) -> Tensor:
    """Channel map c -> c % 3 (RGB tiling); with sub-pixel groups, c*g+s -> (c%3)*g+s."""
    rgb = torch.arange(C) % 3
    return (rgb[:, None] * group + torch.arange(group)[None, :]).reshape(-1)


def _encoder_input_layer(first: nn.Module, architecture: str, C: int, N: int, adapt: bool,
                         tiled_init: bool = False) -> nn.Module:
    """First ``g_a`` layer taking C channels: new (``adapt``) or the pretrained RGB layer tiled over C
    (also the starting point of a new layer with ``tiled_init``).

    Tiling gives input channel c the pretrained weights of RGB channel ``c % 3`` times ``3 / C``, so
    each RGB input effectively sees the mean of its channel group.
    """
    from compressai.layers import ResidualBlockWithStride
    from compressai.models.utils import conv

    if architecture == "cheng2020-anchor":
        layer: nn.Module = ResidualBlockWithStride(C, N, stride=2)
    else:
        layer = conv(C, N, kernel_size=5, stride=2)
    if adapt and not tiled_init:
        return layer
    idx = _tiled_index(C)
    state = {k: (v[:, idx] * (3.0 / C) if v.ndim == 4 and v.shape[1] == 3 else v)
             for k, v in first.state_dict().items()}
    layer.load_state_dict(state)
    return layer


def _decoder_head(
    last: nn.Module, architecture: str, C: int, N: int, bits: int, adapt: bool, tiled_init: bool = False
) -> QuantizedHead:
    """Last ``g_s`` layer producing C channels, as a :class:`QuantizedHead`.

    ``adapt``: a new trainable layer, fake-quantized to ``bits``. Otherwise the pretrained RGB layer
    tiled over C (output channel c copies RGB channel ``c % 3``), frozen and not quantized (the
    decoder rebuilds it from the backbone, so it is not transmitted).
    """
    from compressai.models.utils import deconv

    if architecture == "cheng2020-anchor":  # subpel_conv3x3(N, C, 2): conv to 4C channels + PixelShuffle(2)
        head = QuantizedHead(nn.Conv2d(N, C * 4, kernel_size=3, padding=1), bits, upscale=2, quantize=adapt)
        old, idx, dim = last[0], _tiled_index(C, group=4), 0
    else:
        head = QuantizedHead(deconv(N, C, kernel_size=5, stride=2), bits, quantize=adapt)
        old, idx, dim = last, _tiled_index(C), 1
    if not adapt or tiled_init:
        with torch.no_grad():
            head.layer.weight.copy_(old.weight.index_select(dim, idx))
            head.layer.bias.copy_(old.bias[idx])
    return head

# ----------------------------------------------------------------------------------------------
# The plane codec
# ----------------------------------------------------------------------------------------------


class CodecOutput(NamedTuple):
    """Result of :meth:`PlaneCodec.forward`."""

    x_hat: Float[Tensor, "3 C R R"]
    """Decoded (and compensated) planes, differentiable."""
    likelihoods: Dict[str, Tensor]
    """``{"y": [3, M, H/16, W/16], "z": [3, N, H/64, W/64]}`` likelihoods of the padded planes."""
    bits: Float[Tensor, ""]
    """Estimated rate in bits: sum of -log2 likelihoods over y and z."""


@dataclass
class CompressedLevel:
    """Bitstream of one level: entropy-coded strings and the side information needed to decode."""

    y_strings: List[bytes]
    """One string per coded image: one per plane (xy, xz, yz), or ``mix_images`` per plane with mixing."""
    z_strings: List[bytes]
    """One string per coded image (as ``y_strings``)."""
    z_shape: Tuple[int, int]
    """Spatial size of z (padded size / 64)."""
    padded_shape: Tuple[int, int]
    """Padded plane size (H, W), multiples of 64."""
    resolution: int
    """Original plane side R."""
    stats_min: Tensor
    """Per plane per channel minimum, float16 ``[3, C]``."""
    stats_max: Tensor
    """Per plane per channel maximum, float16 ``[3, C]``."""

    def num_bytes(self) -> int:
        """Bytes of the entropy-coded strings (y + z), excluding side information."""
        return sum(len(s) for s in self.y_strings) + sum(len(s) for s in self.z_strings)


def estimate_bits(likelihoods: Union[Dict[str, Tensor], Sequence[Tensor]]) -> Tensor:
    """Estimated code length in bits: ``sum(-log2 p)`` over all likelihood tensors (scalar tensor)."""
    values = likelihoods.values() if isinstance(likelihoods, dict) else likelihoods
    return sum(-torch.log2(p).sum() for p in values)  # type: ignore[return-value]


def plane_stats(planes: Float[Tensor, "3 C R R"], clip_sigmas: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Per plane per channel normalisation range (lo, hi) as float16 ``[3, C]``, rounded outwards.

    ``clip_sigmas`` = 0: the min and max. > 0: mean -/+ clip_sigmas standard deviations, narrowed to
    the min and max (values outside are clipped by the codec's normalisation).
    """
    x = planes.detach().float()
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    if clip_sigmas > 0:
        mean, std = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
        lo, hi = torch.maximum(lo, mean - clip_sigmas * std), torch.minimum(hi, mean + clip_sigmas * std)
    lo16, hi16 = lo.half(), hi.half()
    lo16 = torch.where(lo16.float() > lo, torch.nextafter(lo16, torch.full_like(lo16, -float("inf"))), lo16)
    hi16 = torch.where(hi16.float() < hi, torch.nextafter(hi16, torch.full_like(hi16, float("inf"))), hi16)
    return lo16, hi16


def clip_to_stats(planes: Float[Tensor, "3 C R R"], lo16: Tensor, hi16: Tensor) -> Float[Tensor, "3 C R R"]:
    """``planes`` clipped per plane and channel to the ``[3, C]`` float16 range of :func:`plane_stats`
    (the values the codec's normalisation keeps; differentiable inside the range)."""
    lo, hi = lo16.to(planes.dtype)[..., None, None], hi16.to(planes.dtype)[..., None, None]
    return torch.maximum(torch.minimum(planes, hi), lo)


class PlaneCodec(nn.Module):
    """NeRFCodec's content-adapted codec for ``[3, C, R, R]`` feature planes, shared by all levels.

    Args:
        config: backbone and adaptation options.
        num_channels: feature channels C of every level.
        resolutions: plane side R of each level (one compensation vector set per level).
        backbone: ``(model, info)`` from :func:`load_backbone`; loaded from ``config`` when None.
            The model is copied (unless ``copy_backbone=False``), so one backbone may seed several codecs.

    Compensation vectors ``vectors[level]`` are ``[3 axes, C, R]``; plane (a, b) of ``PLANE_AXES``
    gets ``outer(v_b, v_a)`` per channel (H indexes axis b, W axis a, as in ``field.sample_planes``).
    They start with the x-axis vectors at ``COMPENSATION_INIT`` and y/z at zero: the correction is
    exactly zero at start, yet every vector receives gradients after one step (all-zero vectors
    would be a saddle point of the product and never move).

    For the hyperprior backbones the eval-mode ``forward`` decodes exactly what
    ``decompress(compress(x))`` gives, once :meth:`update` has run (``compress`` calls it). For
    cheng2020-anchor, the eval forward uses CompressAI's parallel approximation of the autoregressive
    decoder, so its result differs slightly from ``decompress``.
    """

    def __init__(self, config: CodecConfig, num_channels: int, resolutions: Sequence[int],
                 backbone: Optional[Tuple[nn.Module, BackboneInfo]] = None, copy_backbone: bool = True) -> None:
        super().__init__()
        model, info = backbone if backbone is not None else load_backbone(config)
        if info.architecture != config.backbone:
            raise ValueError(f"backbone is {info.architecture}, config asks for {config.backbone}")
        if copy_backbone and backbone is not None:
            model = copy.deepcopy(model)
        model = model.float().cpu()
        self.config = config
        self.backbone_info = info
        self.architecture = info.architecture
        self.num_channels = C = int(num_channels)
        self.resolutions = tuple(int(r) for r in resolutions)
        self.N, self.M = info.N, info.M
        adapt = config.adapt_heads

        tiled = config.head_init == "pretrained"
        #: RGB images per plane through the channel mixers (0: one C-channel image, no mixers)
        self.mix_images = k = int(config.mix_images)
        C_img = 3 if k else C  # channels of one coded image: with mixing, the backbone's own RGB layers
        first = _encoder_input_layer(model.g_a[0], self.architecture, C_img, self.N, adapt, tiled)
        head = _decoder_head(model.g_s[-1], self.architecture, C_img, self.N, config.head_bits, adapt, tiled)
        self.g_a = nn.Sequential(first, *model.g_a[1:])
        self.g_s = nn.Sequential(*model.g_s[:-1], head)
        self.h_a, self.h_s = model.h_a, model.h_s
        self.entropy_bottleneck = model.entropy_bottleneck
        self.gaussian_conditional = model.gaussian_conditional
        if self.architecture == "cheng2020-anchor":
            self.context_prediction = model.context_prediction
            self.entropy_parameters = model.entropy_parameters
        #: Entropy-coding tables chosen the same on every CPU (scene-file format 3, codec/exact.py): the
        #: shipped Gaussian tables, transmitted bottleneck tables and the fixed-point ``h_s``. False:
        #: CompressAI's float tables (format 1 and 2 files, and cheng2020-anchor, whose context model
        #: has no exact path).
        self.exact_tables = self.architecture != "cheng2020-anchor"

        # the quantization gain in use (starts at config.latent_gain; rate control may retune it at the
        # end of training), kept in checkpoints and written to the scene file's header
        self.register_buffer("latent_gain", torch.tensor(float(config.latent_gain)))

        vectors = []
        for r in (self.resolutions if config.compensation else ()):
            v = torch.zeros(3, C, r)
            v[0] = COMPENSATION_INIT
            vectors.append(nn.Parameter(v))
        self.vectors = nn.ParameterList(vectors)

        # channel mixers per level (mix_images = k): C -> 3k channels of each plane into k RGB images
        # (encoder side), and 3k -> C back (transmitted, head_bits integers per output channel); as
        # grouped 1x1 convolutions over the three planes. Started from the planes' principal
        # components on the first training forward of each level (init_mixer; mix_ready marks it).
        self.mix_in = nn.ModuleList([nn.Conv2d(3 * C, 9 * k, 1, groups=3) for _ in self.resolutions if k])
        self.mix_out = nn.ModuleList([QuantizedHead(nn.Conv2d(9 * k, 3 * C, 1, groups=3), config.head_bits)
                                      for _ in self.resolutions if k])
        self.register_buffer("mix_ready", torch.zeros(len(self.mix_in), dtype=torch.bool))

        for p in list(self.g_s.parameters()) + list(self.h_s.parameters()):
            p.requires_grad_(False)
        for p in self.g_s_head.parameters():
            p.requires_grad_(adapt)
        for p in self.g_a[0].parameters():
            p.requires_grad_(adapt)

    # -- structure ---------------------------------------------------------------------------

    @property
    def g_s_head(self) -> QuantizedHead:
        """The content-specific decoder head (last layer of ``g_s``)."""
        return self.g_s[-1]  # type: ignore[return-value]

    @property
    def gain(self) -> float:
        """The latent quantization gain in use (see ``CodecConfig.latent_gain``)."""
        return float(self.latent_gain)

    @property
    def autoregressive(self) -> bool:
        """True for cheng2020-anchor (context model on y)."""
        return self.architecture == "cheng2020-anchor"

    def parameter_groups(self, split_heads: bool = False) -> Dict[str, List[nn.Parameter]]:
        """Trainable parameters, CompressAI's net/aux split: ``{"codec": [...], "codec_aux": [quantiles]}``.

        ``split_heads=True`` moves the decoder head, the compensation vectors and the decoder-side
        channel mixers to ``"codec_heads"``
        (the reference trains them with a larger learning rate than the rest).
        """
        aux = self.entropy_bottleneck.quantiles
        sent = [*self.g_s_head.parameters(), *self.vectors, *self.mix_out.parameters()]
        heads = {id(p) for p in sent} if split_heads else set()
        groups: Dict[str, List[nn.Parameter]] = {"codec": [], "codec_aux": [aux] if aux.requires_grad else []}
        if split_heads:
            groups["codec_heads"] = []
        for p in self.parameters():
            if p.requires_grad and p is not aux:
                groups["codec_heads" if id(p) in heads else "codec"].append(p)
        return groups

    def frozen_parameters(self) -> List[nn.Parameter]:
        """Parameters that never train (the frozen backbone parts)."""
        return [p for p in self.parameters() if not p.requires_grad]

    def aux_loss(self) -> Tensor:
        """CompressAI auxiliary loss; trains only ``entropy_bottleneck.quantiles``."""
        return self.entropy_bottleneck.loss()

    # -- per-level pre/post-processing ----------------------------------------------------------

    def _check_level(self, planes: Tensor, level: int) -> int:
        if not 0 <= level < len(self.resolutions):
            raise IndexError(f"level {level} out of range for {len(self.resolutions)} levels")
        R = self.resolutions[level]
        if tuple(planes.shape) != (3, self.num_channels, R, R):
            raise ValueError(f"level {level} expects planes [3, {self.num_channels}, {R}, {R}], "
                             f"got {list(planes.shape)}")
        return R

    @staticmethod
    def _padding(R: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        from compressai.ops import compute_padding

        return compute_padding(R, R, min_div=PAD_MULTIPLE)

    @staticmethod
    def _offset_span(lo16: Tensor, hi16: Tensor) -> Tuple[Tensor, Tensor]:
        """``[3, C, 1, 1]`` offset and span (float32) of the normalisation from the float16 stats."""
        lo, hi = lo16.float()[..., None, None], hi16.float()[..., None, None]
        return lo, (hi - lo).clamp_min(1e-12)

    def _normalize(self, planes: Tensor, lo16: Tensor, hi16: Tensor) -> Float[Tensor, "3 C H W"]:
        """Map planes to [0, 1] with the float16 stats and zero-pad to multiples of 64."""
        lo, span = self._offset_span(lo16, hi16)
        x = (planes.float() - lo) / span
        if self.config.clip_sigmas > 0:
            x = x.clamp(0.0, 1.0)
        # plain (NCHW) layout: the field's planes are channels-last, and the convolutions must see the
        # same layout at training-time evaluation and at decoding to give bit-identical results
        return F.pad(x, self._padding(planes.shape[-1])[0]).contiguous()

    def _denormalize(
        self, x: Tensor, R: int, lo16: Tensor, hi16: Tensor, level: int
    ) -> Float[Tensor, "3 C R R"]:
        """Crop the padding, undo the normalisation and add the level's compensation."""
        lo, span = self._offset_span(lo16, hi16)
        x = F.pad(x, self._padding(R)[1]) * span + lo
        return x + self.compensation(level) if self.config.compensation else x

    def _to_images(self, x: Tensor, level: int) -> Tensor:
        """Normalised padded planes ``[3, C, H, W]`` -> the coded images: ``[3k, 3, H, W]`` (image
        ``p * k + j`` is plane p's j-th RGB image) with channel mixing, else ``x`` itself."""
        if not self.mix_images:
            return x
        H, W = x.shape[-2:]
        return self.mix_in[level](x.reshape(1, -1, H, W)).reshape(3 * self.mix_images, 3, H, W)

    def _from_images(self, x: Tensor, level: int) -> Tensor:
        """Inverse of :meth:`_to_images` on decoded images: ``[3k, 3, H, W]`` -> ``[3, C, H, W]``."""
        if not self.mix_images:
            return x
        H, W = x.shape[-2:]
        return self.mix_out[level](x.reshape(1, -1, H, W)).reshape(3, self.num_channels, H, W)

    @torch.no_grad()
    def init_mixer(self, level: int, planes: Float[Tensor, "3 C R R"]) -> None:
        """Start level ``level``'s mixers from the principal components of its normalised planes.

        Per plane: the 3k leading eigenvectors U ``[C, 3k]`` of the channel covariance (zero columns
        past C) and one amplitude a that maps the largest principal-component magnitude to 0.5, so the
        encoder mixer gives ``0.5 + a U^T (x - mean)`` (images around mid-grey, each component keeping
        its share of the variance) and the decoder mixer ``mean + U (rgb - 0.5) / a`` inverts it on
        the kept components.
        """
        R = self._check_level(planes, level)
        x = F.pad(self._normalize(planes, *plane_stats(planes, self.config.clip_sigmas)), self._padding(R)[1])
        C, k3 = self.num_channels, 3 * self.mix_images
        w_in, b_in = self.mix_in[level].weight, self.mix_in[level].bias
        w_out, b_out = self.mix_out[level].layer.weight, self.mix_out[level].layer.bias
        for p in range(3):
            X = x[p].reshape(C, R * R).double()
            mean = X.mean(dim=1)
            centred = X - mean[:, None]
            _, vecs = torch.linalg.eigh(centred @ centred.T)  # ascending eigenvalues
            U = torch.zeros(C, k3, dtype=torch.float64)
            kept = min(k3, C)
            U[:, :kept] = vecs.flip(1)[:, :kept]
            a = 0.5 / float((U.T @ centred).abs().max().clamp_min(1e-6))
            w_in[p * k3:(p + 1) * k3, :, 0, 0] = (a * U.T).to(w_in)
            b_in[p * k3:(p + 1) * k3] = (0.5 - a * (U.T @ mean)).to(b_in)
            w_out[p * C:(p + 1) * C, :, 0, 0] = (U / a).to(w_out)
            b_out[p * C:(p + 1) * C] = (mean - U.sum(dim=1) * (0.5 / a)).to(b_out)
        self.mix_ready[level] = True

    def compensation(self, level: int) -> Float[Tensor, "3 C R R"]:
        """Rank-1 correction of each plane from the level's fake-quantized vectors."""
        v = fake_quantize(self.vectors[level], self.config.vector_bits, dims=(2,))
        return torch.stack([v[b][:, :, None] * v[a][:, None, :] for a, b in PLANE_AXES])

    # -- forward (training / evaluation) ----------------------------------------------------------

    def forward(self, planes: Float[Tensor, "3 C R R"], level: int) -> CodecOutput:
        """Code one level: additive-noise proxy in training mode, rounding in eval mode (eval mode
        uses :func:`reproducible_convolutions`, as ``decompress`` does, so both agree bit for bit)."""
        if self.training:
            return self._forward(planes, level)
        with reproducible_convolutions():
            return self._forward(planes, level)

    def uses_bfloat16(self, device_type: str = "cpu") -> bool:
        """Whether training-mode transforms on ``device_type`` run under bfloat16 autocast
        (``CodecConfig.train_precision``; "auto": :func:`bfloat16_is_native`)."""
        precision = self.config.train_precision
        return precision == "bfloat16" or (precision == "auto" and bfloat16_is_native(device_type))

    def _transform(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)``; in training with ``train_precision="bfloat16"`` under bfloat16 autocast on a
        channels-last copy, cast back to float32."""
        if not (self.training and self.uses_bfloat16(x.device.type)):
            return module(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return module(x.contiguous(memory_format=torch.channels_last)).float()

    def _forward(self, planes: Tensor, level: int) -> CodecOutput:
        R = self._check_level(planes, level)
        if self.mix_images and self.training and not bool(self.mix_ready[level]):
            self.init_mixer(level, planes)
        lo16, hi16 = plane_stats(planes, self.config.clip_sigmas)
        y = self._transform(self.g_a, self._to_images(self._normalize(planes, lo16, hi16), level))
        z = self._transform(self.h_a, torch.abs(y) if self.architecture == "bmshj2018-hyperprior" else y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        rounded = self.training and self.config.synthesis_input == "round"
        if rounded:  # h_s sees the z the decoder gets (rounded around the medians); the rate keeps the noise
            medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
            z_hat = round_ste(z - medians) + medians
        params = self._transform(self.h_s, z_hat)
        g = self.gain
        if self.architecture == "bmshj2018-hyperprior":
            y_hat, y_likelihoods = self.gaussian_conditional(y * g, params * g)
            y_hat = (round_ste(y * g) if rounded else y_hat) / g
        elif self.architecture == "mbt2018-mean":
            scales, means = params.chunk(2, 1)
            y_hat, y_likelihoods = self.gaussian_conditional(y * g, scales * g, means=means * g)
            y_hat = (round_ste(y * g - means * g) + means * g if rounded else y_hat) / g
        else:
            y_hat = (round_ste(y) if rounded
                     else self.gaussian_conditional.quantize(y, "noise" if self.training else "dequantize"))
            ctx = self.context_prediction(y_hat)
            scales, means = self.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
            _, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        x_hat = self._denormalize(self._from_images(self._transform(self.g_s, y_hat), level), R, lo16, hi16, level)
        likelihoods = {"y": y_likelihoods, "z": z_likelihoods}
        return CodecOutput(x_hat, likelihoods, estimate_bits(likelihoods))

    # -- entropy coding ---------------------------------------------------------------------------

    def _transmitted_float16_modules(self) -> List[nn.Module]:
        mods: List[nn.Module] = [self.entropy_bottleneck]
        if self.autoregressive:
            mods += [self.context_prediction, self.entropy_parameters]
        return mods

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Prepare for entropy coding: snap the parameters transmitted as float16 (entropy bottleneck,
        cheng context model) to float16 values in place, then rebuild the CDF tables (CompressAI
        ``update``). Returns True when the tables were rebuilt."""
        from compressai.models.base import get_scale_table

        for module in self._transmitted_float16_modules():
            for p in module.parameters():
                p.copy_(p.half().float())
        updated = self.entropy_bottleneck.update(force=force)
        if self.exact_tables:
            if updated or self.gaussian_conditional._offset.numel() == 0:
                load_gaussian_tables(self.gaussian_conditional)
            return updated
        updated |= self.gaussian_conditional.update_scale_table(get_scale_table(), force=force)
        return updated

    def coding_params(self, z_hat: Tensor) -> Tensor:
        """``h_s(z_hat)``, the parameters that choose the y tables: in fixed point with
        ``exact_tables`` (bit-identical on every CPU), else the float network."""
        if self.exact_tables:
            return ExactHyperSynthesis(self.h_s)(z_hat).to(z_hat.device)
        return self.h_s(z_hat)

    def bottleneck_tables(self) -> BottleneckTables:
        """The entropy bottleneck's tables as transmitted with ``exact_tables`` (runs :meth:`update`
        when the tables are not built)."""
        if not self._is_updated():
            self.update(force=True)
        return bottleneck_tables(self.entropy_bottleneck)

    def _is_updated(self) -> bool:
        return self.entropy_bottleneck._offset.numel() > 0 and self.gaussian_conditional._offset.numel() > 0

    @torch.no_grad()
    def compress(self, planes: Float[Tensor, "3 C R R"], level: int) -> CompressedLevel:
        """Entropy-code one level (calls ``update(force=True)`` first, so tables match the parameters)."""
        R = self._check_level(planes, level)
        self.update(force=True)
        with reproducible_convolutions():
            return self._compress(planes, level, R)

    def _compress(self, planes: Tensor, level: int, R: int) -> CompressedLevel:
        lo16, hi16 = plane_stats(planes, self.config.clip_sigmas)
        x = self._normalize(planes, lo16, hi16)
        y = self.g_a(self._to_images(x, level))
        z = self.h_a(torch.abs(y) if self.architecture == "bmshj2018-hyperprior" else y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        y_strings = self._compress_y(y, self.coding_params(z_hat))
        return CompressedLevel(y_strings, z_strings, tuple(z.shape[-2:]), tuple(x.shape[-2:]), R,
                               lo16.cpu(), hi16.cpu())

    @torch.no_grad()
    def decompress(self, compressed: CompressedLevel, level: int) -> Float[Tensor, "3 C R R"]:
        """Decode one level (compensation included) from :meth:`compress`'s output."""
        R = compressed.resolution
        if R != self.resolutions[level]:
            raise ValueError(f"bitstream has R={R}, level {level} has R={self.resolutions[level]}")
        device = self.entropy_bottleneck.quantiles.device
        with reproducible_convolutions():
            _, y_hat = self.decode_latents(compressed)
            lo16, hi16 = compressed.stats_min.to(device), compressed.stats_max.to(device)
            return self._denormalize(self._from_images(self.g_s(y_hat), level), R, lo16, hi16, level)

    @torch.no_grad()
    def decode_latents(self, compressed: CompressedLevel) -> Tuple[Tensor, Tensor]:
        """``(z_hat, y_hat)`` of one level: what the entropy decoder gives, before ``g_s``. With
        ``exact_tables`` these are the same on every CPU."""
        if not self._is_updated():
            self.update(force=True)
        with reproducible_convolutions():
            z_hat = bounded_bottleneck_decompress(self.entropy_bottleneck, compressed.z_strings,
                                                  compressed.z_shape)
            return z_hat, self._decompress_y(compressed.y_strings, self.coding_params(z_hat))

    def _compress_y(self, y: Tensor, params: Tensor) -> List[bytes]:
        gc, g = self.gaussian_conditional, self.gain
        if self.architecture == "bmshj2018-hyperprior":
            return gc.compress(y * g, gc.build_indexes(params * g))
        if self.architecture == "mbt2018-mean":
            scales, means = params.chunk(2, 1)
            return gc.compress(y * g, gc.build_indexes(scales * g), means=means * g)
        from compressai.models import JointAutoregressiveHierarchicalPriors as AR

        k, pad = 5, 2  # CompressAI's context kernel and padding
        y_pad = F.pad(y, (pad, pad, pad, pad))
        H, W = y.shape[-2:]
        # CompressAI's raster-scan coder, run with this module as `self` (same attribute names)
        return [
            AR._compress_ar(self, y_pad[i : i + 1], params[i : i + 1], H, W, k, pad) for i in range(len(y))
        ]

    def _decompress_y(self, strings: List[bytes], params: Tensor) -> Tensor:
        gc, g = self.gaussian_conditional, self.gain
        if self.architecture == "bmshj2018-hyperprior":
            return bounded_decompress(gc, strings, gc.build_indexes(params * g), params.dtype) / g
        if self.architecture == "mbt2018-mean":
            scales, means = params.chunk(2, 1)
            return bounded_decompress(gc, strings, gc.build_indexes(scales * g), means=means * g) / g
        from compressai.models import JointAutoregressiveHierarchicalPriors as AR

        k, pad = 5, 2
        H, W = params.shape[-2:]
        y_hat = params.new_zeros((len(strings), self.M, H + 2 * pad, W + 2 * pad))
        for i, s in enumerate(strings):
            # fills y_hat[i] in place; the string is padded so the decoder cannot read past it
            s = padded(s, rans_pad_bytes(self.M * H * W, len(s)))
            AR._decompress_ar(self, s, y_hat[i : i + 1], params[i : i + 1], H, W, k, pad)
        return F.pad(y_hat, (-pad, -pad, -pad, -pad))

    # -- decoder-side payload ------------------------------------------------------------------

    def quantize_head(self) -> Tuple[Int8[Tensor, "..."], Tensor, Tensor]:
        """Decoder head as ``(int8 weights, float32 per-output-channel scales, float32 bias)``."""
        return self.g_s_head.quantize()

    def load_quantized_head(self, ints: Tensor, scales: Tensor, bias: Tensor) -> None:
        """Inverse of :meth:`quantize_head`: ``forward`` then uses exactly ``ints * scales``."""
        self.g_s_head.load_quantized(ints, scales, bias)

    def quantize_vectors(self, level: int) -> Tuple[Int8[Tensor, "3 C R"], Float[Tensor, "3 C"]]:
        """Compensation vectors of a level as ``(int8 [3, C, R], float32 scales [3, C])``."""
        ints, scale = quantize_int(self.vectors[level], self.config.vector_bits, dims=(2,))
        return ints, scale[..., 0].clone()

    @torch.no_grad()
    def load_quantized_vectors(self, level: int, ints: Tensor, scales: Tensor) -> None:
        """Inverse of :meth:`quantize_vectors`."""
        v = self.vectors[level]
        v.copy_(ints.to(v.device, torch.float32) * scales.to(v.device, torch.float32)[..., None])

    def transmitted_state(self) -> Dict[str, Tensor]:
        """Content-specific decoder-side tensors, exactly as they would be stored.

        Keys: ``head.int8`` / ``head.scale`` / ``head.bias`` (only with ``adapt_heads``),
        ``mix.<level>.int8`` / ``.scale`` / ``.bias`` (the decoder-side channel mixers, only with
        ``mix_images``),
        ``vectors.<level>.int8`` / ``vectors.<level>.scale`` (only with ``compensation``), and the
        float16 parameters of ``entropy_bottleneck.*`` (and ``context_prediction.*`` — unmasked
        weights only — and ``entropy_parameters.*`` for cheng2020). Call :meth:`update` first so the
        float16 values are the ones the encoder used.
        """
        state: Dict[str, Tensor] = {}
        if self.config.adapt_heads:
            state["head.int8"], state["head.scale"], state["head.bias"] = self.quantize_head()
        for level in range(len(self.vectors)):
            state[f"vectors.{level}.int8"], state[f"vectors.{level}.scale"] = self.quantize_vectors(level)
        for level, mixer in enumerate(self.mix_out):
            state[f"mix.{level}.int8"], state[f"mix.{level}.scale"], state[f"mix.{level}.bias"] = mixer.quantize()
        for name, p in self.named_parameters():
            if name.startswith("entropy_bottleneck.") and self.exact_tables:
                continue  # the bottleneck's tables are sent instead (bottleneck_tables)
            if name.startswith(("entropy_bottleneck.", "entropy_parameters.")) or (
                name.startswith("context_prediction.") and name != "context_prediction.weight"
            ):
                state[name] = p.detach().half().clone()
        if self.autoregressive:
            cp = self.context_prediction
            state["context_prediction.weight"] = cp.weight.detach()[cp.mask.bool()].half().clone()
        return state

    @torch.no_grad()
    def load_transmitted_state(self, state: Dict[str, Tensor], tables: Optional[BottleneckTables] = None) -> None:
        """Decoder side: load :meth:`transmitted_state` into a codec built from the same backbone,
        then the CDF tables: with ``exact_tables`` the transmitted bottleneck ``tables`` (checked
        with :func:`~nerfcodec_ns.codec.exact.check_bottleneck_tables`) and the shipped Gaussian tables,
        else rebuilt from the float parameters."""
        if self.exact_tables and tables is None:
            raise ValueError("a codec with exact tables needs the transmitted bottleneck tables")
        if self.config.adapt_heads:
            self.load_quantized_head(state["head.int8"], state["head.scale"], state["head.bias"])
        for level in range(len(self.vectors)):
            key = f"vectors.{level}"
            self.load_quantized_vectors(level, state[f"{key}.int8"], state[f"{key}.scale"])
        for level, mixer in enumerate(self.mix_out):
            mixer.load_quantized(state[f"mix.{level}.int8"], state[f"mix.{level}.scale"], state[f"mix.{level}.bias"])
        params = dict(self.named_parameters())
        for name, value in state.items():
            if name == "context_prediction.weight":
                cp = self.context_prediction
                cp.weight.zero_()
                cp.weight[cp.mask.bool()] = value.float()
            elif not name.startswith(("head.", "vectors.", "mix.")):
                params[name].copy_(value.float())
        if self.exact_tables:
            load_bottleneck_tables(self.entropy_bottleneck, tables)
            load_gaussian_tables(self.gaussian_conditional)
        else:
            self.update(force=True)

    @staticmethod
    def check_transmitted_state(state: Dict[str, Tensor]) -> None:
        """Raise ``ValueError`` unless the decoder-side tensors are safe to load: every float finite,
        and the entropy bottleneck's quantile spans (the length of its CDF tables) at most
        :data:`MAX_QUANTILE_SPAN`. The exporter and the decoder both check this."""
        for name, value in state.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} holds non-finite values")
        q = state.get("entropy_bottleneck.quantiles")
        if q is not None:
            q = q.float()
            span = float((q[..., 2] - q[..., 0]).abs().max()) if q.numel() else 0.0
            if span > MAX_QUANTILE_SPAN or (q.numel() and float(q.abs().max()) > MAX_QUANTILE_SPAN):
                raise ValueError(f"entropy_bottleneck.quantiles span {span:.4g}, more than the "
                                 f"{MAX_QUANTILE_SPAN} a CDF table may cover")

    def transmitted_sizes(self) -> Dict[str, int]:
        """Bytes of each content-specific decoder-side part (the y/z strings are counted by
        :meth:`CompressedLevel.num_bytes`).

        Keys: ``head`` (int8 weights + float32 scales + float32 bias; 0 when the head is the frozen
        tiled pretrained layer), ``vectors.<level>`` (int8 + float32 scales), ``mix`` (the channel
        mixers: int8 + float32 scales + float32 bias; 0 without mixing), ``norm_stats`` (float16
        min and max per plane and channel, all levels), ``entropy_bottleneck`` (its tables; float16
        parameters without ``exact_tables``), and for
        cheng2020 ``context_model`` (float16 ``context_prediction`` unmasked weights + bias and
        ``entropy_parameters``).
        """
        nbytes = {k: v.numel() * v.element_size() for k, v in self.transmitted_state().items()}
        sizes = {"head": sum(v for k, v in nbytes.items() if k.startswith("head."))}
        for level in range(len(self.vectors)):
            sizes[f"vectors.{level}"] = sum(v for k, v in nbytes.items() if k.startswith(f"vectors.{level}."))
        sizes["mix"] = sum(v for k, v in nbytes.items() if k.startswith("mix."))
        sizes["norm_stats"] = len(self.resolutions) * 2 * 3 * self.num_channels * 2
        if self.exact_tables:  # medians (float16), offsets and lengths (int32), frequencies (uint16)
            sizes["entropy_bottleneck"] = self._bottleneck_table_bytes()
        else:
            sizes["entropy_bottleneck"] = sum(v for k, v in nbytes.items() if k.startswith("entropy_bottleneck."))
        if self.autoregressive:
            sizes["context_model"] = sum(
                v for k, v in nbytes.items() if k.startswith(("context_prediction.", "entropy_parameters."))
            )
        return sizes

    def _bottleneck_table_bytes(self) -> int:
        """Raw bytes of :meth:`bottleneck_tables` from the quantiles, without building the tables
        (CompressAI's ``EntropyBottleneck.update`` arithmetic on the float16-snapped quantiles)."""
        q = self.entropy_bottleneck.quantiles.detach().half().float()[:, 0, :]
        minima = torch.ceil(q[:, 1] - q[:, 0]).clamp_min(0)
        maxima = torch.ceil(q[:, 2] - q[:, 1]).clamp_min(0)
        frequencies = int((minima + maxima + 2).sum())  # pmf_length + 1 (the tail) per channel
        return 2 * frequencies + (2 + 4 + 4) * q.shape[0]

    # -- checkpoints -----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """Resize the entropy models' CDF buffers to the checkpoint's shapes before loading (they
        change shape on ``update()``; plain ``nn.Module`` loading would fail with a size mismatch)."""
        from compressai.entropy_models import EntropyModel

        for name, module in self.named_modules():
            if isinstance(module, EntropyModel):
                for buf_name in DYNAMIC_BUFFERS:
                    key, buf = f"{prefix}{name}.{buf_name}", getattr(module, buf_name, None)
                    if buf is not None and key in state_dict and buf.shape != state_dict[key].shape:
                        buf.resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
