"""The OpenAI-compatible HTTP API over the engine: existing clients switch to our model by changing `base_url`.

Every answer that is not a success has OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`
with a 4xx status the `openai` client maps to its exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError); FastAPI's 422 for a bad body becomes a 400, a
field we do not take is named in it (protocol.py), and a body over the size cap is a 413 (body_limit.py).
Streaming follows OpenAI's Server-Sent Events byte for byte: `data: <json>\\n\\n` chunks, the role in the first
delta, the finish reason on each choice's last chunk, an optional usage chunk with empty `choices`, then
`data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from homegrown.config import ServeConfig
from homegrown.errors import HomegrownError
from homegrown.serve.auth import Authenticator
from homegrown.serve.body_limit import BodySizeLimit
from homegrown.serve.constraint_spec import ENDS_ELSEWHERE, ConstraintError, ConstraintSpec
from homegrown.serve.engine import (
    ContextLengthError,
    Delta,
    Engine,
    EngineBusyError,
    GenerationParams,
    Sequence,
    TokenLogprob,
)
from homegrown.serve.http_errors import APIError, install_error_handlers
from homegrown.serve.keys import KeyStore, Principal
from homegrown.serve.mailbox import mailbox_for
from homegrown.serve.metrics import ServeMetrics
from homegrown.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    _Sampling,
    error_json,
    with_defaults,
)
from homegrown.serve.tool_calling import plan_tools
from homegrown.serve.tool_parser import ToolCallParser, deltas, finish_reason, message
from homegrown.serve.tool_prompt import ToolRequestError, prompt_inputs

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
DISCONNECT_POLL_S = 0.5

@dataclass
class ServerState:
    """What the handlers share (as app.state.server): the configuration, the engine once loaded, and whether
    the server is draining for shutdown."""

    model_name: str
    load_engine: Callable[[], Engine]
    created: int = 0
    auth: Authenticator = field(default_factory=lambda: Authenticator(None, None))
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    on_load_failure: Callable[[], None] | None = None
    engine: Engine | None = None
    load_error: str | None = None
    draining: bool = False


def _install_engine_handlers(app: FastAPI) -> None:
    """The generic handlers (http_errors.py) plus the engine's own errors."""
    install_error_handlers(app)

    @app.exception_handler(EngineBusyError)
    async def busy(_: Request, e: EngineBusyError) -> JSONResponse:
        return error_json(429, str(e), "rate_limit_error", code="server_busy")

    @app.exception_handler(ConstraintError)
    async def bad_schema(_: Request, e: ConstraintError) -> JSONResponse:
        return error_json(400, str(e), param=e.param, code="invalid_schema")

    @app.exception_handler(ToolRequestError)
    async def bad_tools(_: Request, e: ToolRequestError) -> JSONResponse:
        return error_json(400, str(e), param=e.param, code="invalid_value")

    @app.exception_handler(HomegrownError)
    async def user_error(_: Request, e: HomegrownError) -> JSONResponse:
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
        return error_json(400, str(e), param="messages" if code else None, code=code)

class _Collector:
    """Receives deltas from the engine thread and hands them to the request's event loop, in order (through the
    loop's mailbox: one wake-up of the loop per engine step, not per token of every stream)."""

    def __init__(self) -> None:
        self.mailbox = mailbox_for(asyncio.get_running_loop())
        self.queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()

    def emitter(self, offset: int) -> Callable[[int, Delta], None]:
        def emit(index: int, delta: Delta) -> None:
            self.mailbox.post(self.queue, (offset + index, delta))
        return emit


