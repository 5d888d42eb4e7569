"""One OpenAI-compatible backend: an httpx client with the backend's key, timeouts and connection cap, its circuit
breaker, its price, and the classification of what went wrong.

A call returns the backend's answer, or raises:

* `BackendError(kind)` when the backend is at fault and another backend may do better — kinds: `connect`
  (refused, reset, DNS), `timeout` (connect, pool, first token, total, or between chunks), `rate_limited` (429;
  its Retry-After keeps the backend out of rotation until then), `server_error` (5xx), `bad_response` (not
  JSON, not the OpenAI shape, a stream without [DONE] or with an error event), `context_length` (the prompt
  does not fit this backend: a backend with a longer context may take it), `misconfigured` (401/403/404 from
  the backend: our key or model name is wrong, not the client's request);
* `UpstreamClientError` for any other 4xx: the client's request is wrong wherever it goes, so it is answered
  as the backend said, unchanged.

For other gateway modules (gwjudge: shadow calls, the judge): `await backend.complete("/chat/completions",
body)` returns the parsed JSON of a non-streaming call; `body["model"]` is set to the backend's own model. It
touches neither the breaker nor the accounting: the caller decides whether its calls count.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from homegrown.errors import HomegrownError
from homegrown.gateway.breaker import CircuitBreaker
from homegrown.gateway.config import BackendConfig, BreakerConfig

CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "context length", "too many tokens")


class BackendError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.status, self.retry_after, self.body = kind, message, status, retry_after, body


class UpstreamClientError(Exception):
    """A 4xx that is the client's fault: relayed unchanged."""

    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        super().__init__(f"backend answered {status}")
        self.status, self.body, self.headers = status, body, headers


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; the breaker still counts the failure


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or fallback)
    return fallback


def classify(response: httpx.Response, body_bytes: bytes) -> Exception:
    """An error status → BackendError (fall back) or UpstreamClientError (relay)."""
    status = response.status_code
    try:
        body: Any = json.loads(body_bytes)
    except ValueError:
        body = None
    message = _error_message(body, body_bytes[:200].decode("utf-8", "replace"))
    if status == 429:
        return BackendError("rate_limited", f"429: {message}", status, _retry_after(response), body)
    if status >= 500:
        return BackendError("server_error", f"{status}: {message}", status, body=body)
    if status in (401, 403, 404):
        return BackendError("misconfigured", f"{status}: {message}", status, body=body)
    code = str(body["error"].get("code") or "") if isinstance(body, dict) and isinstance(body.get("error"), dict) \
        else ""
    if status == 400 and (code == "context_length_exceeded" or any(h in message.lower() for h in CONTEXT_HINTS)):
        return BackendError("context_length", f"{status}: {message}", status, body=body)
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after",)}
    return UpstreamClientError(status, body if body is not None else {"error": {
        "message": message, "type": "invalid_request_error", "param": None, "code": None}}, headers)


def _transport_kind(e: Exception) -> str:
    return "timeout" if isinstance(e, httpx.TimeoutException) else "connect"


@dataclass
class Event:
    """One SSE data payload of a stream: a parsed chunk, or done=True for `[DONE]`."""

    chunk: dict[str, Any] | None = None
    done: bool = False


