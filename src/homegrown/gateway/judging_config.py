"""The `shadow:` and `promotion:` sections of a route and the gateway's `judge:` section, as strict pydantic models.

A route that shadows names its pair once, under `shadow:` (the candidate is the in-house model being tried, the
incumbent the provider it would replace); `promotion:` then moves the route's traffic between those two along a
ladder, on the evidence the shadow and the judge collect::

    judge: {backend: judge, max_tokens: 512}
    routes:
      assistant:
        backends: [{backend: provider, weight: 100}, {backend: inhouse, weight: 0}]
        shadow: {candidate: inhouse, incumbent: provider, percent: 20}
        promotion: {ladder: [0, 5, 25, 50, 100], threshold: 0.45, min_judged: 100, min_requests: 100}

Unknown keys are refused by name, like every other section of gateway.yaml; the defaults live here only.
"""

from __future__ import annotations

from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShadowConfig(_Strict):
    """Mirror a share of a route's finished requests to the other model of its pair, in the background."""

    candidate: str = Field(description="Backend being tried (the in-house model).")
    incumbent: str = Field(description="Backend it would replace (the provider).")
    percent: float = Field(100.0, ge=0, le=100, description="Share of finished requests mirrored.")
    max_concurrency: int = Field(4, ge=1, description="Mirrors in flight at once.")
    max_queue: int = Field(16, ge=0, description="Mirrors waiting for a slot; beyond that an offer is dropped "
                                                 "(and counted) so the shadow never competes with real traffic.")

    @model_validator(mode="after")
    def _pair(self) -> ShadowConfig:
        if self.candidate == self.incumbent:
            raise ValueError("candidate and incumbent must be different backends")
        return self


class PromotionConfig(_Strict):
    """The ladder and the evidence each step needs (rules in promotion.py)."""

    ladder: list[float] = Field(default_factory=lambda: [0.0, 5.0, 25.0, 50.0, 100.0],
                                description="Percent of the route the candidate serves at each step.")
    threshold: float = Field(0.45, gt=0, lt=1, description="Least acceptable win rate (ties count half); "
                                                           "0.5 is parity.")
    confidence: float = Field(0.95, gt=0, lt=1)
    min_judged: int = Field(100, ge=1, description="Judged pairs before the win rate can move the step.")
    min_requests: int = Field(100, ge=1, description="Candidate calls (live and shadow) before its error rate "
                                                     "and latency count.")
    window: int = Field(1000, ge=1, description="Evidence: the last `window` verdicts and calls since the last "
                                                "step change.")
    evaluate_every: int = Field(20, ge=1, description="Observations (verdicts + candidate calls) between decisions.")
    max_error_rate: float = Field(0.02, ge=0, le=1)
    max_p95_latency_s: float = Field(10.0, gt=0)
    rollback_to: str = Field("previous", pattern="^(previous|first)$",
                             description="`previous` (one step down) or `first` (back to the first step).")

    @model_validator(mode="after")
    def _ladder(self) -> PromotionConfig:
        steps = self.ladder
        if len(steps) < 2 or any(b <= a for a, b in pairwise(steps)):
            raise ValueError(f"ladder {steps} needs at least two strictly increasing steps")
        if steps[0] < 0 or steps[-1] > 100:
            raise ValueError(f"ladder {steps} must stay within 0..100 (percent in-house)")
        if self.window < max(self.min_judged, self.min_requests):
            raise ValueError("window must be at least min_judged and min_requests")
        return self


class JudgeConfig(_Strict):
    """Which backend judges shadow pairs, and how it is asked."""

    backend: str = Field(description="A backend under `backends:`; any OpenAI-compatible model.")
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    seed: int = Field(0, description="Seeds which order each pair is asked in first.")


class FlywheelConfig(_Strict):
    """`homegrown data from-gateway`: may the incumbent's logged answers become training data?

    Off by default, because a provider's terms may forbid training a model on its outputs: turn it on only when
    yours allow it (and your users agreed to their requests being kept for training)."""

    enabled: bool = Field(False, description="Allow exporting logged answers as training data.")
    backends: list[str] | None = Field(None, description="Backends whose answers may be exported (default: every "
                                                         "shadowed route's incumbent).")
    exclude_keys: list[str] = Field(default_factory=list, description="Client keys (by name) whose traffic is "
                                                                      "never exported.")
    opt_out: str | None = Field(None, description="Opt-out list (data/provenance.py format): `domain: ROUTE`, "
                                                  "`prefix: gateway://ROUTE/REQUEST_ID`, `sha256: …`.")
