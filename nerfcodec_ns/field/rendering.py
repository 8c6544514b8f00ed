"""Packed volume rendering in pure torch (differentiable, CPU and GPU).

Samples are packed: flat arrays sorted by ray, with ``ray_indices`` naming each sample's ray.
Transmittance needs an exclusive cumulative sum of optical depth *within* each ray; it is done as
one global cumulative sum (in float64, so that subtracting the running total at each ray's first
sample loses no precision) minus that ray's starting offset. This is the pure-torch counterpart
of nerfacc's packed ``render_weight_from_density`` / ``accumulate_along_rays`` (CUDA only).
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


def packed_exclusive_sum(values: Float[Tensor, "n"], ray_indices: Int[Tensor, "n"], n_rays: int) -> Float[Tensor, "n"]:
    """Per-ray exclusive cumulative sum of ``values`` (samples sorted by ray), computed in float64."""
    v = values.double()
    incl = torch.cumsum(v, 0)
    excl = incl - v
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts  # index of each ray's first sample
    ray_offset = excl[first.clamp(max=max(values.shape[0] - 1, 0))] if values.shape[0] else excl.new_zeros(n_rays)
    return (excl - ray_offset[ray_indices]).to(values.dtype)


def render_weights(
    sigmas: Float[Tensor, "n"],
    t_starts: Float[Tensor, "n"],
    t_ends: Float[Tensor, "n"],
    ray_indices: Int[Tensor, "n"],
    n_rays: int,
) -> Tuple[Float[Tensor, "n"], Float[Tensor, "n"], Float[Tensor, "n"]]:
    """Volume-rendering weights ``T_i * alpha_i`` from densities; returns (weights, transmittance, alphas)."""
    sigma_delta = sigmas * (t_ends - t_starts)
    trans = torch.exp(-packed_exclusive_sum(sigma_delta, ray_indices, n_rays))
    alphas = 1.0 - torch.exp(-sigma_delta)
    return trans * alphas, trans, alphas


@torch.no_grad()
def render_visibility(
    sigmas: Float[Tensor, "n"],
    t_starts: Float[Tensor, "n"],
    t_ends: Float[Tensor, "n"],
    ray_indices: Int[Tensor, "n"],
    n_rays: int,
    alpha_thre: float = 0.0,
    early_stop_eps: float = 1e-4,
) -> Tensor:
    """Boolean mask of samples that matter: transmittance >= ``early_stop_eps`` and alpha >= ``alpha_thre``."""
    _, trans, alphas = render_weights(sigmas, t_starts, t_ends, ray_indices, n_rays)
    keep = torch.ones_like(sigmas, dtype=torch.bool)
    if early_stop_eps > 0:
        keep &= trans >= early_stop_eps
    if alpha_thre > 0:
        keep &= alphas >= alpha_thre
    return keep


def accumulate_along_rays(
    weights: Float[Tensor, "n"], values: Float[Tensor, "n c"], ray_indices: Int[Tensor, "n"], n_rays: int
) -> Float[Tensor, "R c"]:
    """Sum of ``weights * values`` per ray (rays without samples get 0)."""
    out = torch.zeros(n_rays, values.shape[-1], dtype=values.dtype, device=values.device)
    return out.index_add(0, ray_indices, weights[:, None] * values)
