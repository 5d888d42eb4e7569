"""The win-rate interval against a published table, and percentiles against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from homegrown.gateway.stats import WinRate, percentile, wilson_interval, z_for

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in Medicine 17:857-872,
# Table II, method 3 (Wilson score interval without continuity correction), 95 %.
NEWCOMBE = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0000),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), NEWCOMBE)
def test_wilson_matches_newcombe_table(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_z_is_the_normal_quantile() -> None:
    assert z_for(0.95) == pytest.approx(1.959963984540054, rel=1e-12)
    assert z_for(0.90) == pytest.approx(1.6448536269514722, rel=1e-12)


def test_no_evidence_is_the_whole_interval_and_bad_counts_are_refused() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_ties_count_half() -> None:
    all_ties = WinRate(wins=0, ties=40, losses=0)
    assert all_ties.rate == 0.5
    lo, hi = all_ties.interval
    assert lo == pytest.approx(wilson_interval(20, 40)[0])
    assert lo < 0.5 < hi
    # more ties, same rate, narrower interval: ties are evidence of parity, not missing evidence
    assert WinRate(0, 400, 0).interval[0] > lo
    assert WinRate(3, 2, 1).rate == pytest.approx(4 / 6)
    assert WinRate(0, 0, 0).rate is None


@pytest.mark.parametrize("q", [0, 5, 50, 95, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = np.random.default_rng(0).lognormal(size=37).tolist()
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
    assert percentile([], q) is None
