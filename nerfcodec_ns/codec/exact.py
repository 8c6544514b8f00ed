"""What decides the entropy coder's tables, computed exactly the same on every CPU.

A scene file is written on one machine and decoded on another. The rANS decoder needs, symbol for
symbol, the same probability table the encoder used; a table chosen differently is not noise but
garbage from that symbol on. Three things choose the tables:

* the Gaussian conditional's CDF tables and its scale table: CompressAI computes them at run time
  with float ``exp``/``erfc``, whose last bits depend on the instruction set. Here they come from a
  constant shipped with the package (:func:`gaussian_tables`, SHA-256 checked);
* the entropy bottleneck's CDF tables (for z): computed from its float parameters through
  ``softplus``/``tanh``/``sigmoid``. The encoder transmits the quantized tables themselves
  (:class:`BottleneckTables`), so the decoder never evaluates that network;
* the scale index of every latent y: ``h_s(z_hat)`` is a float network. :class:`ExactHyperSynthesis`
  runs it in fixed point: integer-valued float64 tensors whose every partial sum is an exact integer
  below 2^52, so the result does not depend on summation order, vector width or FMA. It is checked
  per layer (an input that could overflow the exact range is refused, never rounded).

Only the latents' table choice needs this; ``g_s`` stays float (its last bits may differ across
CPUs, which moves the decoded planes by ~1e-6 and not the symbols; docs/layout.md measures it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Activations run on a grid of 2^-ACT_FRAC_BITS.
ACT_FRAC_BITS = 12
#: Weights are integers of magnitude at most 2^WEIGHT_BITS (a power-of-two scale per layer).
WEIGHT_BITS = 15
#: Every accumulator is bounded by this before it is computed (float64 holds integers up to 2^53).
EXACT_LIMIT = 1 << 52
#: CompressAI's entropy coder precision: a quantized CDF ends at 2^16.
CDF_PRECISION = 16

GAUSSIAN_TABLES_FILE = Path(__file__).resolve().parent / "weights" / "gaussian_tables.npz"
#: SHA-256 of the shipped file; a mismatch means it was damaged or replaced.
GAUSSIAN_TABLES_SHA256 = "6fa877a5ff62cb9910919dc0bf8bebb204816b44e3d8d512370c2cd05409b01d"


#: Environment variables that restrict PyTorch's and oneDNN's CPU kernels to an instruction set (for
#: decoding under each in a subprocess: tests/scenefile/test_cross_isa.py, benchmarks/cross_isa.py).
ISA_ENVIRONMENTS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "best": {},
}


def isa_environment(isa: str, base: dict) -> dict:
    """``base`` (e.g. ``os.environ``) with the kernels restricted to ``isa`` and one OpenMP thread."""
    env = {k: v for k, v in base.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env.update(ISA_ENVIRONMENTS[isa], OMP_NUM_THREADS="1")
    return env


class ExactRangeError(ValueError):
    """An input whose fixed-point hyper-synthesis could leave the exactly representable range."""


class _Layer(NamedTuple):
    kind: str  # "conv", "deconv", "relu", "leaky"
    weight: Optional[Tensor]  # float64, integer-valued
    bias: Optional[Tensor]  # float64, integer-valued, at the accumulator's scale
    shift: int  # weight fraction bits (the accumulator is at 2^-(ACT + shift))
    stride: int
    padding: int
    output_padding: int
    abs_sum: int  # max over output channels of the sum of |weight ints|
    bias_max: int
    slope: float


def _quantize_conv(module: nn.Module, kind: str) -> _Layer:
    w = module.weight.detach().double().cpu()
    wmax = float(w.abs().max())
    shift = WEIGHT_BITS - (int(np.ceil(np.log2(wmax))) if wmax > 0 else 0)
    wi = torch.round(w * 2.0 ** shift)
    if kind == "conv":  # [out, in, k, k]
        abs_sum = int(wi.abs().sum(dim=(1, 2, 3)).max())
    else:  # ConvTranspose2d: [in, out, k, k]
        abs_sum = int(wi.abs().sum(dim=(0, 2, 3)).max())
    b = module.bias.detach().double().cpu() if module.bias is not None else torch.zeros(wi.shape[0 if kind == "conv" else 1], dtype=torch.float64)
    bi = torch.round(b * 2.0 ** (shift + ACT_FRAC_BITS))
    return _Layer(kind, wi, bi, shift, int(module.stride[0]), int(module.padding[0]),
                  int(getattr(module, "output_padding", (0,))[0]), abs_sum, int(bi.abs().max()), 0.0)


class ExactHyperSynthesis:
    """``h_s`` in fixed point, bit-identical on every CPU (see the module docstring).

    Supports the layer types of CompressAI's hyperprior synthesis transforms (Conv2d,
    ConvTranspose2d, ReLU, LeakyReLU). Weights become integers with a power-of-two scale per layer
    (at most 2^15), activations a 2^-12 grid (rounding to it is deterministic); every accumulator is
    bounded before it is computed, so float64 holds it exactly whatever the summation order.
    Its output differs from the float ``h_s`` by about 1e-4 (tested), which only moves a few scale
    indexes, the same way at the encoder and the decoder.
    """

    def __init__(self, h_s: nn.Module) -> None:
        layers: List[_Layer] = []
        for m in h_s.children() if isinstance(h_s, nn.Sequential) else [h_s]:
            if isinstance(m, nn.ConvTranspose2d):
                layers.append(_quantize_conv(m, "deconv"))
            elif isinstance(m, nn.Conv2d):
                layers.append(_quantize_conv(m, "conv"))
            elif isinstance(m, nn.ReLU):
                layers.append(_Layer("relu", None, None, 0, 1, 0, 0, 0, 0, 0.0))
            elif isinstance(m, nn.LeakyReLU):
                layers.append(_Layer("leaky", None, None, 0, 1, 0, 0, 0, 0, float(m.negative_slope)))
            else:
                raise TypeError(f"no exact hyper-synthesis for a {type(m).__name__} layer")
        if not any(l.kind in ("conv", "deconv") for l in layers):
            raise TypeError("h_s has no convolution")
        self.layers = layers

    def __call__(self, z_hat: Tensor) -> Tensor:
        """``[B, N, h, w]`` float latents -> ``[B, C_out, 4h, 4w]`` float32 parameters (scales, or
        scales and means), exactly the same on every CPU."""
        x = torch.round(z_hat.detach().double().cpu() * 2.0 ** ACT_FRAC_BITS)
        scale = ACT_FRAC_BITS  # x holds value * 2^scale
        for layer in self.layers:
            if layer.kind == "relu":
                x = x.clamp_min(0)
                continue
            if layer.kind == "leaky":
                x = torch.where(x < 0, torch.floor(x * layer.slope), x)
                continue
            if scale != ACT_FRAC_BITS:  # bring the previous accumulator back to the activation grid
                x = torch.floor(x * 2.0 ** (ACT_FRAC_BITS - scale))
                scale = ACT_FRAC_BITS
            peak = int(x.abs().max()) if x.numel() else 0
            if peak * layer.abs_sum + layer.bias_max >= EXACT_LIMIT:
                raise ExactRangeError(f"latents too large for the exact hyper-synthesis (|z| up to {peak / 2 ** scale:.4g})")
            if layer.kind == "conv":
                x = F.conv2d(x, layer.weight, None, layer.stride, layer.padding)
            else:
                x = F.conv_transpose2d(x, layer.weight, None, layer.stride, layer.padding, layer.output_padding)
            x = x + layer.bias[None, :, None, None]
            scale = ACT_FRAC_BITS + layer.shift
        return (x * 2.0 ** -scale).float()


# ----------------------------------------------------------------------------------------------
# The Gaussian conditional's tables: a shipped constant
# ----------------------------------------------------------------------------------------------
class GaussianTables(NamedTuple):
    """CompressAI's GaussianConditional tables for its default scale table (64 scales, 0.11..256)."""

    scale_table: Tensor  # float32 [S]
    quantized_cdf: Tensor  # int32 [S, L]
    cdf_length: Tensor  # int32 [S]
    offset: Tensor  # int32 [S]


