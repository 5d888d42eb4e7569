"""Shadow, judge and promotion through the real `homegrown gateway` process, stub backends and a stub judge.

Everything is driven by request counts: the ladder needs 8 fresh judged pairs and 8 candidate calls per step,
a decision is taken every 8 observations, and each test sends requests until the state it waits for is reached
(bounded by a request count, never by a clock).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
from conftest import backend, wait_for

from homegrown.gateway.judging_store import JudgingStore
from homegrown.gateway.store import RequestLog

LADDER = [0, 25, 50, 100]


def _config(provider: str, inhouse: str, judge: str, promotion: bool = True, **shadow: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "backends": [{"backend": "provider", "weight": 100}, {"backend": "inhouse", "weight": 0}],
        "sticky": False,
        "shadow": {"candidate": "inhouse", "incumbent": "provider", "percent": 100, "max_concurrency": 4,
                   "max_queue": 64, **shadow}}
    if promotion:
        route["promotion"] = {"ladder": LADDER, "threshold": 0.45, "min_judged": 8, "min_requests": 8,
                              "window": 8, "evaluate_every": 8, "max_error_rate": 0.25, "max_p95_latency_s": 600}
    return {"backends": {"provider": backend(provider, "gpt-stub"), "inhouse": backend(inhouse, "small"),
                         "judge": backend(judge, "judge-stub")},
            "routes": {"chat": route}, "judge": {"backend": "judge"},
            # each failure is evidence here; the breaker would hide the candidate's failures from the ladder
            "breaker": {"failures": 1000, "cooldown_s": 1}}


def _store(db: Path) -> JudgingStore:
    return JudgingStore(RequestLog(f"sqlite:///{db}").engine)


def _ask(client: openai.OpenAI, i: int) -> str:
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"question {i}"}])
    return reply.choices[0].message.content or ""


def _percent(gw) -> float:
    return gw.state()["judging"]["chat"]["promotion"]["percent"]


def test_ladder_climbs_to_the_top_then_rolls_back_when_the_candidate_loses_and_fails(gateway, llm_stubs) -> None:
    provider = llm_stubs("--prefix", "plain answer to")
    inhouse = llm_stubs("--prefix", "GOOD answer to")  # the stub judge prefers the answer holding GOOD
    judge = llm_stubs("--role", "judge", "--marker", "GOOD")
    # a short shadow queue: after each step change the verdicts still queued are stale (not evidence), so a long
    # queue would only make every step wait for it to drain
    gw = gateway(_config(provider.base_url, inhouse.base_url, judge.base_url, max_queue=8))
    client = openai.OpenAI(base_url=gw.v1, api_key="none", max_retries=0)
    store = _store(gw.db)
    assert _percent(gw) == 0

    sent = 0
    for target in LADDER[1:]:
        while _percent(gw) < target:
            assert sent < 400, f"stuck below {target}% after {sent} requests"
            answer = _ask(client, sent)
            assert answer.endswith(f"question {sent}")  # whoever served it, the client got a real answer
            sent += 1
    moves = wait_for(lambda: (m := store.decisions("chat", changes_only=True)) and len(m) == 3 and m,
                     what="the three promotions to be stored")
    assert [(d.action, d.from_percent, d.to_percent) for d in moves] == [
        ("promote", 0, 25), ("promote", 25, 50), ("promote", 50, 100)]
    for d in moves:
        win = d.evidence["win"]
        assert win["judged"] >= 8 and win["low"] >= 0.45 and d.evidence["requests"] >= 8
    assert gw.state()["routes"]["chat"]["shares"] == {"provider": 0.0, "inhouse": 1.0}

    # the candidate starts losing: the provider's answers now carry the marker, the in-house ones do not
    provider.control(prefix="GOOD plain answer to")
    inhouse.control(prefix="worse answer to")
    while _percent(gw) == 100:
        assert sent < 800, "no rollback after the candidate started losing"
        _ask(client, sent)
        sent += 1
    last = wait_for(lambda: (m := store.decisions("chat", changes_only=True)) and len(m) == 4 and m[-1],
                    what="the rollback to be stored")
    assert (last.action, last.from_percent, last.to_percent) == ("rollback", 100, 50)
    assert "win rate upper bound" in last.reasons[0]

    # then it fails outright: the client never sees it (fallback), the ladder does, and steps back again
    inhouse.control(mode="fail")
    while _percent(gw) == 50:
        assert sent < 1200, "no rollback after the candidate started failing"
        _ask(client, sent)
        sent += 1
    last = wait_for(lambda: (m := store.decisions("chat", changes_only=True)) and len(m) == 5 and m[-1],
                    what="the second rollback to be stored")
    assert (last.action, last.from_percent, last.to_percent) == ("rollback", 50, 25)
    assert any("error rate" in r for r in last.reasons)


def test_shadow_never_delays_the_client_drops_under_overload_and_skips_opted_out_keys(gateway, llm_stubs) -> None:
    provider = llm_stubs("--prefix", "provider says")
    inhouse = llm_stubs("--prefix", "GOOD inhouse says")
    judge = llm_stubs("--role", "judge")
    inhouse.control(mode="hold")  # the shadow's answers are kept back until the test releases them
    cfg = _config(provider.base_url, inhouse.base_url, judge.base_url, promotion=False, max_concurrency=1,
                  max_queue=1)
    cfg["keys"] = [{"name": "private", "key_env": "GW_PRIVATE", "log": False},
                   {"name": "normal", "key_env": "GW_NORMAL"}]
    gw = gateway(cfg, env={"GW_PRIVATE": "sk-private", "GW_NORMAL": "sk-normal"})
    normal = openai.OpenAI(base_url=gw.v1, api_key="sk-normal", max_retries=0)
    private = openai.OpenAI(base_url=gw.v1, api_key="sk-private", max_retries=0)
    store = _store(gw.db)

    answer = _ask(normal, 1)
    client_done = datetime.now(UTC)
    # the client has its answer — the provider's, untouched — while the shadow call is still being held
    assert answer == "provider says question 1"
    assert wait_for(lambda: inhouse.requests() == 1, what="the shadow call to reach the candidate")
    assert store.pairs("chat") == []

    assert _ask(private, 2) == "provider says question 2"  # a key that opted out of logging is never mirrored
    for i in (3, 4, 5):  # one more fits the queue (1 in flight + 1 waiting); the rest are dropped, and counted
        assert _ask(normal, i) == f"provider says question {i}"
    shadow = gw.state("sk-normal")["judging"]["chat"]["shadow"]
    assert (shadow["mirrored"], shadow["dropped"], shadow["pending"]) == (2, 2, 2)
    assert gw.metric("homegrown_gateway_shadow_total", route="chat", result="dropped") == 2

    inhouse.release()
    wait_for(lambda: gw.state("sk-normal")["judging"]["chat"]["shadow"]["judged"] == 2, what="both verdicts")
    pairs = store.pairs("chat")
    assert [(p.live_backend, p.incumbent_text, p.candidate_text, p.outcome) for p in pairs] == [
        ("provider", f"provider says question {i}", f"GOOD inhouse says question {i}", "win") for i in (1, 3)]
    first = min(pairs, key=lambda p: p.incumbent_text)
    assert first.client_done_at.replace(tzinfo=UTC) <= client_done < first.stored_at.replace(tzinfo=UTC)
    assert inhouse.requests() == 2
    assert judge.requests() == 4  # both orders, both pairs
