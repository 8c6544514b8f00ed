"""Quantization helpers (symmetric, straight-through) and the fake-quantized decoder head.

What the codec transmits besides the latents (the decoder head, the compensation vectors) is
stored as int8 with float32 scales; training sees the same values through :func:`fake_quantize`.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


class _RoundSTE(torch.autograd.Function):
    """``round`` in the forward pass, identity gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` with an identity gradient (straight-through)."""
    return _RoundSTE.apply(x)


def quant_scale(absmax: Tensor, bits: int) -> Tensor:
    """Symmetric quantization step for values in ``[-absmax, absmax]`` with ``bits`` bits.

    The step is ``absmax / (2**(bits-1) - 1)`` rounded *up* to ``25 - bits`` significant bits, so that
    ``int * step`` is exact in float32 and re-quantizing dequantized values gives the same step and
    integers (quantization is idempotent, which makes int8 round trips exact).
    """
    qmax = 2 ** (bits - 1) - 1
    keep = 25 - bits
    mant, exp = torch.frexp(absmax.float().clamp_min(2.0**-100) / qmax)
    return torch.ldexp(torch.ceil(torch.ldexp(mant, torch.full_like(exp, keep))), exp - keep)


def fake_quantize(x: Tensor, bits: int, dims: Sequence[int]) -> Tensor:
    """Quantize-dequantize ``x`` with one scale per slice (max over ``dims``); straight-through gradient.

    The gradient is the identity for every element, including those at +/- the slice's absmax.
    (A plain ``clamp`` passes no gradient at its bounds, which froze each slice's largest element,
    and every element of a constant slice, such as the compensation vectors at their start.)
    """
    qmax = 2 ** (bits - 1) - 1
    scale = quant_scale(x.detach().abs().amax(dim=tuple(dims), keepdim=True), bits)
    q = _RoundSTE.apply(x / scale)
    # the scale is rounded up, so |x / scale| <= qmax already; the clamp is a guard with no gradient effect
    q = q + (q.detach().clamp(-qmax, qmax) - q.detach())
    return q * scale


def quantize_int(x: Tensor, bits: int, dims: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """``(int8 values, float32 scales)`` with ``ints.float() * scales == fake_quantize(x)`` exactly.

    Scales keep their reduced dimensions (size 1) so they broadcast against the ints.
    """
    qmax = 2 ** (bits - 1) - 1
    scale = quant_scale(x.detach().abs().amax(dim=tuple(dims), keepdim=True), bits)
    ints = torch.round(x.detach() / scale).clamp(-qmax, qmax).to(torch.int8)
    return ints, scale


class QuantizedHead(nn.Module):
    """Last synthesis layer (producing C channels) whose weights are fake-quantized in ``forward``.

    Wraps a ``ConvTranspose2d`` (bmshj/mbt: 5x5, stride 2) or a ``Conv2d`` followed by a pixel
    shuffle (cheng2020 ``subpel_conv3x3``). Scales are per output channel (dim 1 of a transposed
    conv weight, dim 0 of a conv weight); the bias stays float32.
    """

    def __init__(self, layer: Union[nn.Conv2d, nn.ConvTranspose2d], bits: int, upscale: int = 1,
                 quantize: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.bits = int(bits)
        self.upscale = int(upscale)
        self.quantize_weights = bool(quantize)
        out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        self._reduce_dims = tuple(d for d in range(layer.weight.ndim) if d != out_dim)

    def dequantized_weight(self) -> Tensor:
        """Weights used by ``forward``: fake-quantized (straight-through) unless quantization is off."""
        w = self.layer.weight
        return fake_quantize(w, self.bits, self._reduce_dims) if self.quantize_weights else w

    def forward(self, x: Float[Tensor, "B N h w"]) -> Float[Tensor, "B C H W"]:
        layer, w = self.layer, self.dequantized_weight()
        if isinstance(layer, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, layer.bias, layer.stride, layer.padding, layer.output_padding,
                                      layer.groups, layer.dilation)
        out = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.pixel_shuffle(out, self.upscale) if self.upscale > 1 else out

    def quantize(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(int8 weights, float32 per-output-channel scales [out], float32 bias)``."""
        ints, scale = quantize_int(self.layer.weight, self.bits, self._reduce_dims)
        return ints, scale.flatten().clone(), self.layer.bias.detach().float().clone()

    @torch.no_grad()
    def load_quantized(self, ints: Tensor, scales: Tensor, bias: Tensor) -> None:
        """Set the weights to ``ints * scales`` (``forward`` then uses exactly these) and the bias."""
        w = self.layer.weight
        shape = [1] * w.ndim
        shape[[d for d in range(w.ndim) if d not in self._reduce_dims][0]] = -1
        w.copy_(ints.to(w.device, torch.float32) * scales.to(w.device, torch.float32).view(shape))
        self.layer.bias.copy_(bias)
