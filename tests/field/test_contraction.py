"""Scene contraction (``nerfcodec_ns.field.contraction``) and the tri-plane field on unbounded scenes.

The reference is nerfstudio's ``SceneContraction`` (mip-NeRF 360's contraction, L-inf or L2 norm).
"""

from __future__ import annotations

import pytest
import torch
from nerfstudio.field_components.spatial_distortions import SceneContraction

from nerfcodec_ns.field.contraction import CONTRACTIONS, contract
from nerfcodec_ns.field.field import TriplaneField, TriplaneFieldSpec

ORDERS = {"linf": float("inf"), "l2": 2}
AABB = torch.tensor([[-1.5, -1.0, -0.5], [1.5, 2.0, 0.5]])


def points(seed: int) -> torch.Tensor:
    """Points inside the unit cube, just around norm 1, far outside (up to 1e4), on the axes, and 0."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(400, 3, generator=g)
    scales = torch.cat([torch.rand(100, generator=g), 0.9 + 0.2 * torch.rand(100, generator=g),
                        1.0 + 10.0 * torch.rand(100, generator=g), 10.0 ** (1 + 3 * torch.rand(100, generator=g))])
    pts = dirs / dirs.abs().amax(-1, keepdim=True) * scales[:, None]  # L-inf norm = scale
    special = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 1.0],
                            [3.0, 0.0, 0.0], [0.0, 0.0, -1e4], [0.5, -0.5, 0.5]])
    return torch.cat([pts, special])


@pytest.mark.parametrize("order", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_contract_matches_nerfstudio(order, seed):
    x = points(seed)
    got = contract(x, order)
    expect = SceneContraction(order=ORDERS[order])(x)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-6)
    # any leading shape
    torch.testing.assert_close(contract(x[:400].view(2, 200, 3), order), expect[:400].view(2, 200, 3))


@pytest.mark.parametrize("order", ["linf", "l2"])
def test_contract_identity_inside_and_bounded(order):
    x = points(2)
    norm = x.abs().amax(-1) if order == "linf" else x.norm(dim=-1)
    y = contract(x, order)
    inside = norm <= 1.0
    assert inside.sum() > 50 and (~inside).sum() > 200
    assert torch.equal(y[inside], x[inside])
    assert torch.all(y.abs() <= 2.0)
    y_norm = y.abs().amax(-1) if order == "linf" else y.norm(dim=-1)
    assert torch.all(y_norm[~inside] > 1.0) and torch.all(y_norm[~inside] < 2.0)
    # radial and monotone: direction kept, contracted norm = 2 - 1/norm outside
    torch.testing.assert_close(y_norm[~inside], 2.0 - 1.0 / norm[~inside])
    torch.testing.assert_close(y[~inside] / y_norm[~inside, None], x[~inside] / norm[~inside, None])


@pytest.mark.parametrize("order", ["linf", "l2"])
def test_contract_gradients_finite(order):
    x = points(3).requires_grad_(True)
    y = contract(x, order)
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(g).all()
    # identity inside: unit Jacobian; outside: the gradient vanishes with distance
    norm = x.detach().abs().amax(-1) if order == "linf" else x.detach().norm(dim=-1)
    (g1,) = torch.autograd.grad(contract(x, order)[:, 0].sum(), x)
    inside = norm < 1.0
    torch.testing.assert_close(g1[inside], torch.tensor([1.0, 0.0, 0.0]).expand(int(inside.sum()), 3))
    assert torch.all(g1[norm > 1e3].abs() < 1e-2)


def test_contract_none_and_validation():
    x = points(4)
    assert contract(x, "none") is x
    assert CONTRACTIONS == ("none", "linf", "l2")
    with pytest.raises(ValueError):
        contract(x, "l1")


# --------------------------------------------------------------------------- the field
def far_points(n: int, seed: int, radius: float = 1e3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    return d / d.norm(dim=-1, keepdim=True) * radius


@pytest.mark.parametrize("order", ["linf", "l2"])
def test_field_with_contraction_has_density_far_away(order):
    torch.manual_seed(0)
    field = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8, 16), num_channels=4, contraction=order))
    far = far_points(200, 1)
    sigma, geo = field.density(far)
    assert torch.isfinite(sigma).all() and torch.isfinite(geo).all()
    assert (sigma > 0).float().mean() > 0.9
    # the planes cover the contracted space: far points read the border region of the planes
    coords = field.normalize(far)
    norm = coords.abs().amax(-1) if order == "linf" else coords.norm(dim=-1)
    assert torch.all(norm > 0.99) and torch.all(norm <= 1.0)
    # ... the same as a point ten times farther out along the same ray (within the plane spacing)
    sigma10, _ = field.density(far * 10)
    torch.testing.assert_close(sigma10, sigma, rtol=0.05, atol=1e-3)
    # inside the box (the unit ball of the norm in box coordinates): box coordinates halved
    box = AABB[0] + torch.rand(100, 3) * (AABB[1] - AABB[0])
    box_coords = (box - AABB[0]) / (AABB[1] - AABB[0]) * 2.0 - 1.0
    in_ball = box_coords.norm(dim=-1) <= 1.0 if order == "l2" else torch.ones(100, dtype=torch.bool)
    assert in_ball.sum() > 20
    torch.testing.assert_close(field.normalize(box)[in_ball], 0.5 * box_coords[in_ball])
    # gradients reach the planes and the MLP from far points
    dirs = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    s, rgb = field(far, dirs)
    (s.sum() + rgb.sum()).backward()
    for p in list(field.planes) + field.mlp_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_bounded_field_unchanged():
    torch.manual_seed(0)
    spec = TriplaneFieldSpec(resolutions=(8,), num_channels=4)
    assert spec.contraction == "none"
    field = TriplaneField(AABB, spec)
    pos = torch.cat([AABB[0] + torch.rand(50, 3) * (AABB[1] - AABB[0]), far_points(20, 2, 3.0)])
    lo, hi = AABB[0], AABB[1]
    assert torch.equal(field.normalize(pos), (pos - lo) / (hi - lo) * 2.0 - 1.0)
    sigma, _ = field.density(pos)
    outside = ~(((pos > lo) & (pos < hi)).all(-1))
    assert outside.sum() >= 20
    assert torch.all(sigma[outside] == 0) and torch.all(sigma[~outside] > 0)
    # the same weights with a contraction: the same MLP, other coordinates, density everywhere
    contracted = TriplaneField(AABB, TriplaneFieldSpec(resolutions=(8,), num_channels=4, contraction="linf"))
    contracted.load_state_dict(field.state_dict())
    assert torch.all(contracted.density(pos)[0] > 0)


def test_spec_rejects_unknown_contraction():
    with pytest.raises(ValueError):
        TriplaneFieldSpec(contraction="sphere")
