"""Unbounded scenes in the sampler (``nerfcodec_ns.field.sampler``): multi-level occupancy grids and
cone-angle ray marching, CPU only except for the last test (nerfacc's CUDA marching, skipped without
CUDA).

References: a slow per-ray Python loop (``t += clamp(t * cone_angle, step_size, 1e10)``, keeping
steps whose midpoint's finest-level cell is occupied), a dense fine-step quadrature, and nerfacc's
pure-torch ``OccGridEstimator._update``.
"""

from __future__ import annotations

import pytest
import torch
from nerfacc import OccGridEstimator, render_weight_from_density

from nerfcodec_ns.field.rendering import accumulate_along_rays, render_weights
from nerfcodec_ns.field.sampler import (
    CoarseGrid,
    LevelCoarseGrid,
    OccupancySampler,
    cone_steps,
    march_rays,
    occupied_aabb,
    ray_aabb_intersect,
)

# a scene box that is neither centred nor cubic; level l is this box scaled by 2**l about its centre
AABB = torch.tensor([-1.2, -0.8, -1.0, 0.8, 1.2, 0.6])


# --------------------------------------------------------------------------- helpers
def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def level_boxes(aabb: torch.Tensor, levels: int) -> torch.Tensor:
    c, e = (aabb[:3] + aabb[3:]) / 2, (aabb[3:] - aabb[:3]) / 2
    return torch.stack([torch.cat([c - e * 2**i, c + e * 2**i]) for i in range(levels)])


