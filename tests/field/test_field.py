"""Tri-plane field: shapes, plane layout, lookups against a hand-computed bilinear value, gradients."""

from __future__ import annotations

import pytest
import torch

from nerfcodec_ns.field.field import (
    PLANE_AXES,
    TriplaneField,
    TriplaneFieldSpec,
    sample_planes,
    sample_planes_reference,
)

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def test_planes_are_plain_parameters_codec_ready():
    field = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8, 16), num_channels=4))
    shapes = [tuple(p.shape) for p in field.planes]
    assert shapes == [(3, 4, 8, 8), (3, 4, 16, 16)]
    assert all(isinstance(p, torch.nn.Parameter) for p in field.planes)
    n_mlp = sum(p.numel() for p in field.mlp_parameters())
    assert sum(p.numel() for p in field.parameters()) == n_mlp + 3 * 4 * (64 + 256)


def test_sample_planes_matches_manual_bilinear():
    torch.manual_seed(0)
    R, C = 5, 3
    planes = torch.randn(3, C, R, R)
    pts = torch.rand(20, 3) * 2 - 1
    got = sample_planes(planes, pts, reduce="sum")
    expect = torch.zeros(20, C)
    for p, (a, b) in enumerate(PLANE_AXES):
        x = (pts[:, a] + 1) / 2 * (R - 1)  # width index
        y = (pts[:, b] + 1) / 2 * (R - 1)  # height index
        x0, y0 = x.floor().long().clamp(max=R - 2), y.floor().long().clamp(max=R - 2)
        wx, wy = x - x0, y - y0
        pl = planes[p]
        v = (pl[:, y0, x0] * (1 - wx) * (1 - wy) + pl[:, y0, x0 + 1] * wx * (1 - wy)
             + pl[:, y0 + 1, x0] * (1 - wx) * wy + pl[:, y0 + 1, x0 + 1] * wx * wy)
        expect += v.t()
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reduce", ["product", "sum"])
@pytest.mark.parametrize("R", [2, 7, 32])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_lookup_matches_grid_sample_values_and_gradients(reduce, R, channels_last):
    torch.manual_seed(R)
    C = 5
    planes = torch.randn(3, C, R, R)
    if channels_last:
        planes = planes.contiguous(memory_format=torch.channels_last)
    planes.requires_grad_(True)
    pts = torch.rand(300, 3) * 2 - 1
    pts[:6] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.3],
                            [0.0, 0.0, 0.0], [-1.0, 1.0, 1.0], [0.999999, -0.999999, 0.5]])
    grad_out = torch.randn(300, C)
    fast = sample_planes(planes, pts, reduce)
    (g_fast,) = torch.autograd.grad((fast * grad_out).sum(), planes)
    ref = sample_planes_reference(planes, pts, reduce)
    (g_ref,) = torch.autograd.grad((ref * grad_out).sum(), planes)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_fast_lookup_gradient_flows_to_planes_derived_from_other_tensors():
    """Decoded planes (codec output) are non-leaf, not channels-last: gradients still reach their inputs."""
    torch.manual_seed(1)
    src = torch.randn(3, 4, 9, 9, requires_grad=True)
    pts = torch.rand(50, 3) * 2 - 1
    (g_fast,) = torch.autograd.grad(sample_planes(src * 2.0, pts).sum(), src)
    (g_ref,) = torch.autograd.grad(sample_planes_reference(src * 2.0, pts).sum(), src)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_density_and_color_shapes_and_ranges():
    field = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8,), num_channels=4))
    pos = torch.rand(50, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    sigma, rgb = field(pos, dirs)
    assert sigma.shape == (50,) and rgb.shape == (50, 3)
    assert (sigma >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()
    outside = torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.6, 0.0]])
    assert (field.density(outside)[0] == 0).all()


def test_external_planes_replace_own_planes():
    field = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8,), num_channels=4))
    pos = torch.rand(10, 3) - 0.5
    own = field.density(pos)[0]
    same = field.density(pos, [p.detach().clone() for p in field.planes])[0]
    other = field.density(pos, [torch.zeros_like(p) for p in field.planes])[0]
    torch.testing.assert_close(own, same)
    assert not torch.allclose(own, other)


def test_gradients_reach_planes_and_mlps():
    field = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8, 16), num_channels=4))
    pos = torch.rand(100, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    sigma, rgb = field(pos, dirs)
    (sigma.sum() + rgb.sum()).backward()
    for p in list(field.planes) + field.mlp_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(resolutions=()), dict(resolutions=(1,)), dict(num_channels=0), dict(sh_degree=5)])
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        TriplaneFieldSpec(**bad)
