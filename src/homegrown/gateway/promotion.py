"""The promotion ladder: when to give the in-house model more of a route's traffic, and when to take it back.

`decide` is a pure function of the evidence (easy to test, easy to explain: every stored decision carries the
evidence and the reasons it was taken on). `Promoter` is the loop around it: it counts the candidate's calls and
the judge's verdicts per route, asks `decide` every `evaluate_every` new observations (request counts, not wall
clock: the same traffic gives the same decisions on any machine), stores each decision and applies a step change
to the route's weights through the gateway's runtime hook.

The rule, with `threshold` the least acceptable win rate of the candidate against the incumbent:
- **rollback** (one step down, or to the first step with `rollback_to: first`) when, over at least
  `min_requests` candidate calls, its error rate is above `max_error_rate` or its p95 latency above
  `max_p95_latency_s`; or when, over at least `min_judged` judged pairs, even the *upper* confidence bound of
  its win rate is below `threshold` (it is worse, with confidence);
- **promote** (one step up) when both minimum samples are met, errors and latency are inside their limits, and the
  *lower* confidence bound clears `threshold` (it is not worse, with confidence);
- **hold** otherwise — not enough evidence yet, or an interval that straddles the threshold. Evidence keeps
  accumulating (over the last `window` observations) until the interval settles on one side, so a candidate whose
  quality sits near the threshold does not flap up and down the ladder.
After any step change the evidence starts afresh: each step is earned on traffic at that step.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from homegrown.errors import HomegrownError
from homegrown.gateway.stats import WinRate, percentile

ACTIONS = ("promote", "rollback", "hold")


@dataclass
class PromotionConfig:
    """A route's ladder and the evidence each step needs (the `promotion:` section of a route in gateway.yaml)."""

    candidate: str
    """Backend name of the model being promoted (the in-house one)."""
    incumbent: str
    """Backend name of the model it replaces (the provider)."""
    ladder: list[float] = field(default_factory=lambda: [0.0, 5.0, 25.0, 50.0, 100.0])
    """Percent of the route's traffic the candidate serves at each step, increasing, from the first step."""
    threshold: float = 0.45
    """Least acceptable win rate (ties count half) against the incumbent; 0.5 is parity."""
    confidence: float = 0.95
    min_judged: int = 100
    """Judged pairs needed before the win rate can promote or roll back."""
    min_requests: int = 100
    """Candidate calls (live and shadow) needed before its error rate and latency count."""
    window: int = 1000
    """Evidence is the last `window` judged pairs and candidate calls since the last step change."""
    evaluate_every: int = 20
    """Ask for a decision after this many new observations (verdicts + candidate calls)."""
    max_error_rate: float = 0.02
    max_p95_latency_s: float = 10.0
    rollback_to: str = "previous"
    """`previous` (one step down) or `first` (straight back to the first step)."""

    def __post_init__(self) -> None:
        if len(self.ladder) < 2 or any(b <= a for a, b in zip(self.ladder, self.ladder[1:], strict=False)):
            raise HomegrownError(f"promotion ladder {self.ladder} must have at least two strictly increasing steps")
        if self.ladder[0] < 0 or self.ladder[-1] > 100:
            raise HomegrownError(f"promotion ladder {self.ladder} must stay within 0..100 (percent in-house)")
        if not 0 < self.threshold < 1 or not 0 < self.confidence < 1:
            raise HomegrownError("promotion threshold and confidence must both be in (0, 1)")
        if min(self.min_judged, self.min_requests, self.window, self.evaluate_every) < 1:
            raise HomegrownError("promotion min_judged, min_requests, window and evaluate_every must be >= 1")
        if self.window < max(self.min_judged, self.min_requests):
            raise HomegrownError("promotion window must be at least min_judged and min_requests")
        if self.rollback_to not in ("previous", "first"):
            raise HomegrownError(f"promotion rollback_to is {self.rollback_to!r}; use previous or first")
        if self.candidate == self.incumbent:
            raise HomegrownError("promotion candidate and incumbent must be different backends")


