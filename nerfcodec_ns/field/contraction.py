"""Scene contraction for unbounded (real-capture) scenes, as mip-NeRF 360 / nerfacto / K-Planes.

Box coordinates (the scene box mapped to [-1, 1]^3) are left as they are inside the unit ball of
the chosen norm and squashed into the shell between radius 1 and 2 outside it:

    f(x) = x                          if |x| <= 1
    f(x) = (2 - 1 / |x|) * x / |x|    otherwise

so all of space lands in [-2, 2]^3 (the cube for the L-inf norm, the ball of radius 2 for L2).
The values are those of nerfstudio's ``SceneContraction(order=float("inf"))`` / ``(order=2)``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor

#: Contraction names: none (bounded scene), L-inf norm (a cube, for grid and plane encodings), L2 norm (a ball).
CONTRACTIONS: Tuple[str, ...] = ("none", "linf", "l2")


def contract(x: Float[Tensor, "N 3"], order: str) -> Float[Tensor, "N 3"]:
    """Contract box coordinates ``x`` (any leading shape, last axis 3) into [-2, 2]^3; ``"none"``
    returns ``x`` itself. Differentiable, with finite gradients everywhere (also at 0)."""
    if order not in CONTRACTIONS:
        raise ValueError(f"unknown contraction {order!r}, expected one of {CONTRACTIONS}")
    if order == "none":
        return x
    mag = x.abs().amax(dim=-1, keepdim=True) if order == "linf" else x.norm(dim=-1, keepdim=True)
    safe = mag.clamp(min=1.0)  # the outer branch is only taken where mag > 1: no 0/0 in its gradient
    return torch.where(mag <= 1.0, x, (2.0 - 1.0 / safe) * (x / safe))
