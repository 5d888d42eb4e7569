"""/api/me (who am I, for the chat page) and /api/keys (key management for admins) over the key store.

An admin can do over HTTP what `homegrown serve keys` does on the server's machine: list keys, add one for a
user (the key is in that answer only) and revoke one. Nothing else is special about admins: their conversations
are as private as anyone's. A user who is not an admin gets 403 from /api/keys.
"""

# No `from __future__ import annotations`: the handlers' `Caller` annotation is made inside build_router (see
# conversations.py).
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from homegrown.serve.conversations import BadRequest, Body, body_schema, parse_body
from homegrown.serve.keys import USER_PATTERN, ApiKey, KeyAmbiguous, KeyNotFound, KeyStore, Principal
from homegrown.serve.protocol import error_json
from homegrown.serve.store import MAX_OWNER


class CreateKey(Body):
    user: str = Field(min_length=1, max_length=MAX_OWNER, pattern=f"^{USER_PATTERN.pattern}$")
    role: Literal["user", "admin"] = "user"


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def key_json(k: ApiKey) -> dict[str, Any]:
    """A key's public record: never its secret (the store does not have it)."""
    return {"id": k.id, "object": "api_key", "prefix": k.prefix, "user": k.user, "role": k.role,
            "created_at": _ts(k.created_at), "revoked_at": _ts(k.revoked_at)}


def _forbidden(caller: Principal) -> JSONResponse:
    return error_json(403, f"managing keys needs an admin key; user {caller.user!r} has the role {caller.role!r} "
                           "(on a server with no keys yet, add the first with `homegrown serve keys add` on its "
                           "machine)", code="permission_denied")


def build_router(keys: KeyStore, authenticate: Callable[[Request], Awaitable[Principal]]) -> APIRouter:
    """/api/me for every caller, /api/keys for admins; `authenticate` names the caller (or refuses)."""
    router = APIRouter(prefix="/api", tags=["users"])
    Caller = Annotated[Principal, Depends(authenticate)]

    async def admin_call(caller: Principal, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` off the event loop for an admin; an error response for anyone else or on failure."""
        if not caller.is_admin:
            return _forbidden(caller)
        try:
            return await run_in_threadpool(fn, *args)
        except KeyNotFound as e:
            return error_json(404, str(e), param="key_id", code="key_not_found")
        except KeyAmbiguous as e:
            return error_json(400, str(e), param="key_id", code="ambiguous_key_id")
        except SQLAlchemyError as e:
            return error_json(503, f"the key database failed ({e.__class__.__name__}); check that it is "
                                   "reachable and retry", kind="server_error")

    @router.get("/me", summary="The user and role of the key this request carries")
    async def me(caller: Caller) -> Any:
        return {"object": "user", "user": caller.user, "role": caller.role}

    @router.get("/keys", summary="Every API key (admins only), revoked ones included",
                responses={403: {"description": "not an admin"}})
    async def list_keys(caller: Caller) -> Any:
        found = await admin_call(caller, keys.list_keys)
        if isinstance(found, JSONResponse):
            return found
        return {"object": "list", "data": [key_json(k) for k in found]}

    @router.post("/keys", summary="Add a key for a user (admins only); the key is in this answer only",
                 openapi_extra=body_schema(CreateKey),
                 responses={400: {"description": "malformed body"}, 403: {"description": "not an admin"}})
    async def add_key(request: Request, caller: Caller) -> Any:
        if not caller.is_admin:  # before reading the body: a non-admin learns nothing about its checks
            return _forbidden(caller)
        try:
            body = await parse_body(request, CreateKey)
        except BadRequest as e:
            return error_json(400, str(e), param=e.param)
        made = await admin_call(caller, keys.add, body.user, body.role)
        if isinstance(made, JSONResponse):
            return made
        record, secret = made
        return {**key_json(record), "key": secret}

    @router.delete("/keys/{key_id}", summary="Revoke a key by id or prefix (admins only)",
                   responses={400: {"description": "an all-digit name that is one key's id and another's prefix"},
                              403: {"description": "not an admin"}, 404: {"description": "no such key"}})
    async def revoke_key(key_id: str, caller: Caller) -> Any:
        done = await admin_call(caller, keys.revoke, key_id)
        return done if isinstance(done, JSONResponse) else key_json(done)

    return router
