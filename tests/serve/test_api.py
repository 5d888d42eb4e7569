"""Raw HTTP against the real server: error shapes, auth on every guarded path, SSE framing, health, metrics."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.serve.conftest import Server

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=60) as c:
        yield c


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["message"]
    return body["error"]


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"text"', b"", b'{"model": 5, "messages": []}',
    b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999999999999999999999}',
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}',
])
def test_malformed_chat_bodies_are_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400)


def test_wrong_field_is_named(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "x", "top_p": 7})
    assert assert_openai_error(r, 400)["param"] == "top_p"


def test_huge_max_tokens_names_both_numbers(http: httpx.Client, server: Server) -> None:
    r = http.post("/v1/completions", json={"model": server.model, "prompt": "hello", "max_tokens": 1000})
    message = assert_openai_error(r, 400)["message"]
    assert "128" in message and "1000" in message


def test_unknown_model_and_path_are_404(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert assert_openai_error(r, 404)["code"] == "model_not_found"
    assert_openai_error(http.get("/v1/no/such/path"), 404)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("GET", "/api/conversations"),
])
def test_every_guarded_path_needs_the_key(server: Server, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {server.api_key}"}):
        r = httpx.request(method, server.base_url + path, headers=headers, json={}, timeout=30)
        assert assert_openai_error(r, 401)["code"] == "invalid_api_key"


def test_health_and_metrics_are_open(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    for name in ("homegrown_requests_running", "homegrown_requests_waiting", "homegrown_generation_tokens_total",
                 "homegrown_generation_tokens_per_second", "homegrown_time_to_first_token_seconds_count",
                 "homegrown_time_per_output_token_seconds_count"):
        metric(text, name)


def sse_events(raw: bytes) -> list[str]:
    """Split an SSE body exactly as OpenAI frames it: `data: <payload>\\n\\n`, nothing else."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: "):] for e in events]


def test_chat_sse_framing(http: httpx.Client, server: Server) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "n": 2,
            "temperature": 1.0, "seed": 4, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    first = chunks[0]["choices"]
    assert [c["delta"] for c in first] == [{"role": "assistant", "content": ""}] * 2
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[1:-1] if c["choices"][0]["index"] == index]
        assert [m["finish_reason"] is not None for m in mine] == [False] * (len(mine) - 1) + [True]
        assert all(c["usage"] is None for c in chunks[:-1])
    plain = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    streamed = ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]
                        if c["choices"][0]["index"] == i) for i in (0, 1)]
    assert streamed == [c["message"]["content"] for c in plain["choices"]]
    assert usage_chunk["usage"] == plain["usage"]


def test_completion_stream_without_usage(http: httpx.Client, server: Server) -> None:
    body = {"model": server.model, "prompt": "Once", "max_tokens": 6, "stream": True, "logprobs": 2}
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r.read())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    lps = [lp for c in chunks for lp in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert lps and all(v <= 0 for v in lps)


def test_serve_without_a_checkpoint_is_a_one_line_error(cli, tmp_path) -> None:
    r = cli("serve", str(tmp_path / "missing"), "--port", "1")
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
