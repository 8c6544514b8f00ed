"""Tests of nerfcodec_ns.bench.rd: Bjøntegaard deltas on hand-computed curves, and Pareto fronts."""

from __future__ import annotations

import math
import random

import pytest

from nerfcodec_ns.bench.rd import RDPoint, bd_psnr, bd_rate, pareto_front

# Anchor with PSNR = 30 + b * log10(R / 1000), b = 2 / log10(2): +2 dB per doubling of the rate.
ANCHOR = [(1000, 30.0), (2000, 32.0), (4000, 34.0), (8000, 36.0)]


def test_halved_rates_give_minus_50_percent_and_plus_2_db():
    test = [(r / 2, p) for r, p in ANCHOR]
    # at equal PSNR, log10(rate) is lower by log10(2) everywhere: 10**-log10(2) - 1 = -50 %
    assert bd_rate(ANCHOR, test) == pytest.approx(-50.0, abs=1e-9)
    # P_test(L) = P_anchor(L + log10 2) = P_anchor(L) + b * log10(2) = P_anchor(L) + 2 dB
    assert bd_psnr(ANCHOR, test) == pytest.approx(2.0, abs=1e-9)
    # and the other way round
    assert bd_rate(test, ANCHOR) == pytest.approx(100.0, abs=1e-9)
    assert bd_psnr(test, ANCHOR) == pytest.approx(-2.0, abs=1e-9)


def test_identical_curves_give_zero():
    assert bd_rate(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-9)


def test_two_point_parallel_lines():
    # anchor: log10 R = 2 + (P - 30) / 10; test: log10 R = 2 + (P - 32) / 10 (2 dB better everywhere).
    # PSNR overlap [32, 40]: the log-rate difference is -0.2 everywhere, so BD-rate = 10**-0.2 - 1.
    # log-rate overlap [2, 3]: P_test - P_anchor = 2 dB everywhere.
    anchor = [(100, 30.0), (1000, 40.0)]
    test = [(100, 32.0), (1000, 42.0)]
    assert bd_rate(anchor, test) == pytest.approx((10**-0.2 - 1) * 100, abs=1e-9)  # -36.904 %
    assert bd_psnr(anchor, test) == pytest.approx(2.0, abs=1e-9)


def test_two_point_lines_with_different_slopes():
    # anchor: log10 R = 1 + (P - 30) / 10 on P in [30, 40]  (R = 10 .. 100)
    # test:   log10 R = 1 + (P - 30) / 5  on P in [30, 40]  (R = 10 .. 1000)
    # difference (P - 30) / 10, mean over [30, 40] = 0.5  ->  BD-rate = 10**0.5 - 1 = +216.23 %
    # As PSNR of L: anchor 30 + 10 (L - 1) on [1, 2], test 30 + 5 (L - 1) on [1, 3];
    # overlap [1, 2], difference -5 (L - 1), mean -2.5 dB.
    anchor = [(10, 30.0), (100, 40.0)]
    test = [(10, 30.0), (1000, 40.0)]
    assert bd_rate(anchor, test) == pytest.approx((math.sqrt(10) - 1) * 100, abs=1e-9)
    assert bd_psnr(anchor, test) == pytest.approx(-2.5, abs=1e-9)


def test_cubic_fit_is_exact_on_cubic_data():
    # anchor: log10 R = 3 + 0.1 t, test: log10 R = 3 + 0.1 t - 0.001 t**3, t = P - 30 in [0, 10].
    # 5 points each: the cubic least-squares fit recovers both exactly. Mean difference:
    # -0.001 * (10**4 / 4) / 10 = -0.25  ->  BD-rate = 10**-0.25 - 1 = -43.766 %
    ts = [0.0, 2.5, 5.0, 7.5, 10.0]
    anchor = [(10 ** (3 + 0.1 * t), 30 + t) for t in ts]
    test = [(10 ** (3 + 0.1 * t - 0.001 * t**3), 30 + t) for t in ts]
    assert bd_rate(anchor, test, method="polyfit") == pytest.approx((10**-0.25 - 1) * 100, abs=1e-7)


def test_pchip_stays_within_the_points_where_the_polynomial_fit_dips():
    """The three NeRFCodec points of lego_200 (flat: +0.8 dB for +25% bytes) against a straight
    anchor. The difference of log-rates is monotone between the points, so a shape-preserving
    interpolation must give a BD-rate between the smallest and largest pointwise differences; the
    quadratic through the three points dips below the lowest rate between them and does not."""
    test = [(103825, 24.4327), (118182, 25.1489), (129376, 25.2588)]
    anchor = [(10 ** (4.8 + 0.1 * (p - 24)), p) for p in (24.0, 26.0)]  # log10 R linear in PSNR
    diffs = [math.log10(r) - (4.8 + 0.1 * (p - 24)) for r, p in test]
    lo, hi = ((10 ** min(diffs) - 1) * 100, (10 ** max(diffs) - 1) * 100)
    assert lo <= bd_rate(anchor, test) <= hi
    assert not lo <= bd_rate(anchor, test, method="polyfit") <= hi


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        bd_rate(ANCHOR, ANCHOR, method="spline")


def test_accepts_rdpoints_in_any_order():
    test = [RDPoint(f"q{i}", int(r / 2), p) for i, (r, p) in enumerate(ANCHOR)]
    shuffled = list(reversed(test))
    assert bd_rate(ANCHOR, shuffled) == pytest.approx(-50.0, abs=1e-9)
    assert bd_psnr(random.Random(0).sample(ANCHOR, 4), shuffled) == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize(
    "anchor, test, message",
    [
        (ANCHOR, [(10**5, 40.0), (10**6, 42.0)], "do not overlap"),  # neither PSNR nor rate overlap
        (ANCHOR, [(1000, 35.0)], "at least 2 points"),
        ([(0, 30.0), (1000, 35.0)], ANCHOR, "non-positive rate"),
        (ANCHOR, [(1000, 30.0), (-5, 35.0)], "non-positive rate"),
        (ANCHOR, [(1000, float("nan")), (2000, 35.0)], "non-finite"),
    ],
)
def test_errors(anchor, test, message):
    for fn in (bd_rate, bd_psnr):
        with pytest.raises(ValueError, match=message):
            fn(anchor, test)


def test_log_rate_ranges_must_overlap_for_bd_psnr():
    # PSNR ranges overlap, rate ranges do not
    with pytest.raises(ValueError, match="log-rate ranges do not overlap"):
        bd_psnr(ANCHOR, [(10**5, 31.0), (2 * 10**5, 35.0)])


def test_pareto_front():
    pts = [
        RDPoint("a", 100, 30.0),
        RDPoint("b", 200, 29.0),  # dominated by a
        RDPoint("c", 300, 35.0),
        RDPoint("d", 300, 34.0),  # same bytes as c, lower PSNR
        RDPoint("e", 50, 25.0),
        RDPoint("f", 400, 35.0),  # same PSNR as c, more bytes
    ]
    assert [p.name for p in pareto_front(pts)] == ["e", "a", "c"]
    assert pareto_front([(2, 1.0), (1, 2.0)]) == [(1, 2.0)]
    assert pareto_front([(1, 2.0), (1, 2.0)]) == [(1, 2.0)]
    assert pareto_front([]) == []