def _params(req: _Sampling, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> list[GenerationParams]:
    top_k = req.top_k if req.top_k and req.top_k > 0 else 0
    bias = req.token_bias()
    return [GenerationParams(
        max_tokens=max_tokens,  # type: ignore[arg-type]  # None = rest of the context, resolved by the engine
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=top_k, top_p=1.0 if req.top_p is None else req.top_p,
        seed=None if req.seed is None else req.seed + i,
        stop_token_ids=list(req.stop_token_ids or []), stop=req.stops(),
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        logit_bias=dict(bias), min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
        logprobs=logprobs, top_logprobs=top_logprobs, constraint=req.constraint(),
    ) for i in range(req.n)]


def _check_token_ids(engine: Engine, req: _Sampling) -> None:
    """Token ids the request names must exist in this model's vocabulary (the logits' width)."""
    vocab = engine.model.cfg.vocab_size
    for param, ids in (("logit_bias", req.token_bias()), ("stop_token_ids", req.stop_token_ids or [])):
        outside = [t for t in ids if t >= vocab]
        if outside:
            raise APIError(400, f"{param}: token id {outside[0]} is outside this model's vocabulary [0, {vocab})",
                           param=param)


async def _check_constraint(engine: Engine, req: _Sampling) -> None:
    """A response_format is compiled (in a worker thread: the first one builds the tokenizer's index) before
    anything is queued, so a bad schema is a 400 naming it; and what would end the reply elsewhere than where
    the grammar does is refused by name (GenerationParams.constraint says why)."""
    spec = req.constraint()
    if spec is None:
        return
    await _check_spec(engine, req, spec, f"response_format {req.response_format.type}")


async def _check_spec(engine: Engine, req: _Sampling, spec: ConstraintSpec, what: str) -> None:
    for param in ENDS_ELSEWHERE:
        if getattr(req, param):
            raise APIError(400, f"{param} cannot be combined with {what}: the grammar decides where its JSON "
                                "ends", param=param)
    await run_in_threadpool(engine.grammars.check, spec)


def _chat_logprobs(engine: Engine, lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(token_id: int, lp: float) -> dict[str, Any]:
        text = engine.tokenizer.decode([token_id])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}
    return {"content": [{**entry(t.token_id, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]}
                        for t in lps], "refusal": None}


def _completion_logprobs(engine: Engine, lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens = [engine.tokenizer.decode([t.token_id]) for t in lps]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in lps],
            "top_logprobs": [{engine.tokenizer.decode([i]): v for i, v in t.top} for t in lps],
            "text_offset": offsets}


def _completion_prompt(engine: Engine, prompt: str | list[int]) -> tuple[list[int], str, list[int]]:
    """A /v1/completions prompt's token ids, echo text and each token's character offset in that text.

    Text starts the way the model's plain text does (`ChatFormat.text_bos_id`): after its BOS when its tokenizer
    adds one, as vLLM starts a Llama prompt — for our models <|endoftext|>, as every training document and the
    in-process eval (`LocalModel`) do — and bare for a model that adds none (SmolLM2). Echoed, that BOS is '' at
    offset 0 with a null log-prob. Token ids are taken as they are.
    """
    if isinstance(prompt, str):
        enc = engine.tokenizer.encode(prompt, add_special_tokens=False)
        ids, offsets = list(enc.ids), [start for start, _ in enc.offsets]
        bos = engine.bundle.chat.text_bos_id
        if bos is not None and ids[:1] != [bos]:
            ids, offsets = [bos, *ids], [0, *offsets]
        return ids, prompt, offsets
    ids, offsets, at = list(prompt), [], 0
    for token in ids:
        offsets.append(at)
        at += len(engine.tokenizer.decode([token]))
    return ids, engine.tokenizer.decode(ids), offsets


def _echo_logprobs(engine: Engine, ids: list[int], offsets: list[int], lps: list[TokenLogprob | None] | None,
                   then: dict[str, Any]) -> dict[str, Any]:
    """The prompt's legacy logprobs entries (the first token's are null), followed by the generated ones."""
    lps = lps or [None] * len(ids)
    decode = engine.tokenizer.decode
    return {"tokens": [decode([t]) for t in ids] + then["tokens"],
            "token_logprobs": [None if lp is None else lp.logprob for lp in lps] + then["token_logprobs"],
            "top_logprobs": [None if lp is None else {decode([i]): v for i, v in lp.top} for lp in lps]
            + then["top_logprobs"],
            "text_offset": offsets + then["text_offset"]}


