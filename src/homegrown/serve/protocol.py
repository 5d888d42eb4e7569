"""Request bodies of the OpenAI API subset we serve, as pydantic models: they validate input and publish the
OpenAPI schema that clients and the schemathesis fuzz run read.

Unknown fields are ignored, as OpenAI-compatible servers do, because clients send parameters we do not use
(`user`, `metadata`, …); wrong types and out-of-range values are rejected with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_LIMIT = 1 << 20
"""Far above any context; keeps absurd integers out of arithmetic while the context check gives the message."""
SEED_LIMIT = (1 << 63) - 1

StopField = Annotated[str | list[Annotated[str, Field(min_length=1)]] | None,
                      Field(description="Up to 4 strings; generation stops before the first one produced.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=1 << 20, description="Extension (vLLM): -1 or 0 = off.")
    n: int = Field(1, ge=1, le=128)
    stop: StopField = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=1 << 31)]] | None = Field(
        None, description="Extension (vLLM): token ids that end generation.")
    seed: int | None = Field(None, ge=-SEED_LIMIT, le=SEED_LIMIT)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


TokenId = Annotated[int, Field(ge=0, le=1 << 31)]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        description="A string, a list of strings (one completion each), a list of token ids or a list of such "
                    "lists (as lm-eval's local-completions sends). Text starts after <|endoftext|>; ids are "
                    "taken as they are.")
    max_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT,
                                   description="0 with echo: the prompt alone (with its log-probs), nothing generated.")
    logprobs: int | None = Field(None, ge=0, le=5, description="With echo, the prompt's tokens get them too (the "
                                                                "first one's is null), as in vLLM.")
    echo: bool = False


def error_json(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every error we answer."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)
