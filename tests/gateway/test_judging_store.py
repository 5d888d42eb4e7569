"""The judging tables in a real SQLite file: pairs, verdicts, decisions, and resuming the ladder after a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from homegrown.gateway.judge import Verdict
from homegrown.gateway.judging_config import PromotionConfig
from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.promotion import Evidence, Promoter, decide
from homegrown.gateway.report import RoutePair, pair_summary, route_costs
from homegrown.gateway.signals import Answer, signals
from homegrown.gateway.store import RequestLog, RequestRecord

CFG = PromotionConfig(ladder=[0, 50, 100], min_judged=2, min_requests=2, window=2, evaluate_every=2)


def test_pairs_verdicts_and_the_resumed_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.sqlite'}"
    store = JudgingStore(RequestLog(url).engine)
    cand, inc = Answer("GOOD", "stop", 0.2), Answer("meh", "length", 0.1)
    ids = [store.add_pair(f"req_{i}", "chat", datetime.now(UTC), [{"role": "user", "content": "q"}], "provider",
                          ("inhouse", cand), ("provider", inc), signals(cand, inc)) for i in range(3)]
    store.set_verdict(ids[0], Verdict("win", True, "A", "B", False))
    store.set_verdict(ids[1], Verdict("tie", False, "A", "A", True))
    assert store.outcome_counts("chat") == {"win": 1, "tie": 1, "unjudged": 1}
    summary = pair_summary(store.pairs("chat"))
    assert (summary["flips"], summary["win"]["win_rate"]) == (1, 0.75)
    assert summary["signal_rates"]["incumbent_truncated"] == 1.0

    assert store.current_step("chat") is None
    store.add_decision("chat", decide(CFG, 0, Evidence(wins=20, requests=20)))
    store.add_decision("chat", decide(CFG, 1, Evidence(wins=20, requests=20)))
    assert [d.action for d in store.decisions("chat")] == ["promote", "promote"]
    # a restarted gateway opens the same database and resumes where the newest decision left the route
    reopened = JudgingStore(RequestLog(url).engine)
    assert reopened.current_step("chat") == 2
    weights: list[dict] = []
    Promoter("chat", CFG, "inhouse", "provider", weights.append, reopened.add_decision,
             step=reopened.current_step("chat") or 0)
    assert weights == [{"provider": 0.0, "inhouse": 100.0}]


def test_cost_of_the_current_split() -> None:
    now = datetime.now(UTC)
    records = [RequestRecord(id=f"r{i}", created_at=now, route="chat", endpoint="chat", stream=False, status=200,
                             latency_s=0.1, backend=b, cost_usd=c)
               for i, (b, c) in enumerate([("provider", 0.002), ("provider", 0.004), ("inhouse", 0.0005)])]
    costs = route_costs(records, RoutePair("chat", "inhouse", "provider"), 25)
    assert costs["per_1k_all_provider"] == 1000 * 0.003
    assert costs["per_1k_current"] == 1000 * (0.75 * 0.003 + 0.25 * 0.0005)
    assert costs["saving_per_1k"] == costs["per_1k_all_provider"] - costs["per_1k_current"]
    assert route_costs(records[2:], RoutePair("chat", "inhouse", "provider"), 25)["saving_per_1k"] is None
