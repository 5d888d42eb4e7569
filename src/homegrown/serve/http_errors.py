"""OpenAI-shaped HTTP errors for FastAPI apps that speak the OpenAI API (`homegrown serve`, `homegrown gateway`).

Every answer that is not a success has OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`;
FastAPI's 422 for a bad body becomes a 400 naming the field, an unknown path a 404 `not_found_error`, and an
unexpected exception a 500 `server_error` (logged). Kept apart from api.py so an app without the engine (the
gateway) gets the same shapes without importing torch.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from homegrown.serve.protocol import error_json, unsupported_message

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return error_json(e.status, e.message, e.kind, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        # A field we do not take is the most useful thing to name, whatever else is wrong.
        extra = [err for err in errors if err.get("type") == "extra_forbidden"]
        first = (extra or errors or [{"loc": (), "msg": "invalid request"}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        kind = first.get("type")
        if kind == "json_invalid":
            return error_json(400, f"the request body is not valid JSON ({first.get('msg')}); send a JSON object",
                              code="invalid_json")
        if kind == "extra_forbidden" and param:
            return error_json(400, unsupported_message(param), param=param, code="unsupported_parameter")
        if kind == "invalid_unicode":
            return error_json(400, str(first.get("msg")), param=(first.get("ctx") or {}).get("param"),
                              code="invalid_unicode")
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_json(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_json(e.status_code, str(e.detail), kind, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_json(500, f"internal error: {type(e).__name__}", "server_error")