def random_levels(levels: int, res: int, seed: int, p: float = 0.25) -> torch.Tensor:
    """Random cells on every level, plus a solid block on the finest level."""
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(levels, res, res, res, generator=g) < p
    b[0, res // 4 : res // 2, res // 3 : (3 * res) // 4, res // 2 :] = True
    return b


def make_rays(aabbs: torch.Tensor, n: int, seed: int):
    """Camera-like origins inside the scene box, origins between the scene box and the outermost
    box, and origins outside everything aimed at (or away from) the scene."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = aabbs[0, :3], aabbs[0, 3:]
    olo, ohi = aabbs[-1, :3], aabbs[-1, 3:]
    n_in, n_mid = n // 3, n // 3
    n_out = n - n_in - n_mid
    o_in = lo + torch.rand(n_in, 3, generator=g) * (hi - lo)
    o_mid = olo + torch.rand(n_mid, 3, generator=g) * (ohi - olo)
    o_out = unit(torch.randn(n_out, 3, generator=g)) * 1.3 * float((ohi - olo).norm())
    target = lo + torch.rand(n_out, 3, generator=g) * (hi - lo)
    d_out = unit(target - o_out)
    d_out[: n_out // 5] = unit(o_out[: n_out // 5])  # away from the scene: misses
    d = torch.cat([unit(torch.randn(n_in + n_mid, 3, generator=g)), d_out])
    return torch.cat([o_in, o_mid, o_out]), d


def finest_occupancy(binaries: torch.Tensor, aabbs: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Occupancy of the finest level whose box holds each point (independent of the module's lookup;
    cell i covers [lo + i*cell, lo + (i+1)*cell), boxes half-open)."""
    res = torch.tensor(binaries.shape[1:])
    occ = torch.zeros(pts.shape[0], dtype=torch.bool)
    found = torch.zeros(pts.shape[0], dtype=torch.bool)
    for lvl in range(binaries.shape[0]):
        box = aabbs[lvl].to(pts.dtype)
        u = (pts - box[:3]) / (box[3:] - box[:3])
        inside = ((u >= 0) & (u < 1)).all(-1) & ~found
        ijk = torch.minimum(torch.floor(u * res).long().clamp(min=0), res - 1)
        occ[inside] = binaries[lvl][ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]
        found |= inside
    return occ


def reference_march(o, d, binaries, aabbs, step, cone, near=0.0, far=1e10, march_aabb=None, jitter=None):
    """Slow reference: a Python loop per ray from box entry to exit; returns every step (ray, t0, t1)
    with whether it is kept and whether its midpoint is within rounding of a cell or level face."""
    box = aabbs[-1] if march_aabb is None else march_aabb
    t_near, t_far = ray_aabb_intersect(o, d, box)
    t_near, t_far = t_near.clamp(min=near), t_far.clamp(max=far)
    if jitter is not None:  # the module's jitter: U(0, dt) at the first step
        dt0 = (t_near * cone).clamp(min=step, max=1e10) if cone > 0 else torch.full_like(t_near, step)
        t_near = t_near + jitter * dt0
    rays, t0s, t1s = [], [], []
    for r in range(o.shape[0]):
        t, tf = float(t_near[r]), float(t_far[r])
        while t < tf:
            dt = min(max(t * cone, step), 1e10)
            rays.append(r)
            t0s.append(t)
            t1s.append(min(t + dt, tf))
            t += dt
    rays = torch.tensor(rays, dtype=torch.long)
    t0 = torch.tensor(t0s, dtype=torch.float64)
    t1 = torch.tensor(t1s, dtype=torch.float64)
    mid = 0.5 * (t0 + t1)
    od, dd = o.double()[rays], d.double()[rays]
    kept = finest_occupancy(binaries, aabbs, od + mid[:, None] * dd)
    eps = (1e-5 * mid.abs().clamp(min=1.0))[:, None]
    ambiguous = (finest_occupancy(binaries, aabbs, od + (mid[:, None] - eps) * dd)
                 != finest_occupancy(binaries, aabbs, od + (mid[:, None] + eps) * dd))
    return rays, t0, t1, kept, ambiguous


def match(rays_a, t_a, rays_b, t_b, rtol=1e-5):
    """Index into b of each sample of a (same ray, t_start within rtol), -1 where none."""
    key_b = rays_b.double() * 1e4 + t_b.double()
    key_a = rays_a.double() * 1e4 + t_a.double()
    i = torch.searchsorted(key_b, key_a).clamp(max=max(key_b.numel() - 1, 0))
    best = i.clone()
    lower = (i - 1).clamp(min=0)
    closer = (key_b[lower] - key_a).abs() < (key_b[i] - key_a).abs()
    best[closer] = lower[closer]
    ok = (rays_b[best] == rays_a) & ((t_b[best].double() - t_a.double()).abs()
                                     <= rtol * t_a.double().abs().clamp(min=1.0))
    return torch.where(ok, best, torch.full_like(best, -1))


def assert_same_as_reference(s, ref, rtol=1e-5):
    rays, t0, t1, kept, ambiguous = ref
    ri = s.ray_indices
    assert ri.dtype == torch.long and torch.all(ri[1:] >= ri[:-1])
    same = ri[1:] == ri[:-1]
    assert torch.all(s.t_starts[1:][same] > s.t_starts[:-1][same])
    idx = match(ri, s.t_starts, rays, t0, rtol)
    assert torch.all(idx >= 0), "a packed sample is not a step of the reference loop"
    assert torch.unique(idx).numel() == idx.numel()
    torch.testing.assert_close(s.t_starts.double(), t0[idx], rtol=rtol, atol=rtol)
    torch.testing.assert_close(s.t_ends.double(), t1[idx], rtol=rtol, atol=rtol)
    present = torch.zeros_like(kept)
    present[idx] = True
    mismatch = present != kept
    assert torch.all(ambiguous[mismatch]), "kept/culled differently from the reference away from any face"
    assert int(mismatch.sum()) <= max(2, kept.numel() // 1000)
    assert 0 < int(kept.sum()) < kept.numel()  # culling did something


# --------------------------------------------------------------------------- closed-form steps
@pytest.mark.parametrize("step,cone", [(0.01, 0.05), (0.004, 0.004), (0.1, 1.0), (0.01, 1e-4), (0.02, 0.0)])
def test_cone_steps_match_loop(step, cone):
    g = torch.Generator().manual_seed(0)
    t_near = torch.rand(300, generator=g) * 6.0 - 0.5
    t_far = t_near + torch.rand(300, generator=g) * 25.0 - 1.0  # some empty (t_far < t_near)
    if cone == 0.0:
        with pytest.raises(ValueError):
            cone_steps(t_near, t_far, step, cone)
        return
    ri, ts, te = cone_steps(t_near, t_far, step, cone)
    rays, t0, t1 = [], [], []
    for r in range(300):
        t, tf = float(t_near[r]), float(t_far[r])
        while t < tf:
            dt = min(max(t * cone, step), 1e10)
            rays.append(r), t0.append(t), t1.append(min(t + dt, tf))
            t += dt
    assert torch.equal(ri, torch.tensor(rays))
    assert ts.dtype == torch.float32
    torch.testing.assert_close(ts.double(), torch.tensor(t0, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(te.double(), torch.tensor(t1, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert torch.all(te > ts)


# --------------------------------------------------------------------------- march_rays vs the loop
MARCH_CASES = [
    # levels, res, step, cone, near, far, stratified, tight march box
    (3, 16, 0.01, 0.05, 0.0, 1e10, False, False),
    (4, 12, 0.004, 0.004, 0.0, 1e10, False, False),  # linear up to t = 1, then geometric
    (2, 16, 0.02, 0.1, 0.5, 6.0, False, True),
    (3, 16, 0.01, 0.05, 0.0, 1e10, True, False),
    (4, 8, 0.003, 0.01, 0.2, 1e10, True, True),
    (3, 16, 0.03, 0.0, 0.0, 1e10, False, False),  # multi-level, constant steps
    (1, 16, 0.01, 0.02, 0.0, 1e10, False, False),  # one level, cone-angle steps
]


@pytest.mark.parametrize("levels,res,step,cone,near,far,stratified,tight", MARCH_CASES)
def test_march_rays_multilevel_cone_matches_loop(levels, res, step, cone, near, far, stratified, tight):
    aabbs = level_boxes(AABB, levels)
    binaries = random_levels(levels, res, seed=levels * 100 + res)
    o, d = make_rays(aabbs, 150, seed=res + levels)
    box = occupied_aabb(binaries, aabbs) if tight else None
    if levels == 1:  # the single-grid form of the arguments
        args = (binaries[0], aabbs[0])
    else:
        args = (binaries, aabbs)
    torch.manual_seed(7)
    s = march_rays(o, d, *args, step, near_plane=near, far_plane=far, march_aabb=box, stratified=stratified,
                   cone_angle=cone)
    torch.manual_seed(7)
    jitter = torch.rand(o.shape[0]) if stratified else None  # what march_rays draws first
    ref = reference_march(o, d, binaries, aabbs, step, cone, near, far, box, jitter)
    assert_same_as_reference(s, ref)
    if not stratified:  # the CoarseGrid pre-filter is ignored here (same result)
        s2 = march_rays(o, d, *args, step, near_plane=near, far_plane=far, march_aabb=box, cone_angle=cone,
                        coarse=CoarseGrid.build(binaries[0], aabbs[0], step))
        assert torch.equal(s2.ray_indices, s.ray_indices) and torch.equal(s2.t_starts, s.t_starts)


# --------------------------------------------------------------------------- the multi-level pre-filter
def _prefilter_case(i):
    g = torch.Generator().manual_seed(2000 + i)
    levels = [2, 3, 4, 1][i % 4]
    res = [16, 32, 24, 12, 10][i % 5]  # 10: not a multiple of 4, no pre-filter (block 1)
    lo = -0.3 - torch.rand(3, generator=g)
    hi = 0.3 + torch.rand(3, generator=g)
    aabbs = level_boxes(torch.cat([lo, hi]), levels)
    kind = (i // 5) % 5
    b = torch.zeros(levels, res, res, res, dtype=torch.bool)
    if kind == 0:  # a single occupied cell on a random level
        b[int(torch.randint(levels, (1,), generator=g))][tuple(torch.randint(res, (3,), generator=g).tolist())] = True
    elif kind == 1:  # only cells just outside the box of the finer level, and on the outermost border
        q = res // 4
        ring = torch.zeros(res, res, res, dtype=torch.bool)
        ring[q - 1 : res - q + 1, q - 1 : res - q + 1, q - 1 : res - q + 1] = True
        ring[q : res - q, q : res - q, q : res - q] = False
        edge = torch.ones(res, res, res, dtype=torch.bool)
        edge[1:-1, 1:-1, 1:-1] = False
        for lvl in range(levels):
            b[lvl] = (ring if lvl else torch.zeros_like(ring)) | (edge if lvl == levels - 1 else torch.zeros_like(edge))
        b &= torch.rand(b.shape, generator=g) < 0.1
    elif kind == 2:  # a few small clusters on random levels
        for _ in range(4):
            lvl = int(torch.randint(levels, (1,), generator=g))
            a = torch.randint(res - 2, (3,), generator=g).tolist()
            b[lvl, a[0] : a[0] + 2, a[1] : a[1] + 2, a[2] : a[2] + 2] = True
    else:
        b = torch.rand(levels, res, res, res, generator=g) < [0.0005, 0.01][kind - 3]
    step = float((hi - lo).min()) / res * [0.1, 0.3, 1.0][i % 3]
    cone = [0.0, 0.004, 0.02, 0.1][(i // 2) % 4]
    o, d = make_rays(aabbs, 120, seed=3000 + i)
    occ = torch.nonzero(b)
    if occ.numel():  # more rays aimed at occupied cells, from inside and outside the outermost box
        n_aim = 180
        cells = occ[torch.randint(occ.shape[0], (n_aim,), generator=g)]
        box = aabbs[cells[:, 0]]
        target = box[:, :3] + (cells[:, 1:] + torch.rand(n_aim, 3, generator=g)) / res * (box[:, 3:] - box[:, :3])
        outer = aabbs[-1]
        o_aim = outer[:3] + torch.rand(n_aim, 3, generator=g) * (outer[3:] - outer[:3])
        o_aim[::3] = unit(torch.randn(len(o_aim[::3]), 3, generator=g)) * float((outer[3:] - outer[:3]).norm())
        o = torch.cat([o, o_aim])
        d = torch.cat([d, unit(target - o_aim)])
    near = [0.0, 0.0, 0.5][i % 3]
    tight = i % 4 == 1
    stratified = i % 6 == 5
    return levels, res, aabbs, b, step, cone, o, d, near, tight, stratified


@pytest.mark.parametrize("i", range(50))
def test_level_prefilter_gives_identical_samples(i):
    levels, res, aabbs, b, step, cone, o, d, near, tight, stratified = _prefilter_case(i)
    coarse = LevelCoarseGrid.build(b, aabbs, step)
    assert (coarse.block > 1) == (res % 4 == 0 and float(coarse.cell[0]) >= 2 * step)
    args = (b, aabbs) if levels > 1 else (b[0], aabbs[0])
    box = occupied_aabb(b, aabbs) if tight else None
    torch.manual_seed(i)
    plain = march_rays(o, d, *args, step, near_plane=near, march_aabb=box, stratified=stratified, cone_angle=cone)
    torch.manual_seed(i)
    pre = march_rays(o, d, *args, step, near_plane=near, march_aabb=box, stratified=stratified, cone_angle=cone,
                     coarse=coarse)
    assert torch.equal(pre.ray_indices, plain.ray_indices)
    assert torch.equal(pre.t_starts, plain.t_starts) and torch.equal(pre.t_ends, plain.t_ends)
    pts = o[plain.ray_indices] + plain.t_mids[:, None] * d[plain.ray_indices]
    assert torch.all(finest_occupancy(b, aabbs, pts))


def test_level_coarse_grid_build():
    aabbs = level_boxes(AABB, 3)
    b = torch.zeros(3, 16, 16, 16, dtype=torch.bool)
    b[0, 15, 0, 7] = True  # finest level, a corner region
    cg = LevelCoarseGrid.build(b, aabbs, 0.01)
    assert cg.binaries.shape == (3, 4, 4, 4)
    cell = (AABB[3:] - AABB[:3]) / 16 * 4
    assert cg.block == int(float(cell.min()) // 0.01)
    torch.testing.assert_close(cg.cell, cell.min() * torch.tensor([1.0, 2.0, 4.0]))
    expect0 = torch.zeros(4, 4, 4, dtype=torch.bool)
    expect0[2:4, 0:2, 0:3] = True  # coarse cell (3, 0, 1), dilated
    assert torch.equal(cg.binaries[0], expect0)
    # the coarser levels see the finer cell: in level 1 it is cell 4 + (15, 0, 7) // 2 = (11, 4, 7), coarse
    # (2, 1, 1); in level 2 cell 4 + (11, 4, 7) // 2 = (9, 6, 7), coarse (2, 1, 1) again; dilated
    expect = torch.zeros(4, 4, 4, dtype=torch.bool)
    expect[1:4, 0:3, 0:3] = True
    assert torch.equal(cg.binaries[1], expect) and torch.equal(cg.binaries[2], expect)
    # no pre-filter where it would not be safe
    assert LevelCoarseGrid.build(torch.zeros(3, 10, 10, 10, dtype=torch.bool), aabbs, 0.01).block == 1
    skewed = aabbs.clone()
    skewed[2] *= 1.5
    assert LevelCoarseGrid.build(b, skewed, 0.01).block == 1
    assert LevelCoarseGrid.build(b, aabbs, 1.0).block == 1


def test_multilevel_lookup_uses_finest_level():
    """A point in the scene box reads level 0 even where level 1 says otherwise, and vice versa."""
    aabbs = level_boxes(AABB, 2)
    b = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    b[1] = True  # level 1 all occupied, level 0 all empty
    o = torch.tensor([[-5.0, 0.2, -0.2]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    s = march_rays(o, d, b, aabbs, 0.01)
    mids = o[0, 0] + s.t_mids
    # samples only in level 1's box, outside the scene box
    assert s.ray_indices.numel() > 0
    assert torch.all((mids < AABB[0] + 1e-5) | (mids > AABB[3] - 1e-5))
    assert torch.all((mids > aabbs[1, 0] - 1e-5) & (mids < aabbs[1, 3] + 1e-5))
    b = ~b  # now the scene box only
    s = march_rays(o, d, b, aabbs, 0.01)
    mids = o[0, 0] + s.t_mids
    assert torch.all((mids > AABB[0]) & (mids < AABB[3]))
    torch.testing.assert_close(s.t_ends[-1] - s.t_starts[0], AABB[3] - AABB[0], atol=0.011, rtol=0)


# --------------------------------------------------------------------------- levels == 1, cone 0: unchanged
def test_single_level_constant_steps_unchanged():
    """The multi-level code path with one level gives bit-identical samples to the single-grid path,
    which gives the same with and without the CoarseGrid pre-filter (today's behaviour)."""
    g = torch.Generator().manual_seed(3)
    b = torch.rand(32, 32, 32, generator=g) < 0.15
    o, d = make_rays(AABB[None], 300, seed=4)
    for step, stratified in [(0.01, False), (0.03, True)]:
        torch.manual_seed(0)
        plain = march_rays(o, d, b, AABB, step, march_aabb=occupied_aabb(b, AABB), stratified=stratified)
        torch.manual_seed(0)
        pre = march_rays(o, d, b, AABB, step, march_aabb=occupied_aabb(b, AABB), stratified=stratified,
                         coarse=CoarseGrid.build(b, AABB, step))
        torch.manual_seed(0)
        lvl = march_rays(o, d, b[None], AABB[None], step, march_aabb=occupied_aabb(b[None], AABB[None]),
                         stratified=stratified)
        assert plain.ray_indices.numel() > 1000
        for other in (pre, lvl):
            assert torch.equal(other.ray_indices, plain.ray_indices)
            assert torch.equal(other.t_starts, plain.t_starts) and torch.equal(other.t_ends, plain.t_ends)


def test_single_level_sampler_matches_nerfacc_update():
    """levels=1: the update is nerfacc's ``_update`` (same random draws), warm-up and after."""
    torch.manual_seed(0)
    s = OccupancySampler(AABB, grid_resolution=16, step_size=0.01)
    est = OccGridEstimator(roi_aabb=AABB, resolution=16, levels=1)

    def density(x):
        return 30.0 * torch.exp(-((x - 0.1) ** 2).sum(-1) / 0.1)

    for step in (0, 16, 512, 528, 1024):
        torch.manual_seed(step)
        s.update(step, density, sample_fraction=0.25)
        torch.manual_seed(step)
        est._update(step, lambda x: density(x) * 0.01)
        assert torch.equal(s.estimator.occs, est.occs) and torch.equal(s.binaries, est.binaries[0])
    assert s.binaries.shape == (16, 16, 16) and s.aabb.shape == (6,)
    torch.testing.assert_close(s.march_aabb, occupied_aabb(s.binaries, s.aabb))
    assert torch.equal(s.level_binaries, s.binaries[None]) and torch.equal(s.level_aabbs, s.aabb[None])


# --------------------------------------------------------------------------- OccupancySampler, levels > 1
SHELL_R = 3.0
BLOB_C = torch.tensor([0.3, -0.2, 0.1])


def shell_density(x):
    """A sphere shell of radius 3 around the origin (in levels 1 and 2 of a [-1, 1]^3 scene box) and a
    blob in the scene box (level 0)."""
    r = x.norm(dim=-1)
    shell = 4.0 * torch.exp(-(((r - SHELL_R) / 0.25) ** 2))
    blob = 20.0 * torch.exp(-((x - BLOB_C) ** 2).sum(-1) / (2 * 0.15**2))
    return shell + blob


def test_multilevel_update_matches_nerfacc_warmup_and_boxes():
    box = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    s = OccupancySampler(box, grid_resolution=16, step_size=0.01, levels=3, cone_angle=0.01)
    est = OccGridEstimator(roi_aabb=box, resolution=16, levels=3)
    torch.testing.assert_close(s.level_aabbs, level_boxes(box, 3))
    torch.testing.assert_close(s.march_aabb, s.level_aabbs[-1])
    assert s.level_binaries.shape == (3, 16, 16, 16)
    for step in (0, 16, 32):  # warm-up: every cell of every level, the same draws as nerfacc
        torch.manual_seed(step)
        s.update(step, shell_density, occ_thre=1e-3)
        torch.manual_seed(step)
        est._update(step, lambda x: shell_density(x) * 0.01, occ_thre=1e-3)
        assert torch.equal(s.estimator.occs, est.occs) and torch.equal(s.level_binaries, est.binaries)
    occ = s.level_binaries
    assert occ[0].any() and occ[1].any() and occ[2].any()
    # the march box is the box around the occupied cells of all levels (here: of the shell)
    torch.testing.assert_close(s.march_aabb, occupied_aabb(occ, s.level_aabbs))
    assert torch.all(s.march_aabb[3:] > SHELL_R) and torch.all(s.march_aabb[:3] < -SHELL_R)
    # after warm-up: a fraction of the cells of every level, occupancies only grow where sampled
    before = s.estimator.occs.clone()
    s.update(1024, shell_density, occ_thre=1e-3, ema_decay=1.0)
    changed = s.estimator.occs != before
    assert torch.all(s.estimator.occs >= before)
    per_level = changed.view(3, -1).float().mean(1)
    assert torch.all(per_level <= 0.25)
    # single-level accessors are refused for a multi-level grid
    with pytest.raises(ValueError, match="level_binaries"):
        s.binaries
    with pytest.raises(ValueError, match="level_aabbs"):
        s.aabb


def dense_render(o, d, box, step, density_fn):
    """Fine constant steps through ``box``, no culling; nerfacc's batched weights: (opacity, depth)."""
    t_near, t_far = ray_aabb_intersect(o, d, box)
    t_near = t_near.clamp(min=0.0)
    n = torch.ceil((t_far - t_near) / step).clamp(min=0).long()
    k = torch.arange(max(int(n.max()), 1))
    valid = k[None] < n[:, None]
    t0 = torch.where(valid, t_near[:, None] + k[None] * step, t_far[:, None])
    t1 = torch.where(valid, torch.minimum(t0 + step, t_far[:, None]), t_far[:, None])
    pts = o[:, None] + (0.5 * (t0 + t1))[..., None] * d[:, None]
    w, _, _ = render_weight_from_density(t0, t1, torch.where(valid, density_fn(pts), torch.zeros(())))
    return w.sum(1), (w * 0.5 * (t0 + t1)).sum(1)


@pytest.fixture(scope="module")
def shell_sampler():
    box = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    torch.manual_seed(0)
    s = OccupancySampler(box, grid_resolution=32, step_size=0.01, levels=3, cone_angle=0.01)
    for step in range(0, 16 * 8, 16):  # warm-up updates; a low threshold keeps the shell's faint tails
        s.update(step, shell_density, occ_thre=1e-4)
    return s


def test_unbounded_sampler_renders_like_dense_quadrature(shell_sampler):
    s = shell_sampler
    aabbs = s.level_aabbs
    o, d = make_rays(aabbs, 240, seed=5)
    o[160:] = o[160:] * 0.5  # outside rays start nearer (still outside the outermost box)
    n_rays = o.shape[0]
    out = s.sample(o, d)
    assert torch.all(out.ray_indices[1:] >= out.ray_indices[:-1])
    pts = o[out.ray_indices] + out.t_mids[:, None] * d[out.ray_indices]
    assert torch.all(finest_occupancy(s.level_binaries, aabbs, pts.double()))
    w, _, _ = render_weights(shell_density(pts), out.t_starts, out.t_ends, out.ray_indices, n_rays)
    acc = accumulate_along_rays(w, torch.ones_like(w)[:, None], out.ray_indices, n_rays)[:, 0]
    depth = accumulate_along_rays(w, out.t_mids[:, None], out.ray_indices, n_rays)[:, 0]
    acc_ref, depth_ref = dense_render(o, d, aabbs[-1], 0.002, shell_density)
    assert (acc_ref > 0.5).sum() > 100 and (acc_ref < 0.05).sum() > 10  # hits and misses
    torch.testing.assert_close(acc, acc_ref, atol=5e-3, rtol=0)
    torch.testing.assert_close(depth, depth_ref, atol=0.02, rtol=0.005)
    # the quadrature alone (every cell occupied): cone-angle steps against the fine constant steps
    full = march_rays(o, d, torch.ones_like(s.level_binaries), aabbs, s.step_size, cone_angle=s.cone_angle)
    pts = o[full.ray_indices] + full.t_mids[:, None] * d[full.ray_indices]
    w, _, _ = render_weights(shell_density(pts), full.t_starts, full.t_ends, full.ray_indices, n_rays)
    acc_full = accumulate_along_rays(w, torch.ones_like(w)[:, None], full.ray_indices, n_rays)[:, 0]
    torch.testing.assert_close(acc_full, acc_ref, atol=5e-4, rtol=0)
    # cone-angle steps: far fewer samples than constant steps through the same occupied cells
    const = march_rays(o, d, s.level_binaries, aabbs, s.step_size, march_aabb=s.march_aabb)
    assert out.ray_indices.numel() < 0.6 * const.ray_indices.numel()
    # stratified and early stopping keep the rendering
    torch.manual_seed(1)
    strat = s.sample(o, d, stratified=True)
    pts = o[strat.ray_indices] + strat.t_mids[:, None] * d[strat.ray_indices]
    w, _, _ = render_weights(shell_density(pts), strat.t_starts, strat.t_ends, strat.ray_indices, n_rays)
    acc_s = accumulate_along_rays(w, torch.ones_like(w)[:, None], strat.ray_indices, n_rays)[:, 0]
    torch.testing.assert_close(acc_s, acc_ref, atol=0.01, rtol=0)

    def sigma_fn(t0, t1, ri):
        return shell_density(o[ri] + (0.5 * (t0 + t1))[:, None] * d[ri])

    kept = s.sample(o, d, sigma_fn=sigma_fn, early_stop_eps=1e-3)
    assert kept.ray_indices.numel() < out.ray_indices.numel()
    pts = o[kept.ray_indices] + kept.t_mids[:, None] * d[kept.ray_indices]
    w, _, _ = render_weights(shell_density(pts), kept.t_starts, kept.t_ends, kept.ray_indices, n_rays)
    acc_k = accumulate_along_rays(w, torch.ones_like(w)[:, None], kept.ray_indices, n_rays)[:, 0]
    torch.testing.assert_close(acc_k, acc, atol=2e-3, rtol=0)


def test_unbounded_sampler_matches_loop_reference(shell_sampler):
    s = shell_sampler
    o, d = make_rays(s.level_aabbs, 90, seed=6)
    out = s.sample(o, d)
    ref = reference_march(o, d, s.level_binaries, s.level_aabbs, s.step_size, s.cone_angle,
                          march_aabb=s.march_aabb)
    assert_same_as_reference(out, ref)
    # sample() uses the multi-level pre-filter: the same as marching without it
    assert isinstance(s.coarse_grid(), LevelCoarseGrid) and s.coarse_grid().block > 1
    plain = march_rays(o, d, s.level_binaries, s.level_aabbs, s.step_size, march_aabb=s.march_aabb,
                       cone_angle=s.cone_angle)
    assert torch.equal(out.ray_indices, plain.ray_indices)
    assert torch.equal(out.t_starts, plain.t_starts) and torch.equal(out.t_ends, plain.t_ends)


def test_single_level_sampler_with_cone_angle():
    torch.manual_seed(0)
    s = OccupancySampler(AABB, grid_resolution=16, step_size=0.01, cone_angle=0.05)
    for step in range(0, 64, 16):
        s.update(step, shell_density, occ_thre=1e-4)
    assert s.binaries.shape == (16, 16, 16) and isinstance(s.coarse_grid(), LevelCoarseGrid)
    o, d = make_rays(s.level_aabbs, 90, seed=9)
    out = s.sample(o, d)
    plain = march_rays(o, d, s.binaries, s.aabb, s.step_size, march_aabb=s.march_aabb, cone_angle=0.05)
    assert out.ray_indices.numel() > 100
    assert torch.equal(out.ray_indices, plain.ray_indices)
    assert torch.equal(out.t_starts, plain.t_starts) and torch.equal(out.t_ends, plain.t_ends)
    ref = reference_march(o, d, s.level_binaries, s.level_aabbs, s.step_size, 0.05, march_aabb=s.march_aabb)
    assert_same_as_reference(out, ref)


# --------------------------------------------------------------------------- nerfacc on CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's CUDA marching needs a CUDA device")
def test_nerfacc_cuda_sampling_matches_march_rays(shell_sampler):
    """nerfacc anchors its steps at the near plane and does not cut the last one at the box; with the
    origins inside the scene box (box entry = near plane = 0) the samples are the same up to that
    last step and rounding at cell faces, and the renderings agree."""
    s = shell_sampler
    g = torch.Generator().manual_seed(8)
    o = (torch.rand(400, 3, generator=g) * 2 - 1) * 0.9
    d = unit(torch.randn(400, 3, generator=g))
    n_rays = o.shape[0]
    cuda = torch.device("cuda")
    est = s.estimator.to(cuda)
    try:
        ri, t0, t1 = est.sampling(o.to(cuda), d.to(cuda), render_step_size=s.step_size, cone_angle=s.cone_angle,
                                  near_plane=0.0, far_plane=1e10)
        via_sampler = s.sample(o.to(cuda), d.to(cuda))  # the sampler's CUDA path passes its cone angle
        assert via_sampler.t_starts.is_cuda
        assert torch.equal(via_sampler.ray_indices, ri.long()) and torch.equal(via_sampler.t_starts, t0)
    finally:
        s.estimator.to("cpu")
    ri, t0, t1 = ri.long().cpu(), t0.cpu(), t1.cpu()
    ours = march_rays(o, d, s.level_binaries, s.level_aabbs, s.step_size, cone_angle=s.cone_angle)
    assert ri.numel() > 1000
    idx = match(ours.ray_indices, ours.t_starts, ri, t0, rtol=1e-4)
    assert (idx >= 0).float().mean() > 0.98
    back = match(ri, t0, ours.ray_indices, ours.t_starts, rtol=1e-4)
    assert (back >= 0).float().mean() > 0.98
    counts = torch.bincount(ri, minlength=n_rays) - torch.bincount(ours.ray_indices, minlength=n_rays)
    assert counts.abs().max() <= 3

    def opacity(rr, a, b):
        pts = o[rr] + (0.5 * (a + b))[:, None] * d[rr]
        w, _, _ = render_weights(shell_density(pts), a, b, rr, n_rays)
        return accumulate_along_rays(w, torch.ones_like(w)[:, None], rr, n_rays)[:, 0]

    torch.testing.assert_close(opacity(ri, t0, t1), opacity(ours.ray_indices, ours.t_starts, ours.t_ends),
                               atol=0.01, rtol=0)


# --------------------------------------------------------------------------- with the tri-plane field
@pytest.mark.parametrize("contraction", ["none", "linf"])
def test_grid_update_from_triplane_field(contraction):
    """A contracted field has density in every level's box; a bounded one only in the scene box."""
    from nerfcodec_ns.field.field import TriplaneField, TriplaneFieldSpec

    torch.manual_seed(0)
    box = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    field = TriplaneField(box.view(2, 3), TriplaneFieldSpec(resolutions=(8,), num_channels=4, contraction=contraction))
    s = OccupancySampler(box, grid_resolution=16, step_size=0.01, levels=3, cone_angle=0.01)
    with torch.no_grad():
        s.update(0, lambda x: field.density(x)[0], occ_thre=1e-6)
    assert torch.isfinite(s.estimator.occs).all()
    occ = s.level_binaries
    q = 16 // 4
    outer = occ[1:].clone()
    outer[:, q : 16 - q, q : 16 - q, q : 16 - q] = False  # the cells of a level outside the finer level's box
    if contraction == "none":
        assert occ[0].any() and not outer.any()
    else:
        assert outer.float().mean() > 0.5
        o, d = make_rays(s.level_aabbs, 60, seed=11)
        out = s.sample(o, d)
        pts = o[out.ray_indices] + out.t_mids[:, None] * d[out.ray_indices]
        assert (pts.abs().amax(-1) > 1.0).float().mean() > 0.3  # samples out in the unbounded region