def computed_gaussian_tables() -> GaussianTables:
    """The tables as CompressAI computes them on this CPU (float ``exp``/``erfc``)."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.base import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    return GaussianTables(gc.scale_table.clone(), gc._quantized_cdf.clone(), gc._cdf_length.clone(), gc._offset.clone())


def _tables_arrays(t: GaussianTables) -> dict:
    lengths = t.cdf_length.numpy().astype(np.int32)
    rows = [t.quantized_cdf[i, : lengths[i]].numpy().astype(np.int32) for i in range(len(lengths))]
    return {"scale_table": t.scale_table.numpy().astype(np.float32), "cdf_length": lengths,
            "offset": t.offset.numpy().astype(np.int32), "cdf": np.concatenate(rows)}


def write_gaussian_tables(path: Path, tables: GaussianTables) -> str:
    """Write the shipped constant (``np.savez_compressed``; used once, by ``scripts/make_gaussian_tables.py``);
    returns its SHA-256."""
    import io

    from nerfcodec_ns.atomic import write_atomic

    buf = io.BytesIO()
    np.savez_compressed(buf, **_tables_arrays(tables))
    data = buf.getvalue()
    write_atomic(path, data, overwrite=True)
    return hashlib.sha256(data).hexdigest()


_GAUSSIAN: Optional[GaussianTables] = None


def gaussian_tables() -> GaussianTables:
    """The shipped Gaussian tables (read once; SHA-256 checked)."""
    global _GAUSSIAN
    if _GAUSSIAN is None:
        data = GAUSSIAN_TABLES_FILE.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != GAUSSIAN_TABLES_SHA256:
            raise RuntimeError(f"{GAUSSIAN_TABLES_FILE} is damaged (SHA-256 {digest[:12]}..., "
                               f"expected {GAUSSIAN_TABLES_SHA256[:12]}...); reinstall the package")
        import io

        with np.load(io.BytesIO(data)) as z:
            lengths, cdf = z["cdf_length"], z["cdf"]
            table = np.zeros((len(lengths), int(lengths.max())), dtype=np.int32)
            start = 0
            for i, n in enumerate(lengths):
                table[i, :n] = cdf[start : start + n]
                start += int(n)
            _GAUSSIAN = GaussianTables(torch.from_numpy(z["scale_table"].copy()), torch.from_numpy(table),
                                       torch.from_numpy(lengths.copy()), torch.from_numpy(z["offset"].copy()))
    return _GAUSSIAN


def load_gaussian_tables(gc: nn.Module) -> None:
    """Give a CompressAI ``GaussianConditional`` the shipped tables (its own parameters must be
    CompressAI's defaults, which the tables were computed for)."""
    if abs(float(gc.tail_mass) - 1e-9) > 1e-15 or abs(float(gc.lower_bound_scale.bound) - 0.11) > 1e-6:
        raise ValueError("the shipped Gaussian tables are for CompressAI's default tail mass and scale bound")
    t = gaussian_tables()
    gc.scale_table = t.scale_table.clone()
    gc._quantized_cdf = t.quantized_cdf.clone()
    gc._cdf_length = t.cdf_length.clone()
    gc._offset = t.offset.clone()


# ----------------------------------------------------------------------------------------------
# The entropy bottleneck's tables: transmitted
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BottleneckTables:
    """An entropy bottleneck's coding state, as transmitted (no float network at the decoder).

    ``medians``: float16 [C] (z_hat = symbol + median); ``offset``: int32 [C] (the smallest symbol,
    minus the median); ``freqs``: uint16, every channel's symbol frequencies one after the other
    (``lengths[c] - 1`` of them, the last one the tail's), each >= 1, summing to 2^16 per channel;
    ``lengths``: int32 [C], CompressAI's ``_cdf_length`` (symbols + 2).
    """

    medians: np.ndarray
    offset: np.ndarray
    lengths: np.ndarray
    freqs: np.ndarray

    def arrays(self) -> Tuple[np.ndarray, ...]:
        return (self.medians, self.offset, self.lengths, self.freqs)


def bottleneck_tables(eb: nn.Module) -> BottleneckTables:
    """The tables of an updated ``EntropyBottleneck`` (call its ``update`` first)."""
    lengths = eb._cdf_length.detach().cpu().numpy().astype(np.int32)
    cdf = eb._quantized_cdf.detach().cpu().numpy()
    freqs = np.concatenate([np.diff(cdf[c, : lengths[c]]) for c in range(len(lengths))]) if len(lengths) else np.zeros(0)
    medians = eb.quantiles.detach()[:, 0, 1].cpu().numpy().astype(np.float16)
    return BottleneckTables(medians, eb._offset.detach().cpu().numpy().astype(np.int32), lengths,
                            freqs.astype(np.uint16))


def check_bottleneck_tables(t: BottleneckTables, channels: int, max_length: int) -> None:
    """Raise ``ValueError`` unless the tables are a valid coding state for ``channels`` channels:
    shapes and dtypes, finite medians, 3 <= lengths <= ``max_length``, frequencies >= 1 summing to
    exactly 2^16 per channel, and offsets within the table's span."""
    want = (("medians", np.float16, (channels,)), ("offset", np.int32, (channels,)), ("lengths", np.int32, (channels,)))
    for name, dtype, shape in want:
        a = getattr(t, name)
        if a.dtype != dtype or a.shape != shape:
            raise ValueError(f"bottleneck {name}: expected {np.dtype(dtype).name} {shape}, got {a.dtype} {a.shape}")
    if not np.isfinite(t.medians.astype(np.float32)).all():
        raise ValueError("bottleneck medians are not finite")
    if (t.lengths < 3).any() or (t.lengths > max_length).any():
        raise ValueError(f"bottleneck table lengths must be in 3..{max_length}")
    if t.freqs.dtype != np.uint16 or t.freqs.ndim != 1 or t.freqs.size != int((t.lengths.astype(np.int64) - 1).sum()):
        raise ValueError("bottleneck frequencies do not match the table lengths")
    if (t.freqs == 0).any():
        raise ValueError("bottleneck frequencies must be >= 1")
    ends = np.cumsum((t.lengths.astype(np.int64) - 1))
    sums = np.add.reduceat(t.freqs.astype(np.int64), np.concatenate([[0], ends[:-1]])) if channels else np.zeros(0)
    if (sums != (1 << CDF_PRECISION)).any():
        raise ValueError("bottleneck frequencies must sum to 2^16 per channel")
    if (t.offset > 0).any() or (-t.offset > t.lengths - 3).any():
        raise ValueError("bottleneck offsets lie outside their tables")


def load_bottleneck_tables(eb: nn.Module, t: BottleneckTables) -> None:
    """Give an ``EntropyBottleneck`` transmitted tables (check them first): its ``compress`` and
    ``decompress`` then use exactly these, and the medians."""
    C = len(t.lengths)
    cdf = np.zeros((C, int(t.lengths.max())), dtype=np.int32)
    start = 0
    for c in range(C):
        n = int(t.lengths[c]) - 1
        cdf[c, 1 : n + 1] = np.cumsum(t.freqs[start : start + n].astype(np.int64))
        start += n
    with torch.no_grad():
        eb.quantiles[:, 0, 1] = torch.from_numpy(t.medians.astype(np.float32))
    eb._quantized_cdf = torch.from_numpy(cdf)
    eb._cdf_length = torch.from_numpy(t.lengths.copy())
    eb._offset = torch.from_numpy(t.offset.copy())
