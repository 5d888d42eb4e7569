"""Request bodies of the OpenAI API subset we serve, as pydantic models: they validate input and publish the
OpenAPI schema that clients and the schemathesis fuzz run read.

Nothing a client sends is silently ignored. A field we implement is validated (a wrong type or range is a 400
naming it); a field of OpenAI's API we do not implement (`functions`, `audio`, …) is a 400
"… is not supported" naming it, unless its value is the one that switches it off (`null`, `store: false`);
any other field is a 400 "Unrecognized request argument supplied", as
OpenAI answers. `user` is accepted: it only identifies the caller and has no effect on any output. Every string
of a body must be valid Unicode: JSON escapes can spell lone UTF-16 surrogates (`"\\udcff"`), which no tokenizer
or database can take, so they are refused here, at the boundary, with the path of the offending string.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from homegrown.errors import HomegrownError
from homegrown.serve.constraint_spec import ENDS_ELSEWHERE, ConstraintSpec

MAX_TOKENS_LIMIT = 1 << 20
"""Far above any context; keeps absurd integers out of arithmetic while the context check gives the message."""
SEED_LIMIT = (1 << 63) - 1
LOGIT_BIAS_LIMIT = 100.0
"""OpenAI's range for one token's bias: -100 bans the token, +100 all but forces it."""

StopField = Annotated[str | list[Annotated[str, Field(min_length=1)]] | None,
                      Field(description="Up to 4 strings; generation stops before the first one produced.")]

CHAT_TOOLS_HINT = "; tools are taken by /v1/chat/completions"
FUNCTIONS_HINT = "; use tools and tool_choice, which replaced it"
UNSUPPORTED_HINTS: dict[str, str] = {
    "tools": CHAT_TOOLS_HINT, "tool_choice": CHAT_TOOLS_HINT, "parallel_tool_calls": CHAT_TOOLS_HINT,
    "functions": FUNCTIONS_HINT, "function_call": FUNCTIONS_HINT,
    "audio": "", "modalities": '; only ["text"] is', "prediction": "", "reasoning_effort": "", "service_tier": "",
    "store": "; only false is", "metadata": "", "web_search_options": "", "verbosity": "", "prompt_cache_key": "",
    "suffix": "", "best_of": "; use n", "name": "", "refusal": "", "annotations": "",
}
"""Fields of OpenAI's API that we know and do not implement, with what to say about each."""


def find_invalid_unicode(value: Any) -> str | None:
    """The path (`messages.0.content`) of the first string in a parsed JSON value, key or value, that cannot be
    encoded as UTF-8 (a lone surrogate from a `\\uXXXX` escape); None when every string is valid. Iterative, so
    a deeply nested body cannot exhaust the stack."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        path, item = todo.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path or "body"
        elif isinstance(item, dict):
            if not all(_encodable(key) for key in item if isinstance(key, str)):
                return f"{path or 'body'} (a key)"
            todo.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            todo.extend((f"{path}.{i}" if path else str(i), v) for i, v in reversed(list(enumerate(item))))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_unicode_message(param: str) -> str:
    return (f"{param} is not valid Unicode (it holds a lone UTF-16 surrogate such as \\udcff); "
            "send text that can be encoded as UTF-8")


class _Request(BaseModel):
    """Unknown fields are errors; `_unsupported` lists OpenAI fields we refuse, with the values that mean 'off'
    (always including null), which are accepted as if the field were absent."""

    model_config = ConfigDict(extra="forbid")
    _unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _drop_switched_off(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls._unsupported:
            off = {k for k, values in cls._unsupported.items()
                   if k in data and (data[k] is None or any(data[k] == v and type(data[k]) is type(v)
                                                            for v in values))}
            if off:
                data = {k: v for k, v in data.items() if k not in off}
        return data


class _Body(_Request):
    """A whole request body: checked for invalid Unicode before anything else reads it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        param = find_invalid_unicode(data)
        if param is not None:
            raise PydanticCustomError("invalid_unicode", invalid_unicode_message(param), {"param": param})
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""OpenAI's rule for a function's name."""
MAX_TOOLS = 128
"""OpenAI's limit on `tools`."""


