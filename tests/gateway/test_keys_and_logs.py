"""Client keys and budgets through the real gateway (429s in OpenAI's shape, as the `openai` client sees them),
and the request log: PII scrubbed before storage, nothing for opted-out keys, accounting in `gateway status`."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from tests.conftest import _run_cli
from tests.gateway.conftest import backend, wait_for

KEYS = {"GW_KEY_RATE": "k-rate", "GW_KEY_BUDGET": "k-budget", "GW_KEY_PRIVATE": "k-private", "GW_KEY_APP": "k-app"}
PII = "I am jane.doe@example.com, phone +44 20 7946 0958, card 4111 1111 1111 1111"


@pytest.fixture
def keyed(stubs, gateway):
    a = stubs("A")
    gw = gateway({"backends": {"a": backend(a.url, price={"input_per_1m": 1000, "output_per_1m": 2000})},
                  "routes": {"r": {"backends": [{"backend": "a"}]}},
                  "keys": [{"name": "rate", "key_env": "GW_KEY_RATE", "rate": {"requests": 3, "per_s": 3600}},
                           {"name": "budget", "key_env": "GW_KEY_BUDGET", "budget": {"tokens": 10, "per_s": 3600}},
                           {"name": "private", "key_env": "GW_KEY_PRIVATE", "log": False},
                           {"name": "app", "key_env": "GW_KEY_APP"}]}, env=KEYS)
    return gw


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def ask(gw, key: str, text: str = "hi") -> str:
    reply = client(gw, key).chat.completions.create(model="r", messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content


def test_keys_rate_and_token_budgets(keyed) -> None:
    gw = keyed
    with pytest.raises(openai.AuthenticationError):
        ask(gw, "wrong")
    for _ in range(3):
        ask(gw, "k-rate")
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, "k-rate")
    assert e.value.code == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) > 0
    ask(gw, "k-app")  # other keys are not affected

    ask(gw, "k-budget", "one two three four five six")  # 6 prompt + 3 reply tokens: 9 of 10
    ask(gw, "k-budget")  # still under: admitted, and now over
    with pytest.raises(openai.RateLimitError) as e:
        ask(gw, "k-budget")
    assert e.value.code == "token_budget_exceeded"
    assert e.value.body["type"] == "rate_limit_error"


def test_logs_are_scrubbed_opted_out_keys_leave_nothing_and_status_adds_up(keyed) -> None:
    gw = keyed
    ask(gw, "k-app", PII)
    with client(gw, "k-app").chat.completions.create(
            model="r", messages=[{"role": "user", "content": PII}], stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "reply from A"
    ask(gw, "k-private", PII)
    wait_for(lambda: gw.state("k-app")["log_rows_written"] == 2, what="the log rows")
    assert gw.state("k-app")["pairs"][0]["requests"] == 3  # the opted-out request is still accounted

    rows = sqlite3.connect(gw.db).execute("SELECT key_name, request_text, response_text, prompt_tokens, "
                                          "completion_tokens, cost_usd, stream FROM gateway_requests").fetchall()
    assert sorted(r[0] for r in rows) == ["app", "app"]
    raw = gw.db.read_bytes() + (gw.db.with_name(gw.db.name + "-wal").read_bytes()
                                if gw.db.with_name(gw.db.name + "-wal").exists() else b"")
    for secret in ("jane.doe@example.com", "7946 0958", "4111 1111 1111 1111"):
        assert secret.encode() not in raw
    assert all("<EMAIL>" in r[1] and r[2] == "reply from A" for r in rows)
    words = len(PII.split())  # the stub counts words as tokens
    assert all((r[3], r[4]) == (words, 3) for r in rows)  # the stream's too: the gateway asked for its usage
    assert rows[0][5] == pytest.approx((words * 1000 + 3 * 2000) / 1e6)

    result = _run_cli("gateway", "status", "--db", f"sqlite:///{gw.db}")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("r "))
    assert line.split()[:6] == ["r", "a", "2", "0", str(2 * words), "6"]
    metrics = httpx.get(f"{gw.base_url}/metrics", timeout=10).text
    assert 'homegrown_gateway_requests_total{backend="a",route="r",status="2xx"} 3.0' in metrics
    assert "homegrown_gateway_latency_p95_seconds" in metrics
    assert gw.stop() == 0  # SIGTERM drains and exits cleanly
