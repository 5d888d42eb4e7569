"""One client request through the attempt list: the backend answers, or the next one is tried, until one
answers or all failed.

Non-streaming: a `BackendError` moves to the next backend; an `UpstreamClientError` (the client's own mistake)
is relayed as the backend said it. A context-length error only moves to backends whose `context_length` is
larger than the failing one's (unknown = 0); when none is left, the backend's 400 goes to the client.

Streaming, the rule: until the first token (the first chunk with text or a finish reason) arrives, nothing has
been sent to the client, so any failure — refused, 5xx, 429, no first token within `first_token_s`, garbage,
an early end — is replaced transparently by the next backend. Once a token went out, the stream is committed:
a failure after it (a cut connection, no chunk within `read_s`, garbage, an error event, an end without
[DONE]) ends the client's stream with an OpenAI-shaped error event (`data: {"error": {...}}`, which the
`openai` client raises as APIError) and no [DONE], and it is counted as `stream_interrupted`. Never a hung
client, never a silently truncated answer.

Every finished request becomes one `RequestRecord`, handed to the gateway's `finished` (accounting, log, hooks).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi.responses import JSONResponse, Response, StreamingResponse

from homegrown.gateway.accounting import Accounting
from homegrown.gateway.backends import Backend, BackendError, Event, UpstreamClientError, UpstreamStream
from homegrown.gateway.keys import ClientKey
from homegrown.gateway.routing import Route, sticky_hash
from homegrown.gateway.store import RequestRecord
from homegrown.serve.protocol import error_json

BACKEND_HEADER = "X-Homegrown-Backend"


class Gateway(Protocol):
    """What a call needs of the gateway (app.Gateway), without importing it (app imports this module)."""

    backends: dict[str, Backend]
    accounting: Accounting

    def finished(self, call: Call, response: dict[str, Any] | None) -> None: ...


class Call:
    """What is known about one client request while it is served."""

    def __init__(self, gw: Gateway, route: Route, endpoint: str, body: dict[str, Any], key: ClientKey | None,
                 sticky: str | None) -> None:
        self.gw, self.route, self.endpoint, self.body, self.key, self.sticky = gw, route, endpoint, body, key, sticky
        self.stream = bool(body.get("stream"))
        self.started = time.monotonic()
        self.record = RequestRecord(
            id=f"req_{uuid.uuid4().hex}", created_at=datetime.now(UTC), route=route.name, endpoint=endpoint,
            stream=self.stream, status=0, latency_s=0.0, key_name=key.name if key else None,
            sticky_key=sticky_hash(sticky) if sticky is not None else None,
            request_text=json.dumps(body.get("messages") if endpoint == "chat" else body.get("prompt"),
                                    ensure_ascii=False),
            log=key.cfg.log if key else True)
        self.path = "/chat/completions" if endpoint == "chat" else "/completions"
        self.client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.errors: list[BackendError] = []
        self.context_floor: int | None = None
        self.context_error: BackendError | None = None

    async def candidates(self) -> AsyncIterator[Backend]:
        """The backends to try, in order, skipping those whose breaker or Retry-After keeps them out."""
        for name in self.route.order(self.sticky):
            backend = self.gw.backends[name]
            if self.context_floor is not None and (backend.cfg.context_length or 0) <= self.context_floor:
                continue
            if not backend.available():
                self.record.attempts.append(f"{name}:unavailable")
                continue
            yield backend

    def failed(self, backend: Backend, error: BackendError) -> None:
        backend.failed(error)
        self.record.attempts.append(f"{backend.name}:{error.kind}")
        self.gw.accounting.attempt_failed(self.route.name, backend.name, error.kind)
        self.errors.append(error)
        if error.kind == "context_length":
            self.context_floor = backend.cfg.context_length or 0
            self.context_error = error

    def finish(self, status: int, backend: Backend | None, response: dict[str, Any] | None,
               error_kind: str | None = None, usage: dict[str, Any] | None = None, text: str | None = None,
               ttft: float | None = None) -> None:
        r = self.record
        r.status, r.error_kind, r.ttft_s = status, error_kind, ttft
        r.latency_s = time.monotonic() - self.started
        r.finished_at = datetime.now(UTC)
        if backend is not None:
            r.backend, r.backend_model = backend.name, backend.cfg.model
        if usage:
            r.prompt_tokens, r.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if backend is not None:
            r.cost_usd = backend.cost(r.prompt_tokens, r.completion_tokens, r.latency_s)
        r.response_text = text
        self.gw.finished(self, response)

    def all_failed(self) -> Response:
        """No backend answered: the client's too-long prompt (400), everyone rate-limited (429) or a 502/503."""
        if self.context_error is not None and all(e.kind == "context_length" for e in self.errors):
            self.finish(400, None, None, "context_length")
            body = self.context_error.body if isinstance(self.context_error.body, dict) else None
            if body is not None:
                return JSONResponse(body, status_code=400)
            return error_json(400, self.context_error.message, param="messages", code="context_length_exceeded")
        attempts = ", ".join(self.record.attempts) or "none"
        if self.errors and all(e.kind == "rate_limited" for e in self.errors):
            waits = [e.retry_after for e in self.errors if e.retry_after]
            self.finish(429, None, None, "rate_limited")
            return error_json(429, f"every backend of {self.route.name!r} is rate-limited ({attempts}); retry later",
                              "rate_limit_error", code="rate_limit_exceeded",
                              headers={"Retry-After": str(max(1, round(min(waits))))} if waits else None)
        if not self.errors:
            self.finish(503, None, None, "unavailable")
            return error_json(503, f"no backend of {self.route.name!r} is available now (circuit breakers open or "
                                   f"cooling after 429: {attempts}); retry shortly", "server_error",
                              code="no_backend_available")
        self.finish(502, None, None, self.errors[-1].kind)
        return error_json(502, f"every backend of {self.route.name!r} failed: {attempts}; last: "
                               f"{self.errors[-1].message}", "server_error", code="all_backends_failed")

    def relay_client_error(self, backend: Backend, e: UpstreamClientError) -> Response:
        backend.breaker.release()
        self.finish(e.status, backend, None, "client_error")
        return JSONResponse(e.body, status_code=e.status, headers={**e.headers, BACKEND_HEADER: backend.name})


