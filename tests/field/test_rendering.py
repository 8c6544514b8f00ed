"""Tests for the pure-torch packed volume renderer (``nerfcodec_ns.field.rendering``), CPU only.

The reference is nerfacc's *batched* ``render_weight_from_density`` (plain torch on a padded
``[n_rays, max_samples]`` tensor; nerfacc's packed ops need CUDA and are never called here).
"""

from __future__ import annotations

import pytest
import torch
from nerfacc import render_weight_from_density

from nerfcodec_ns.field import rendering
from nerfcodec_ns.field.rendering import (
    accumulate_along_rays,
    packed_exclusive_sum,
    render_visibility,
    render_weights,
)


# --------------------------------------------------------------------------- helpers
def make_packed(counts, gen, dtype=torch.float32, large_frac=0.05, zero_frac=0.2, sigma_max=10.0,
                dt_range=(1e-3, 0.2)):
    """Random packed samples: per ray ``counts[i]`` contiguous, non-uniform intervals, densities
    mixing zeros, ordinary values and very large ones (1e4)."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    n = int(counts.sum())
    ray_indices = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    lo, hi = dt_range
    dt = (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64))
    gap = torch.rand(n, generator=gen, dtype=torch.float64) * 0.05 * (torch.rand(n, generator=gen) < 0.3)
    # per-ray running position: a random start plus the ray's own exclusive sum of (dt + gap)
    step = dt + gap
    glob = torch.cumsum(step, 0) - step
    first = (torch.cumsum(counts, 0) - counts).clamp(max=max(n - 1, 0))
    start = 2.0 * torch.rand(counts.numel(), generator=gen, dtype=torch.float64)
    t_starts = glob - glob[first][ray_indices] + start[ray_indices] if n else glob
    t_ends = t_starts + dt
    u = torch.rand(n, generator=gen)
    sigmas = torch.rand(n, generator=gen, dtype=torch.float64) * sigma_max
    sigmas = torch.where(u < zero_frac, torch.zeros_like(sigmas), sigmas)
    sigmas = torch.where(u > 1.0 - large_frac, torch.full_like(sigmas, 1e4), sigmas)
    return sigmas.to(dtype), t_starts.to(dtype), t_ends.to(dtype), ray_indices


def local_index(ray_indices, n_rays):
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(ray_indices.numel()) - first[ray_indices], int(counts.max()) if counts.numel() else 0


def to_padded(values, ray_indices, n_rays, fill=0.0):
    """Lay packed values out as ``[n_rays, max_samples]`` (padding with ``fill``)."""
    k, width = local_index(ray_indices, n_rays)
    out = torch.full((n_rays, max(width, 1)), fill, dtype=values.dtype)
    return out.index_put((ray_indices, k), values)


def padded_reference(sigmas, t_starts, t_ends, ray_indices, n_rays):
    """nerfacc batched weights on the padded layout (zero-length intervals, zero density as padding)."""
    ps = to_padded(sigmas, ray_indices, n_rays)
    pt0 = to_padded(t_starts, ray_indices, n_rays)
    pt1 = to_padded(t_ends, ray_indices, n_rays)
    w, tr, a = render_weight_from_density(pt0, pt1, ps)
    k, _ = local_index(ray_indices, n_rays)
    return w[ray_indices, k], tr[ray_indices, k], a[ray_indices, k]


def assert_close(a, b, atol=1e-5, rtol=0.0):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- render_weights
@pytest.mark.parametrize("seed", range(6))
def test_render_weights_match_nerfacc_batched(seed):
    gen = torch.Generator().manual_seed(seed)
    n_rays = 64
    counts = torch.randint(0, 40, (n_rays,), generator=gen)
    counts[torch.randperm(n_rays, generator=gen)[:8]] = 0  # rays with no samples
    counts[-1] = 0  # trailing empty ray (index clamping in packed_exclusive_sum)
    counts[0] = 0  # leading empty ray
    sigmas, t0, t1, ri = make_packed(counts, gen)
    assert (sigmas == 1e4).any() and (sigmas == 0).any()
    w, tr, a = render_weights(sigmas, t0, t1, ri, n_rays)
    rw, rtr, ra = padded_reference(sigmas, t0, t1, ri, n_rays)
    assert w.dtype == tr.dtype == a.dtype == torch.float32
    assert w.shape == tr.shape == a.shape == sigmas.shape
    assert_close(w, rw)
    assert_close(tr, rtr)
    assert_close(a, ra)
    # transmittance starts at 1 on every ray and never increases along it
    k, _ = local_index(ri, n_rays)
    assert torch.all(tr[k == 0] == 1.0)
    same_ray = ri[1:] == ri[:-1]
    assert torch.all(tr[1:][same_ray] <= tr[:-1][same_ray])


def test_render_weights_tiny_example():
    # the example of nerfacc's docstring
    t0 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    t1 = t0 + 1.0
    sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    ri = torch.tensor([0, 0, 0, 1, 1, 3, 3])  # ray 2 has no samples
    w, tr, a = render_weights(sigmas, t0, t1, ri, 5)
    ea = 1 - torch.exp(-sigmas)
    etr = torch.tensor([1.0, torch.exp(torch.tensor(-0.4)), torch.exp(torch.tensor(-1.2)),
                        1.0, torch.exp(torch.tensor(-0.8)), 1.0, 1.0])
    assert_close(a, ea, atol=1e-7)
    assert_close(tr, etr, atol=1e-7)
    assert_close(w, etr * ea, atol=1e-7)


def test_render_weights_no_samples():
    e = torch.zeros(0)
    w, tr, a = render_weights(e, e, e, torch.zeros(0, dtype=torch.long), 7)
    assert w.shape == tr.shape == a.shape == (0,)
    assert packed_exclusive_sum(e, torch.zeros(0, dtype=torch.long), 3).shape == (0,)


def test_packed_exclusive_sum_against_loop():
    gen = torch.Generator().manual_seed(1)
    counts = torch.tensor([0, 3, 0, 0, 5, 1, 0])
    n = int(counts.sum())
    ri = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    v = torch.rand(n, generator=gen)
    out = packed_exclusive_sum(v, ri, counts.numel())
    ref = torch.zeros(n)
    for i in range(n):
        ref[i] = sum(float(v[j]) for j in range(i) if ri[j] == ri[i])
    assert out.dtype == v.dtype
    assert_close(out, ref, atol=1e-6)


# --------------------------------------------------------------------------- precision
def _precision_case():
    gen = torch.Generator().manual_seed(1234)
    n_rays, per_ray = 5000, 50
    counts = torch.full((n_rays,), per_ray)
    # moderate optical depth per sample (the per-ray total is ~10 and the running total over all
    # rays ~5e4), so transmittance stays O(1) for many samples of each ray and any error in the
    # per-ray exclusive sum shows up directly in the weights; plus some opaque (1e4) samples
    return make_packed(counts, gen, large_frac=0.01, zero_frac=0.1, sigma_max=4.0, dt_range=(0.01, 0.1)), n_rays


def test_render_weights_precision_many_rays():
    (sigmas, t0, t1, ri), n_rays = _precision_case()
    total = float((sigmas.double() * (t1 - t0).double()).sum())
    assert total > 4e4  # the global running sum is large: float32 ulp there is ~4e-3
    w, tr, a = render_weights(sigmas, t0, t1, ri, n_rays)
    rw, rtr, ra = padded_reference(sigmas, t0, t1, ri, n_rays)
    assert_close(w, rw)
    assert_close(tr, rtr)
    assert_close(a, ra)


def test_precision_test_detects_float32_cumsum(monkeypatch):
    """Sensitivity check of the test above: a float32 global cumulative sum fails it badly."""

    def packed_exclusive_sum_f32(values, ray_indices, n_rays):
        incl = torch.cumsum(values.float(), 0)
        excl = incl - values
        counts = torch.bincount(ray_indices, minlength=n_rays)
        first = torch.cumsum(counts, 0) - counts
        off = excl[first.clamp(max=values.shape[0] - 1)]
        return excl - off[ray_indices]

    monkeypatch.setattr(rendering, "packed_exclusive_sum", packed_exclusive_sum_f32)
    (sigmas, t0, t1, ri), n_rays = _precision_case()
    w, tr, _ = rendering.render_weights(sigmas, t0, t1, ri, n_rays)
    rw, rtr, _ = padded_reference(sigmas, t0, t1, ri, n_rays)
    assert (w - rw).abs().max() > 1e-4
    assert (tr - rtr).abs().max() > 1e-4


# --------------------------------------------------------------------------- gradients
def test_render_weights_gradcheck():
    gen = torch.Generator().manual_seed(7)
    counts = torch.tensor([3, 0, 4, 1, 0, 2])
    sigmas, t0, t1, ri = make_packed(counts, gen, dtype=torch.float64, large_frac=0.0, zero_frac=0.0, sigma_max=3.0)
    sigmas = sigmas.clone().requires_grad_(True)

    def f(s):
        return render_weights(s, t0, t1, ri, counts.numel())

    assert torch.autograd.gradcheck(f, (sigmas,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, (sigmas,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_render_weights_gradient_matches_nerfacc_batched(dtype):
    gen = torch.Generator().manual_seed(11)
    n_rays = 40
    counts = torch.randint(0, 30, (n_rays,), generator=gen)
    counts[::7] = 0
    sigmas, t0, t1, ri = make_packed(counts, gen, dtype=dtype, large_frac=0.03)
    cw = torch.randn(sigmas.shape, generator=gen, dtype=dtype)
    ct = torch.randn(sigmas.shape, generator=gen, dtype=dtype)

    s_packed = sigmas.clone().requires_grad_(True)
    w, tr, _ = render_weights(s_packed, t0, t1, ri, n_rays)
    ((w * cw).sum() + (tr * ct).sum()).backward()

    k, _ = local_index(ri, n_rays)
    s_pad = to_padded(sigmas, ri, n_rays).requires_grad_(True)
    pw, ptr, _ = render_weight_from_density(to_padded(t0, ri, n_rays), to_padded(t1, ri, n_rays), s_pad)
    ((pw[ri, k] * cw).sum() + (ptr[ri, k] * ct).sum()).backward()

    atol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(s_packed.grad, s_pad.grad[ri, k], atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- accumulate_along_rays
def test_accumulate_along_rays_against_loop():
    gen = torch.Generator().manual_seed(3)
    n_rays = 20
    counts = torch.randint(0, 6, (n_rays,), generator=gen)
    counts[[0, 5, 19]] = 0
    ri = torch.repeat_interleave(torch.arange(n_rays), counts)
    w = torch.rand(ri.numel(), generator=gen)
    vals = torch.randn(ri.numel(), 3, generator=gen)
    out = accumulate_along_rays(w, vals, ri, n_rays)
    ref = torch.zeros(n_rays, 3)
    for i in range(ri.numel()):
        ref[ri[i]] += w[i] * vals[i]
    assert out.shape == (n_rays, 3)
    assert_close(out, ref, atol=1e-6)
    assert torch.all(out[counts == 0] == 0)
    # 1 channel, and no samples at all
    out1 = accumulate_along_rays(w, torch.ones(ri.numel(), 1), ri, n_rays)
    assert_close(out1[:, 0], torch.zeros(n_rays).index_add(0, ri, w), atol=1e-6)
    empty = accumulate_along_rays(torch.zeros(0), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4)
    assert empty.shape == (4, 3) and torch.all(empty == 0)


def test_accumulate_along_rays_gradient():
    gen = torch.Generator().manual_seed(4)
    ri = torch.tensor([0, 0, 2, 2, 2, 3])
    w = torch.rand(6, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.rand(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, v: accumulate_along_rays(w, v, ri, 5), (w, v))


# --------------------------------------------------------------------------- render_visibility
def _vis_case(seed):
    gen = torch.Generator().manual_seed(seed)
    n_rays = 300
    counts = torch.randint(0, 60, (n_rays,), generator=gen)
    counts[::10] = 0
    sigmas, t0, t1, ri = make_packed(counts, gen, large_frac=0.02, zero_frac=0.3, sigma_max=20.0)
    colors = torch.rand(sigmas.shape[0], 3, generator=gen)
    return sigmas, t0, t1, ri, n_rays, colors


@pytest.mark.parametrize("eps", [1e-4, 1e-2, 0.2])
def test_render_visibility_early_stop(eps):
    sigmas, t0, t1, ri, n_rays, colors = _vis_case(5)
    w, tr, a = render_weights(sigmas, t0, t1, ri, n_rays)
    keep = render_visibility(sigmas, t0, t1, ri, n_rays, alpha_thre=0.0, early_stop_eps=eps)
    assert keep.dtype == torch.bool and keep.shape == sigmas.shape
    assert torch.equal(keep, tr >= eps)
    assert (~keep).any() and keep.any()
    # against the independent reference too, away from the threshold
    _, rtr, _ = padded_reference(sigmas, t0, t1, ri, n_rays)
    clear = (rtr - eps).abs() > 1e-5
    assert torch.equal(keep[clear], (rtr >= eps)[clear])
    # transmittance never increases, so the dropped samples are a suffix of each ray; rendering
    # only the kept ones changes each ray's colour by the dropped weight: < eps (colours in [0,1])
    full = accumulate_along_rays(w, colors, ri, n_rays)
    kw, _, _ = render_weights(sigmas[keep], t0[keep], t1[keep], ri[keep], n_rays)
    culled = accumulate_along_rays(kw, colors[keep], ri[keep], n_rays)
    assert (full - culled).abs().max() <= eps + 1e-6
    acc_full = accumulate_along_rays(w, torch.ones_like(colors[:, :1]), ri, n_rays)
    acc_cull = accumulate_along_rays(kw, torch.ones_like(kw)[:, None], ri[keep], n_rays)
    assert torch.all(acc_full - acc_cull >= -1e-6) and (acc_full - acc_cull).max() <= eps + 1e-6


@pytest.mark.parametrize("thre", [1e-3, 5e-2, 0.3])
def test_render_visibility_alpha_threshold(thre):
    sigmas, t0, t1, ri, n_rays, colors = _vis_case(6)
    w, tr, a = render_weights(sigmas, t0, t1, ri, n_rays)
    keep = render_visibility(sigmas, t0, t1, ri, n_rays, alpha_thre=thre, early_stop_eps=0.0)
    assert torch.equal(keep, a >= thre)
    assert (~keep).any() and keep.any()
    # dropping a sample j changes a ray's colour by at most T_j * alpha_j <= alpha_j (colours in
    # [0, 1]); over several dropped samples at most the sum of their alphas
    full = accumulate_along_rays(w, colors, ri, n_rays)
    kw, _, _ = render_weights(sigmas[keep], t0[keep], t1[keep], ri[keep], n_rays)
    culled = accumulate_along_rays(kw, colors[keep], ri[keep], n_rays)
    dropped_alpha = torch.zeros(n_rays).index_add(0, ri[~keep], a[~keep])
    assert torch.all((full - culled).abs().amax(-1) <= dropped_alpha + 1e-6)


def test_render_visibility_both_and_disabled():
    sigmas, t0, t1, ri, n_rays, _ = _vis_case(8)
    _, tr, a = render_weights(sigmas, t0, t1, ri, n_rays)
    keep = render_visibility(sigmas, t0, t1, ri, n_rays, alpha_thre=0.01, early_stop_eps=1e-3)
    assert torch.equal(keep, (tr >= 1e-3) & (a >= 0.01))
    assert torch.all(render_visibility(sigmas, t0, t1, ri, n_rays, alpha_thre=0.0, early_stop_eps=0.0))
    # zero-density samples survive an early-stop-only mask as long as transmittance is high
    keep_eps = render_visibility(sigmas, t0, t1, ri, n_rays, early_stop_eps=1e-4)
    assert torch.all(keep_eps[(sigmas == 0) & (tr >= 1e-4)])
    # no gradient bookkeeping
    s = sigmas.clone().requires_grad_(True)
    assert not render_visibility(s, t0, t1, ri, n_rays).requires_grad
