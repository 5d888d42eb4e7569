"""The promotion rule as a pure function of the evidence, and the counting loop that applies it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from homegrown.errors import HomegrownError
from homegrown.gateway.judging_config import PromotionConfig, ShadowConfig
from homegrown.gateway.promotion import Evidence, Promoter, decide, weights_at
from homegrown.gateway.stats import wilson_interval

CFG = PromotionConfig(ladder=[0, 5, 25, 50, 100], threshold=0.45,
                      min_judged=20, min_requests=20, window=40, evaluate_every=10, max_error_rate=0.1,
                      max_p95_latency_s=2.0)
GOOD_CALLS = {"requests": 20, "errors": 0, "p95_latency_s": 0.5}


def test_waits_for_the_minimum_sample() -> None:
    d = decide(CFG, 1, Evidence(wins=19, **GOOD_CALLS))
    assert (d.action, d.to_step) == ("hold", 1)
    assert d.reasons == ["waiting for 19/20 judged pairs"]
    d = decide(CFG, 1, Evidence(wins=30, requests=5))
    assert d.action == "hold" and "5/20 candidate calls" in d.reasons[0]


def test_promotes_only_when_the_lower_bound_clears() -> None:
    # 15 of 20 → Wilson lower bound 0.531 ≥ 0.45: up one step
    assert wilson_interval(15, 20)[0] == pytest.approx(0.5313, abs=1e-4)
    d = decide(CFG, 1, Evidence(wins=15, losses=5, **GOOD_CALLS))
    assert (d.action, d.from_percent, d.to_percent) == ("promote", 5, 25)
    assert d.evidence["win"]["low"] == pytest.approx(0.5313, abs=1e-4)
    # 12 of 20 → [0.387, 0.781]: straddles the threshold, hold and gather more
    d = decide(CFG, 1, Evidence(wins=12, losses=8, **GOOD_CALLS))
    assert d.action == "hold" and "straddles" in d.reasons[0]


def test_parity_promotes_once_the_interval_is_tight() -> None:
    assert decide(CFG, 0, Evidence(ties=20, **GOOD_CALLS)).action == "hold"  # [0.30, 0.70]
    assert decide(CFG, 0, Evidence(ties=400, **GOOD_CALLS)).action == "promote"  # [0.45, 0.55]... just clears
    assert wilson_interval(200, 400)[0] >= 0.45


@pytest.mark.parametrize(("ev", "why"), [
    (Evidence(wins=2, losses=18, **GOOD_CALLS), "upper bound"),
    (Evidence(wins=20, requests=20, errors=3, p95_latency_s=0.5), "error rate"),
    (Evidence(wins=20, requests=20, errors=0, p95_latency_s=2.5), "p95 latency"),
])
def test_rolls_back_one_step_on_failure(ev: Evidence, why: str) -> None:
    d = decide(CFG, 3, ev)
    assert (d.action, d.from_percent, d.to_percent) == ("rollback", 50, 25)
    assert why in d.reasons[0]


def test_rollback_to_first_and_the_ends_of_the_ladder() -> None:
    failing = Evidence(wins=20, requests=20, errors=20)
    first = CFG.model_copy(update={"rollback_to": "first"})
    assert decide(first, 3, failing).to_percent == 0
    at_bottom = decide(CFG, 0, failing)
    assert at_bottom.action == "hold" and "already at the first step" in at_bottom.reasons
    at_top = decide(CFG, 4, Evidence(wins=20, **GOOD_CALLS))
    assert at_top.action == "hold" and "already at the top step" in at_top.reasons


def test_too_few_calls_cannot_roll_back_on_errors() -> None:
    assert decide(CFG, 2, Evidence(wins=20, requests=5, errors=5)).action == "hold"


@pytest.mark.parametrize("bad", [{"ladder": [0]}, {"ladder": [0, 50, 25]}, {"ladder": [0, 150]},
                                 {"threshold": 1.5}, {"min_judged": 0}, {"rollback_to": "zero"},
                                 {"window": 5}, {"min_judgd": 5}])
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        PromotionConfig.model_validate({**CFG.model_dump(), **bad})


def test_shadow_pair_must_be_two_backends() -> None:
    with pytest.raises(ValidationError, match="different backends"):
        ShadowConfig(candidate="inhouse", incumbent="inhouse")


def test_a_step_outside_the_ladder_is_refused() -> None:
    with pytest.raises(HomegrownError, match="outside the ladder"):
        Promoter("chat", CFG, "inhouse", "provider", lambda w: None, lambda r, d: None, step=7)


def test_promoter_climbs_to_the_top_and_rolls_back_by_counts() -> None:
    weights: list[dict] = []
    decisions: list = []
    p = Promoter("chat", CFG, "inhouse", "provider", weights.append, lambda route, d: decisions.append((route, d)))
    assert weights == [weights_at(CFG, 0, "inhouse", "provider")] == [{"provider": 100.0, "inhouse": 0.0}]
    climbed = []
    for _ in range(200):
        p.record_call("provider", False, 9.9)  # the incumbent's calls are not evidence about the candidate
        p.record_call("inhouse", True, 0.1)
        p.record_verdict("win")
        climbed.append(p.step)
        if p.step == 4:
            break
    assert p.step == 4
    assert [w["inhouse"] for w in weights] == [0, 5, 25, 50, 100]
    assert all(route == "chat" for route, _ in decisions)
    # a decision every 10 observations; each step needs 20 fresh calls and verdicts, the holds say so
    assert [d.action for _, d in decisions].count("promote") == 4
    assert all(d.reasons[0].startswith("waiting for") for _, d in decisions if d.action == "hold")
    assert len(climbed) == 4 * 20
    # the candidate starts failing: its error rate alone steps it back down
    for _ in range(20):
        p.record_call("inhouse", False, 0.1)
    assert p.step == 3
    assert decisions[-1][1].action == "rollback"
    assert "error rate" in decisions[-1][1].reasons[0]
    assert weights[-1] == {"provider": 50.0, "inhouse": 50.0}


def test_observations_from_before_a_step_change_are_not_evidence_after_it() -> None:
    """Verdicts queued behind a rollback (their requests were served at the old step) must not take the next
    step: only observations tagged with the current epoch count."""
    decisions: list = []
    p = Promoter("chat", CFG, "inhouse", "provider", lambda w: None, lambda r, d: decisions.append(d), step=3)
    served_at = p.epoch
    for _ in range(20):
        p.record_call("inhouse", True, 0.1, served_at)
        p.record_verdict("loss", epoch=served_at)
    assert (p.step, p.epoch, decisions[-1].action) == (2, 1, "rollback")
    taken = len(decisions)
    for _ in range(40):  # the rest of the queue: losses too, but served at the old step
        assert p.record_call("inhouse", True, 0.1, served_at) is None
        assert p.record_verdict("loss", epoch=served_at) is None
    assert (p.step, p.stale, len(decisions)) == (2, 80, taken), "no decision, not even a hold, on stale ones"
    assert p.evidence() == Evidence()
    for _ in range(20):  # fresh traffic at the new step is evidence again
        p.record_call("inhouse", True, 0.1, p.epoch)
        p.record_verdict("loss", epoch=p.epoch)
    assert (p.step, decisions[-1].action) == (1, "rollback")
