"""Tri-plane radiance field: axis-aligned feature planes plus a tiny MLP.

The planes are the object NeRFCodec compresses. Each resolution level is one plain
``nn.Parameter`` of shape ``[3, C, R, R]`` (planes xy, xz, yz), i.e. directly a batch of three
C-channel images for a 2D image codec. A level's feature at a point is the product (K-Planes) or
sum of the three bilinear plane lookups; levels are concatenated and fed to a density MLP and a
view-dependent colour MLP (spherical-harmonics direction encoding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from nerfcodec_ns.field.contraction import CONTRACTIONS, contract
from nerfstudio.utils.math import components_from_spherical_harmonics

#: Coordinate pairs of the three planes, in plane order (xy, xz, yz).
PLANE_AXES: Tuple[Tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
_PLANE_U = [a for a, _ in PLANE_AXES]
_PLANE_V = [b for _, b in PLANE_AXES]


@dataclass(frozen=True)
class TriplaneFieldSpec:
    """Architecture of a :class:`TriplaneField` (everything needed to rebuild it, no weights)."""

    resolutions: Tuple[int, ...] = (64, 128, 256)
    """Plane side length R of each level."""
    num_channels: int = 16
    """Feature channels C per plane."""
    reduce: Literal["product", "sum"] = "product"
    """How the three plane features of a level are combined."""
    hidden_dim: int = 64
    """Width of the density MLP's hidden layer."""
    geo_feat_dim: int = 15
    """Features passed from the density MLP to the colour MLP."""
    hidden_dim_color: int = 64
    """Width of the colour MLP's hidden layers."""
    sh_degree: int = 4
    """Spherical-harmonics levels of the view-direction encoding (1..4, giving degree**2 values)."""
    contraction: str = "none"
    """Scene contraction (:data:`~nerfcodec_ns.field.contraction.CONTRACTIONS`): ``"none"`` for a bounded
    scene (zero density outside the box), ``"linf"``/``"l2"`` for an unbounded one (the planes cover the
    contracted space, everything has density)."""

    def __post_init__(self) -> None:
        if not self.resolutions or any(int(r) < 2 for r in self.resolutions):
            raise ValueError(f"plane resolutions must be >= 2, got {self.resolutions}")
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
        if not 1 <= self.sh_degree <= 4:
            raise ValueError(f"sh_degree must be in 1..4, got {self.sh_degree}")
        if self.contraction not in CONTRACTIONS:
            raise ValueError(f"contraction must be one of {CONTRACTIONS}, got {self.contraction!r}")


def sample_planes_reference(
    planes: Float[Tensor, "3 C R R"], coords: Float[Tensor, "N 3"], reduce: str = "product"
) -> Float[Tensor, "N C"]:
    """Bilinear lookup of the three planes at ``coords`` in [-1, 1]^3 with ``F.grid_sample``.

    The reference for :func:`sample_planes`. Plane p holds axes ``PLANE_AXES[p] = (a, b)``: its
    width (grid x) indexes axis a and its height (grid y) axis b, with ``align_corners=True``
    (corner texels sit at -1 and +1).
    """
    grid = torch.stack((coords[:, _PLANE_U], coords[:, _PLANE_V]), dim=-1).transpose(0, 1)  # [3, N, 2]
    feats = F.grid_sample(planes, grid[:, :, None, :], mode="bilinear", align_corners=True)  # [3, C, N, 1]
    feats = feats[..., 0]
    out = feats[0] * feats[1] * feats[2] if reduce == "product" else feats.sum(0)
    return out.transpose(0, 1)


def bilinear_corners(
    coords: Float[Tensor, "N 3"], resolution: int
) -> Tuple[Int[Tensor, "3 N 4"], Float[Tensor, "3 N 4"]]:
    """Texel rows and bilinear weights of the four corners around each point, for each plane.

    Rows index the planes flattened channels-last, ``[3 * R * R, C]`` (row = p*R*R + v*R + u).
    Coordinates are clamped to the box, so points outside it read the border texels.
    """
    R = resolution
    uv = torch.stack((coords[:, _PLANE_U], coords[:, _PLANE_V]), dim=-1).transpose(0, 1)  # [3, N, 2]
    x = (uv.clamp(-1.0, 1.0) + 1.0) * (0.5 * (R - 1))
    x0 = x.floor().clamp_(0, R - 2)
    frac = x - x0
    i0 = x0.long()
    base = torch.arange(3, device=coords.device).view(3, 1) * (R * R)
    row = base + i0[..., 1] * R + i0[..., 0]
    rows = torch.stack((row, row + 1, row + R, row + R + 1), dim=-1)
    fu, fv = frac[..., 0], frac[..., 1]
    gu, gv = 1.0 - fu, 1.0 - fv
    weights = torch.stack((gu * gv, fu * gv, gu * fv, fu * fv), dim=-1)
    return rows, weights


