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
After any step change the evidence starts afresh: each step is earned on traffic at that step. Shadow
observations arrive late (the mirror call and the judge run after the client's answer, behind a queue), so each
carries the promoter's `epoch` (its count of step changes) from when its request was answered; one from an
earlier epoch is counted apart as stale and is not evidence — otherwise the verdicts queued behind a rollback
would take a second step on traffic that was never served at the new one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from homegrown.errors import HomegrownError
from homegrown.gateway.judging_config import PromotionConfig
from homegrown.gateway.stats import WinRate, percentile

ACTIONS = ("promote", "rollback", "hold")


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


def weights_at(cfg: PromotionConfig, step: int, candidate: str, incumbent: str) -> dict[str, float]:
    """The route's backend weights (percent) at a ladder step."""
    share = cfg.ladder[step]
    return {incumbent: 100.0 - share, candidate: share}


SetWeights = Callable[[dict[str, float]], None]
"""The gateway's runtime hook for one route: replace its backend weights."""
Record = Callable[[str, Decision], None]
"""Stores a decision for a route (the SQL store's `add_decision`)."""


class Promoter:
    """The loop for one route: collects observations, decides every `evaluate_every`, applies step changes."""

    def __init__(self, route: str, cfg: PromotionConfig, candidate: str, incumbent: str, set_weights: SetWeights,
                 record: Record, step: int = 0) -> None:
        if not 0 <= step < len(cfg.ladder):
            raise HomegrownError(f"route {route!r}: promotion step {step} is outside the ladder {cfg.ladder}; "
                                 "was the ladder shortened? Delete the route's promotion_decisions to restart it")
        self.route, self.cfg, self._set_weights, self._record = route, cfg, set_weights, record
        self.candidate, self.incumbent = candidate, incumbent
        self.step = step
        self.epoch = 0
        """Step changes so far: shadow observations are tagged with it and count only within their epoch."""
        self.stale = 0
        """Observations that arrived after a step change from traffic served before it (not evidence)."""
        self._lock = threading.Lock()
        self._reset()
        self._set_weights(self.weights())

    def weights(self) -> dict[str, float]:
        return weights_at(self.cfg, self.step, self.candidate, self.incumbent)

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

    def record_call(self, backend: str, ok: bool, latency_s: float, epoch: int | None = None) -> Decision | None:
        """A finished call to the candidate (live, or shadow with the `epoch` of its request); other backends are
        ignored."""
        if backend != self.candidate:
            return None
        with self._lock:
            if self._is_stale(epoch):
                return None
            self._calls.append((ok, latency_s))
            return self._tick()

    def record_verdict(self, outcome: str, flipped: bool = False, epoch: int | None = None) -> Decision | None:
        """A judged pair: win / tie / loss (flipped ties kept apart for the evidence), unparseable or error;
        `epoch` is the promoter's epoch when the pair's request was answered."""
        with self._lock:
            if self._is_stale(epoch):
                return None
            self._verdicts.append("flip" if flipped and outcome == "tie" else outcome)
            return self._tick()

    def _is_stale(self, epoch: int | None) -> bool:
        if epoch is None or epoch == self.epoch:
            return False
        self.stale += 1
        return True

    def _tick(self) -> Decision | None:
        self._since_eval += 1
        if self._since_eval < self.cfg.evaluate_every:
            return None
        self._since_eval = 0
        decision = decide(self.cfg, self.step, self._evidence())
        self._record(self.route, decision)
        if decision.to_step != self.step:
            self.step = decision.to_step
            self.epoch += 1
            self._set_weights(self.weights())
            self._reset()
        return decision
