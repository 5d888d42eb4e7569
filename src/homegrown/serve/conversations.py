"""JSON endpoints under /api/conversations that the chat page saves its conversations through.

Every endpoint acts for the caller the app's key check names (auth.py): a user lists, reads, renames, deletes
and appends to their own conversations only, and another user's conversation id is a 404 like an unknown one,
so ids reveal nothing.

Bodies are parsed here rather than by FastAPI's automatic validation so that every mistake — malformed
JSON, a wrong type, an unknown field — comes back as a 400 in OpenAI's error shape, the same shape the
/v1 endpoints use, whatever exception handlers the surrounding app installs. The request schemas are
still published in OpenAPI (openapi_extra) so clients and the schemathesis fuzz run see them.
"""

# No `from __future__ import annotations` here: the handlers' `Caller` annotation is made inside build_router,
# and FastAPI can only read it as a real object, not as a name to look up in this module.
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from homegrown.serve.keys import Principal
from homegrown.serve.protocol import error_json, find_invalid_unicode, invalid_unicode_message
from homegrown.serve.store import Conversation, ConversationNotFound, ConversationStore, Message

MAX_TITLE = 200
MAX_MODEL = 200
MAX_SYSTEM_PROMPT = 100_000
MAX_CONTENT = 1_000_000
LIST_LIMIT = 500


class Body(BaseModel):
    """A JSON request body of the /api endpoints: every field typed strictly, no field we do not define."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CreateConversation(Body):
    title: str = Field("New chat", min_length=1, max_length=MAX_TITLE)
    model: str | None = Field(None, max_length=MAX_MODEL)
    system_prompt: str = Field("", max_length=MAX_SYSTEM_PROMPT)
    temperature: float | None = Field(None, ge=0, le=2)


class UpdateConversation(Body):
    """Only the fields sent change; model and temperature may be null (no preference), title and prompt not."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE)] | SkipJsonSchema[None] = None
    model: str | None = Field(None, max_length=MAX_MODEL)
    system_prompt: Annotated[str, Field(max_length=MAX_SYSTEM_PROMPT)] | SkipJsonSchema[None] = None
    temperature: float | None = Field(None, ge=0, le=2)


class AppendMessage(Body):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT)


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def message_json(m: Message) -> dict[str, Any]:
    return {"id": m.id, "object": "conversation.message", "conversation_id": m.conversation_id,
            "role": m.role, "content": m.content, "created_at": _ts(m.created_at)}


def conversation_json(c: Conversation, with_messages: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": c.id, "object": "conversation", "title": c.title, "model": c.model,
                           "system_prompt": c.system_prompt, "temperature": c.temperature,
                           "created_at": _ts(c.created_at), "updated_at": _ts(c.updated_at)}
    if with_messages:
        out["messages"] = [message_json(m) for m in c.messages]
    return out


class BadRequest(Exception):
    """A body parse_body refuses; the endpoint answers it as a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def parse_body(request: Request, schema: type[Body]) -> Body:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e}); send a JSON object") from e
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    bad = find_invalid_unicode(data)
    if bad is not None:
        raise BadRequest(invalid_unicode_message(bad), bad)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None  # the field, not pydantic's union branch
        raise BadRequest(f"{param}: {first['msg']}" if param else first["msg"], param) from e


def body_schema(schema: type[Body]) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema.model_json_schema()}}}}


_NOT_FOUND = {404: {"description": "no conversation with this id"}}
_BAD = {400: {"description": "malformed body"}}


def build_router(store: ConversationStore, authenticate: Callable[[Request], Awaitable[Principal]]) -> APIRouter:
    """The /api/conversations endpoints over one store, each for the caller `authenticate` names (or refuses)."""
    router = APIRouter(prefix="/api/conversations", tags=["conversations"])
    Caller = Annotated[Principal, Depends(authenticate)]

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a store call off the event loop; map its failures to OpenAI-shaped responses."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except ConversationNotFound as e:
            return error_json(404, str(e), param="conversation_id", code="conversation_not_found")
        except SQLAlchemyError as e:
            return error_json(503, f"the conversation database failed ({e.__class__.__name__}); "
                                  "check that it is reachable and retry", kind="server_error")

    @router.get("", summary="List conversations, most recently used first")
    async def list_conversations(caller: Caller) -> Any:
        found = await call(store.list_conversations, caller.user, LIST_LIMIT)
        if isinstance(found, JSONResponse):
            return found
        return {"object": "list", "data": [conversation_json(c, with_messages=False) for c in found]}

    @router.post("", summary="Start a conversation", openapi_extra=body_schema(CreateConversation),
                 responses=_BAD)
    async def create_conversation(request: Request, caller: Caller) -> Any:
        try:
            body = await parse_body(request, CreateConversation)
        except BadRequest as e:
            return error_json(400, str(e), param=e.param)
        made = await call(store.create, caller.user, **body.model_dump())
        return made if isinstance(made, JSONResponse) else conversation_json(made)

    @router.get("/{conversation_id}", summary="One conversation with its messages", responses=_NOT_FOUND)
    async def get_conversation(conversation_id: str, caller: Caller) -> Any:
        found = await call(store.get, caller.user, conversation_id)
        return found if isinstance(found, JSONResponse) else conversation_json(found)

    @router.patch("/{conversation_id}", summary="Rename or change settings",
                  openapi_extra=body_schema(UpdateConversation), responses={**_BAD, **_NOT_FOUND})
    async def update_conversation(conversation_id: str, request: Request, caller: Caller) -> Any:
        try:
            body = await parse_body(request, UpdateConversation)
        except BadRequest as e:
            return error_json(400, str(e), param=e.param)
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            return error_json(400, "nothing to change; send title, model, system_prompt or temperature")
        for key in ("title", "system_prompt"):
            if key in changes and changes[key] is None:
                return error_json(400, f"{key} cannot be null", param=key)
        done = await call(store.update, caller.user, conversation_id, **changes)
        return done if isinstance(done, JSONResponse) else conversation_json(done)

    @router.delete("/{conversation_id}", summary="Delete a conversation and its messages", responses=_NOT_FOUND)
    async def delete_conversation(conversation_id: str, caller: Caller) -> Any:
        done = await call(store.delete, caller.user, conversation_id)
        if isinstance(done, JSONResponse):
            return done
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @router.post("/{conversation_id}/messages", summary="Append a message",
                 openapi_extra=body_schema(AppendMessage), responses={**_BAD, **_NOT_FOUND})
    async def append_message(conversation_id: str, request: Request, caller: Caller) -> Any:
        try:
            body = await parse_body(request, AppendMessage)
        except BadRequest as e:
            return error_json(400, str(e), param=e.param)
        made = await call(store.append, caller.user, conversation_id, body.role, body.content)
        return made if isinstance(made, JSONResponse) else message_json(made)

    return router
