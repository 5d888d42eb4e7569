"""A fault-injecting OpenAI-compatible "provider" for the gateway's tests, run as its own process.

    python stub_provider.py --name A [--fd N | --port P] [--max-prompt-chars C] [--api-key K]

It answers /v1/chat/completions and /v1/completions (streaming too) with a deterministic reply,
"reply from NAME", in words, and real usage counts (prompt words, reply words). What goes wrong is scripted
through POST /control {"script": [fault, ...], "default": fault}: each request takes the next fault of the
script, then the default. Faults:

* ok
* error500                     500 in OpenAI's error shape
* rate429:S                    429 with Retry-After: S
* garbage                      200 whose body (or first stream chunk) is not JSON
* hang                         no answer (non-streaming) or no first token (streaming) for an hour
* cut:N                        streaming: the role chunk and N words, then the connection is dropped
* stall:N                      streaming: N words, then silence for an hour (the gateway's read timeout)
* bad_request                  400 invalid_request_error (the client's fault: must be relayed, not retried)

A prompt longer than --max-prompt-chars gets OpenAI's 400 context_length_exceeded. GET /stats says how many
requests it took. --fd serves an inherited listening socket, so a test can kill and restart the process on
the same address without racing anyone for the port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

if __package__ in (None, ""):  # run as a script (`python tests/gateway/stub_provider.py`): tests/ lives at the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.openai_stub import chat_body, error_body, listening_socket


def build(name: str, max_prompt_chars: int | None, api_key: str | None) -> FastAPI:
    app = FastAPI()
    control: dict[str, Any] = {"script": [], "default": "ok"}
    stats = {"requests": 0, "models": {}}

    def next_fault() -> str:
        return control["script"].pop(0) if control["script"] else control["default"]

    def error(status: int, message: str, kind: str, code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, kind, code), status_code=status, headers=headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "name": name}

    @app.post("/control")
    async def set_control(request: Request) -> dict[str, Any]:
        control.update(await request.json())
        return control

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return stats

    async def handle(request: Request, chat: bool) -> Response:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "bad key", "invalid_request_error", "invalid_api_key")
        body = await request.json()
        stats["requests"] += 1
        stats["models"][body["model"]] = stats["models"].get(body["model"], 0) + 1
        prompt = " ".join(str(m.get("content")) for m in body["messages"]) if chat else str(body["prompt"])
        fault = next_fault()
        if max_prompt_chars is not None and len(prompt) > max_prompt_chars:
            return error(400, f"This model's maximum context length is {max_prompt_chars} characters",
                         "invalid_request_error", "context_length_exceeded")
        kind, _, arg = fault.partition(":")
        if kind == "error500":
            return error(500, "injected failure", "server_error")
        if kind == "rate429":
            return error(429, "slow down", "rate_limit_error", headers={"Retry-After": arg})
        if kind == "bad_request":
            return error(400, "temperature: injected client error", "invalid_request_error", "invalid_value")
        words = f"reply from {name}".split(" ")
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        rid, created = f"stub-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            if kind == "hang":
                await asyncio.sleep(3600)
            if kind == "garbage":
                return Response(b"{not json", media_type="application/json")
            text = " ".join(words)
            if chat:
                return JSONResponse(chat_body(body["model"], text, usage["prompt_tokens"],
                                              usage["completion_tokens"], rid=rid))
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": body["model"],
                                 "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish}
            data = {"id": rid, "object": f"{obj}.chunk" if chat else obj, "created": created, "model": body["model"],
                    "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            if chat:
                yield chunk(None, role=True)
            if kind == "hang":
                await asyncio.sleep(3600)
            if kind == "garbage":
                yield b"data: {not json\n\n"
                return
            for i, word in enumerate(words):
                if kind == "cut" and i == int(arg):
                    raise ConnectionResetError("injected cut")  # uvicorn drops the connection mid-body
                if kind == "stall" and i == int(arg):
                    await asyncio.sleep(3600)
                yield chunk(word if i == 0 else " " + word)
            yield chunk(None, "stop")
            if include_usage:
                data = {"id": rid, "object": f"{obj}.chunk", "created": created, "model": body["model"],
                        "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, False)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--fd", type=int)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-prompt-chars", type=int)
    parser.add_argument("--api-key")
    args = parser.parse_args()
    sock = listening_socket(args.port, args.fd)
    port = sock.getsockname()[1]
    print(f"OpenAI base_url http://127.0.0.1:{port}/v1", flush=True)
    config = uvicorn.Config(build(args.name, args.max_prompt_chars, args.api_key), log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
