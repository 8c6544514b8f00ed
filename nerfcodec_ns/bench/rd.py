"""Rate-distortion helpers: Bjøntegaard deltas and Pareto fronts of RD points.

A curve is a sequence of points, each an :class:`RDPoint` or a ``(bytes, psnr)`` pair: the rate in
bytes (> 0) and the quality in dB. Two interpolations of a curve are offered:

* ``"pchip"`` (default): piecewise cubic Hermite interpolation (shape-preserving, as in the later
  JVET/VCEG practice). It never overshoots between points, which matters for flat or few-point curves.
* ``"polyfit"``: the original VCEG-M33 polynomial fit (degree 3 from 4 points on, else points - 1).
  A fit through 3 points of a flat curve can dip far between them (measured on lego_200: a +2% BD-rate
  where the piecewise-linear reading says +35%), so it is kept for reference only.

Only numpy and scipy are used (no torch), so report scripts stay light.
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


METHODS = ("pchip", "polyfit")


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of the curve y(x) interpolated with ``method``."""
    if method == "polyfit":
        antiderivative = np.polyint(np.polyfit(x, y, _degree(len(x))))
        return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    from scipy.interpolate import PchipInterpolator

    order = np.argsort(x)
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        raise ValueError("a curve has two points with the same value on the integration axis")
    return float(PchipInterpolator(x, y).integrate(lo, hi))


def _mean_difference(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray, what: str,
                     method: str = "pchip") -> float:
    """Mean of ``fit_t(x) - fit_a(x)`` over the overlap of the x ranges (interpolations of y on x)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    if not lo < hi:
        raise ValueError(
            f"the curves' {what} ranges do not overlap "
            f"(anchor {xa.min():g}..{xa.max():g}, test {xt.min():g}..{xt.max():g})"
        )
    integrals = [_integral(x, y, lo, hi, method) for x, y in ((xa, ya), (xt, yt))]
    return float((integrals[1] - integrals[0]) / (hi - lo))


def bd_rate(anchor: Sequence[Any], test: Sequence[Any], method: str = "pchip") -> float:
    """Bjøntegaard delta rate in percent: the average rate change of ``test`` against ``anchor`` at
    equal PSNR (negative: ``test`` needs fewer bytes). log10(bytes) is interpolated as a function of
    PSNR (``method``, see the module docstring) and averaged over the common PSNR interval.
    Raises ValueError for a curve of < 2 points, a rate <= 0, or disjoint PSNR intervals."""
    la, pa = _curve(anchor, "anchor")
    lt, pt = _curve(test, "test")
    d = _mean_difference(pa, la, pt, lt, "PSNR", method)
    return (10.0**d - 1.0) * 100.0


def bd_psnr(anchor: Sequence[Any], test: Sequence[Any], method: str = "pchip") -> float:
    """Bjøntegaard delta PSNR in dB: the average PSNR change of ``test`` against ``anchor`` at equal
    rate (positive: ``test`` is better). PSNR is interpolated as a function of log10(bytes) and
    averaged over the common log-rate interval. Same errors."""
    la, pa = _curve(anchor, "anchor")
    lt, pt = _curve(test, "test")
    return _mean_difference(la, pa, lt, pt, "log-rate", method)


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
