"""Empty-space-skipping ray sampler: an occupancy grid and ray marching, on CPU and GPU.

The occupancy grid is nerfacc's :class:`~nerfacc.OccGridEstimator` (its bookkeeping and EMA
update are plain torch and run anywhere). Marching has two back ends:

* ``nerfacc``: nerfacc's CUDA ``traverse_grids`` (``OccGridEstimator.sampling``), used only when
  the rays live on a CUDA device;
* ``torch``: :func:`march_rays`, a pure-torch re-implementation used on CPU (nerfacc's packed
  ops raise "Only support cuda inputs" there, and on a machine with ``nvcc`` but no GPU merely
  touching them triggers a failing JIT build).

Both return packed samples (:class:`PackedSamples`): a flat list of ray segments sorted by ray.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from nerfcodec_ns.field.rendering import render_visibility


class PackedSamples(NamedTuple):
    """Ray segments ``[t_starts, t_ends]`` (world units along unit directions), sorted by ray."""

    ray_indices: Int[Tensor, "n"]
    t_starts: Float[Tensor, "n"]
    t_ends: Float[Tensor, "n"]

    @property
    def t_mids(self) -> Float[Tensor, "n"]:
        return 0.5 * (self.t_starts + self.t_ends)


def ray_aabb_intersect(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], aabb: Float[Tensor, "6"]
) -> tuple[Float[Tensor, "R"], Float[Tensor, "R"]]:
    """Slab test: entry and exit distances of each ray through the box ``(xmin,ymin,zmin,xmax,ymax,zmax)``.

    Rays that miss get ``t_near > t_far``.
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[:3] - origins) * inv
    t1 = (aabb[3:] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def occupied_aabb(binaries: Bool[Tensor, "X Y Z"], aabb: Float[Tensor, "6"]) -> Float[Tensor, "6"]:
    """Tight box around the occupied cells of a grid spanning ``aabb`` (empty grid: a zero-volume box)."""
    res = torch.tensor(binaries.shape, device=aabb.device, dtype=aabb.dtype)
    idx = torch.nonzero(binaries)
    if idx.numel() == 0:
        return torch.cat([aabb[:3], aabb[:3]])
    cell = (aabb[3:] - aabb[:3]) / res
    lo = aabb[:3] + idx.amin(0).to(aabb.dtype) * cell
    hi = aabb[:3] + (idx.amax(0).to(aabb.dtype) + 1.0) * cell
    return torch.cat([lo, hi])


def march_rays(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    binaries: Bool[Tensor, "X Y Z"],
    aabb: Float[Tensor, "6"],
    step_size: float,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    march_aabb: Optional[Float[Tensor, "6"]] = None,
    stratified: bool = False,
    coarse: Optional["CoarseGrid"] = None,
) -> PackedSamples:
    """Pure-torch ray marching with occupancy culling.

    Each ray is marched with constant ``step_size`` from where it enters ``march_aabb`` (default
    ``aabb``; pass :func:`occupied_aabb` to skip the empty margin) to where it leaves it; a segment
    is kept when the grid cell of its midpoint is occupied. ``stratified`` jitters each ray's first
    step by U(0, step_size) (training).

    ``coarse`` (a :class:`CoarseGrid` of the same ``binaries``) is a conservative pre-filter: blocks
    of ``coarse.block`` consecutive steps whose neighbourhood is empty are dropped before the
    per-step test. The result is identical with or without it; only the work differs.
    """
    device = origins.device
    box = aabb if march_aabb is None else march_aabb
    t_near, t_far = ray_aabb_intersect(origins, directions, box)
    t_near = t_near.clamp(min=near_plane)
    t_far = t_far.clamp(max=far_plane)
    if stratified:
        t_near = t_near + torch.rand_like(t_near) * step_size
    n_steps = torch.ceil((t_far - t_near) / step_size).clamp(min=0).long()
    if coarse is not None and coarse.block > 1:
        block = coarse.block
        n_blocks = (n_steps + block - 1) // block
        b_ray, b_k = _expand(n_blocks)
        b_start = t_near[b_ray] + (b_k * block).to(origins.dtype) * step_size
        b_end = torch.minimum(b_start + block * step_size, t_far[b_ray])
        b_mid = 0.5 * (b_start + b_end)
        keep = coarse.lookup(origins[b_ray] + b_mid[:, None] * directions[b_ray])
        b_ray, b_k = b_ray[keep], b_k[keep]
        per_block = torch.clamp(n_steps[b_ray] - b_k * block, max=block)
        j_block, j = _expand(per_block)
        ray_indices = b_ray[j_block]
        k = b_k[j_block] * block + j
    else:
        ray_indices, k = _expand(n_steps)
    if ray_indices.numel() == 0:
        empty = torch.zeros(0, device=device, dtype=origins.dtype)
        return PackedSamples(ray_indices, empty, empty)
    t_starts = t_near[ray_indices] + k.to(origins.dtype) * step_size
    t_ends = torch.minimum(t_starts + step_size, t_far[ray_indices])
    t_mids = 0.5 * (t_starts + t_ends)
    pts = origins[ray_indices] + t_mids[:, None] * directions[ray_indices]
    keep = _lookup_occupancy(binaries, aabb, pts)
    return PackedSamples(ray_indices[keep], t_starts[keep], t_ends[keep])


def _expand(counts: Int[Tensor, "R"]) -> tuple[Int[Tensor, "n"], Int[Tensor, "n"]]:
    """For each i, the pairs (i, 0..counts[i]-1), flattened in order: (owner index, local index)."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(total, device=counts.device) - first[owner]


class CoarseGrid(NamedTuple):
    """A max-pooled, one-cell-dilated copy of an occupancy grid and the step block it is safe for.

    A block of ``block`` steps (length <= one coarse cell) whose midpoint lies in an empty coarse
    cell has all its step midpoints within half a coarse cell of it, hence inside that cell's
    dilated neighbourhood, hence in empty fine cells.
    """

    binaries: Bool[Tensor, "x y z"]
    aabb: Float[Tensor, "6"]
    block: int

    @staticmethod
    def build(binaries: Bool[Tensor, "X Y Z"], aabb: Float[Tensor, "6"], step_size: float, factor: int = 4) -> "CoarseGrid":
        res = torch.tensor(binaries.shape)
        if (res % factor).any():
            return CoarseGrid(binaries, aabb, 1)
        pooled = F.max_pool3d(binaries[None, None].float(), factor)
        dilated = F.max_pool3d(pooled, 3, stride=1, padding=1)[0, 0] > 0
        coarse_cell = float(((aabb[3:] - aabb[:3]) / res.to(aabb) * factor).min())
        return CoarseGrid(dilated, aabb, max(1, int(coarse_cell // step_size)))

    def lookup(self, pts: Float[Tensor, "n 3"]) -> Bool[Tensor, "n"]:
        """Whether a block with midpoint ``pts`` may contain occupied steps (points are clamped to the grid)."""
        flat, _ = _cell_index(self.binaries.shape, self.aabb, pts)
        return self.binaries.reshape(-1)[flat]


def _lookup_occupancy(binaries: Bool[Tensor, "X Y Z"], aabb: Float[Tensor, "6"], pts: Float[Tensor, "n 3"]) -> Tensor:
    """Occupancy bit of the grid cell containing each point (False outside the grid)."""
    flat, inside = _cell_index(binaries.shape, aabb, pts)
    return binaries.reshape(-1)[flat] & inside


def _cell_index(shape, aabb: Float[Tensor, "6"], pts: Float[Tensor, "n 3"]) -> tuple[Tensor, Tensor]:
    """Flat index of the grid cell of each point (clamped to the grid) and whether the point is inside."""
    res = torch.tensor(shape, device=pts.device)
    u = (pts - aabb[:3]) / (aabb[3:] - aabb[:3])
    inside = ((u >= 0.0) & (u < 1.0)).all(dim=-1)
    ijk = (u * res).long().clamp(min=torch.zeros_like(res), max=res - 1)
    return (ijk[:, 0] * res[1] + ijk[:, 1]) * res[2] + ijk[:, 2], inside


SigmaFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def nerfacc_usable(device: torch.device) -> bool:
    """Whether nerfacc's CUDA kernels may be called for tensors on ``device``."""
    return device.type == "cuda" and torch.cuda.is_available()


class OccupancySampler(torch.nn.Module):
    """Occupancy grid over the scene box plus marching (nerfacc on CUDA, pure torch elsewhere).

    Args:
        aabb: ``[6]`` scene box (xmin, ymin, zmin, xmax, ymax, zmax), world units.
        grid_resolution: occupancy cells per axis.
        step_size: marching step, world units.
        backend: ``"auto"`` (nerfacc on CUDA, torch otherwise) or ``"torch"`` (always pure torch).
    """

    def __init__(self, aabb: Tensor, grid_resolution: int = 128, step_size: float = 0.01, backend: str = "auto"):
        super().__init__()
        from nerfacc import OccGridEstimator  # construction and buffers are pure torch

        self.estimator = OccGridEstimator(roi_aabb=aabb.reshape(-1).float(), resolution=grid_resolution, levels=1)
        self.step_size = step_size
        self.backend = backend
        self.register_buffer("march_aabb", aabb.reshape(-1).float().clone(), persistent=True)
        self._coarse: Optional[CoarseGrid] = None
        self._coarse_key: tuple = ()

    @property
    def binaries(self) -> Bool[Tensor, "X Y Z"]:
        return self.estimator.binaries[0]

    @property
    def aabb(self) -> Float[Tensor, "6"]:
        return self.estimator.aabbs[0]

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        warmup_steps: int = 256,
        every: int = 16,
        sample_fraction: float = 0.125,
        ema_decay: float = 0.95,
        chunk: int = 1 << 18,
    ) -> None:
        """EMA update of the grid every ``every`` steps, as nerfacc's ``OccGridEstimator`` does.

        During warm-up every cell is re-evaluated; afterwards ``sample_fraction`` of the cells,
        uniformly, plus as many occupied cells (nerfacc uses 1/4: costly on a CPU). A cell's
        occupancy is density * step size at a random point inside it.
        """
        if step % every != 0:
            return
        est = self.estimator
        if step < warmup_steps:
            indices = est.grid_indices
        else:
            n = max(1, int(est.cells_per_lvl * sample_fraction))
            uniform = torch.randint(est.cells_per_lvl, (n,), device=est.occs.device)
            occupied = torch.nonzero(est.binaries[0].flatten())[:, 0]
            if occupied.numel() > n:
                occupied = occupied[torch.randint(occupied.numel(), (n,), device=occupied.device)]
            indices = torch.cat([uniform, occupied])
        coords = est.grid_coords[indices]
        x = (coords + torch.rand_like(coords, dtype=torch.float32)) / est.resolution
        x = self.aabb[:3] + x * (self.aabb[3:] - self.aabb[:3])
        occ = torch.cat([density_fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]) * self.step_size
        est.occs[indices] = torch.maximum(est.occs[indices] * ema_decay, occ)
        est.binaries = (est.occs > torch.clamp(est.occs.mean(), max=occ_thre)).view(est.binaries.shape)
        self.march_aabb.copy_(occupied_aabb(self.binaries, self.aabb))

    def coarse_grid(self) -> CoarseGrid:
        """The pooled pre-filter grid for the current occupancy (rebuilt when the grid changes)."""
        b = self.estimator.binaries
        # Keyed on the tensor object itself (held, so its id cannot be reused) and its in-place version.
        key = (b, b._version, self.step_size)
        if self._coarse is None or not (key[0] is self._coarse_key[0] and key[1:] == self._coarse_key[1:]):
            self._coarse = CoarseGrid.build(self.binaries, self.aabb, self.step_size)
            self._coarse_key = key
        return self._coarse

    @torch.no_grad()
    def sample(
        self,
        origins: Float[Tensor, "R 3"],
        directions: Float[Tensor, "R 3"],
        sigma_fn: Optional[SigmaFn] = None,
        near_plane: float = 0.0,
        far_plane: float = 1e10,
        stratified: bool = False,
        alpha_thre: float = 0.0,
        early_stop_eps: float = 1e-4,
    ) -> PackedSamples:
        """Packed samples in occupied space; with ``sigma_fn`` also drops invisible ones
        (transmittance below ``early_stop_eps`` or opacity below ``alpha_thre``)."""
        if self.backend == "auto" and nerfacc_usable(origins.device):
            ray_indices, t_starts, t_ends = self.estimator.sampling(
                origins, directions, sigma_fn=sigma_fn, near_plane=near_plane, far_plane=far_plane,
                render_step_size=self.step_size, stratified=stratified, alpha_thre=alpha_thre,
                early_stop_eps=early_stop_eps,
            )
            return PackedSamples(ray_indices.long(), t_starts, t_ends)
        samples = march_rays(origins, directions, self.binaries, self.aabb, self.step_size, near_plane, far_plane,
                             march_aabb=self.march_aabb, stratified=stratified, coarse=self.coarse_grid())
        if sigma_fn is None or samples.ray_indices.numel() == 0 or (alpha_thre <= 0 and early_stop_eps <= 0):
            return samples
        alpha_thre = min(alpha_thre, float(self.estimator.occs.mean()))  # as nerfacc does
        sigmas = sigma_fn(samples.t_starts, samples.t_ends, samples.ray_indices)
        keep = render_visibility(sigmas, samples.t_starts, samples.t_ends, samples.ray_indices,
                                 origins.shape[0], alpha_thre=alpha_thre, early_stop_eps=early_stop_eps)
        return PackedSamples(samples.ray_indices[keep], samples.t_starts[keep], samples.t_ends[keep])