class FunctionDefinition(_Request):
    name: str = Field(pattern=FUNCTION_NAME, description="Letters, digits, _ and -, at most 64.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description=(
        "A JSON Schema of the arguments object; omitted means no arguments. The arguments a call is made with "
        "always follow it (constrained decoding), whatever `strict` says."))
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(_Request):
    name: str
    arguments: str = Field(description="The arguments as a JSON object in a string, as the call returned them.")


class MessageToolCall(_Request):
    id: str = Field(min_length=1)
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(_Request):
    _unsupported = {"name": (), "function_call": (), "refusal": (), "audio": (), "annotations": ([],)}
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = Field(None, description="An assistant's calls, as it made them.")
    tool_call_id: str | None = Field(None, description="A tool message: the id of the call it answers.")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


TokenId = Annotated[int, Field(ge=0, le=1 << 31)]


class TextFormat(_Request):
    type: Literal["text"]


class JSONObjectFormat(_Request):
    type: Literal["json_object"]


class JSONSchema(_Request):
    """`name` and `description` identify the format to the client; like the schema, they are not written into
    the prompt (say what to produce in the messages): the schema reaches the model as the mask, not as text."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the reply must be valid against.")
    strict: bool | None = Field(None, description=(
        "Accepted for OpenAI compatibility; the schema is enforced by constrained decoding either way, in full "
        "(a keyword that cannot be enforced is a 400, never skipped)."))


class JSONSchemaFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type", description=(
    "text (default); json_object: the reply is one JSON object; json_schema: the reply is JSON valid against "
    "json_schema.schema. Both are enforced token by token (constrained decoding) and end the reply when the JSON "
    "is complete; with finish_reason 'length' (max_tokens reached first) it is incomplete."))]


class _Sampling(_Body):
    _unsupported = {"tools": (), "tool_choice": ("none",), "functions": (), "function_call": ("none",),
                    "parallel_tool_calls": (), "audio": (),
                    "modalities": (["text"],), "prediction": (), "reasoning_effort": (), "service_tier": (),
                    "store": (False,), "metadata": (), "web_search_options": (), "verbosity": (),
                    "prompt_cache_key": ()}
    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=1 << 20, description="Extension (vLLM): -1 or 0 = off.")
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT, description=(
        "Extension (vLLM): the end-of-text/turn tokens and stop_token_ids cannot be sampled, and stop strings are "
        "not looked for, until this many tokens were generated. At most max_tokens."))
    ignore_eos: bool = Field(False, description=(
        "Extension (vLLM): do not stop at the model's end-of-text/turn tokens; only max_tokens, stop strings and "
        "explicit stop_token_ids end the reply."))
    n: int = Field(1, ge=1, le=128)
    stop: StopField = None
    stop_token_ids: list[TokenId] | None = Field(None, description="Extension (vLLM): token ids that end generation.")
    seed: int | None = Field(None, ge=-SEED_LIMIT, le=SEED_LIMIT)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description=(
        "Token id (as a string) → bias in [-100, 100] added to that token's logit before sampling."))
    user: str | None = Field(None, max_length=256, description="Identifies the caller (OpenAI); no effect here.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_and_range(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not (key.isascii() and key.isdigit()) or int(key) > 1 << 31:
                raise ValueError(f"keys must be token ids written as decimal strings, got {key!r}")
            if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
                raise ValueError(f"biases must be between -100 and 100, got {value} for token {key}")
        return bias

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}

    def constraint(self) -> ConstraintSpec | None:
        """What `response_format` asks the engine to enforce; None for plain text."""
        fmt = self.response_format
        if isinstance(fmt, JSONObjectFormat):
            return ConstraintSpec.json_object()
        if isinstance(fmt, JSONSchemaFormat):
            return ConstraintSpec.json_schema(fmt.json_schema.schema_)
        return None


class ChatCompletionRequest(_Sampling):
    _unsupported = {k: v for k, v in _Sampling._unsupported.items()
                    if k not in ("tools", "tool_choice", "parallel_tool_calls")}
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(None, description=(
        "auto (the default with tools): the model may answer or call; required: it calls one or more tools; a "
        "named function: it calls that one; none: no calls, and the tools are left out of the prompt."))
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call per reply.")


class CompletionRequest(_Sampling):
    _unsupported = {**_Sampling._unsupported, "suffix": ("",), "best_of": (1,)}
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="A string, a list of strings (one completion each), a list of token ids or a list of such "
                    "lists (as lm-eval's local-completions sends). Text starts after the model's BOS when "
                    "its tokenizer adds one (<|endoftext|> for homegrown's own models); ids are taken as they are.")
    max_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT,
                                   description="0 with echo: the prompt alone (with its log-probs), nothing generated.")
    logprobs: int | None = Field(None, ge=0, le=5, description="With echo, the prompt's tokens get them too (the "
                                                                "first one's is null), as in vLLM.")
    echo: bool = False


DEFAULTABLE = ("max_tokens", "temperature", "top_p", "top_k", "min_tokens", "ignore_eos", "seed",
               "presence_penalty", "frequency_penalty", "stop", "stop_token_ids", "logit_bias")
"""Sampling fields `homegrown serve --generation-config` may give a default for (vLLM's
--override-generation-config): a request that sets a field keeps its own value, and a constrained request
(JSON or tool calls) takes none of those that would end its reply elsewhere than its grammar (ENDS_ELSEWHERE)."""


def parse_generation_defaults(text: str) -> dict[str, Any]:
    """`--generation-config` JSON → the validated defaults; a HomegrownError that names the problem otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HomegrownError(f"--generation-config is not valid JSON ({e}); give an object such as "
                             '\'{"ignore_eos": true, "max_tokens": 200}\'') from e
    if not isinstance(data, dict):
        raise HomegrownError(f"--generation-config must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(DEFAULTABLE))
    if unknown:
        raise HomegrownError(f"--generation-config cannot set {', '.join(unknown)}; it takes {', '.join(DEFAULTABLE)}")
    try:
        checked = _Sampling.model_validate({"model": "-", **data})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        raise HomegrownError(f"--generation-config: {where}: {first['msg']}") from e
    return {key: getattr(checked, key) for key in data}


def with_defaults(req: _Sampling, defaults: dict[str, Any], constrained: bool) -> _Sampling:
    """The request with the server's defaults filled in for the fields it did not send.

    A `constrained` request (response_format JSON, or tools whose calls follow a grammar) takes no default that
    would end its reply elsewhere than the grammar (ENDS_ELSEWHERE): set by the client these are a 400, but a
    server default such as `{"ignore_eos": true}` is meant for free text, and must not turn a request the client
    wrote correctly into one — the grammar's end wins, and the server's other defaults still apply."""
    skipped = ENDS_ELSEWHERE if constrained else ()
    missing = {k: v for k, v in defaults.items() if k not in req.model_fields_set and k not in skipped}
    return req.model_copy(update=missing) if missing else req


def unsupported_message(param: str) -> str:
    name = param.rsplit(".", 1)[-1]
    if name in UNSUPPORTED_HINTS:
        return f"{param} is not supported by this server{UNSUPPORTED_HINTS[name]}"
    return f"Unrecognized request argument supplied: {param}"


def _printable(text: str | None) -> str | None:
    """Lone surrogates escaped, so an error about invalid input can itself be encoded."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_json(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every error we answer."""
    return JSONResponse({"error": {"message": _printable(message), "type": kind, "param": _printable(param),
                                   "code": code}}, status_code=status, headers=headers)