class _GatherRows(torch.autograd.Function):
    """``out[p, n] = sum_k w[p, n, k] * table[rows[p, n, k]]``; backward is one ``index_add_``.

    On CPU this is about 2x faster than ``grid_sample`` forward + backward (see docs/foundation.md).
    """

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        out = F.embedding_bag(rows.reshape(-1, 4), table, per_sample_weights=weights.reshape(-1, 4), mode="sum")
        ctx.save_for_backward(rows, weights)
        ctx.table_rows = table.shape[0]
        return out.view(rows.shape[0], rows.shape[1], table.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        rows, weights = ctx.saved_tensors
        contrib = (grad[:, :, None, :] * weights[..., None]).reshape(-1, grad.shape[-1])
        grad_table = grad.new_zeros(ctx.table_rows, grad.shape[-1])
        grad_table.index_add_(0, rows.reshape(-1), contrib)
        return grad_table, None, None


def sample_planes(
    planes: Float[Tensor, "3 C R R"], coords: Float[Tensor, "N 3"], reduce: str = "product"
) -> Float[Tensor, "N C"]:
    """Bilinear lookup of the three planes at ``coords`` in [-1, 1]^3, combined over planes.

    Same values and gradients as :func:`sample_planes_reference` for points inside the box,
    computed as a row gather from the channels-last planes. Planes may be any layout (decoded
    planes are copied to channels-last once).
    """
    C, R = planes.shape[1], planes.shape[-1]
    table = planes.permute(0, 2, 3, 1).reshape(3 * R * R, C)  # a view when planes are channels-last
    rows, weights = bilinear_corners(coords, R)
    feats = _GatherRows.apply(table, rows, weights.to(table.dtype))  # [3, N, C]
    return feats[0] * feats[1] * feats[2] if reduce == "product" else feats.sum(0)


class TriplaneField(nn.Module):
    """Density and colour from multi-resolution tri-planes (positions in world units).

    Args:
        aabb: ``[2, 3]`` scene box (min, max) in world units; points outside get zero density, unless
            ``spec.contraction`` contracts all of space into the planes.
        spec: architecture.
    """

    def __init__(self, aabb: Float[Tensor, "2 3"], spec: TriplaneFieldSpec = TriplaneFieldSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("aabb", aabb.detach().clone().float(), persistent=True)
        C = spec.num_channels
        if spec.reduce == "product":  # K-Planes init: product of three planes starts near 0.1-0.1
            init = [torch.empty(3, C, r, r).uniform_(0.1, 0.5) for r in spec.resolutions]
        else:
            init = [0.1 * torch.randn(3, C, r, r) for r in spec.resolutions]
        # channels-last storage: the [3, C, R, R] tensor's memory is the [3*R*R, C] row table sample_planes reads
        self.planes = nn.ParameterList([nn.Parameter(p.contiguous(memory_format=torch.channels_last)) for p in init])
        in_dim = C * len(spec.resolutions)
        self.density_mlp = nn.Sequential(
            nn.Linear(in_dim, spec.hidden_dim), nn.ReLU(inplace=True), nn.Linear(spec.hidden_dim, 1 + spec.geo_feat_dim)
        )
        self.color_mlp = nn.Sequential(
            nn.Linear(spec.geo_feat_dim + spec.sh_degree**2, spec.hidden_dim_color),
            nn.ReLU(inplace=True),
            nn.Linear(spec.hidden_dim_color, spec.hidden_dim_color),
            nn.ReLU(inplace=True),
            nn.Linear(spec.hidden_dim_color, 3),
        )

    def plane_list(self) -> List[Tensor]:
        """The feature planes, one ``[3, C, R, R]`` tensor per level."""
        return list(self.planes)

    def mlp_parameters(self) -> List[nn.Parameter]:
        """Parameters of the MLPs (everything but the planes)."""
        return list(self.density_mlp.parameters()) + list(self.color_mlp.parameters())

    @contextlib.contextmanager
    def float16_mlp(self) -> Iterator[None]:
        """Within the block, the MLP weights hold their float16-rounded values (what a bitstream
        stores); the float32 values are put back on exit. For no-grad rendering only."""
        with self.transmitted_mlp(16):
            yield

    @contextlib.contextmanager
    def transmitted_mlp(self, bits: int) -> Iterator[None]:
        """Within the block, the MLP parameters hold exactly the values a scene file stores with
        ``bits`` (:func:`transmitted_mlp_values`); the float32 values are put back on exit. For
        no-grad rendering only."""
        params = self.mlp_parameters()
        saved = [p.data for p in params]
        try:
            for p, value in zip(params, transmitted_mlp_values(saved, bits)):
                p.data = value
            yield
        finally:
            for p, data in zip(params, saved):
                p.data = data

    def normalize(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """World positions to plane coordinates: [-1, 1]^3 box coordinates; with a contraction, the
        contracted box coordinates halved (all of space in [-1, 1]^3, the box in [-0.5, 0.5]^3)."""
        lo, hi = self.aabb[0], self.aabb[1]
        coords = (positions - lo) / (hi - lo) * 2.0 - 1.0
        if self.spec.contraction == "none":
            return coords
        return contract(coords, self.spec.contraction) * 0.5

    def density(
        self, positions: Float[Tensor, "N 3"], planes: Optional[Sequence[Tensor]] = None
    ) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N F"]]:
        """Volume density (1/world unit) and geometry features at world positions.

        ``planes`` replaces the field's own planes (e.g. planes decoded by the codec).
        """
        planes = self.plane_list() if planes is None else list(planes)
        coords = self.normalize(positions)
        feats = torch.cat([sample_planes(p, coords, self.spec.reduce) for p in planes], dim=-1)
        h = self.density_mlp(feats)
        sigma = trunc_exp(h[:, 0] - 1.0)
        if self.spec.contraction == "none":  # bounded scene: nothing outside the box
            sigma = sigma * ((coords > -1.0) & (coords < 1.0)).all(dim=-1)
        return sigma, h[:, 1:]

    def color(self, geo_feat: Float[Tensor, "N F"], directions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """RGB in [0, 1] from geometry features and unit view directions."""
        sh = components_from_spherical_harmonics(self.spec.sh_degree, directions)
        return torch.sigmoid(self.color_mlp(torch.cat([geo_feat, sh], dim=-1)))

    def forward(
        self,
        positions: Float[Tensor, "N 3"],
        directions: Float[Tensor, "N 3"],
        planes: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N 3"]]:
        """Density and colour at world positions seen along unit directions."""
        sigma, geo = self.density(positions, planes)
        return sigma, self.color(geo, directions)


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (Instant-NGP), stable for large pre-activations."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` whose backward uses ``exp(min(x, 15))``."""
    return _TruncExp.apply(x)


#: Storage of the MLP parameters in a scene file (``FieldArch.mlp_bits``): 16 (float16) or 8 (weight
#: matrices as int8 per row with a float32 scale per row, biases float16).
MLP_BITS = (16, 8)


def quantize_rows(weight: Tensor) -> Tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of a ``[out, in]`` weight matrix, one scale per output row:
    (int8 ``[out, in]``, float32 ``[out]``), scale = max |row| / 127 (1 for an all-zero row)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """The float32 weights ``q * scale`` (per row) that :func:`quantize_rows`' outputs stand for; the
    decoder and the trained model's evaluation both use this function, so they agree bit for bit."""
    return q.float() * scale.float()[:, None]


def transmitted_mlp_values(params: Sequence[Tensor], bits: int) -> List[Tensor]:
    """The float32 values a scene file with ``mlp_bits = bits`` gives back for MLP parameters
    ``params`` (``TriplaneField.mlp_parameters`` order): float16-rounded, or for ``bits = 8`` the
    weight matrices through :func:`quantize_rows` / :func:`dequantize_rows` (biases float16)."""
    if bits not in MLP_BITS:
        raise ValueError(f"mlp_bits must be one of {MLP_BITS}, got {bits!r}")
    out = []
    for p in params:
        if bits == 8 and p.dim() == 2:
            out.append(dequantize_rows(*quantize_rows(p)))
        else:
            out.append(p.detach().half().float())
    return out


def mlp_payload_estimate(params: Sequence[Tensor], bits: int) -> int:
    """Bytes of the MLP parameters stored with ``bits`` before any packing: 2 per float16 value; with
    8 bits 1 per weight plus 4 per row scale (biases 2 per value)."""
    if bits == 16:
        return 2 * sum(p.numel() for p in params)
    return sum(p.numel() + 4 * p.shape[0] if p.dim() == 2 else 2 * p.numel() for p in params)
