"""The gateway's HTTP front: the surface and error shapes of `homegrown serve` (its error handlers, body size
limit and OpenAI error envelope are reused, not copied), in front of the configured backends.

Endpoints: `/v1/models`, `/v1/models/{name}` (the routes), `/v1/chat/completions`, `/v1/completions` (relayed
to a route's backends, streaming included), `/health`, `/metrics` (Prometheus) and `/gateway/state` (JSON:
breakers, shares, accounting; behind the client keys). Request bodies are relayed as the client sent them,
with only `model` replaced by the backend's own name, so each backend judges the fields it supports; the
gateway itself checks what it needs (valid JSON and Unicode, `model`, `messages`/`prompt`, `stream`).
The sticky key is the `X-Conversation-Id` header, else the body's `user`.

For extensions (gwjudge: shadow, judge, promotion) — `Gateway`, kept as `app.state.gateway`:

* `gateway.add_hook(fn)`: `fn(record: RequestRecord, request_body: dict, response: dict | None)` is called
  after each client request finished (stream included; `response` is the backend's JSON, or for a stream the
  reply assembled as a non-streaming one; None when it failed). Called on the event loop; if it returns an
  awaitable, that runs as a background task (awaited at shutdown), so hooks never add client latency.
  `record.log` is False for keys that opted out — respect it.
* `gateway.set_weights(route, {backend: weight})`: change a route's split at run time (promotion's lever).
* `gateway.backends[name]` (`Backend`): `await backend.complete(path, body)` for shadow and judge calls.
* `gateway.store` (`RequestLog` or None) and `gateway.cfg` (the parsed config, incl. shadow/judge/promotion).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from homegrown.errors import HomegrownError
from homegrown.gateway import proxy
from homegrown.gateway.accounting import Accounting
from homegrown.gateway.backends import Backend
from homegrown.gateway.breaker import State
from homegrown.gateway.config import GatewayConfig
from homegrown.gateway.keys import ClientKey, KeyRing
from homegrown.gateway.routing import Route
from homegrown.gateway.store import LogWriter, RequestLog, RequestRecord
from homegrown.serve.body_limit import BodySizeLimit
from homegrown.serve.http_errors import APIError, install_error_handlers
from homegrown.serve.protocol import find_invalid_unicode, invalid_unicode_message

log = logging.getLogger(__name__)

Hook = Callable[[RequestRecord, dict[str, Any], dict[str, Any] | None], Any]
STICKY_HEADER = "x-conversation-id"
BREAKER_GAUGE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class Gateway:
    """Backends, routes, keys, accounting and the request log of one running gateway."""

    def __init__(self, cfg: GatewayConfig, env: dict[str, str] | None = None, store: RequestLog | None = None) -> None:
        self.cfg = cfg
        self.backends = {name: Backend(name, b, cfg.breaker_of(name), env) for name, b in cfg.backends.items()}
        self.routes = {name: Route(name, r, set(cfg.backends)) for name, r in cfg.routes.items()}
        self.keys = KeyRing(cfg.keys, env)
        self.accounting = Accounting()
        self.store = store
        self.writer: LogWriter | None = None
        self.hooks: list[Hook] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.draining = False
        self.state_parts: dict[str, Callable[[], Any]] = {}
        """Extensions' own sections of /gateway/state (judging: shadow counters, ladder step, evidence)."""

    def add_hook(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def set_weights(self, route: str, weights: dict[str, float]) -> None:
        if route not in self.routes:
            raise HomegrownError(f"no route {route!r}; routes: {', '.join(self.routes)}")
        self.routes[route].set_weights(weights)

    def finished(self, call: proxy.Call, response: dict[str, Any] | None) -> None:
        record = call.record
        self.accounting.finished(record)
        self.keys.charge(call.key, (record.prompt_tokens or 0) + (record.completion_tokens or 0))
        if self.writer is not None:
            self.writer.put(record)
        for hook in self.hooks:
            try:
                result = hook(record, call.body, response)
            except Exception:
                log.exception("gateway hook %r failed", hook)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self.tasks.add(task)
                task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway hook task failed", exc_info=task.exception())

    def state(self) -> dict[str, Any]:
        return {
            "backends": {n: {"breaker": b.breaker.state.value, "consecutive_failures": b.breaker.consecutive,
                             "opened": b.breaker.opened_count} for n, b in self.backends.items()},
            "routes": {n: {"shares": r.shares(), "fallback": r.fallback} for n, r in self.routes.items()},
            "log_rows_written": self.writer.written if self.writer else 0,
            **self.accounting.snapshot(),
            **{name: part() for name, part in self.state_parts.items()},
        }

    def refresh_gauges(self, acct: Accounting) -> None:
        for name, b in self.backends.items():
            acct.breaker.labels(name).set(BREAKER_GAUGE[b.breaker.state])
        for name, r in self.routes.items():
            for backend, share in r.shares().items():
                acct.weight.labels(name, backend).set(share)

    async def start(self) -> None:
        if self.store is not None:
            self.writer = LogWriter(self.store, timedelta(days=self.cfg.log.retention_days)).start()

    async def stop(self) -> None:
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
        for b in self.backends.values():
            await b.aclose()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def client_key(request: Request) -> ClientKey | None:
    return _gateway(request).keys.authenticate(request.headers.get("authorization"))


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON ({e}); send a JSON object",
                       code="invalid_json") from e
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    bad = find_invalid_unicode(body)
    if bad is not None:
        raise APIError(400, invalid_unicode_message(bad), param=bad, code="invalid_unicode")
    return body


