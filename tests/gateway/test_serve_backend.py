"""A real `homegrown serve` behind the gateway, driven by the official `openai` client (sync, async,
streaming), and the gateway's own errors in the same shapes `homegrown serve` answers with."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.gateway.conftest import FORCED_TOKEN, backend

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def fronted(defaults_server, stubs, gateway):
    """Route `assistant`: the real server (its replies are FORCED_TOKEN repeated), falling back to stub B."""
    b = stubs("B")
    gw = gateway({"backends": {"home": backend(defaults_server.base_url, defaults_server.model,
                                               api_key_env="HOME_KEY", context_length=128),
                               "b": backend(b.url, context_length=100_000)},
                  "routes": {"assistant": {"backends": [{"backend": "home"}], "fallback": ["b"]}}},
                 env={"HOME_KEY": defaults_server.api_key})
    return gw, defaults_server


def test_openai_client_sync_async_and_streaming_through_the_gateway(fronted) -> None:
    gw, _ = fronted
    sync = openai.OpenAI(base_url=gw.v1, api_key="none", max_retries=0)
    reply = sync.chat.completions.create(model="assistant", messages=MSG, max_tokens=5)
    assert reply.choices[0].message.content == FORCED_TOKEN * 5 and reply.model == "assistant"
    assert reply.usage.completion_tokens == 5
    text = sync.completions.create(model="assistant", prompt="The", max_tokens=4)
    assert text.choices[0].text == FORCED_TOKEN * 4

    chunks = list(sync.chat.completions.create(model="assistant", messages=MSG, max_tokens=6, stream=True,
                                               stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FORCED_TOKEN * 6
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    plain = list(sync.chat.completions.create(model="assistant", messages=MSG, max_tokens=3, stream=True))
    assert all(c.choices and c.usage is None for c in plain)  # no usage chunk unless the client asked

    async def concurrently() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.v1, api_key="none", max_retries=0)
        replies = await asyncio.gather(*(client.chat.completions.create(model="assistant", messages=MSG,
                                                                        max_tokens=3) for _ in range(4)))
        stream = await client.chat.completions.create(model="assistant", messages=MSG, max_tokens=3, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return [r.choices[0].message.content for r in replies] + [streamed]

    assert asyncio.run(concurrently()) == [FORCED_TOKEN * 3] * 5
    assert [m.id for m in sync.models.list()] == ["assistant"]


def test_a_prompt_too_long_for_the_server_goes_to_the_longer_context_backend(fronted) -> None:
    gw, _ = fronted
    r = httpx.post(f"{gw.v1}/chat/completions", timeout=120, json={
        "model": "assistant", "messages": [{"role": "user", "content": "word " * 400}], "max_tokens": 2})
    assert r.status_code == 200 and r.headers["x-homegrown-backend"] == "b"


def test_errors_have_the_shapes_homegrown_serve_answers_with(fronted) -> None:
    gw, srv = fronted
    cases = [("POST", "/chat/completions", b"{not json"), ("POST", "/chat/completions", b'{"model": "nope", '
                                                           b'"messages": [{"role": "user", "content": "x"}]}'),
             ("GET", "/no-such-path", None)]
    for method, path, body in cases:
        ours = httpx.request(method, f"{gw.v1}{path}", content=body, timeout=30,
                             headers={"Content-Type": "application/json"})
        theirs = httpx.request(method, f"{srv.base_url}/v1{path}", content=body, timeout=30,
                               headers={"Content-Type": "application/json", **srv.headers()})
        assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
        assert set(ours.json()["error"]) == set(theirs.json()["error"]) == {"message", "type", "param", "code"}
        assert ours.json()["error"]["code"] == theirs.json()["error"]["code"]
    # A field the server does not take is refused by the server, by name, and relayed as it said.
    r = httpx.post(f"{gw.v1}/chat/completions", timeout=30,
                   json={"model": "assistant", "messages": MSG, "frobnicate": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frobnicate"
    assert r.headers["x-homegrown-backend"] == "home"  # relayed, not retried on the fallback
