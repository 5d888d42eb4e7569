"""The real gateway process over stub providers on loopback: the split, stickiness, every fallback kind, the
streaming rule, and the circuit breaker opening and closing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import backend, wait_for

MSG = [{"role": "user", "content": "hello there"}]


def chat(base: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base}/chat/completions", json={"model": "r", "messages": MSG, **body}, timeout=60)



async def _split(v1: str, n: int, user: bool) -> Counter[str]:
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> str:
            async with limit:
                extra = {"user": f"user-{i}"} if user else {}
                r = await client.post(f"{v1}/chat/completions", json={"model": "r", "messages": MSG, **extra})
                assert r.status_code == 200, r.text
                return r.headers["x-homegrown-backend"]
        return Counter(await asyncio.gather(*(one(i) for i in range(n))))


def test_split_matches_the_configured_shares_and_sticky_users_stay(stubs, gateway) -> None:
    a, b = stubs("A"), stubs("B")
    gw = gateway({"backends": {"a": backend(a.url), "b": backend(b.url)},
                  "routes": {"r": {"backends": [{"backend": "a", "weight": 70}, {"backend": "b", "weight": 30}]}}})
    by_user = asyncio.run(_split(gw.v1, 1000, user=True))
    assert abs(by_user["b"] / 1000 - 0.30) <= 0.03, by_user
    assert asyncio.run(_split(gw.v1, 100, user=False)) == {"a": 70, "b": 30}  # round-robin: exact
    for user in ("alice", "bob", "carol", "dave"):
        seen = {chat(gw.v1, user=user).headers["x-homegrown-backend"] for _ in range(5)}
        seen |= {httpx.post(f"{gw.v1}/chat/completions", json={"model": "r", "messages": MSG},
                            headers={"X-Conversation-Id": user}, timeout=60).headers["x-homegrown-backend"]}
        assert len(seen) == 1, (user, seen)


def attempts(gw, route: str) -> dict[tuple[str, str], int]:
    return {(e["backend"], e["kind"]): e["count"] for e in gw.state()["attempt_errors"] if e["route"] == route}


@pytest.fixture(scope="module")
def faulty(stubs, gateway, refused_url):
    """Route r: stub A first, then stub B; route r429: stub C, then B; route dead: a refused address, then B;
    route ctx: a short-context stub, then a long one; route short: the short one alone. Small timeouts; breakers
    that do not open here."""
    a, b, c, locked = stubs("A"), stubs("B"), stubs("C"), stubs("D", "--api-key", "not-the-gateways")
    short, long_ = stubs("S", "--max-prompt-chars", "40"), stubs("L")
    quick = {"timeouts": {"first_token_s": 1, "total_s": 1, "read_s": 1}, "breaker": {"failures": 1000}}
    gw = gateway({"backends": {"a": backend(a.url, **quick), "b": backend(b.url), "c": backend(c.url),
                               "dead": backend(refused_url), "locked": backend(locked.url),
                               "short": backend(short.url, context_length=40),
                               "long": backend(long_.url, context_length=4000)},
                  "routes": {"r": {"backends": [{"backend": "a"}], "fallback": ["b"]},
                             "r429": {"backends": [{"backend": "c"}], "fallback": ["b"]},
                             "dead": {"backends": [{"backend": "dead"}], "fallback": ["b"]},
                             "locked": {"backends": [{"backend": "locked"}], "fallback": ["b"]},
                             "ctx": {"backends": [{"backend": "short"}], "fallback": ["long"]},
                             "short": {"backends": [{"backend": "short"}]}}})
    return gw, a, b, c


def test_each_failure_kind_falls_back_and_client_errors_do_not(faulty) -> None:
    gw, a, b, c = faulty
    for fault, kind in (("error500", "server_error"), ("garbage", "bad_response"), ("hang", "timeout")):
        before = attempts(gw, "r").get(("a", kind), 0)
        a.control([fault])
        r = chat(gw.v1)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "reply from B", fault
        assert attempts(gw, "r")[("a", kind)] == before + 1
    r = chat(gw.v1, model="dead")
    assert r.headers["x-homegrown-backend"] == "b" and attempts(gw, "dead") == {("dead", "connect"): 1}
    r = chat(gw.v1, model="locked")  # a 401 from a backend is our wrong key, not the client's: next backend
    assert r.headers["x-homegrown-backend"] == "b" and attempts(gw, "locked") == {("locked", "misconfigured"): 1}

    served_by_b = b.requests()
    a.control(["bad_request"])
    r = chat(gw.v1)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"  # relayed as the backend said
    assert b.requests() == served_by_b  # and not retried elsewhere

    long_prompt = [{"role": "user", "content": "x" * 100}]
    r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "ctx", "messages": long_prompt}, timeout=60)
    assert r.headers["x-homegrown-backend"] == "long" and attempts(gw, "ctx") == {("short", "context_length"): 1}
    r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "short", "messages": long_prompt}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"

    c.control(["rate429:3600"])
    assert chat(gw.v1, model="r429").headers["x-homegrown-backend"] == "b"
    served_by_c = c.requests()
    assert chat(gw.v1, model="r429").headers["x-homegrown-backend"] == "b"
    assert c.requests() == served_by_c  # Retry-After respected: C is left alone for the hour
    assert attempts(gw, "r429") == {("c", "rate_limited"): 1}


def stream_text(client: openai.OpenAI, model: str = "r") -> tuple[str, str | None]:
    """The streamed text, and the error the client raised mid-stream (None when it ended normally)."""
    text = []
    try:
        for chunk in client.chat.completions.create(model=model, messages=MSG, stream=True):
            text += [c.delta.content or "" for c in chunk.choices]
    except openai.APIError as e:
        return "".join(text), e.message
    return "".join(text), None


def test_streams_fall_back_before_the_first_token_and_end_with_an_error_event_after_it(faulty) -> None:
    gw, a, _, _ = faulty
    client = openai.OpenAI(base_url=gw.v1, api_key="none", max_retries=0)

    def errors(kind: str) -> float:
        return gw.metric("homegrown_gateway_backend_errors_total", route="r", backend="a", kind=kind)

    before = {kind: errors(kind) for kind in ("stream_interrupted", "timeout", "server_error")}
    for fault in ("error500", "garbage", "hang", "cut:0", "rate429:0"):
        a.control([fault])
        assert stream_text(client) == ("reply from B", None), fault
    a.control(["error500"])
    text = client.completions.create(model="r", prompt="once upon", stream=True)
    assert "".join(c.choices[0].text for c in text if c.choices) == "reply from B"
    for fault in ("cut:1", "stall:2"):
        a.control([fault])
        text, error = stream_text(client)
        assert error is not None and "mid-stream" in error, fault
        assert text == {"cut:1": "reply", "stall:2": "reply from"}[fault]  # what A sent, nothing invented
    # hang: no first token in time; cut:0 and the error event: server-side failures; cut:1 and stall:2 counted
    assert {kind: errors(kind) - n for kind, n in before.items()} == {"stream_interrupted": 2, "timeout": 1,
                                                                       "server_error": 2}


def test_breaker_opens_on_failures_and_closes_after_a_good_probe(stubs, gateway) -> None:
    a, b = stubs("A"), stubs("B")
    gw = gateway({"backends": {"a": backend(a.url, breaker={"failures": 3, "cooldown_s": 0.2}),
                               "b": backend(b.url)},
                  "routes": {"r": {"backends": [{"backend": "a"}], "fallback": ["b"]}}})
    a.control(default="error500")
    for _ in range(3):
        assert chat(gw.v1).headers["x-homegrown-backend"] == "b"
    # Open: A gets nothing while open, and stays out while it keeps failing its probes.
    state = gw.state()["backends"]["a"]
    assert state["opened"] == 1 and state["breaker"] in ("open", "half_open")
    wait_for(lambda: gw.breaker("a") == "half_open", what="cooldown")
    assert chat(gw.v1).headers["x-homegrown-backend"] == "b"  # the probe failed: open again
    assert gw.state()["backends"]["a"]["opened"] == 2
    a.control(default="ok")
    wait_for(lambda: gw.breaker("a") == "half_open", what="cooldown")
    assert chat(gw.v1).headers["x-homegrown-backend"] == "a"  # the probe succeeded
    assert gw.breaker("a") == "closed"
    assert gw.metric("homegrown_gateway_breaker_state", backend="a") == 0