def _route(gw: Gateway, body: dict[str, Any]) -> Route:
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "model: a string is required (one of GET /v1/models)", param="model")
    if model not in gw.routes:
        raise APIError(404, f"The model `{model}` does not exist; this gateway routes "
                            f"{', '.join(f'`{r}`' for r in gw.routes)} (see GET /v1/models).",
                       param="model", code="model_not_found")
    return gw.routes[model]


def _check(body: dict[str, Any], endpoint: str) -> None:
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "messages: a non-empty list of messages is required", param="messages")
    elif "prompt" not in body:
        raise APIError(400, "prompt: field required", param="prompt")
    if not isinstance(body.get("stream", False), bool):
        raise APIError(400, "stream: must be true or false", param="stream")
    if body.get("stream_options") is not None:
        if not isinstance(body["stream_options"], dict):
            raise APIError(400, "stream_options: must be an object", param="stream_options")
        if not body.get("stream"):
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")


def _sticky(request: Request, body: dict[str, Any]) -> str | None:
    header = request.headers.get(STICKY_HEADER)
    if header:
        return header
    user = body.get("user")
    return user if isinstance(user, str) and user else None


async def _serve(request: Request, key: ClientKey | None, endpoint: str) -> Response:
    gw = _gateway(request)
    if gw.draining:
        raise APIError(503, "the gateway is shutting down; retry against another instance", "server_error",
                       code="shutting_down")
    body = await _json_body(request)
    route = _route(gw, body)
    _check(body, endpoint)
    gw.keys.admit(key)
    call = proxy.Call(gw, route, endpoint, body, key, _sticky(request, body))
    return await (proxy.stream(call) if call.stream else proxy.complete(call))


KeyDep = Annotated[ClientKey | None, Depends(client_key)]
v1 = APIRouter(prefix="/v1")


@v1.get("/models")
async def list_models(request: Request, _: KeyDep) -> dict[str, Any]:
    return {"object": "list", "data": [_card(name) for name in _gateway(request).routes]}


@v1.get("/models/{model}")
async def get_model(model: str, request: Request, _: KeyDep) -> dict[str, Any]:
    _route(_gateway(request), {"model": model})
    return _card(model)


def _card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "homegrown-gateway"}


@v1.post("/chat/completions")
async def chat_completions(request: Request, key: KeyDep) -> Response:
    return await _serve(request, key, "chat")


@v1.post("/completions")
async def completions(request: Request, key: KeyDep) -> Response:
    return await _serve(request, key, "completions")


ops = APIRouter()


@ops.get("/health")
async def health(request: Request) -> Response:
    gw = _gateway(request)
    if gw.draining:
        raise APIError(503, "not ready (draining)", "server_error", code="not_ready")
    return JSONResponse({"status": "ok", "backends": {n: b.breaker.state.value for n, b in gw.backends.items()}})


@ops.get("/metrics")
async def metrics(request: Request) -> Response:
    gw = _gateway(request)
    return Response(gw.accounting.render(gw.refresh_gauges), media_type=CONTENT_TYPE_LATEST)


@ops.get("/gateway/state")
async def state(request: Request, _: KeyDep) -> dict[str, Any]:
    return _gateway(request).state()


def create_app(gw: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        yield
        gw.draining = True
        await gw.stop()

    app = FastAPI(title="homegrown gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible gateway over OpenAI-compatible backends.")
    app.state.gateway = gw
    app.add_middleware(BodySizeLimit, max_bytes=gw.cfg.max_body_bytes)
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    return app