async def complete(call: Call) -> Response:
    async for backend in call.candidates():
        try:
            data = await backend.complete(call.path, call.body)
        except BackendError as e:
            call.failed(backend, e)
            continue
        except UpstreamClientError as e:
            return call.relay_client_error(backend, e)
        except asyncio.CancelledError:  # the client left: no verdict on the backend (a half-open probe is freed)
            backend.breaker.release()
            raise
        backend.breaker.success()
        data["model"] = call.route.name
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        call.finish(200, backend, data, usage=usage, text=_reply_text(data))
        return JSONResponse(data, headers={BACKEND_HEADER: backend.name})
    return call.all_failed()


def _reply_text(data: dict[str, Any]) -> str | None:
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        return message.get("content")
    return first.get("text")


def _delta_text(chunk: dict[str, Any]) -> str:
    out = []
    for c in chunk.get("choices") or []:
        if isinstance(c, dict) and c.get("index", 0) == 0:
            delta = c.get("delta")
            out.append((delta.get("content") if isinstance(delta, dict) else c.get("text")) or "")
    return "".join(out)


def _is_token(chunk: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and (c.get("finish_reason") or _delta_text({"choices": [{**c, "index": 0}]}))
               for c in chunk.get("choices") or [])


def _sse(data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {body}\n\n".encode()


async def _first_token(events: AsyncIterator[Event]) -> list[Event]:
    head = []
    async for event in events:
        head.append(event)
        if event.done or (event.chunk is not None and _is_token(event.chunk)):
            return head
    return head


async def stream(call: Call) -> Response:
    body = {**call.body, "stream_options": {**(call.body.get("stream_options") or {}), "include_usage": True}}
    async for backend in call.candidates():
        upstream: UpstreamStream | None = None
        try:
            upstream = await backend.open_stream(call.path, body)
            events = upstream.events()
            head = await asyncio.wait_for(_first_token(events), backend.cfg.timeouts.first_token_s)
        except TimeoutError:
            await _close(upstream)
            call.failed(backend, BackendError("timeout", f"{backend.name}: no first token within "
                                                         f"{backend.cfg.timeouts.first_token_s} s"))
            continue
        except BackendError as e:
            await _close(upstream)
            call.failed(backend, e)
            continue
        except UpstreamClientError as e:
            return call.relay_client_error(backend, e)
        except asyncio.CancelledError:
            await _close(upstream)
            backend.breaker.release()
            raise
        backend.breaker.success()
        return StreamingResponse(_relay(call, backend, upstream, events, head), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          BACKEND_HEADER: backend.name})
    return call.all_failed()


async def _close(upstream: UpstreamStream | None) -> None:
    if upstream is not None:
        await upstream.close()


async def _relay(call: Call, backend: Backend, upstream: UpstreamStream, events: AsyncGenerator[Event, None],
                 head: list[Event]) -> AsyncIterator[bytes]:
    """The committed stream: the buffered head, then the rest; the mid-stream rule on failure."""
    text: list[str] = []
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    finish_reason: str | None = None
    outcome: tuple[int, str | None] | None = None

    def out(chunk: dict[str, Any]) -> bytes | None:
        nonlocal usage, ttft, finish_reason
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        chunk["model"] = call.route.name
        if ttft is None and _is_token(chunk):
            ttft = time.monotonic() - call.started
        text.append(_delta_text(chunk))
        for c in chunk["choices"]:
            if isinstance(c, dict) and c.get("index", 0) == 0 and c.get("finish_reason"):
                finish_reason = c["finish_reason"]
        if not call.client_usage:
            if not chunk["choices"]:
                return None  # the usage chunk we asked for on the gateway's own account
            chunk.pop("usage", None)
        return _sse(chunk)

    try:
        pending = iter(head)
        while True:
            event = next(pending, None)
            if event is None:
                event = await anext(events)
            if event.done:
                yield _sse("[DONE]")
                outcome = (200, None)
                return
            data = out(event.chunk)
            if data is not None:
                yield data
    except (BackendError, StopAsyncIteration) as e:
        message = e.message if isinstance(e, BackendError) else f"{backend.name}: the stream ended"
        backend.failed(e if isinstance(e, BackendError) else BackendError("bad_response", message))
        yield _sse({"error": {"message": f"the backend failed mid-stream ({message}); the reply above is "
                                         "incomplete", "type": "server_error", "param": None,
                              "code": "stream_interrupted"}})
        outcome = (200, "stream_interrupted")
    finally:
        await events.aclose()
        await upstream.close()
        status, kind = outcome or (499, "client_disconnected")
        reply = "".join(text)
        assembled = {"object": "chat.completion" if call.endpoint == "chat" else "text_completion",
                     "model": call.route.name, "usage": usage,
                     "choices": [{"index": 0, "finish_reason": finish_reason,
                                  **({"message": {"role": "assistant", "content": reply}} if call.endpoint == "chat"
                                     else {"text": reply})}]}
        call.finish(status, backend, assembled if kind is None else None, kind, usage, reply, ttft)
