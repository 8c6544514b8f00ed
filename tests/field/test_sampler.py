"""Tests for the pure-torch empty-space-skipping sampler (``nerfcodec_ns.field.sampler``), CPU only.

nerfacc's CUDA marching (``OccGridEstimator.sampling``/``traverse_grids``) is never called: the
references here are brute force (dense points along rays, every step through the box) and
nerfacc's batched, pure-torch ``render_weight_from_density``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from nerfacc import render_weight_from_density

from nerfcodec_ns.field.rendering import accumulate_along_rays, render_weights
from nerfcodec_ns.field.sampler import (
    DERIVE_REFINE_DIVISOR,
    CoarseGrid,
    OccupancySampler,
    PackedSamples,
    march_rays,
    occupied_aabb,
    ray_aabb_intersect,
)

AABB = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
RES = 32


# --------------------------------------------------------------------------- helpers
def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def cell_of(pts, res, aabb):
    """Integer cell coordinates of points and whether they lie inside the grid (independent of the
    module's lookup, same convention: cell i covers [lo + i*cell, lo + (i+1)*cell))."""
    res_t = torch.tensor(res)
    u = (pts - aabb[:3]) / (aabb[3:] - aabb[:3])
    inside = ((u >= 0.0) & (u < 1.0)).all(dim=-1)
    ijk = torch.floor(u * res_t).long()
    ijk = torch.minimum(torch.maximum(ijk, torch.zeros_like(ijk)), res_t - 1)
    return ijk, inside


def occupancy_at(binaries, aabb, pts):
    ijk, inside = cell_of(pts, binaries.shape, aabb)
    return binaries[ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside


BLOB_CENTERS = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, -0.3], [0.2, 0.6, 0.5], [-0.3, -0.7, 0.6]])


def blobs(pts):
    d2 = ((pts[..., None, :] - BLOB_CENTERS) ** 2).sum(-1)
    return (40.0 * torch.exp(-d2 / (2 * 0.25**2))).sum(-1)


def colour_field(pts):
    return torch.sigmoid(torch.stack([2 * pts[..., 0], pts[..., 1] - pts[..., 2], 3 * pts[..., 2]], dim=-1))


def make_rays(n, gen, n_inside=40, n_miss=20, radius=3.0):
    """Rays from a sphere around the box aimed at random points in it, rays starting inside the
    box, and rays that miss the box (pointing away from it)."""
    n_out = n - n_inside - n_miss
    o = unit(torch.randn(n_out, 3, generator=gen)) * radius
    target = (torch.rand(n_out, 3, generator=gen) * 2 - 1) * 1.2
    d = unit(target - o)
    oi = (torch.rand(n_inside, 3, generator=gen) * 2 - 1) * 1.0
    di = unit(torch.randn(n_inside, 3, generator=gen))
    om = unit(torch.randn(n_miss, 3, generator=gen)) * radius
    dm = unit(om + 0.3 * torch.randn(n_miss, 3, generator=gen))  # away from the box
    return torch.cat([o, oi, om]), torch.cat([d, di, dm])


def shape_grid():
    """Cells around the blobs (and nothing else)."""
    centres = AABB[:3] + (torch.stack(torch.meshgrid(*[torch.arange(RES)] * 3, indexing="ij"), -1) + 0.5) * (3.0 / RES)
    return blobs(centres) > 0.5


def random_sub_grid(seed, p=0.3):
    """Random cells, only inside a sub-box (so that the occupied box is smaller than the scene)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(RES, RES, RES, generator=g) < p
    keep = torch.zeros_like(b)
    keep[4:27, 7:30, 2:20] = True
    return b & keep


def dense_reference(origins, dirs, box, step, density_fn, near_plane=0.0):
    """Every step ``t_near + k*step`` through ``box``, no culling, padded to [R, K]; weights from
    nerfacc's batched ``render_weight_from_density``."""
    t_near, t_far = ray_aabb_intersect(origins, dirs, box)
    t_near = t_near.clamp(min=near_plane)
    n_steps = torch.ceil((t_far - t_near) / step).clamp(min=0).long()
    K = max(int(n_steps.max()), 1)
    k = torch.arange(K)
    valid = k[None] < n_steps[:, None]
    t0 = t_near[:, None] + k.to(origins.dtype)[None] * step
    t1 = torch.minimum(t0 + step, t_far[:, None])
    t0 = torch.where(valid, t0, t_far[:, None])
    t1 = torch.where(valid, t1, t_far[:, None])  # padding: zero-length intervals
    mids = 0.5 * (t0 + t1)
    pts = origins[:, None, :] + mids[..., None] * dirs[:, None, :]
    sig = torch.where(valid, density_fn(pts), torch.zeros(()))
    w, _, _ = render_weight_from_density(t0, t1, sig)
    rgb = (w[..., None] * colour_field(pts)).sum(1)
    acc = w.sum(1)
    return dict(t_near=t_near, t0=t0, t1=t1, valid=valid, sig=sig, w=w, rgb=rgb, acc=acc, n_steps=n_steps)


