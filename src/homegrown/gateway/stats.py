"""The statistics behind promotion: a pairwise win rate with its Wilson score interval, and latency percentiles.

Why Wilson: the win rate is a binomial proportion measured on small samples (tens of judged pairs per step of
the ladder), where the normal ("Wald") interval is too narrow and can leave [0, 1]; Wilson's score interval
keeps its coverage there and is a closed form (no bootstrap, so the same evidence always gives the same bound).

Ties count half a win and half a loss: the gateway asks "is the in-house answer at least as good as the
provider's?", and a candidate that ties every time is exactly as good (rate 0.5, with a narrowing interval),
not a candidate with no evidence. So the rate is (wins + ties / 2) / judged and n is every judged pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

DEFAULT_CONFIDENCE = 0.95


def z_for(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.95996… for 95 %."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for `successes` out of `n`; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    z = z_for(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    """Judged outcomes of the candidate against the incumbent, and the interval on its win rate."""

    wins: int
    ties: int
    losses: int
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float | None:
        """(wins + ties / 2) / judged, or None before the first judged pair."""
        return (self.wins + self.ties / 2) / self.judged if self.judged else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + self.ties / 2, self.judged, self.confidence)

    def as_dict(self) -> dict:
        low, high = self.interval
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses, "judged": self.judged,
                "win_rate": self.rate, "low": low, "high": high, "confidence": self.confidence,
                "interval": "wilson, ties count half"}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) with linear interpolation between order statistics (numpy's default);
    None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