def _chunk_maker(rid: str, obj: str, created: int, model_name: str,
                 include_usage: bool) -> Callable[..., dict[str, Any]]:
    """One streamed chunk's envelope; chat and text completions differ only in `object`."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        body = {"id": rid, "object": obj, "created": created, "model": model_name, "system_fingerprint": None,
                "choices": choices}
        if include_usage:
            body["usage"] = usage
        return body

    return chunk


def _sse(data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {body}\n\n".encode()


def _state(request: Request) -> ServerState:
    return request.app.state.server

async def require_key(request: Request) -> Principal:
    """Every /v1 and /api route: who the caller is, from 'Authorization: Bearer KEY' (auth.py says which keys
    count, and when none is needed); a missing, unknown or revoked key is a 401."""
    auth, header = _state(request).auth, request.headers.get("authorization", "")
    found = auth.known(header) or await run_in_threadpool(auth.principal, header)
    if found is None:
        raise APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                       param=None, code="invalid_api_key")
    return found


def _ready(state: ServerState) -> Engine:
    if state.draining:
        raise APIError(503, "the server is shutting down; retry against another instance", "server_error",
                       code="shutting_down")
    if state.engine is None:
        raise APIError(503, state.load_error or "the model is still loading; retry in a few seconds",
                       "server_error", code="model_loading")
    return state.engine


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(404, f"The model `{name}` does not exist; this server serves `{state.model_name}` "
                            "(see GET /v1/models).", param="model", code="model_not_found")


def _model_card(state: ServerState, engine: Engine) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "homegrown",
            "max_model_len": engine.max_len}


def _start(engine: Engine, prompts: list[list[int]], params_for: Callable[[], list[GenerationParams]],
           collector: _Collector) -> list[Sequence]:
    if len(prompts) * len(params_for()) > engine.cfg.max_n:
        raise APIError(400, f"n × prompts must be at most {engine.cfg.max_n}", param="n")
    for ids in prompts:  # check every prompt before queueing any
        first = params_for()[0]
        budget = engine.resolve_max_tokens(len(ids), first.max_tokens)
        if first.min_tokens > budget:
            raise APIError(400, f"min_tokens ({first.min_tokens}) must not exceed max_tokens ({budget})",
                           param="min_tokens")
    seqs: list[Sequence] = []
    try:
        for p, ids in enumerate(prompts):
            params = params_for()
            seqs += engine.submit(ids, params, collector.emitter(p * len(params)))
    except BaseException:
        engine.abort(seqs)
        raise
    return seqs


async def _collect(request: Request, engine: Engine, seqs: list[Sequence],
                   collector: _Collector) -> list[tuple[str, list[TokenLogprob], str, int, list | None]]:
    """Wait for every choice, freeing the slots if the client goes away first."""
    out = [["", [], None, 0, None] for _ in seqs]
    pending = len(seqs)
    try:
        while pending:
            try:
                index, delta = await asyncio.wait_for(collector.queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return []
                continue
            r = out[index]
            r[0] += delta.text
            r[1].extend(delta.logprobs)
            if delta.prompt_logprobs is not None:
                r[4] = delta.prompt_logprobs
            if delta.finish_reason:
                r[2], r[3] = delta.finish_reason, delta.completion_tokens
                pending -= 1
    finally:
        if pending:
            engine.abort(seqs)
    return [tuple(r) for r in out]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _stream(engine: Engine, seqs: list[Sequence], collector: _Collector, chunk: Callable[..., dict[str, Any]],
            first: list[dict[str, Any]] | None, choice: Callable[[int, Delta], list[dict[str, Any]]],
            prompt_tokens: int, include_usage: bool) -> StreamingResponse:
    """`choice` turns a delta into the choices to send, one chunk each (none, or several: a tool call's opening
    and its arguments are separate chunks, as OpenAI sends them)."""

    async def events() -> AsyncIterator[bytes]:
        pending, completion_tokens = len(seqs), 0
        try:
            if first:
                yield _sse(chunk(first))
            while pending:
                # Deltas that arrived together go out in one write (the same bytes, fewer sends and wake-ups).
                ready = [await collector.queue.get()]
                while not collector.queue.empty():
                    ready.append(collector.queue.get_nowait())
                out = []
                for index, delta in ready:
                    if delta.finish_reason:
                        pending -= 1
                        completion_tokens += delta.completion_tokens
                    out.extend(_sse(chunk([body])) for body in choice(index, delta))
                if not pending:
                    if include_usage:
                        out.append(_sse(chunk([], usage=_usage(prompt_tokens, completion_tokens))))
                    out.append(_sse("[DONE]"))
                if out:
                    yield b"".join(out)
        finally:
            if pending:
                engine.abort(seqs)
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
"""The OpenAI API. Handlers are plain functions of the request: what they share lives in app.state."""


@v1.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"object": "list", "data": [_model_card(state, _ready(state))]}


@v1.get("/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    engine = _ready(state)
    _check_model(state, model)
    return _model_card(state, engine)


RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)


def _admit(request: Request, req: RequestT, calls: bool = False) -> tuple[ServerState, Engine, RequestT]:
    """What both generation endpoints check first: a loaded engine, the served model's name, the server's
    generation defaults filled in — but none that a grammar overrules when the reply is JSON (response_format) or
    tool calls (`calls`: protocol.with_defaults) — and token ids the vocabulary has."""
    state = _state(request)
    engine = _ready(state)
    _check_model(state, req.model)
    req = with_defaults(req, state.generation_defaults, constrained=calls or req.constraint() is not None)
    _check_token_ids(engine, req)
    return state, engine, req


@v1.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    plan = plan_tools(req)
    state, engine, req = _admit(request, req, calls=plan.calls)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    if plan.constraint is not None:
        if req.constraint() is not None:
            raise APIError(400, "response_format cannot be combined with tool calls: the reply is either calls or "
                                'JSON; send tool_choice "none" for JSON', param="response_format")
        await _check_spec(engine, req, plan.constraint, "tools")
    await _check_constraint(engine, req)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                 **({"tool_calls": [c.model_dump() for c in m.tool_calls]} if m.tool_calls else {}),
                 **({"tool_call_id": m.tool_call_id} if m.tool_call_id is not None else {})}
                for m in req.messages]
    messages, tools = prompt_inputs(engine.bundle.template, messages, plan.tools)
    ids = engine.bundle.chat_prompt_ids(messages, tools)
    max_tokens = req.max_completion_tokens or req.max_tokens
    collector = _Collector()

    def params_for() -> list[GenerationParams]:
        params = _params(req, max_tokens, req.logprobs, req.top_logprobs or 0)
        for p in params:
            p.constraint = plan.constraint or p.constraint
        return params

    seqs = _start(engine, [ids], params_for, collector)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    if req.stream:
        chunk = _chunk_maker(rid, "chat.completion.chunk", created, state.model_name, include_usage)

        parsers = [ToolCallParser(plan.max_calls) for _ in seqs] if plan.calls else None
        unsent: list[list[TokenLogprob]] = [[] for _ in seqs]  # log-probs of text a parser still holds back

        def choice(index: int, delta: Delta) -> list[dict[str, Any]]:
            if parsers is None:
                if not delta.text and not delta.finish_reason:
                    return []
                lp = _chat_logprobs(engine, delta.logprobs) if req.logprobs else None
                return [{"index": index, "delta": {"content": delta.text} if delta.text else {},
                         "logprobs": lp, "finish_reason": delta.finish_reason}]
            parser = parsers[index]
            events = parser.feed(delta.text)
            if delta.finish_reason:
                events.extend(parser.finish())
            unsent[index] += delta.logprobs
            out = []
            for piece in [*deltas(events), *([{}] if delta.finish_reason else [])]:
                lp = _chat_logprobs(engine, unsent[index]) if req.logprobs and unsent[index] else None
                unsent[index] = [] if lp else unsent[index]
                reason = finish_reason(parser, delta.finish_reason) if delta.finish_reason and not piece else None
                out.append({"index": index, "delta": piece, "logprobs": lp, "finish_reason": reason})
            return out

        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(len(seqs))]
        return _stream(engine, seqs, collector, chunk, first, choice, len(ids), include_usage)

    results = await _collect(request, engine, seqs, collector)
    choices = []
    for i, (text, lps, reason, _, _) in enumerate(results):
        reply: dict[str, Any] = {"content": text}
        if plan.calls:
            parser = ToolCallParser(plan.max_calls)
            parser.feed(text)
            parser.finish()
            reply, reason = message(parser), finish_reason(parser, reason)
        choices.append({"index": i, "message": {"role": "assistant", **reply, "refusal": None},
                        "logprobs": _chat_logprobs(engine, lps) if req.logprobs else None, "finish_reason": reason})
    return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices,
            "usage": _usage(len(ids), sum(r[3] for r in results))}


@v1.post("/completions")
async def completions(req: CompletionRequest, request: Request) -> Any:
    state, engine, req = _admit(request, req)
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0 generates nothing; it is only allowed with echo=true (the prompt alone, "
                            "with its log-probs)", param="max_tokens")
    if req.echo and req.constraint() is not None:
        raise APIError(400, "echo cannot be combined with response_format: the prompt before the JSON would make "
                            "the text something else than the JSON asked for", param="echo")
    await _check_constraint(engine, req)
    if isinstance(req.prompt, str) or (req.prompt and all(isinstance(p, int) for p in req.prompt)):
        raw: list[str | list[int]] = [req.prompt]  # type: ignore[list-item]
    else:
        raw = list(req.prompt)
    if not raw:
        raise APIError(400, "prompt is an empty list; send a string or a list of strings", param="prompt")
    prompts, echo_texts, prompt_offsets = zip(*(_completion_prompt(engine, p) for p in raw), strict=True)
    want_lp = req.logprobs is not None
    score = req.echo and want_lp  # the prompt's own log-probs, computed once per prompt (by its first choice)

    def params_for() -> list[GenerationParams]:
        params = _params(req, req.max_tokens, want_lp, req.logprobs or 0)
        for p in params:
            p.stop_token_logprob = True
        if score:
            params[0].prompt_logprobs = req.logprobs
        return params

    collector = _Collector()
    seqs = _start(engine, list(prompts), params_for, collector)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    prompt_tokens = sum(len(p) for p in prompts)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def echo_logprobs(p: int, lps: list[TokenLogprob | None] | None, then: dict[str, Any]) -> dict[str, Any]:
        return _echo_logprobs(engine, prompts[p], prompt_offsets[p], lps, then)

    if req.stream:
        offsets = [len(echo_texts[i // req.n]) if req.echo else 0 for i in range(len(seqs))]
        scored: dict[int, list[TokenLogprob | None]] = {}
        # Echo without log-probs goes out at once; with them it rides on each choice's first chunk (as vLLM).
        echoed = [not score] * len(seqs)

        chunk = _chunk_maker(rid, "text_completion", created, state.model_name, include_usage)

        def choice(index: int, delta: Delta) -> list[dict[str, Any]]:
            p = index // req.n
            if delta.prompt_logprobs is not None:
                scored[p] = delta.prompt_logprobs
            if not delta.text and not delta.finish_reason:
                return []
            text = delta.text
            lp = _completion_logprobs(engine, delta.logprobs, offsets[index]) if want_lp else None
            offsets[index] += len(delta.text)
            if not echoed[index]:
                echoed[index] = True
                text = echo_texts[p] + text
                lp = echo_logprobs(p, scored.get(p), lp)
            return [{"index": index, "text": text, "logprobs": lp, "finish_reason": delta.finish_reason}]

        first = None
        if req.echo and not score:
            first = [{"index": i, "text": echo_texts[i // req.n], "logprobs": None, "finish_reason": None}
                     for i in range(len(seqs))]
        return _stream(engine, seqs, collector, chunk, first, choice, prompt_tokens, include_usage)

    results = await _collect(request, engine, seqs, collector)
    choices = []
    for i, (text, lps, reason, _, _) in enumerate(results):
        p = i // req.n
        prefix = echo_texts[p] if req.echo else ""
        lp = _completion_logprobs(engine, lps, len(prefix)) if want_lp else None
        if score:
            lp = echo_logprobs(p, results[p * req.n][4], lp)
        choices.append({"index": i, "text": prefix + text, "finish_reason": reason, "logprobs": lp})
    return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices,
            "usage": _usage(prompt_tokens, sum(r[3] for r in results))}


ops = APIRouter()
"""Health and metrics: open, for load balancers and Prometheus."""


@ops.get("/health")
async def health(request: Request) -> Response:
    state = _state(request)
    if state.engine is None or state.draining:
        reason = "draining" if state.draining else ("load failed: " + state.load_error
                                                    if state.load_error else "loading")
        return error_json(503, f"not ready ({reason})", "server_error", code="not_ready")
    return JSONResponse({"status": "ok", "model": state.model_name})


@ops.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _load(state: ServerState) -> None:
    try:
        state.engine = state.load_engine().start()
    except Exception as e:  # reported by /health and by serve(), which then exits
        log.exception("loading the model failed")
        state.load_error = str(e) or type(e).__name__
        if state.on_load_failure is not None:
            state.on_load_failure()

@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Weights load in a thread, so /health answers 503 meanwhile; at shutdown, running sequences finish."""
    state: ServerState = app.state.server
    loader = threading.Thread(target=_load, args=(state,), name="homegrown-load", daemon=True)
    loader.start()
    yield
    state.draining = True
    await run_in_threadpool(loader.join)
    if state.engine is not None:
        await run_in_threadpool(state.engine.stop, True)


