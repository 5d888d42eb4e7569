"""A small deterministic OpenAI-compatible server for the judging tests, run as its own process on loopback.

Two roles:
- `answer`: replies `"{prefix} {last user message}"`; POST /control changes the prefix or the mode at run time
  (`ok`, `fail` → HTTP 500, `hold` → replies wait until POST /release), so a test can make a candidate start
  losing or failing in the middle of a run, or keep its answer back until the client's request has finished.
- `judge`: reads the two answers out of homegrown's judge prompt and prefers the one containing `--marker`
  (a tie when both or neither do); `--prefer first` always says A (a position-biased judge), `--prefer garbage`
  never gives a verdict.

It binds `--port` (default 0: a free one) and prints `listening http://127.0.0.1:PORT` once bound, so tests
never guess a free port; a person following the README gives a fixed one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

if __package__ in (None, ""):  # run as a script (`python tests/gateway/stub_llm.py`): tests/ lives at the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.openai_stub import chat_body, error_body, listening_socket

A_START, A_END = "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]"
B_START, B_END = "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]"


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0] if start in text else ""


def judge_reply(prompt: str, prefer: str, marker: str) -> str:
    if prefer == "garbage":
        return "Both answers have merits; I cannot decide."
    if prefer == "first":
        return "Assistant A answered first. [[A]]"
    a, b = marker in between(prompt, A_START, A_END), marker in between(prompt, B_START, B_END)
    verdict = "A" if a and not b else "B" if b and not a else "TIE"
    return f"Judged on the marker {marker!r}. [[{verdict}]]"


def build_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    state = {"mode": "ok", "prefix": args.prefix, "requests": 0, "release": asyncio.Event()}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": args.model, "object": "model", "owned_by": "stub"}]}

    @app.post("/control")
    async def control(request: Request) -> dict:
        body = await request.json()
        state.update({k: body[k] for k in ("mode", "prefix") if k in body})
        if state["mode"] == "hold":
            state["release"] = asyncio.Event()
        return {"mode": state["mode"], "prefix": state["prefix"]}

    @app.post("/release")
    async def release() -> dict:
        state["release"].set()
        return {"released": True}

    @app.get("/stats")
    async def stats() -> dict:
        return {"requests": state["requests"]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        state["requests"] += 1
        body = await request.json()
        messages = body.get("messages") or []
        if state["mode"] == "fail":
            return JSONResponse(error_body("injected failure", "server_error"), status_code=500)
        if state["mode"] == "hold":
            await state["release"].wait()
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        if args.role == "judge":
            text = judge_reply(last, args.prefer, args.marker)
        else:
            text = f"{state['prefix']} {last}".strip()
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return JSONResponse(chat_body(body.get("model", args.model), text, prompt_tokens, len(text.split()),
                                      rid=f"chatcmpl-stub-{state['requests']}"))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=("answer", "judge"), default="answer")
    parser.add_argument("--model", default="stub")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--prefer", choices=("marker", "first", "garbage"), default="marker")
    parser.add_argument("--marker", default="GOOD")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port, printed once bound")
    args = parser.parse_args(argv)
    sock = listening_socket(args.port)
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(build_app(args), log_level="warning"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
