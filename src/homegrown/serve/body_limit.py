"""A cap on request body size, enforced before the body is read whole: a client cannot make the server buffer
and parse a body of any size (uvicorn sets no limit of its own).

A declared Content-Length over the cap is refused from the headers alone; a chunked body is counted as it
arrives and refused the moment it passes the cap. Either way the answer is a 413 in OpenAI's error shape, and
the connection is closed, since the rest of the body is never read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from homegrown.serve.protocol import error_json


class BodySizeLimit:
    """ASGI middleware: 413 for an HTTP request body longer than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            # The server reads exactly Content-Length bytes, so the header alone decides.
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # No length declared (chunked): read up to the cap here, then replay what was read to the app.
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_json(413, f"the request body is larger than this server's limit of {self.max_bytes} bytes "
                                   "(homegrown serve --max-body-bytes); send less", code="request_too_large",
                              headers={"Connection": "close"})
        await response(scope, receive, send)
