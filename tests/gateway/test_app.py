"""The extension surface the shadow/judge/promotion side builds on, in-process over a real stub provider:
hooks see every finished request (after the client got its answer), and `set_weights` moves traffic at once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from homegrown.gateway.app import Gateway, create_app
from homegrown.gateway.config import parse_config
from homegrown.gateway.store import RequestRecord
from tests.gateway.conftest import backend


def test_hooks_see_each_request_and_set_weights_moves_the_split(stubs) -> None:
    a, b = stubs("A"), stubs("B")
    gw = Gateway(parse_config({"backends": {"a": backend(a.url), "b": backend(b.url)},
                               "routes": {"r": {"backends": [{"backend": "a", "weight": 1},
                                                             {"backend": "b", "weight": 0}]}}}))
    seen: list[tuple[RequestRecord, dict[str, Any], dict[str, Any] | None]] = []
    later: list[str] = []

    async def background(record: RequestRecord) -> None:
        later.append(record.backend or "")

    gw.add_hook(lambda record, body, response: seen.append((record, body, response)))
    gw.add_hook(lambda record, body, response: background(record))

    async def run() -> list[str]:
        await gw.start()
        transport = httpx.ASGITransport(app=create_app(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            async def ask() -> str:
                r = await client.post("/v1/chat/completions", json={"model": "r", "messages": [
                    {"role": "user", "content": "hi"}]})
                return r.headers["x-homegrown-backend"]
            served = [await ask() for _ in range(3)]
            gw.set_weights("r", {"a": 0, "b": 1})
            served += [await ask() for _ in range(3)]
        await gw.stop()  # awaits the hooks' background tasks
        return served

    assert asyncio.run(run()) == ["a"] * 3 + ["b"] * 3
    assert [r.backend for r, _, _ in seen] == ["a"] * 3 + ["b"] * 3 and later == ["a"] * 3 + ["b"] * 3
    record, body, response = seen[0]
    assert record.ok and record.route == "r" and record.completion_tokens == 3 and record.latency_s > 0
    assert body["messages"][0]["content"] == "hi"
    assert response["choices"][0]["message"]["content"] == "reply from A"
    assert gw.state()["routes"]["r"]["shares"] == {"a": 0.0, "b": 1.0}
