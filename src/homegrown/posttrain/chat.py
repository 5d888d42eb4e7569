"""The chat template of DESIGN.md, in one place: the CLI chat, the server and the HF export all render with it.

Roles are marked by reserved special tokens, each turn closed by <|end|>, so a model learns turn boundaries
as single tokens and a server stops generation on exactly one id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from homegrown.config import CHAT_SPECIAL_TOKENS
from homegrown.data.sources import numbered_json_lines
from homegrown.errors import HomegrownError

ROLES = ("system", "user", "assistant")
END = "<|end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Jinja version of our chat format, for `apply_chat_template` and OpenAI-style servers such as vLLM:
each turn is `<|role|>\\n{content}<|end|>\\n`, and the generation prompt is `<|assistant|>\\n`."""


def render_turn(role: str, content: str) -> str:
    if role not in ROLES:
        raise HomegrownError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
    return f"<|{role}|>\n{content}{END}\n"


def render_prompt(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Messages in OpenAI shape ({"role", "content"}) → the text the model sees, ready for the reply."""
    text = "".join(render_turn(m["role"], m["content"]) for m in messages)
    return text + "<|assistant|>\n" if add_generation_prompt else text


RESERVED_MARKERS = tuple(CHAT_SPECIAL_TOKENS)
"""Text that would forge a turn boundary if it appeared inside a message."""


@dataclass
class EncodedChat:
    """Token ids of one rendered conversation and, per token, 1 if the model must learn to produce it.

    The mask covers each assistant reply and its closing <|end|> — what a chat model generates after the
    `<|assistant|>\\n` prompt — and nothing else: system and user text, role markers and newlines are context.
    """

    ids: list[int]
    mask: list[int]


def encode_conversation(tok: Tokenizer, messages: list[dict[str, str]]) -> EncodedChat:
    """Conversation → ids + loss mask, tokenized piece by piece along the template.

    Special tokens split the text anyway, so the pieces concatenate to exactly the ids of `render_prompt`;
    encoding the assistant body on its own makes the mask boundary exact without offset arithmetic.
    """
    ids: list[int] = []
    mask: list[int] = []

    def add(text: str, learn: int) -> None:
        piece = tok.encode(text, add_special_tokens=False).ids
        ids.extend(piece)
        mask.extend([learn] * len(piece))

    for m in messages:
        role = m["role"]
        if role not in ROLES:
            raise HomegrownError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        learn = int(role == "assistant")
        add(f"<|{role}|>\n", 0)
        add(m["content"] + END, learn)
        add("\n", 0)
    return EncodedChat(ids, mask)


def message_problem(messages: object) -> str | None:
    """Why `messages` is not a trainable OpenAI-style conversation, or None when it is."""
    if not isinstance(messages, list) or not messages:
        return 'expected a non-empty "messages" list'
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            return f"message {i} is not an object with role and content"
        if "role" not in m:
            return f'message {i} has no "role"'
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f'message {i} ({m["role"]}) needs "content" as a string, got {type(m.get("content")).__name__}'
        if not m["content"].strip():
            return f"message {i} ({m['role']}) has empty content"
        marker = next((x for x in RESERVED_MARKERS if x in m["content"]), None)
        if marker:
            return f"message {i} ({m['role']}) contains the reserved marker {marker}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to learn from"
    return None


@dataclass
class ChatFile:
    """Conversations read from a chat JSONL file, and what was wrong with the lines that were skipped."""

    conversations: list[list[dict[str, str]]]
    problems: list[str]


def read_chat_jsonl(path: Path, strict: bool = False) -> ChatFile:
    """Read OpenAI `{"messages": [...]}` lines; bad lines are reported by number and skipped (or fatal if strict)."""
    path = Path(path)
    if not path.is_file():
        raise HomegrownError(f"chat data {path} does not exist; pass a JSONL file of {{\"messages\": [...]}} lines")
    result = ChatFile([], [])
    with path.open(encoding="utf-8") as f:
        for lineno, record, err in numbered_json_lines(f):
            if err is not None:
                problem = f"not valid JSON ({err.msg})"
            else:
                problem = (message_problem(record.get("messages")) if isinstance(record, dict)
                           else 'expected an object with a "messages" list')
            if problem is None:
                result.conversations.append([{"role": m["role"], "content": m["content"]}
                                             for m in record["messages"]])
                continue
            if strict:
                raise HomegrownError(f"{path}:{lineno}: {problem} (fix the line, or drop --strict to skip bad lines)")
            result.problems.append(f"{path}:{lineno}: {problem}")
    if not result.conversations:
        raise HomegrownError(f"{path} holds no usable conversations ({len(result.problems)} bad lines)")
    return result