# --------------------------------------------------------------------------- ray_aabb_intersect
def brute_force_interval(origins, dirs, aabb, t_lo=-8.0, t_hi=8.0, n=8001):
    t = torch.linspace(t_lo, t_hi, n, dtype=torch.float64)
    o, d, b = origins.double(), dirs.double(), aabb.double()
    pts = o[:, None, :] + t[None, :, None] * d[:, None, :]
    inside = ((pts >= b[:3]) & (pts <= b[3:])).all(-1)
    hit = inside.any(1)
    big = torch.tensor(float("inf"), dtype=torch.float64)
    tn = torch.where(inside, t[None], big).amin(1)
    tf = torch.where(inside, t[None], -big).amax(1)
    return hit, tn, tf, float(t[1] - t[0])


def test_ray_aabb_intersect_brute_force():
    gen = torch.Generator().manual_seed(0)
    o, d = make_rays(120, gen, n_inside=30, n_miss=20)
    # axis-parallel rays (zero components, including -0.0), inside and outside the other slabs
    ax_o = torch.tensor([
        [-3.0, 0.2, -0.4], [-3.0, 2.0, 0.0], [0.3, 4.0, 0.3], [0.3, 4.0, 1.7], [0.1, -0.2, -5.0],
        [0.0, 0.0, 0.0], [1.6, 0.0, 0.0], [-2.5, -2.5, 0.3], [-2.5, -2.5, 1.9], [0.5, 0.3, 0.5],
    ])
    ax_d = torch.tensor([
        [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, -0.0], [-0.0, -1.0, 0.0], [0.0, 0.0, 1.0],
        [0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [-0.0, -0.0, -1.0],
    ])
    o = torch.cat([o, ax_o])
    d = torch.cat([d, unit(ax_d)])
    for aabb in (AABB, torch.tensor([-0.4, -1.0, 0.2, 1.3, 0.5, 0.9])):
        t_near, t_far = ray_aabb_intersect(o, d, aabb)
        hit, tn, tf, dt = brute_force_interval(o, d, aabb)
        assert hit.any() and (~hit).any()
        tol = dt + 1e-5
        assert torch.all(t_near[hit] <= t_far[hit])
        assert torch.all((t_near[hit].double() - tn[hit]).abs() <= tol)
        assert torch.all((t_far[hit].double() - tf[hit]).abs() <= tol)
        # misses: an empty interval, or at most a sliver thinner than the brute-force spacing
        assert torch.all(t_far[~hit] - t_near[~hit] < dt)

    # the explicit axis-parallel cases against hand-computed values (big box)
    t_near, t_far = ray_aabb_intersect(ax_o, unit(ax_d), AABB)
    torch.testing.assert_close(t_near[0], torch.tensor(1.5)); torch.testing.assert_close(t_far[0], torch.tensor(4.5))
    assert t_near[1] > t_far[1]  # y outside the slab
    torch.testing.assert_close(t_near[2], torch.tensor(2.5)); torch.testing.assert_close(t_far[2], torch.tensor(5.5))
    assert t_near[3] > t_far[3]
    torch.testing.assert_close(t_near[4], torch.tensor(3.5)); torch.testing.assert_close(t_far[4], torch.tensor(6.5))
    torch.testing.assert_close(t_near[5], torch.tensor(-1.5)); torch.testing.assert_close(t_far[5], torch.tensor(1.5))
    assert t_near[6] > t_far[6]
    torch.testing.assert_close(t_near[7], torch.tensor(math.sqrt(2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(t_far[7], torch.tensor(4 * math.sqrt(2)), atol=1e-5, rtol=0)
    assert t_near[8] > t_far[8]
    torch.testing.assert_close(t_near[9], torch.tensor(-1.0)); torch.testing.assert_close(t_far[9], torch.tensor(2.0))


# --------------------------------------------------------------------------- headline: packed vs dense
GRIDS = {"shape": shape_grid, "random_sub": lambda: random_sub_grid(1)}
_DENSE_CACHE: dict = {}


@pytest.fixture(scope="module")
def rays():
    return make_rays(300, torch.Generator().manual_seed(42), n_inside=40, n_miss=20)


DENSE_CASES = [
    (grid_name, step, use_coarse, use_march_aabb, 0.0)
    for grid_name in GRIDS
    for step in (0.012, 0.045)  # the cell is 3/32 = 0.094, the coarse cell 0.375
    for use_coarse in (False, True)
    for use_march_aabb in (False, True)
] + [("shape", 0.012, True, True, 2.0), ("random_sub", 0.045, False, False, 2.0)]


@pytest.mark.parametrize("grid_name,step,use_coarse,use_march_aabb,near_plane", DENSE_CASES)
def test_packed_matches_dense_reference(rays, grid_name, step, use_coarse, use_march_aabb, near_plane):
    origins, dirs = rays
    binaries = GRIDS[grid_name]()
    assert binaries.any() and not binaries.all()

    def density(pts):  # exactly zero outside occupied cells
        return blobs(pts) * occupancy_at(binaries, AABB, pts)

    box = occupied_aabb(binaries, AABB) if use_march_aabb else AABB
    key = (grid_name, step, use_march_aabb, near_plane)
    if key not in _DENSE_CACHE:
        _DENSE_CACHE[key] = dense_reference(origins, dirs, box, step, density, near_plane)
    ref = _DENSE_CACHE[key]

    coarse = CoarseGrid.build(binaries, AABB, step) if use_coarse else None
    if use_coarse:
        assert coarse.block > 1  # the pre-filter path is exercised
    s = march_rays(origins, dirs, binaries, AABB, step, near_plane=near_plane,
                   march_aabb=box if use_march_aabb else None, coarse=coarse)
    n_rays = origins.shape[0]
    ri = s.ray_indices
    assert ri.dtype == torch.long
    assert torch.all(ri[1:] >= ri[:-1])  # sorted by ray
    assert 0 < ri.numel() < int(ref["valid"].sum())  # culling did something

    # identify each packed sample with its dense step index
    k = torch.round((s.t_starts - ref["t_near"][ri]) / step).long()
    assert torch.all(k >= 0) and torch.all(k < ref["n_steps"][ri])
    assert torch.equal(s.t_starts, ref["t0"][ri, k])
    assert torch.equal(s.t_ends, ref["t1"][ri, k])
    flat = ri * ref["t0"].shape[1] + k
    assert torch.unique(flat).numel() == flat.numel()

    # every dense sample with non-zero density (hence every non-zero weight) is in the packed set
    present = torch.zeros_like(ref["valid"])
    present[ri, k] = True
    assert torch.all(ref["sig"][~present] == 0)
    assert torch.all(ref["w"][~present] == 0)
    assert (ref["w"] > 1e-3).sum() > 100  # non-trivial scene

    pts = origins[ri] + s.t_mids[:, None] * dirs[ri]
    sig = density(pts)
    torch.testing.assert_close(sig, ref["sig"][ri, k], atol=0, rtol=0)
    w, _, _ = render_weights(sig, s.t_starts, s.t_ends, ri, n_rays)
    torch.testing.assert_close(w, ref["w"][ri, k], atol=1e-5, rtol=0)
    rgb = accumulate_along_rays(w, colour_field(pts), ri, n_rays)
    acc = accumulate_along_rays(w, torch.ones_like(w)[:, None], ri, n_rays)[:, 0]
    torch.testing.assert_close(rgb, ref["rgb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(acc, ref["acc"], atol=1e-5, rtol=0)
    assert acc.max() > 0.9


def test_march_aabb_only_drops_empty_margin(rays):
    """Marching only the occupied box renders the same image as marching the whole scene box
    (up to the quadrature difference of the shifted sample positions)."""
    origins, dirs = rays
    binaries = shape_grid()
    box = occupied_aabb(binaries, AABB)
    assert (box[3:] - box[:3]).prod() < 0.6 * 27.0

    def render(march_aabb):
        s = march_rays(origins, dirs, binaries, AABB, 0.01, march_aabb=march_aabb)
        pts = origins[s.ray_indices] + s.t_mids[:, None] * dirs[s.ray_indices]
        w, _, _ = render_weights(blobs(pts) * occupancy_at(binaries, AABB, pts), s.t_starts, s.t_ends,
                                 s.ray_indices, origins.shape[0])
        return accumulate_along_rays(w, torch.ones_like(w)[:, None], s.ray_indices, origins.shape[0])

    torch.testing.assert_close(render(box), render(None), atol=0.03, rtol=0)


# --------------------------------------------------------------------------- coarse pre-filter
def _random_case(i):
    g = torch.Generator().manual_seed(1000 + i)
    res_choices = [(16, 16, 16), (32, 32, 32), (24, 24, 24), (20, 20, 20), (16, 32, 8), (18, 18, 18), (12, 28, 36)]
    res = res_choices[i % len(res_choices)]
    lo = -0.5 - torch.rand(3, generator=g)
    hi = 0.5 + torch.rand(3, generator=g)
    aabb = torch.cat([lo, hi])
    kind = i % 5
    if kind == 0:  # a single occupied cell
        b = torch.zeros(res, dtype=torch.bool)
        b[tuple(int(torch.randint(r, (1,), generator=g)) for r in res)] = True
    elif kind == 4:  # clustered (a few random boxes of cells)
        b = torch.zeros(res, dtype=torch.bool)
        for _ in range(3):
            a = [int(torch.randint(r, (1,), generator=g)) for r in res]
            e = [int(torch.randint(1, max(2, r // 4), (1,), generator=g)) for r in res]
            b[a[0]:a[0] + e[0], a[1]:a[1] + e[1], a[2]:a[2] + e[2]] = True
    else:
        p = [0.002, 0.03, 0.3, 0.8][int(torch.randint(4, (1,), generator=g))]
        b = torch.rand(res, generator=g) < p
    cell = float(((hi - lo) / torch.tensor(res)).min())
    step = cell * [0.07, 0.3, 0.6, 1.0, 1.7, 4.5, 12.0][i % 7 if i % 2 else (i // 2) % 7]
    o, d = make_rays(200, g, n_inside=30, n_miss=10, radius=3.0)
    # half of the rays aimed at (random points of) occupied cells, so that sparse grids get hit
    occ = torch.nonzero(b)
    if occ.numel():
        n_aim = 100
        cells = occ[torch.randint(occ.shape[0], (n_aim,), generator=g)].float()
        cell_size = (hi - lo) / torch.tensor(res)
        target = lo + (cells + torch.rand(n_aim, 3, generator=g)) * cell_size
        o_aim = unit(torch.randn(n_aim, 3, generator=g)) * 3.0
        o = torch.cat([o, o_aim])
        d = torch.cat([d, unit(target - o_aim)])
    near = [0.0, 0.0, 1.5][i % 3]
    march_aabb = occupied_aabb(b, aabb) if i % 4 == 1 else None
    stratified = i % 6 == 5
    return res, aabb, b, step, o, d, near, march_aabb, stratified


@pytest.mark.parametrize("i", range(50))
def test_coarse_prefilter_gives_identical_samples(i):
    res, aabb, b, step, o, d, near, march_aabb, stratified = _random_case(i)
    coarse = CoarseGrid.build(b, aabb, step)
    assert coarse.binaries.shape == (tuple(r // 4 for r in res) if all(r % 4 == 0 for r in res) else res)
    torch.manual_seed(i)
    plain = march_rays(o, d, b, aabb, step, near_plane=near, march_aabb=march_aabb, stratified=stratified)
    torch.manual_seed(i)
    pre = march_rays(o, d, b, aabb, step, near_plane=near, march_aabb=march_aabb, stratified=stratified,
                     coarse=coarse)
    assert torch.equal(pre.ray_indices, plain.ray_indices)
    assert torch.equal(pre.t_starts, plain.t_starts)
    assert torch.equal(pre.t_ends, plain.t_ends)
    # and what is kept is exactly the samples whose midpoint cell is occupied
    pts = o[plain.ray_indices] + plain.t_mids[:, None] * d[plain.ray_indices]
    assert torch.all(occupancy_at(b, aabb, pts))


def test_coarse_grid_build_properties():
    b = torch.zeros(16, 16, 16, dtype=torch.bool)
    b[5, 9, 15] = True
    cg = CoarseGrid.build(b, AABB, 0.01)
    assert cg.binaries.shape == (4, 4, 4)
    # coarse cell (1, 2, 3) dilated by one coarse cell (clipped to the grid)
    expect = torch.zeros(4, 4, 4, dtype=torch.bool)
    expect[0:3, 1:4, 2:4] = True
    assert torch.equal(cg.binaries, expect)
    assert cg.block == int((3.0 / 16 * 4) // 0.01)
    assert CoarseGrid.build(b, AABB, 1.0).block == 1  # step longer than a coarse cell
    assert CoarseGrid.build(torch.zeros(18, 18, 18, dtype=torch.bool), AABB, 0.01).block == 1  # not divisible


# --------------------------------------------------------------------------- occupied_aabb
def test_occupied_aabb():
    aabb = torch.tensor([-1.0, -2.0, 0.0, 3.0, 2.0, 1.0])
    b = torch.zeros(8, 4, 10, dtype=torch.bool)
    b[3, 0, 9] = True
    cell = (aabb[3:] - aabb[:3]) / torch.tensor([8.0, 4.0, 10.0])
    lo = aabb[:3] + torch.tensor([3.0, 0.0, 9.0]) * cell
    torch.testing.assert_close(occupied_aabb(b, aabb), torch.cat([lo, lo + cell]))
    b[6, 2, 1] = True
    torch.testing.assert_close(occupied_aabb(b, aabb), torch.cat([
        aabb[:3] + torch.tensor([3.0, 0.0, 1.0]) * cell, aabb[:3] + torch.tensor([7.0, 3.0, 10.0]) * cell]))
    torch.testing.assert_close(occupied_aabb(torch.ones_like(b), aabb), aabb)
    empty = occupied_aabb(torch.zeros_like(b), aabb)
    assert empty.shape == (6,)
    assert float((empty[3:] - empty[:3]).clamp(min=0).prod()) == 0.0
    # marching an empty box yields no samples
    o, d = make_rays(50, torch.Generator().manual_seed(0), n_inside=10, n_miss=10)
    s = march_rays(o, d, torch.ones_like(b), aabb, 0.05, march_aabb=empty)
    assert s.ray_indices.numel() == 0 and s.t_starts.numel() == 0 and s.t_ends.numel() == 0


def test_march_rays_empty_grid_and_misses():
    o, d = make_rays(50, torch.Generator().manual_seed(1), n_inside=10, n_miss=10)
    s = march_rays(o, d, torch.zeros(8, 8, 8, dtype=torch.bool), AABB, 0.05)
    assert isinstance(s, PackedSamples) and s.ray_indices.numel() == 0
    s = march_rays(o, d, torch.ones(8, 8, 8, dtype=torch.bool), AABB, 0.05, coarse=CoarseGrid.build(
        torch.ones(8, 8, 8, dtype=torch.bool), AABB, 0.05))
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    hit = t_near.clamp(min=0) < t_far
    counts = torch.bincount(s.ray_indices, minlength=50)
    assert torch.all(counts[~hit] == 0) and torch.all(counts[hit] > 0)
    assert torch.equal(counts, torch.ceil((t_far - t_near.clamp(min=0)) / 0.05).clamp(min=0).long())


# --------------------------------------------------------------------------- stratified
def test_stratified_shifts_less_than_one_step():
    o, d = make_rays(300, torch.Generator().manual_seed(5))
    full = torch.ones(RES, RES, RES, dtype=torch.bool)
    step = 0.05
    plain = march_rays(o, d, full, AABB, step)
    torch.manual_seed(0)
    strat = march_rays(o, d, full, AABB, step, stratified=True)
    torch.manual_seed(1)
    strat2 = march_rays(o, d, full, AABB, step, stratified=True)
    # a fresh jitter on every call
    n_common = min(strat.t_starts.numel(), strat2.t_starts.numel())
    assert not torch.equal(strat.t_starts[:n_common], strat2.t_starts[:n_common])

    n_rays = o.shape[0]
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    t_near = t_near.clamp(min=0)
    cp = torch.bincount(plain.ray_indices, minlength=n_rays)
    cs = torch.bincount(strat.ray_indices, minlength=n_rays)
    assert torch.all((cp - cs >= 0) & (cp - cs <= 1))
    assert torch.all(strat.ray_indices[1:] >= strat.ray_indices[:-1])
    # k-th stratified sample of a ray vs the k-th plain one: shifted by [0, step)
    first_s = torch.cumsum(cs, 0) - cs
    first_p = torch.cumsum(cp, 0) - cp
    ks = torch.arange(strat.ray_indices.numel()) - first_s[strat.ray_indices]
    shift = strat.t_starts - plain.t_starts[first_p[strat.ray_indices] + ks]
    assert torch.all(shift >= -1e-5) and torch.all(shift < step + 1e-5)
    # one shift per ray (the jitter is applied to the first step only), and not the same on all rays
    per_ray_min = torch.full((n_rays,), float("inf")).scatter_reduce(0, strat.ray_indices, shift, "amin")
    per_ray_max = torch.full((n_rays,), -float("inf")).scatter_reduce(0, strat.ray_indices, shift, "amax")
    has = cs > 0
    assert torch.all(per_ray_max[has] - per_ray_min[has] < 1e-4)
    assert per_ray_min[has].std() > 0.2 * step
    # inside the box
    assert torch.all(strat.t_starts >= t_near[strat.ray_indices] - 1e-6)
    assert torch.all(strat.t_ends <= t_far[strat.ray_indices] + 1e-6)
    assert torch.all(strat.t_ends > strat.t_starts)
    pts = o[strat.ray_indices] + strat.t_mids[:, None] * d[strat.ray_indices]
    assert torch.all((pts >= AABB[:3] - 1e-5) & (pts <= AABB[3:] + 1e-5))


# --------------------------------------------------------------------------- OccupancySampler
SPHERE_R = 0.8
SPHERE_C = torch.tensor([0.2, -0.1, 0.15])


def sphere_density(x):
    return 100.0 * ((x - SPHERE_C).norm(dim=-1) < SPHERE_R).float()


def cell_sphere_distances(res, aabb):
    """Nearest and farthest distance of each cell (of a res^3 grid over aabb) to the sphere centre."""
    cell = (aabb[3:] - aabb[:3]) / res
    idx = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).float()
    lo = aabb[:3] + idx * cell
    hi = lo + cell
    nearest = torch.maximum(torch.maximum(lo - SPHERE_C, SPHERE_C - hi), torch.zeros(())).norm(dim=-1)
    farthest = torch.maximum((lo - SPHERE_C).abs(), (hi - SPHERE_C).abs()).norm(dim=-1)
    return nearest, farthest


@pytest.fixture(scope="module")
def warm_sampler():
    torch.manual_seed(0)
    s = OccupancySampler(AABB, grid_resolution=RES, step_size=0.01)
    for step in range(0, 64):
        s.update(step, sphere_density)
    return s


def test_occupancy_sampler_grid_marks_sphere(warm_sampler):
    s = warm_sampler
    b = s.binaries
    assert b.shape == (RES, RES, RES) and b.dtype == torch.bool
    nearest, farthest = cell_sphere_distances(RES, AABB)
    # occupied cells intersect the sphere; every cell fully inside it is occupied
    assert not torch.any(b & (nearest >= SPHERE_R))
    fully_inside = farthest < SPHERE_R
    assert fully_inside.sum() > 500
    assert torch.all(b[fully_inside])
    # the march box shrinks to the sphere's bounding box (within one cell)
    cell = 3.0 / RES
    expect = torch.cat([SPHERE_C - SPHERE_R, SPHERE_C + SPHERE_R])
    assert torch.all((s.march_aabb - expect).abs() <= cell + 1e-5)
    torch.testing.assert_close(s.march_aabb, occupied_aabb(b, s.aabb))
    torch.testing.assert_close(s.aabb, AABB)


def test_occupancy_sampler_update_schedule():
    s = OccupancySampler(AABB, grid_resolution=16, step_size=0.01)
    s.update(5, sphere_density)  # not a multiple of `every`: nothing happens
    assert not s.binaries.any()
    torch.testing.assert_close(s.march_aabb, AABB)
    s.update(0, sphere_density)
    n_warm = int(s.binaries.sum())
    assert n_warm > 0
    s.update(512, sphere_density)  # after warm-up: a random subset of cells is re-evaluated
    nearest, _ = cell_sphere_distances(16, AABB)
    assert not torch.any(s.binaries & (nearest >= SPHERE_R))
    assert int(s.binaries.sum()) >= n_warm // 2


def test_occupancy_sampler_sample(warm_sampler):
    s = warm_sampler
    o, d = make_rays(300, torch.Generator().manual_seed(9))
    out = s.sample(o, d)
    ri = out.ray_indices
    assert ri.numel() > 1000
    assert torch.all(ri[1:] >= ri[:-1])
    same = ri[1:] == ri[:-1]
    assert torch.all(out.t_starts[1:][same] > out.t_starts[:-1][same])
    pts = o[ri] + out.t_mids[:, None] * d[ri]
    assert torch.all(occupancy_at(s.binaries, s.aabb, pts))
    # nothing outside the occupied cells is lost: same as marching the full box without pre-filter
    ref = march_rays(o, d, s.binaries, s.aabb, s.step_size, march_aabb=s.march_aabb)
    assert torch.equal(ref.ray_indices, ri)
    assert torch.equal(ref.t_starts, out.t_starts) and torch.equal(ref.t_ends, out.t_ends)
    # marching the whole scene box instead finds the same occupied stretches (shifted sample grid)
    full = march_rays(o, d, s.binaries, s.aabb, s.step_size)
    c_full = torch.bincount(full.ray_indices, minlength=o.shape[0])
    c_out = torch.bincount(ri, minlength=o.shape[0])
    assert torch.all((c_full - c_out).abs() <= 2 * (RES // 2))
    # near plane
    near = s.sample(o, d, near_plane=2.8)
    assert torch.all(near.t_starts >= 2.8)


def test_occupancy_sampler_early_stop(warm_sampler):
    s = warm_sampler
    o, d = make_rays(300, torch.Generator().manual_seed(10))

    def sigma_fn(t_starts, t_ends, ray_indices):
        t = 0.5 * (t_starts + t_ends)
        return 10.0 * sphere_density(o[ray_indices] + t[:, None] * d[ray_indices])  # 1000: opaque

    all_s = s.sample(o, d)
    kept = s.sample(o, d, sigma_fn=sigma_fn, early_stop_eps=1e-4)
    assert 0 < kept.ray_indices.numel() < all_s.ray_indices.numel()
    n_rays = o.shape[0]
    inside = sigma_fn(all_s.t_starts, all_s.t_ends, all_s.ray_indices) > 0
    big = torch.full((n_rays,), float("inf"))
    first_inside = big.scatter_reduce(0, all_s.ray_indices[inside], all_s.t_mids[inside], "amin")
    hits = torch.isfinite(first_inside)
    assert hits.sum() > 50
    last_kept = torch.full((n_rays,), -float("inf")).scatter_reduce(0, kept.ray_indices, kept.t_mids, "amax")
    # behind the front surface: only the first sample inside the sphere survives
    assert torch.all(last_kept[hits] == first_inside[hits])
    # rays that miss the sphere keep all their samples
    miss = ~hits
    c_all = torch.bincount(all_s.ray_indices, minlength=n_rays)
    c_kept = torch.bincount(kept.ray_indices, minlength=n_rays)
    assert torch.equal(c_all[miss], c_kept[miss])
    # kept samples are a subset of the unculled ones
    key_all = set(zip(all_s.ray_indices.tolist(), all_s.t_starts.tolist()))
    assert set(zip(kept.ray_indices.tolist(), kept.t_starts.tolist())) <= key_all
    # and dropping them does not change the rendering (beyond eps)
    def render(p):
        sig = sigma_fn(p.t_starts, p.t_ends, p.ray_indices)
        w, _, _ = render_weights(sig, p.t_starts, p.t_ends, p.ray_indices, n_rays)
        return accumulate_along_rays(w, torch.ones_like(w)[:, None], p.ray_indices, n_rays)
    assert (render(all_s) - render(kept)).abs().max() <= 1e-4


def test_occupancy_sampler_stratified_sample(warm_sampler):
    s = warm_sampler
    o, d = make_rays(200, torch.Generator().manual_seed(11))
    torch.manual_seed(3)
    out = s.sample(o, d, stratified=True)
    pts = o[out.ray_indices] + out.t_mids[:, None] * d[out.ray_indices]
    assert torch.all(occupancy_at(s.binaries, s.aabb, pts))
    assert torch.all(out.ray_indices[1:] >= out.ray_indices[:-1])


def test_coarse_grid_cache_not_stale_after_repeated_updates():
    aabb = AABB
    s = OccupancySampler(aabb, grid_resolution=16, step_size=0.01)

    def ball(c):
        c = torch.tensor(c)
        return lambda x: 100.0 * ((x - c).norm(dim=-1) < 0.4).float()

    fns = [ball([-1.0, -1.0, -1.0]), ball([0.0, 0.0, 0.0]), ball([1.0, 1.0, 1.0])]
    o, d = make_rays(200, torch.Generator().manual_seed(12), n_inside=0, n_miss=0)
    for _ in range(400):
        s.update(0, fns[0], ema_decay=0.0)
        s.sample(o, d)  # caches the coarse grid of the current binaries
        s.update(0, fns[1], ema_decay=0.0)
        s.update(0, fns[2], ema_decay=0.0)
        fresh = CoarseGrid.build(s.binaries, s.aabb, s.step_size)
        if not torch.equal(s.coarse_grid().binaries, fresh.binaries):
            # the consequence: occupied samples silently dropped
            got = s.sample(o, d)
            ref = march_rays(o, d, s.binaries, s.aabb, s.step_size, march_aabb=s.march_aabb)
            assert got.ray_indices.numel() == ref.ray_indices.numel(), (
                f"stale coarse grid: {got.ray_indices.numel()} samples instead of {ref.ray_indices.numel()}")
            pytest.fail("stale coarse grid returned by OccupancySampler.coarse_grid()")


# --------------------------------------------------------------------------- the derived grid
def _derived_reference(density_fn, aabbs, res, step, points, thre):
    """Brute force, one cell at a time: the centre's density * step; with points > 1, cells within one
    cell of a centre above thre / DERIVE_REFINE_DIVISOR also take their sub-cell centres' largest;
    occupied above min(mean over all cells of all levels, thre)."""
    def occ_at(box, ijk):
        x = box[:3] + torch.tensor(ijk, dtype=torch.float32) / res * (box[3:] - box[:3])
        return float(density_fn(x[None])[0]) * step

    cells = list(itertools.product(range(res), repeat=3))
    occ = torch.zeros(len(aabbs), res, res, res)
    for lvl, box in enumerate(aabbs):
        for i, j, k in cells:
            occ[lvl, i, j, k] = occ_at(box, (i + 0.5, j + 0.5, k + 0.5))
    centre = occ.clone()
    if points > 1:
        subs = [(a + 0.5) / points for a in range(points)]
        for lvl, box in enumerate(aabbs):
            for i, j, k in cells:
                window = centre[lvl, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2]
                if float(window.max()) > thre / DERIVE_REFINE_DIVISOR:
                    for a, b, c in itertools.product(subs, repeat=3):
                        occ[lvl, i, j, k] = max(float(occ[lvl, i, j, k]), occ_at(box, (i + a, j + b, k + c)))
    return occ, centre, occ > min(float(occ.mean()), thre)


def _blob(x: torch.Tensor) -> torch.Tensor:
    """A density with a sharp off-centre blob and a weak haze (some cells sit between the thresholds)."""
    centre = torch.tensor([0.3, -0.2, 0.1])
    return 50.0 * torch.exp(-((x - centre) ** 2).sum(-1) / 0.05) + 0.2 * (x[..., 0] > 0).float()


@pytest.mark.parametrize("levels,points", [(1, 1), (1, 2), (2, 2)])
def test_derived_grid_matches_a_cell_by_cell_reference(levels, points):
    res, step, thre = 6, 0.02, 0.01
    sampler = OccupancySampler(AABB, grid_resolution=res, step_size=step, levels=levels)
    sampler.derive(_blob, occ_thre=thre, points=points, chunk=7)  # chunks that split cells and levels
    occ, centre, binaries = _derived_reference(_blob, sampler.level_aabbs, res, step, points, thre)
    assert torch.allclose(sampler.estimator.occs.view(levels, res, res, res), occ, rtol=1e-6, atol=0)
    assert torch.equal(sampler.level_binaries, binaries)
    assert 0 < int(binaries.sum()) < binaries.numel()  # the rule has something to decide here
    if points > 1:  # some cells were refined, and refining changed what is occupied
        refined = occ > centre
        assert 0 < int(refined.sum()) < refined.numel()
        assert not torch.equal(binaries, centre > min(float(centre.mean()), thre))
    # the march box follows the derived cells
    assert torch.equal(sampler.march_aabb, occupied_aabb(sampler.level_binaries, sampler.level_aabbs))


def test_derived_grid_is_the_same_on_every_call_and_ignores_the_old_grid():
    sampler = OccupancySampler(AABB, grid_resolution=16, step_size=0.02)
    sampler.derive(_blob, points=2)
    first = (sampler.estimator.occs.clone(), sampler.binaries.clone())
    torch.manual_seed(1)
    for step in range(0, 64, 4):  # EMA updates move the grid; a new derivation forgets them
        sampler.update(step, lambda x: 3.0 * _blob(x), warmup_steps=64, every=4)
    assert not torch.equal(sampler.estimator.occs, first[0])
    sampler.derive(_blob, points=2)
    assert torch.equal(sampler.estimator.occs, first[0]) and torch.equal(sampler.binaries, first[1])


def test_derived_grid_treats_nan_density_as_empty():
    sampler = OccupancySampler(AABB, grid_resolution=8, step_size=0.02)
    sampler.derive(lambda x: torch.where(x[..., 0] > 0, torch.full_like(x[..., 0], float("nan")), _blob(x)))
    assert bool(torch.isfinite(sampler.estimator.occs).all())
    assert not bool(sampler.binaries[4:].any())  # the NaN half (x > 0) is empty


def test_derived_grid_of_empty_space():
    """Nothing above the refinement threshold: no cell is refined and none is occupied."""
    sampler = OccupancySampler(AABB, grid_resolution=8, step_size=0.02)
    sampler.derive(lambda x: torch.zeros_like(x[..., 0]), points=2)
    assert not bool(sampler.binaries.any()) and float(sampler.estimator.occs.abs().max()) == 0.0
