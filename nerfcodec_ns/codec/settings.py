"""Settings of the plane codec: which CompressAI backbone to adapt, and how (:class:`CodecConfig`).

Pure data (no torch, no compressai): the nerfstudio model config, the exporter and the decoder all
build a :class:`CodecConfig`, and :mod:`nerfcodec_ns.codec.backbone` reads the backbone choice from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple

Architecture = Literal["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"]
HEAD_INITS = ("random", "pretrained")
#: What a setting missing from a saved config (a run's config.yml written before the setting existed)
#: meant when that run trained: its default then. Current defaults differ for these.
LEGACY_DEFAULTS = {"adapt_heads": True, "mix_images": 0, "train_precision": "float32", "synthesis_input": "noise"}
#: What the synthesis transform sees of the latent in training (``CodecConfig.synthesis_input``).
SYNTHESIS_INPUTS = ("noise", "round")
ARCHITECTURES: Tuple[str, ...] = ("bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor")
#: Most RGB images per plane with channel mixing (``CodecConfig.mix_images``, and the scene-file
#: header's ``CodecSettings.mix_images``).
MAX_MIX_IMAGES = 8


@dataclass
class CodecConfig:
    """Which backbone to adapt, and how (NeRFCodec's neural plane codec)."""

    backbone: Architecture = "bmshj2018-hyperprior"
    """CompressAI architecture of the backbone codec."""
    weights: str = "embedded"
    """Backbone weights: "embedded" (``nerfcodec_ns/codec/weights/backbone.pt``, shipped with the package),
    "zoo" (CompressAI's official MSE weights for ``backbone`` and ``quality``; read from the torch hub
    cache when present, else downloaded), "random" (random init, for ablations), or the path of a
    backbone file written by :func:`~nerfcodec_ns.codec.backbone.save_backbone_file`."""
    quality: int = 6
    """CompressAI zoo quality (only for ``weights="zoo"``)."""
    N: int = 64
    """Backbone channel count N (only for ``weights="random"``; zoo and files carry their own)."""
    M: int = 96
    """Backbone latent channel count M (only for ``weights="random"``; cheng2020 uses M = N)."""
    compensation: bool = True
    """Add learnable per-axis feature-compensation vectors to the decoded planes."""
    head_bits: int = 8
    """Bits of the decoder head's weights (symmetric, per output channel), 2..8."""
    vector_bits: int = 6
    """Bits of the compensation vectors (symmetric, per axis and channel), 2..8."""
    clip_sigmas: float = 4.0
    """Normalisation range per plane and channel: 0 = min..max (the reference); k > 0 = mean -/+ k
    standard deviations (narrowed to min..max), values outside clipped. Trained planes have a standard
    deviation of only 5-8% of their min..max range, so k = 4 resolves them about 2x finer (on lego_200,
    training PSNR after 100 joint steps: 20.4 dB against 18.4 dB with min..max, docs/codec.md)."""
    latent_gain: float = 1.0
    """Quantization gain of the latent y: y is coded as round(gain * y) / gain (the Gaussian scales
    and means are multiplied by the same gain). Larger: finer quantization, more bits, better planes
    (a rate knob that needs no retraining of the frozen synthesis). Not for cheng2020-anchor."""
    adapt_heads: bool = False
    """Train new encoder-input / decoder-output layers (the reference's adapted heads; transmitted).
    False (the default): the backbone's own RGB layers, frozen and not transmitted; with
    ``mix_images`` = 0 they are tiled over the C channels ("frozen pre-trained heads"). On lego_200
    the frozen layers with channel mixing gave the best PSNR per byte (docs/codec.md)."""
    train_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Arithmetic of the codec's transforms in training mode: "bfloat16" runs g_a, h_a, h_s and g_s
    under autocast on channels-last tensors (2-4x faster on CPUs with AMX/AVX-512 BF16, and on GPUs);
    the entropy models and the rate stay float32. "auto": bfloat16 where the device computes it
    natively (``codec.plane.bfloat16_is_native``: a CUDA GPU with bfloat16, a CPU whose flags list
    avx512_bf16 or amx_bf16), else float32 (elsewhere autocast is emulated and slower). Evaluation,
    export and decoding are always float32, so files and their decoding are unchanged."""
    head_init: Literal["random", "pretrained"] = "random"
    """Start of the adapted layers (``adapt_heads``): "random" (a fresh layer, as in the reference) or
    "pretrained" (the backbone's RGB layers tiled over the channels, i.e. where the frozen heads are,
    then trained). Only the adapted layers' starting point differs; what is transmitted is the same."""

    synthesis_input: Literal["noise", "round"] = "noise"
    """What g_s sees of the latent y in training. "noise": y plus uniform noise, the same proxy the
    rate term uses (CompressAI's training). "round": the rounded y, as at decoding, with a
    straight-through gradient; the rate still uses the noisy y (Minnen and Singh, ICIP 2020, "mixed"
    quantization). Evaluation, export and decoding always round, so files are unchanged."""

    mix_images: int = 2
    """Channel mixing (default 2). 0: the C channels of a plane go through the backbone as one C-channel image
    (new or tiled first/last layers, ``adapt_heads``). k >= 1: a per-plane 1x1 linear map (started
    from the planes' principal components, trained, encoder side only) mixes the C channels into k
    RGB images; the backbone codes them with its own RGB layers, and a transmitted per-plane 1x1 map
    (``head_bits`` integers) mixes them back to C channels. The tiled layers can explain at most
    54-70% of a lego_200 plane's variance, the first 3 (6) principal components 75-87% (90-96%);
    the latents cost about k times those of one image (docs/codec.md, "Channel mixing")."""

    def __setstate__(self, state: dict) -> None:
        """Unpickling (nerfstudio's config.yml): settings the saved config lacks take the value they
        had when it was written (``LEGACY_DEFAULTS``), not today's defaults, so old runs load as trained."""
        self.__dict__.update({**LEGACY_DEFAULTS, **state})

    def __post_init__(self) -> None:
        if not (isinstance(self.mix_images, int) and 0 <= self.mix_images <= MAX_MIX_IMAGES):
            raise ValueError(f"mix_images must be an integer in 0..{MAX_MIX_IMAGES}, got {self.mix_images!r}")
        if self.backbone not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {ARCHITECTURES}, got {self.backbone!r}")
        if not self.latent_gain > 0:
            raise ValueError(f"latent_gain must be > 0, got {self.latent_gain}")
        if self.backbone == "cheng2020-anchor" and self.latent_gain != 1.0:
            raise ValueError("latent_gain is only supported for bmshj2018-hyperprior and mbt2018-mean")
        if self.train_precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"train_precision must be auto, float32 or bfloat16, got {self.train_precision!r}")
        if self.synthesis_input not in SYNTHESIS_INPUTS:
            raise ValueError(f"synthesis_input must be one of {SYNTHESIS_INPUTS}, got {self.synthesis_input!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        for name in ("head_bits", "vector_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise ValueError(f"{name} must be in 2..8 (stored as int8), got {getattr(self, name)}")
