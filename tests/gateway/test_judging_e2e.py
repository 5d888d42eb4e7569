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
import pytest
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
    gw = gateway(_config(provider.base_url, inhouse.base_url, judge.base_url))
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
    moves = store.decisions("chat", changes_only=True)
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
    last = store.decisions("chat", changes_only=True)[-1]
    assert (last.action, last.from_percent, last.to_percent) == ("rollback", 100, 50)
    assert "win rate upper bound" in last.reasons[0]

    # then it fails outright: the client never sees it (fallback), the ladder does, and steps back again
    inhouse.control(mode="fail")
    while _percent(gw) == 50:
        assert sent < 1200, "no rollback after the candidate started failing"
        _ask(client, sent)
        sent += 1
    last = store.decisions("chat", changes_only=True)[-1]
    assert (last.action, last.from_percent, last.to_percent) == ("rollback", 50, 25)
    assert any("error rate" in r for r in last.reasons)


def test_shadow_never_changes_or_delays_the_clients_answer(gateway, llm_stubs) -> None:
    provider = llm_stubs("--prefix", "provider says")
    inhouse = llm_stubs("--prefix", "GOOD inhouse says")
    judge = llm_stubs("--role", "judge")
    inhouse.control(mode="hold")  # the shadow's answer is kept back until the test releases it
    gw = gateway(_config(provider.base_url, inhouse.base_url, judge.base_url, promotion=False))
    client = openai.OpenAI(base_url=gw.v1, api_key="none", max_retries=0)
    store = _store(gw.db)

    answer = _ask(client, 1)
    client_done = datetime.now(UTC)
    # the client has its answer — the provider's, untouched — while the shadow call is still being held
    assert answer == "provider says question 1"
    assert wait_for(lambda: inhouse.requests() == 1, what="the shadow call to reach the candidate")
    assert store.pairs("chat") == []
    inhouse.release()
    pair = wait_for(lambda: store.pairs("chat"), what="the pair to be stored")[0]
    assert pair.stored_at.replace(tzinfo=UTC) > client_done
    assert pair.client_done_at.replace(tzinfo=UTC) <= client_done
    assert (pair.live_backend, pair.incumbent_text, pair.candidate_text) == (
        "provider", "provider says question 1", "GOOD inhouse says question 1")
    judged = wait_for(lambda: store.pairs("chat")[0].outcome, what="the verdict")
    assert judged == "win"
    assert judge.requests() == 2  # both orders


def test_overload_drops_mirrors_and_counts_them(gateway, llm_stubs) -> None:
    provider = llm_stubs("--prefix", "p")
    inhouse = llm_stubs("--prefix", "c")
    judge = llm_stubs("--role", "judge")
    inhouse.control(mode="hold")
    gw = gateway(_config(provider.base_url, inhouse.base_url, judge.base_url, promotion=False,
                         max_concurrency=1, max_queue=1))
    client = openai.OpenAI(base_url=gw.v1, api_key="none", max_retries=0)
    for i in range(5):
        assert _ask(client, i) == f"p question {i}"  # every client request answered at once
    shadow = gw.state()["judging"]["chat"]["shadow"]
    assert (shadow["mirrored"], shadow["dropped"], shadow["pending"]) == (2, 3, 2)  # 1 in flight + 1 waiting
    inhouse.release()
    store = _store(gw.db)
    wait_for(lambda: len(store.pairs("chat")) == 2, what="both accepted mirrors to be stored")


def test_opted_out_keys_are_not_shadowed(gateway, llm_stubs, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = llm_stubs("--prefix", "p")
    inhouse = llm_stubs("--prefix", "c")
    judge = llm_stubs("--role", "judge")
    cfg = _config(provider.base_url, inhouse.base_url, judge.base_url, promotion=False)
    cfg["keys"] = [{"name": "private", "key_env": "GW_PRIVATE", "log": False},
                   {"name": "normal", "key_env": "GW_NORMAL"}]
    gw = gateway(cfg, env={"GW_PRIVATE": "sk-private", "GW_NORMAL": "sk-normal"})
    private = openai.OpenAI(base_url=gw.v1, api_key="sk-private", max_retries=0)
    normal = openai.OpenAI(base_url=gw.v1, api_key="sk-normal", max_retries=0)
    _ask(private, 1)
    _ask(normal, 2)
    store = _store(gw.db)
    pairs = wait_for(lambda: store.pairs("chat"), what="the normal key's pair")
    wait_for(lambda: gw.state("sk-normal")["judging"]["chat"]["shadow"]["judged"] == 1, what="the verdict")
    assert [p.incumbent_text for p in store.pairs("chat")] == ["p question 2"] == [p.incumbent_text for p in pairs]
    assert inhouse.requests() == 1
