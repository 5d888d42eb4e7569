"""Stand-ins for a remote OpenAI-compatible API, shared by the tests that need one (the teacher of `data synth`,
the judge of `data pairs`, the gateway's providers and judges): OpenAI's reply and error bodies, the loopback
socket a stub serves, and `ChatStub`, a chat-completions endpoint in a thread of the test process.

The clients under test talk to these through the official openai SDK exactly as they would to api.openai.com;
the stubs only decide what comes back. The gateway's stubs (tests/gateway/stub_provider.py, stub_llm.py) are
processes of their own, so a test can kill one; they build their bodies here too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def chat_body(model: str, text: str | None, prompt_tokens: int, completion_tokens: int, rid: str = "chatcmpl-stub",
              finish_reason: str = "stop") -> dict[str, Any]:
    """A whole `chat.completion` with one choice, as OpenAI answers."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def listening_socket(port: int = 0, fd: int | None = None) -> socket.socket:
    """The loopback socket a stub serves: an inherited one (`fd`, so a test can restart a stub on the same
    address), else one bound to `port` (0: a free one, which the stub then prints)."""
    if fd is not None:
        return socket.socket(fileno=fd)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


FAULTS = ("ok", "slow", "429", "500", "401", "garbage", "not-json")
"""What `ChatStub.script` can make the next requests get: a normal reply; one 1.5 s late; that status in
OpenAI's error shape (429 with Retry-After: 0); a 200 whose message has no content; a 200 that is not JSON."""


class ChatStub:
    """/v1/chat/completions answering `reply(request)` with fixed usage counts (`usage`: prompt and completion
    tokens per reply), in a thread of the test process. `script` holds the faults of the next requests (FAULTS);
    once it is empty requests succeed. `requests` counts them. Use it as a context manager."""

    def __init__(self, reply: Callable[[dict], str], usage: tuple[int, int]) -> None:
        self.reply, self.usage = reply, usage
        self.requests = 0
        self.script: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    fault = outer.script.pop(0) if outer.script else "ok"
                status, body, headers = outer._answer(request, fault)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError):  # the client timed out and went away
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _answer(self, request: dict, fault: str) -> tuple[int, bytes, dict[str, str]]:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        if fault == "slow":
            time.sleep(1.5)
        if fault in ("429", "500", "401"):
            body = error_body(f"scripted {fault}", "x")
            return int(fault), json.dumps(body).encode(), {"Retry-After": "0"} if fault == "429" else {}
        if fault == "not-json":
            return 200, b"<html>proxy error</html>", {}
        text = None if fault == "garbage" else self.reply(request)
        return 200, json.dumps(chat_body(request["model"], text, *self.usage)).encode(), {}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ChatStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