class UpstreamStream:
    """An open streaming response: `events()` yields parsed chunks, raising BackendError on garbage, an error
    event, a transport failure, or an end without [DONE]. `close()` releases the connection."""

    def __init__(self, backend: Backend, response: httpx.Response) -> None:
        self.backend, self.response = backend, response

    async def events(self) -> AsyncGenerator[Event, None]:
        data: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                    continue
                if line or not data:
                    continue  # comments, event:/id: fields, keep-alive blank lines
                payload, data = "\n".join(data), []
                if payload.strip() == "[DONE]":
                    yield Event(done=True)
                    return
                yield Event(chunk=self._parse(payload))
        except httpx.TransportError as e:
            raise BackendError(_transport_kind(e), f"{self.backend.name}: stream failed: "
                                                   f"{type(e).__name__}: {e}") from e
        raise BackendError("bad_response", f"{self.backend.name}: the stream ended without [DONE]")

    def _parse(self, payload: str) -> dict[str, Any]:
        try:
            chunk = json.loads(payload)
        except ValueError as e:
            raise BackendError("bad_response", f"{self.backend.name}: a stream chunk is not JSON: "
                                               f"{payload[:80]!r}") from e
        if not isinstance(chunk, dict):
            raise BackendError("bad_response", f"{self.backend.name}: a stream chunk is not a JSON object")
        if chunk.get("error"):
            raise BackendError("server_error", f"{self.backend.name}: error event: "
                                               f"{_error_message(chunk, 'unknown error')}", body=chunk)
        if not isinstance(chunk.get("choices"), list):
            raise BackendError("bad_response", f"{self.backend.name}: a stream chunk has no choices list")
        return chunk

    async def close(self) -> None:
        await self.response.aclose()


class Backend:
    """Everything the gateway holds about one backend. Safe for many concurrent requests on one event loop."""

    def __init__(self, name: str, cfg: BackendConfig, breaker: BreakerConfig,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.cfg = name, cfg
        env = os.environ if env is None else env
        headers = {}
        if cfg.api_key_env:
            key = env.get(cfg.api_key_env)
            if not key:
                raise HomegrownError(f"backend {name!r}: the environment variable {cfg.api_key_env} (its API key) "
                                     "is not set")
            headers["Authorization"] = f"Bearer {key}"
        t = cfg.timeouts
        self.client = httpx.AsyncClient(
            base_url=cfg.base_url, headers=headers,
            timeout=httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.read_s, pool=t.pool_s),
            limits=httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency))
        self.breaker = CircuitBreaker(breaker.failures, breaker.cooldown_s)
        self.cooling_until = 0.0

    def available(self) -> bool:
        """Not cooling off after a 429 and let through by the breaker (which, half-open, admits one probe)."""
        return time.monotonic() >= self.cooling_until and self.breaker.allow()

    def failed(self, error: BackendError) -> None:
        if error.kind == "context_length":  # the backend works; the prompt is too long for it
            self.breaker.success()
            return
        if error.retry_after:
            self.cooling_until = max(self.cooling_until, time.monotonic() + error.retry_after)
        self.breaker.failure()

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None, latency_s: float) -> float:
        p = self.cfg.price
        return ((prompt_tokens or 0) * p.input_per_1m + (completion_tokens or 0) * p.output_per_1m) / 1e6 \
            + p.per_request + latency_s / 3600 * p.per_gpu_hour / self.cfg.max_concurrency

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.cfg.model}

    async def complete(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming call within `timeouts.total_s`."""
        try:
            response = await asyncio.wait_for(self.client.post(path, json=self._body(body)),
                                              self.cfg.timeouts.total_s)
        except TimeoutError as e:
            raise BackendError("timeout", f"{self.name}: no answer within {self.cfg.timeouts.total_s} s") from e
        except httpx.TransportError as e:
            raise BackendError(_transport_kind(e), f"{self.name}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise classify(response, response.content)
        try:
            data = response.json()
        except ValueError as e:
            raise BackendError("bad_response", f"{self.name}: the answer is not JSON: {response.text[:80]!r}") from e
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise BackendError("bad_response", f"{self.name}: the answer has no choices list")
        return data

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        """Send a streaming request and check its status; the events are read by the caller."""
        request = self.client.build_request("POST", path, json=self._body(body))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as e:
            raise BackendError(_transport_kind(e), f"{self.name}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            try:
                content = await response.aread()
            except httpx.TransportError as e:
                raise BackendError(_transport_kind(e), f"{self.name}: {type(e).__name__}: {e}") from e
            finally:
                await response.aclose()
            raise classify(response, content)
        return UpstreamStream(self, response)

    async def aclose(self) -> None:
        await self.client.aclose()