def create_app(load_engine: Callable[[], Engine], *, api_key: str | None, model_name: str,
               store: Any | None = None, keys: KeyStore | None = None, metrics: ServeMetrics | None = None,
               web_dir: Path | None = WEB_DIR, on_load_failure: Callable[[], None] | None = None,
               generation_defaults: dict[str, Any] | None = None,
               max_body_bytes: int = ServeConfig.max_body_bytes) -> FastAPI:
    """The whole server: /v1 API, /health, /metrics, the conversations API and the chat page.

    `load_engine` runs in a thread at startup, so /health answers 503 while weights load; `store` is a
    ConversationStore for the page's /api/conversations (None leaves the page without saved conversations);
    `keys` the KeyStore of user keys, checked besides `api_key` (auth.py);
    `generation_defaults` (protocol.parse_generation_defaults) fill sampling fields a request leaves out;
    bodies over `max_body_bytes` get 413 before they are read.
    """
    app = FastAPI(title="homegrown", version="0.1.0", lifespan=_lifespan,
                  description="OpenAI-compatible API of a homegrown model.")
    app.state.server = ServerState(model_name=model_name, created=int(time.time()),
                                   auth=Authenticator(api_key, keys),
                                   generation_defaults=dict(generation_defaults or {}), load_engine=load_engine,
                                   on_load_failure=on_load_failure)
    app.state.metrics = metrics or ServeMetrics()
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    _install_engine_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    if store is not None:
        from homegrown.serve.conversations import build_router

        app.include_router(build_router(store, require_key))
    if keys is not None:
        from homegrown.serve.users import build_router as build_users_router

        app.include_router(build_users_router(keys, require_key))
    if web_dir is not None and web_dir.is_dir():
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="web")
    return app
