"""Empty-space-skipping ray sampler: an occupancy grid and ray marching, on CPU and GPU.

The occupancy grid is nerfacc's :class:`~nerfacc.OccGridEstimator` (its bookkeeping and EMA
update are plain torch and run anywhere). Marching has two back ends:

* ``nerfacc``: nerfacc's CUDA ``traverse_grids`` (``OccGridEstimator.sampling``), used only when
  the rays live on a CUDA device;
* ``torch``: :func:`march_rays`, a pure-torch re-implementation used on CPU (nerfacc's packed
  ops raise "Only support cuda inputs" there, and on a machine with ``nvcc`` but no GPU merely
  touching them triggers a failing JIT build).

Both return packed samples (:class:`PackedSamples`): a flat list of ray segments sorted by ray.

Unbounded scenes use a multi-level grid (nerfacc's convention: level ``l`` covers the scene box
scaled by ``2**l`` about its centre; a point belongs to the finest level whose box contains it)
and cone-angle marching (step ``dt = clamp(t * cone_angle, step_size, 1e10)``: constant near the
camera, growing with distance ``t`` beyond ``step_size / cone_angle``).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Optional, Union

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


Grid = Union[Bool[Tensor, "X Y Z"], Bool[Tensor, "L X Y Z"]]
GridBoxes = Union[Float[Tensor, "6"], Float[Tensor, "L 6"]]


def occupied_aabb(binaries: Grid, aabb: GridBoxes) -> Float[Tensor, "6"]:
    """Tight box around the occupied cells of a grid spanning ``aabb`` (empty grid: a zero-volume box).

    A multi-level grid (``binaries`` ``[L, X, Y, Z]``, ``aabb`` ``[L, 6]``) gives the box around the
    occupied cells of all levels (all empty: a zero-volume box at the finest level's corner).
    """
    if binaries.dim() == 4:
        boxes = [occupied_aabb(b, a) for b, a in zip(binaries, aabb) if bool(b.any())]
        if not boxes:
            return torch.cat([aabb[0, :3], aabb[0, :3]])
        stacked = torch.stack(boxes)
        return torch.cat([stacked[:, :3].amin(0), stacked[:, 3:].amax(0)])
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
    binaries: Grid,
    aabb: GridBoxes,
    step_size: float,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    march_aabb: Optional[Float[Tensor, "6"]] = None,
    stratified: bool = False,
    coarse: Optional[Union["CoarseGrid", "LevelCoarseGrid"]] = None,
    cone_angle: float = 0.0,
) -> PackedSamples:
    """Pure-torch ray marching with occupancy culling.

    Each ray is marched from where it enters ``march_aabb`` (default ``aabb``, for a multi-level
    grid its outermost box; pass :func:`occupied_aabb` to skip the empty margin) to where it leaves
    it; a segment is kept when the grid cell of its midpoint is occupied. ``binaries`` ``[X, Y, Z]``
    with ``aabb`` ``[6]`` is a single grid; ``[L, X, Y, Z]`` with ``[L, 6]`` a multi-level one
    (nerfacc's nested boxes, finest first), where a point's cell is that of the finest level
    containing it (unoccupied outside the outermost box).

    Steps (world units along unit directions) are ``dt = clamp(t * cone_angle, step_size, 1e10)``:
    constant ``step_size`` when ``cone_angle == 0``, else growing geometrically (by ``1 + cone_angle``
    a step) beyond ``t = step_size / cone_angle`` (see :func:`cone_steps`). ``stratified`` jitters
    each ray's first step by U(0, dt) (training).

    ``coarse`` is a conservative pre-filter: blocks of ``coarse.block`` consecutive steps whose
    neighbourhood is empty are dropped before the per-step test. The result is identical with or
    without it; only the work differs. A :class:`CoarseGrid` serves a single grid with constant
    steps, a :class:`LevelCoarseGrid` the other cases (a pre-filter of the other kind is ignored).
    """
    device = origins.device
    levels = binaries.dim() == 4
    box = (aabb[-1] if levels else aabb) if march_aabb is None else march_aabb
    t_near, t_far = ray_aabb_intersect(origins, directions, box)
    t_near = t_near.clamp(min=near_plane)
    t_far = t_far.clamp(max=far_plane)
    if stratified:
        dt = step_size if cone_angle == 0 else (t_near * cone_angle).clamp(min=step_size, max=1e10)
        t_near = t_near + torch.rand_like(t_near) * dt
    if not levels and cone_angle == 0:  # today's path, bit for bit
        ray_indices, t_starts, t_ends = _constant_steps(
            origins, directions, t_near, t_far, step_size, coarse if isinstance(coarse, CoarseGrid) else None)
    else:
        steps = _Steps(t_near, t_far, step_size, cone_angle)
        if isinstance(coarse, LevelCoarseGrid) and coarse.block > 1:
            ray_indices, k = steps.prefilter(origins, directions, coarse)
        else:
            ray_indices, k = _expand(steps.count)
        ray_indices, t_starts, t_ends = steps.segments(ray_indices, k)
    if ray_indices.numel() == 0:
        empty = torch.zeros(0, device=device, dtype=origins.dtype)
        return PackedSamples(ray_indices, empty, empty)
    t_mids = 0.5 * (t_starts + t_ends)
    pts = origins[ray_indices] + t_mids[:, None] * directions[ray_indices]
    keep = _lookup_levels(binaries, aabb, pts) if levels else _lookup_occupancy(binaries, aabb, pts)
    return PackedSamples(ray_indices[keep], t_starts[keep], t_ends[keep])


def _constant_steps(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    t_near: Float[Tensor, "R"],
    t_far: Float[Tensor, "R"],
    step_size: float,
    coarse: Optional["CoarseGrid"],
) -> tuple[Int[Tensor, "n"], Float[Tensor, "n"], Float[Tensor, "n"]]:
    """Steps ``t_near + k * step_size`` up to ``t_far`` (the last one cut there); with ``coarse``,
    blocks of steps in empty coarse cells are left out."""
    steps = _Steps(t_near, t_far, step_size, 0.0)
    n_steps = steps.count
    if coarse is not None and coarse.block > 1:
        block = coarse.block
        n_blocks = (n_steps + block - 1) // block
        b_ray, b_k = _expand(n_blocks)
        b_start, _ = steps.bounds(b_ray, b_k * block)
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
    return (ray_indices, *steps.bounds(ray_indices, k))


class _Steps:
    """The steps of each ray from ``t_near`` to ``t_far``, in closed form: step ``k`` of ray ``r`` is
    ``bounds(r, k)``; ``count`` bounds the number of steps per ray (:meth:`segments` drops steps
    starting at or beyond ``t_far``).

    Constant steps (``cone_angle == 0``): ``t_k = t_near + k * step_size``, in the input precision
    (as :func:`_constant_steps`). Cone-angle steps: ``t_{k+1} = t_k + clamp(t_k * cone_angle,
    step_size, 1e10)``, linear ``t_near + k * step_size`` while ``t_k * cone_angle < step_size``,
    then geometric ``t_K * (1 + cone_angle)**(k - K)`` from the first ``t_K`` past it; in float64.
    """

    def __init__(
        self, t_near: Float[Tensor, "R"], t_far: Float[Tensor, "R"], step_size: float, cone_angle: float
    ) -> None:
        self.dtype, self.s, self.c = t_near.dtype, float(step_size), float(cone_angle)
        if self.c == 0.0:
            self.t0, self.t1 = t_near, t_far
            self.count = torch.ceil((t_far - t_near) / step_size).clamp(min=0).long()
            return
        t0, t1 = t_near.double(), t_far.double()
        s, c = self.s, self.c
        self.log_growth = math.log1p(c)
        n_lin = torch.ceil((s / c - t0) / s).clamp(min=0)  # steps starting where t * cone_angle < step_size
        t_geo = t0 + n_lin * s  # start of the first geometric step (>= step_size / cone_angle > 0)
        n_geo = torch.ceil(torch.log(torch.maximum(t1, t_geo) / t_geo) / self.log_growth)
        n = torch.where(t1 > t_geo, n_lin + n_geo, torch.minimum(torch.ceil((t1 - t0) / s), n_lin))
        self.count = torch.where(t1 > t0, n + 1.0, torch.zeros_like(n)).long()  # +1: a spare against rounding
        self.t0, self.t1, self.n_lin, self.t_geo = t0, t1, n_lin, t_geo

    def _t(self, ray: Int[Tensor, "n"], k: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
        n_lin = self.n_lin[ray]
        return torch.where(k < n_lin, self.t0[ray] + k * self.s,
                           self.t_geo[ray] * torch.exp((k - n_lin) * self.log_growth))

    def bounds(self, ray: Int[Tensor, "n"], k: Int[Tensor, "n"]) -> tuple[Tensor, Tensor]:
        """Start and end of step ``k`` of ray ``ray`` (the end cut at ``t_far``), in working precision."""
        if self.c == 0.0:
            t_starts = self.t0[ray] + k.to(self.dtype) * self.s
            return t_starts, torch.minimum(t_starts + self.s, self.t1[ray])
        kf = k.double()
        return self._t(ray, kf), torch.minimum(self._t(ray, kf + 1.0), self.t1[ray])

    def segments(self, ray: Int[Tensor, "n"], k: Int[Tensor, "n"]) -> tuple[Tensor, Tensor, Tensor]:
        """(ray indices, t_starts, t_ends) of the steps ``(ray, k)`` that start before ``t_far``."""
        t_starts, t_ends = self.bounds(ray, k)
        if self.c == 0.0:
            return ray, t_starts, t_ends
        keep = t_starts < self.t1[ray]
        return ray[keep], t_starts[keep].to(self.dtype), t_ends[keep].to(self.dtype)

    def prefilter(
        self, origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], coarse: "LevelCoarseGrid"
    ) -> tuple[Int[Tensor, "n"], Int[Tensor, "n"]]:
        """(ray, k) of the steps in blocks of ``coarse.block`` that may hold occupied midpoints."""
        block = coarse.block
        n_blocks = (self.count + block - 1) // block
        b_ray, b_j = _expand(n_blocks)
        k_first = b_j * block
        k_last = torch.minimum(k_first + block, self.count[b_ray]) - 1
        b_start, _ = self.bounds(b_ray, k_first)
        _, b_end = self.bounds(b_ray, k_last)
        b_mid = (0.5 * (b_start + b_end)).to(origins.dtype)
        half = (0.5 * (b_end - b_start)).to(origins.dtype)
        keep = coarse.lookup(origins[b_ray] + b_mid[:, None] * directions[b_ray], half)
        b_ray, k_first = b_ray[keep], k_first[keep]
        j_block, j = _expand(torch.clamp(self.count[b_ray] - k_first, max=block))
        return b_ray[j_block], k_first[j_block] + j


def cone_steps(
    t_near: Float[Tensor, "R"], t_far: Float[Tensor, "R"], step_size: float, cone_angle: float
) -> tuple[Int[Tensor, "n"], Float[Tensor, "n"], Float[Tensor, "n"]]:
    """All steps ``t_{k+1} = t_k + clamp(t_k * cone_angle, step_size, 1e10)`` from ``t_0 = t_near`` up to
    ``t_far`` (the last one cut there), per ray, in closed form: (ray indices, t_starts, t_ends).

    While ``t_k < step_size / cone_angle`` the steps are linear, ``t_k = t_near + k * step_size``;
    from the first ``t_K`` past it they are geometric, ``t_k = t_K * (1 + cone_angle)**(k - K)``.
    Computed in float64 (the same segments as the loop, within float32 rounding; the 1e10 cap on a
    step is not modelled: it matters only beyond t = 1e10 / cone_angle). Needs ``cone_angle > 0``.
    """
    if not cone_angle > 0:
        raise ValueError(f"cone_steps needs cone_angle > 0, got {cone_angle}")
    steps = _Steps(t_near, t_far, step_size, cone_angle)
    return steps.segments(*_expand(steps.count))


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


class LevelCoarseGrid(NamedTuple):
    """The pre-filter of :func:`march_rays` for multi-level grids and cone-angle steps.

    Per level, the effective occupancy (a level's cells OR-ed with the 2x-pooled effective occupancy of
    the finer level nested in its centre, so that it covers every point of the level's box whatever
    level the point is read from), max-pooled by ``factor`` and dilated by one coarse cell. A block of
    steps whose midpoint is read from level ``l`` and whose half-length ``h`` is at most half a coarse
    cell of ``l`` has all its step midpoints within one coarse cell of the midpoint: in level ``l``'s
    dilated neighbourhood, or, when the midpoint is within ``h`` of the level's border, in the next
    coarser level's. Longer blocks (steps grow with distance) are always kept.
    """

    binaries: Bool[Tensor, "L x y z"]
    aabbs: Float[Tensor, "L 6"]
    cell: Float[Tensor, "L"]
    block: int

    @staticmethod
    def build(binaries: Bool[Tensor, "L X Y Z"], aabbs: Float[Tensor, "L 6"], step_size: float,
              factor: int = 4) -> "LevelCoarseGrid":
        """``block`` is the number of ``step_size`` steps in a coarse cell of the finest level; 1 (no
        pre-filter) where the resolution is not a multiple of ``factor`` and of 4, or the boxes are not
        nerfacc's nested ones."""
        n_levels = binaries.shape[0]
        res = torch.tensor(binaries.shape[1:])
        centre, extent = (aabbs[0, :3] + aabbs[0, 3:]) / 2, (aabbs[0, 3:] - aabbs[0, :3]) / 2
        nested = all(
            torch.allclose(aabbs[lvl], torch.cat([centre - extent * 2**lvl, centre + extent * 2**lvl]))
            for lvl in range(n_levels)
        )
        cell = ((aabbs[:, 3:] - aabbs[:, :3]) / res.to(aabbs) * factor).amin(dim=1)
        if (res % factor).any() or (res % 4).any() or not nested:
            return LevelCoarseGrid(binaries, aabbs, cell, 1)
        effective = binaries.clone()
        q, h = (res // 4).tolist(), (res // 2).tolist()
        for lvl in range(1, n_levels):
            finer = F.max_pool3d(effective[lvl - 1][None, None].float(), 2)[0, 0] > 0
            effective[lvl, q[0]:q[0] + h[0], q[1]:q[1] + h[1], q[2]:q[2] + h[2]] |= finer
        pooled = F.max_pool3d(effective[:, None].float(), factor)
        dilated = F.max_pool3d(pooled, 3, stride=1, padding=1)[:, 0] > 0
        return LevelCoarseGrid(dilated, aabbs, cell, max(1, int(float(cell[0]) // step_size)))

    def lookup(self, pts: Float[Tensor, "n 3"], half: Float[Tensor, "n"]) -> Bool[Tensor, "n"]:
        """Whether a block with midpoint ``pts`` and half-length ``half`` may contain occupied steps."""
        n_levels = self.binaries.shape[0]
        lo, hi = self.aabbs[:, :3], self.aabbs[:, 3:]
        level, inside = _level_of(self.aabbs, pts)
        keep = ~inside | (half > 0.5 * self.cell[level])  # outside the grid, or too long a block
        keep |= _level_bits(self.binaries, self.aabbs, level, pts)
        border = ((pts - lo[level]) < half[:, None]).any(-1) | ((hi[level] - pts) <= half[:, None]).any(-1)
        up = border & (level < n_levels - 1)
        if bool(up.any()):
            keep[up] |= _level_bits(self.binaries, self.aabbs, level[up] + 1, pts[up])
        return keep


def _lookup_occupancy(binaries: Bool[Tensor, "X Y Z"], aabb: Float[Tensor, "6"], pts: Float[Tensor, "n 3"]) -> Tensor:
    """Occupancy bit of the grid cell containing each point (False outside the grid)."""
    flat, inside = _cell_index(binaries.shape, aabb, pts)
    return binaries.reshape(-1)[flat] & inside


def _level_of(
    aabbs: Float[Tensor, "L 6"], pts: Float[Tensor, "n 3"]
) -> tuple[Int[Tensor, "n"], Bool[Tensor, "n"]]:
    """The finest level whose (half-open) box holds each point, and whether any does (else the
    outermost level). The boxes are nested, finest first (nerfacc's levels): the number of boxes
    holding a point gives its level."""
    n_levels = aabbs.shape[0]
    count = torch.zeros(pts.shape[0], dtype=torch.uint8, device=pts.device)
    for lvl in range(n_levels):
        count += ((pts >= aabbs[lvl, :3]) & (pts < aabbs[lvl, 3:])).all(dim=-1)
    return (n_levels - count.long()).clamp(max=n_levels - 1), count > 0


def _lookup_levels(
    binaries: Bool[Tensor, "L X Y Z"], aabbs: Float[Tensor, "L 6"], pts: Float[Tensor, "n 3"]
) -> Bool[Tensor, "n"]:
    """Occupancy bit of each point in the finest level whose box contains it (False outside all boxes)."""
    level, inside = _level_of(aabbs, pts)
    return _level_bits(binaries, aabbs, level, pts) & inside


def _level_bits(
    binaries: Bool[Tensor, "L X Y Z"], aabbs: Float[Tensor, "L 6"], level: Int[Tensor, "n"], pts: Float[Tensor, "n 3"]
) -> Bool[Tensor, "n"]:
    """The bit of level ``level`` at each point (points clamped to that level's grid)."""
    res = torch.tensor(binaries.shape[1:], device=pts.device)
    lo, hi = aabbs[level, :3], aabbs[level, 3:]
    ijk = ((pts - lo) / (hi - lo) * res).long().clamp(min=torch.zeros_like(res), max=res - 1)
    flat = ((level * res[0] + ijk[:, 0]) * res[1] + ijk[:, 1]) * res[2] + ijk[:, 2]
    return binaries.reshape(-1)[flat]


def _cell_index(shape, aabb: Float[Tensor, "6"], pts: Float[Tensor, "n 3"]) -> tuple[Tensor, Tensor]:
    """Flat index of the grid cell of each point (clamped to the grid) and whether the point is inside."""
    res = torch.tensor(shape, device=pts.device)
    u = (pts - aabb[:3]) / (aabb[3:] - aabb[:3])
    inside = ((u >= 0.0) & (u < 1.0)).all(dim=-1)
    ijk = (u * res).long().clamp(min=torch.zeros_like(res), max=res - 1)
    return (ijk[:, 0] * res[1] + ijk[:, 1]) * res[2] + ijk[:, 2], inside


SigmaFn = Callable[[Tensor, Tensor, Tensor], Tensor]


#: A derived grid (:meth:`OccupancySampler.derive`) refines the cells near a cell whose centre
#: occupancy exceeds its threshold divided by this. Part of the scene-file format: a decoder must
#: derive the grid the encoder derived (docs/bitstream.md).
DERIVE_REFINE_DIVISOR = 4.0


def nerfacc_usable(device: torch.device) -> bool:
    """Whether nerfacc's CUDA kernels may be called for tensors on ``device``."""
    return device.type == "cuda" and torch.cuda.is_available()


class OccupancySampler(torch.nn.Module):
    """Occupancy grid over the scene box plus marching (nerfacc on CUDA, pure torch elsewhere).

    Args:
        aabb: ``[6]`` scene box (xmin, ymin, zmin, xmax, ymax, zmax), world units.
        grid_resolution: occupancy cells per axis (of each level).
        step_size: marching step, world units (the smallest one with ``cone_angle``).
        backend: ``"auto"`` (nerfacc on CUDA, torch otherwise) or ``"torch"`` (always pure torch).
        levels: grid levels; level ``l`` covers ``aabb`` scaled by ``2**l`` about its centre
            (unbounded scenes: > 1).
        cone_angle: steps grow as ``clamp(t * cone_angle, step_size, 1e10)`` at distance ``t``
            (0: constant steps).
    """

    def __init__(
        self,
        aabb: Tensor,
        grid_resolution: int = 128,
        step_size: float = 0.01,
        backend: str = "auto",
        levels: int = 1,
        cone_angle: float = 0.0,
    ):
        super().__init__()
        from nerfacc import OccGridEstimator  # construction and buffers are pure torch

        if levels < 1 or cone_angle < 0:
            raise ValueError(f"need levels >= 1 and cone_angle >= 0, got {levels}, {cone_angle}")
        self.estimator = OccGridEstimator(roi_aabb=aabb.reshape(-1).float(), resolution=grid_resolution,
                                          levels=levels)
        self.step_size = step_size
        self.backend = backend
        self.grid_resolution = int(grid_resolution)
        self.levels = levels
        self.cone_angle = cone_angle
        march = aabb.reshape(-1).float() if levels == 1 else self.estimator.aabbs[-1]
        self.register_buffer("march_aabb", march.clone(), persistent=True)
        self._coarse: Optional[Union[CoarseGrid, LevelCoarseGrid]] = None
        self._coarse_key: tuple = ()

    @property
    def binaries(self) -> Bool[Tensor, "X Y Z"]:
        """The occupancy grid of a single-level sampler (multi-level: see :attr:`level_binaries`)."""
        self._single_level("binaries", "level_binaries")
        return self.estimator.binaries[0]

    @property
    def aabb(self) -> Float[Tensor, "6"]:
        """The grid's box of a single-level sampler (multi-level: see :attr:`level_aabbs`)."""
        self._single_level("aabb", "level_aabbs")
        return self.estimator.aabbs[0]

    @property
    def level_binaries(self) -> Bool[Tensor, "L X Y Z"]:
        """The occupancy grids of all levels, finest first."""
        return self.estimator.binaries

    @property
    def level_aabbs(self) -> Float[Tensor, "L 6"]:
        """The boxes of all levels (world units), finest (the scene box) first."""
        return self.estimator.aabbs

    def _single_level(self, name: str, instead: str) -> None:
        if self.levels != 1:
            raise ValueError(f"OccupancySampler.{name} is for a single-level grid; this one has {self.levels} "
                             f"levels: use {instead}")

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

        During warm-up every cell (of every level) is re-evaluated; afterwards, per level,
        ``sample_fraction`` of the cells, uniformly, plus as many occupied cells (nerfacc uses 1/4:
        costly on a CPU). A cell's occupancy is density * step size at a random point inside it
        (the cells of level ``l`` lie in that level's box). The threshold is over all levels.
        """
        if step % every != 0:
            return
        est = self.estimator
        xs, cell_ids = [], []
        for lvl in range(est.levels):
            if step < warmup_steps:
                indices = est.grid_indices
            else:
                n = max(1, int(est.cells_per_lvl * sample_fraction))
                uniform = torch.randint(est.cells_per_lvl, (n,), device=est.occs.device)
                occupied = torch.nonzero(est.binaries[lvl].flatten())[:, 0]
                if occupied.numel() > n:
                    occupied = occupied[torch.randint(occupied.numel(), (n,), device=occupied.device)]
                indices = torch.cat([uniform, occupied])
            coords = est.grid_coords[indices]
            x = (coords + torch.rand_like(coords, dtype=torch.float32)) / est.resolution
            box = est.aabbs[lvl]
            xs.append(box[:3] + x * (box[3:] - box[:3]))
            cell_ids.append(indices + lvl * est.cells_per_lvl)
        x, indices = torch.cat(xs), torch.cat(cell_ids)
        occ = self._occupancy(x, density_fn, chunk)
        est.occs[indices] = torch.maximum(est.occs[indices] * ema_decay, occ)
        est.binaries = (est.occs > torch.clamp(est.occs.mean(), max=occ_thre)).view(est.binaries.shape)
        self.refresh_march_aabb()

    def _occupancy(self, x: Float[Tensor, "n 3"], density_fn: Callable[[Tensor], Tensor], chunk: int) -> Float[Tensor, "n"]:
        """density * step size at the points ``x`` (world units), ``chunk`` points at a time."""
        parts = [density_fn(x[i : i + chunk]).reshape(-1) for i in range(0, x.shape[0], chunk)]
        occ = (torch.cat(parts) if parts else x.new_zeros(0)) * self.step_size
        return torch.nan_to_num(occ, nan=0.0)  # a NaN density (an untrusted decoded field) is empty space

    @torch.no_grad()
    def derive(
        self,
        density_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        points: int = 1,
        chunk: int = 1 << 18,
    ) -> None:
        """Set the grid from ``density_fn`` alone, the same way on every call (what a decoder does to
        rebuild the grid of a scene file that does not carry it, ``RenderSettings.grid_source``
        "derived"):

        1. every cell's occupancy is density * step size at its centre;
        2. with ``points`` > 1, the cells within one cell (of the same level, 26-neighbourhood) of a
           cell whose centre occupancy exceeds ``occ_thre / DERIVE_REFINE_DIVISOR`` take the largest
           of that and the occupancy at their ``points**3`` sub-cell centres (thin structures fall
           between cell centres; on lego_200 this refines 12.6% of the cells and finds all but 15 of
           the 92,776 cells that refining every cell finds);
        3. a cell is occupied when its occupancy exceeds min(mean occupancy over all levels,
           ``occ_thre``) (:meth:`update`'s rule, without its random points and running maximum).
        """
        est = self.estimator
        shape = est.binaries.shape  # [L, X, Y, Z]
        coords = est.grid_coords.float()

        def occupancy(lvl: int, cells: Tensor, offset: Tensor) -> Tensor:
            box = est.aabbs[lvl]
            return self._occupancy(box[:3] + (coords[cells] + offset) / est.resolution * (box[3:] - box[:3]),
                                   density_fn, chunk)

        every_cell = torch.arange(est.cells_per_lvl, device=coords.device)
        centre = torch.full((3,), 0.5, device=coords.device)
        occ = torch.stack([occupancy(lvl, every_cell, centre) for lvl in range(est.levels)])
        if points > 1:
            seeds = (occ > occ_thre / DERIVE_REFINE_DIVISOR).float().view(shape[0], 1, *shape[1:])
            near = (F.max_pool3d(seeds, 3, stride=1, padding=1) > 0).view(shape[0], -1)
            offsets = (torch.arange(points, dtype=torch.float32, device=coords.device) + 0.5) / points
            for lvl in range(est.levels):
                cells = torch.nonzero(near[lvl])[:, 0]
                best = occ[lvl, cells]
                for offset in itertools.product(offsets, repeat=3):
                    best = torch.maximum(best, occupancy(lvl, cells, torch.stack(offset)))
                occ[lvl, cells] = best
        est.occs.copy_(occ.reshape(-1))
        est.binaries = (est.occs > torch.clamp(est.occs.mean(), max=occ_thre)).view(shape)
        self.refresh_march_aabb()

    def refresh_march_aabb(self) -> None:
        """Set :attr:`march_aabb` to the tight box around the occupied cells of all levels (call after
        writing ``estimator.binaries`` directly)."""
        self.march_aabb.copy_(occupied_aabb(self.level_binaries, self.level_aabbs))

    def coarse_grid(self) -> Union[CoarseGrid, LevelCoarseGrid]:
        """The pooled pre-filter grid for the current occupancy (rebuilt when the grid changes): a
        :class:`CoarseGrid` for a single level with constant steps, else a :class:`LevelCoarseGrid`."""
        b = self.estimator.binaries
        single = self.levels == 1 and self.cone_angle == 0
        # Keyed on the tensor object itself (held, so its id cannot be reused) and its in-place version.
        key = (b, b._version, self.step_size, single)
        if self._coarse is None or not (key[0] is self._coarse_key[0] and key[1:] == self._coarse_key[1:]):
            if single:
                self._coarse = CoarseGrid.build(self.binaries, self.aabb, self.step_size)
            else:
                self._coarse = LevelCoarseGrid.build(self.level_binaries, self.level_aabbs, self.step_size)
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
                early_stop_eps=early_stop_eps, cone_angle=self.cone_angle,
            )
            return PackedSamples(ray_indices.long(), t_starts, t_ends)
        grid = (self.binaries, self.aabb) if self.levels == 1 else (self.level_binaries, self.level_aabbs)
        samples = march_rays(origins, directions, *grid, self.step_size, near_plane, far_plane,
                             march_aabb=self.march_aabb, stratified=stratified, coarse=self.coarse_grid(),
                             cone_angle=self.cone_angle)
        if sigma_fn is None or samples.ray_indices.numel() == 0 or (alpha_thre <= 0 and early_stop_eps <= 0):
            return samples
        alpha_thre = min(alpha_thre, float(self.estimator.occs.mean()))  # as nerfacc does
        sigmas = sigma_fn(samples.t_starts, samples.t_ends, samples.ray_indices)
        keep = render_visibility(sigmas, samples.t_starts, samples.t_ends, samples.ray_indices,
                                 origins.shape[0], alpha_thre=alpha_thre, early_stop_eps=early_stop_eps)
        return PackedSamples(samples.ray_indices[keep], samples.t_starts[keep], samples.t_ends[keep])