@dataclass(frozen=True)
class Evidence:
    """What the candidate did since the last step change (within the window)."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    flips: int = 0
    unparseable: int = 0
    judge_errors: int = 0
    requests: int = 0
    errors: int = 0
    p95_latency_s: float | None = None

    def win_rate(self, confidence: float) -> WinRate:
        return WinRate(self.wins, self.ties, self.losses, confidence)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self, confidence: float) -> dict:
        return {**asdict(self), "error_rate": self.error_rate, "win": self.win_rate(confidence).as_dict()}


@dataclass(frozen=True)
class Decision:
    action: str
    from_step: int
    to_step: int
    from_percent: float
    to_percent: float
    reasons: list[str]
    evidence: dict


def decide(cfg: PromotionConfig, step: int, ev: Evidence) -> Decision:
    """The decision at ladder index `step` on evidence `ev` (rules in the module docstring)."""
    win = ev.win_rate(cfg.confidence)
    low, high = win.interval
    enough_calls = ev.requests >= cfg.min_requests
    enough_judged = win.judged >= cfg.min_judged
    failures: list[str] = []
    if enough_calls and ev.error_rate is not None and ev.error_rate > cfg.max_error_rate:
        failures.append(f"error rate {ev.error_rate:.3f} > {cfg.max_error_rate} over {ev.requests} calls")
    if enough_calls and ev.p95_latency_s is not None and ev.p95_latency_s > cfg.max_p95_latency_s:
        failures.append(f"p95 latency {ev.p95_latency_s:.3f}s > {cfg.max_p95_latency_s}s over {ev.requests} calls")
    if enough_judged and high < cfg.threshold:
        failures.append(f"win rate upper bound {high:.3f} < {cfg.threshold} over {win.judged} judged pairs")
    if failures:
        to = 0 if cfg.rollback_to == "first" else max(step - 1, 0)
        action = "rollback" if to != step else "hold"
        if action == "hold":
            failures.append("already at the first step")
        return _decision(cfg, action, step, to, failures, ev)
    waiting = []
    if not enough_judged:
        waiting.append(f"{win.judged}/{cfg.min_judged} judged pairs")
    if not enough_calls:
        waiting.append(f"{ev.requests}/{cfg.min_requests} candidate calls")
    if waiting:
        return _decision(cfg, "hold", step, step, ["waiting for " + ", ".join(waiting)], ev)
    if low < cfg.threshold:
        return _decision(cfg, "hold", step, step, [f"win rate interval [{low:.3f}, {high:.3f}] straddles "
                                                   f"{cfg.threshold} over {win.judged} judged pairs"], ev)
    passed = [f"win rate lower bound {low:.3f} >= {cfg.threshold} over {win.judged} judged pairs",
              f"error rate {ev.error_rate:.3f} <= {cfg.max_error_rate} over {ev.requests} calls"]
    if ev.p95_latency_s is not None:
        passed.append(f"p95 latency {ev.p95_latency_s:.3f}s <= {cfg.max_p95_latency_s}s")
    if step == len(cfg.ladder) - 1:
        return _decision(cfg, "hold", step, step, [*passed, "already at the top step"], ev)
    return _decision(cfg, "promote", step, step + 1, passed, ev)


def _decision(cfg: PromotionConfig, action: str, step: int, to: int, reasons: list[str], ev: Evidence) -> Decision:
    return Decision(action, step, to, cfg.ladder[step], cfg.ladder[to], reasons, ev.as_dict(cfg.confidence))


def weights_at(cfg: PromotionConfig, step: int) -> dict[str, float]:
    """The route's backend weights (percent) at a ladder step."""
    share = cfg.ladder[step]
    return {cfg.incumbent: 100.0 - share, cfg.candidate: share}


SetWeights = Callable[[dict[str, float]], None]
"""The gateway's runtime hook for one route: replace its backend weights."""
Record = Callable[[str, Decision], None]
"""Stores a decision for a route (the SQL store's `add_decision`)."""


class Promoter:
    """The loop for one route: collects observations, decides every `evaluate_every`, applies step changes."""

    def __init__(self, route: str, cfg: PromotionConfig, set_weights: SetWeights, record: Record,
                 step: int = 0) -> None:
        if not 0 <= step < len(cfg.ladder):
            raise HomegrownError(f"promotion step {step} is outside the ladder {cfg.ladder}")
        self.route, self.cfg, self._set_weights, self._record = route, cfg, set_weights, record
        self.step = step
        self._lock = threading.Lock()
        self._reset()
        self._set_weights(weights_at(cfg, step))

    def _reset(self) -> None:
        self._verdicts: deque[str] = deque(maxlen=self.cfg.window)
        self._calls: deque[tuple[bool, float]] = deque(maxlen=self.cfg.window)
        self._since_eval = 0

    def evidence(self) -> Evidence:
        with self._lock:
            return self._evidence()

    def _evidence(self) -> Evidence:
        v = list(self._verdicts)
        ok_latencies = [lat for ok, lat in self._calls if ok]
        return Evidence(wins=v.count("win"), ties=v.count("tie") + v.count("flip"), losses=v.count("loss"),
                        flips=v.count("flip"), unparseable=v.count("unparseable"), judge_errors=v.count("error"),
                        requests=len(self._calls), errors=sum(1 for ok, _ in self._calls if not ok),
                        p95_latency_s=percentile(ok_latencies, 95))

    def record_call(self, backend: str, ok: bool, latency_s: float) -> Decision | None:
        """A finished call to the candidate (live or shadow); other backends are ignored."""
        if backend != self.cfg.candidate:
            return None
        with self._lock:
            self._calls.append((ok, latency_s))
            return self._tick()

    def record_verdict(self, outcome: str, flipped: bool = False) -> Decision | None:
        """A judged pair: win / tie / loss (flipped ties kept apart for the evidence), unparseable or error."""
        with self._lock:
            self._verdicts.append("flip" if flipped and outcome == "tie" else outcome)
            return self._tick()

    def _tick(self) -> Decision | None:
        self._since_eval += 1
        if self._since_eval < self.cfg.evaluate_every:
            return None
        self._since_eval = 0
        decision = decide(self.cfg, self.step, self._evidence())
        self._record(self.route, decision)
        if decision.to_step != self.step:
            self.step = decision.to_step
            self._set_weights(weights_at(self.cfg, self.step))
            self._reset()
        return decision
