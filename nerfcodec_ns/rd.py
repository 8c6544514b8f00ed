"""Rate-distortion helpers: Bjøntegaard deltas (VCEG-M33) and Pareto fronts of RD points.

A curve is a sequence of points, each an :class:`RDPoint` or a ``(bytes, psnr)`` pair: the rate in
bytes (> 0) and the quality in dB. Only numpy is used (no torch), so report scripts stay light.
"""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ["RDPoint", "bd_rate", "bd_psnr", "pareto_front"]


class RDPoint(NamedTuple):
    """One operating point of a codec: its name, size in bytes and quality (PSNR in dB)."""

    name: str
    bytes: int
    psnr: float
    ssim: Optional[float] = None
    lpips: Optional[float] = None


P = TypeVar("P")


def _rate_psnr(point: Any) -> Tuple[float, float]:
    """``(bytes, psnr)`` of an :class:`RDPoint` (or any object with those attributes) or a pair."""
    if hasattr(point, "bytes") and hasattr(point, "psnr"):
        return float(point.bytes), float(point.psnr)
    rate, psnr = point  # a (bytes, psnr) pair
    return float(rate), float(psnr)


def _curve(points: Sequence[Any], label: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(log10(bytes), psnr)`` arrays of a curve, sorted by rate, after validation."""
    pairs = [_rate_psnr(p) for p in points]
    if len(pairs) < 2:
        raise ValueError(f"{label} curve needs at least 2 points, got {len(pairs)}")
    rate, psnr = np.array(sorted(pairs), dtype=np.float64).T
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(psnr))):
        raise ValueError(f"{label} curve has non-finite rates or PSNRs")
    if np.any(rate <= 0):
        raise ValueError(f"{label} curve has a non-positive rate ({rate.min():g} bytes); rates must be > 0")
    return np.log10(rate), psnr


def _degree(n: int) -> int:
    """Polynomial degree for a curve of ``n`` points: 3 from 4 points on, else n - 1 (at least 1)."""
    return 3 if n >= 4 else max(n - 1, 1)


def _mean_difference(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray, what: str) -> float:
    """Mean of ``fit_t(x) - fit_a(x)`` over the overlap of the x ranges (polynomial fits of y on x)."""
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    if not lo < hi:
        raise ValueError(
            f"the curves' {what} ranges do not overlap "
            f"(anchor {xa.min():g}..{xa.max():g}, test {xt.min():g}..{xt.max():g})"
        )
    integrals = []
    for x, y in ((xa, ya), (xt, yt)):
        antiderivative = np.polyint(np.polyfit(x, y, _degree(len(x))))
        integrals.append(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    return float((integrals[1] - integrals[0]) / (hi - lo))


def bd_rate(anchor: Sequence[Any], test: Sequence[Any]) -> float:
    """Bjøntegaard delta rate in percent: the average rate change of ``test`` against ``anchor`` at
    equal PSNR (negative: ``test`` needs fewer bytes). log10(bytes) is fitted as a polynomial of PSNR
    (degree 3 from 4 points, else points - 1) and averaged over the common PSNR interval.
    Raises ValueError for a curve of < 2 points, a rate <= 0, or disjoint PSNR intervals."""
    la, pa = _curve(anchor, "anchor")
    lt, pt = _curve(test, "test")
    d = _mean_difference(pa, la, pt, lt, "PSNR")
    return (10.0**d - 1.0) * 100.0


def bd_psnr(anchor: Sequence[Any], test: Sequence[Any]) -> float:
    """Bjøntegaard delta PSNR in dB: the average PSNR change of ``test`` against ``anchor`` at equal
    rate (positive: ``test`` is better). PSNR is fitted as a polynomial of log10(bytes) (same degree
    rule as :func:`bd_rate`) and averaged over the common log-rate interval. Same errors."""
    la, pa = _curve(anchor, "anchor")
    lt, pt = _curve(test, "test")
    return _mean_difference(la, pa, lt, pt, "log-rate")


def pareto_front(points: Sequence[P]) -> List[P]:
    """The points that no other point beats (no other has fewer-or-equal bytes and a higher-or-equal
    PSNR, one of them strictly), sorted by bytes. Of exactly equal points only one is kept. Points are
    :class:`RDPoint` s or ``(bytes, psnr)`` pairs and are returned as given."""
    keyed = sorted(points, key=lambda p: (_rate_psnr(p)[0], -_rate_psnr(p)[1]))
    front: List[P] = []
    best = -math.inf
    for p in keyed:
        psnr = _rate_psnr(p)[1]
        if psnr > best:
            front.append(p)
            best = psnr
    return front
