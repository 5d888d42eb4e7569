"""Chat data for training: OpenAI-style conversations read and checked, then tokenized along the model's own
chat template with a loss mask.

The template is whatever the model carries (chat_template.py renders it as transformers does), so the mask cannot
be written per format. It is derived by rendering prefixes, as TRL and transformers' assistant masks do: the text
the template adds between "conversation so far + generation prompt" and "conversation so far + this reply" is
what the model generates for that reply. Of it, the reply up to and including the end-of-turn token is learned;
anything the template writes after that (a newline before the next turn) is context, as it is at inference,
where generation stops at the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from homegrown.chat_template import CHAT_SPECIAL_TOKENS, ChatFormat
from homegrown.data.sources import numbered_json_lines
from homegrown.errors import HomegrownError

ROLES = ("system", "user", "assistant")

RESERVED_MARKERS = tuple(CHAT_SPECIAL_TOKENS)
"""Text that would forge a turn boundary in our format if it appeared inside a message."""


def reserved_markers(tok: Tokenizer) -> tuple[str, ...]:
    """A model's special tokens: inside a message each would tokenize as the token itself and forge a turn
    boundary or a role (ours: <|user|>, <|end|> …; ChatML: <|im_start|>, <|im_end|>)."""
    return tuple(t.content for t in tok.get_added_tokens_decoder().values() if t.special)


@dataclass
class EncodedChat:
    """Token ids of one rendered conversation and, per token, 1 if the model must learn to produce it.

    The mask covers each assistant reply and its end-of-turn token — what a chat model generates after the
    generation prompt — and nothing else: system and user text, role markers and separators are context.
    """

    ids: list[int]
    mask: list[int]


class TemplateNotPrefixStable(HomegrownError):
    """The template renders a conversation's start differently once later turns follow, so the prompt a reply
    is generated after never appears in training: no mask derived from it would be right."""


def _reply_spans(chat: ChatFormat, tok: Tokenizer, messages: Sequence[Mapping[str, str]],
                 text: str) -> list[tuple[int, int]]:
    """Character spans of `text` (the whole rendering) the model must learn: each reply + its end of turn."""
    stops = [s for s in (tok.id_to_token(i) for i in chat.stop_ids) if s]
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = chat.render(messages[:i], add_generation_prompt=True)
        upto = chat.render(messages[:i + 1], add_generation_prompt=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TemplateNotPrefixStable(
                f"the model's chat template does not render conversation prefixes as prefixes (at message {i + 1}, "
                "an assistant reply): a reply's prompt would differ between training and chat, so SFT cannot "
                "mask it. Use a model whose template only appends per turn")
        start, end = len(prompt), len(upto)
        content_at = upto.find(m["content"], start)
        after = start if content_at < 0 else content_at + len(m["content"])
        ends = [at + len(s) for s in stops if (at := upto.find(s, after, end)) >= 0]
        spans.append((start, min(ends, default=end)))
    return spans


def encode_conversation(tok: Tokenizer, chat: ChatFormat, messages: Sequence[Mapping[str, str]]) -> EncodedChat:
    """Conversation → the ids of its rendering (no generation prompt) + the loss mask of its replies.

    The whole text is tokenized once, so ids are exactly what the model sees at inference; a token is learned
    when it starts inside a reply span (offsets from `tokenizers`). A token that straddles a span's start would
    mix prompt and reply, and is refused.
    """
    text = chat.render(messages, add_generation_prompt=False)
    spans = _reply_spans(chat, tok, messages, text)
    enc = tok.encode(text, add_special_tokens=False)
    mask = [0] * len(enc.ids)
    for k, (t_start, t_end) in enumerate(enc.offsets):
        for s_start, s_end in spans:
            if t_start < s_start < t_end:
                raise HomegrownError(f"a token of the chat rendering spans the end of a prompt and the start of its "
                                     f"reply ({text[t_start:t_end]!r}); SFT masks cannot be cut there")
            if s_start <= t_start < s_end:
                mask[k] = 1
    return EncodedChat(list(enc.ids), mask)


def message_problem(messages: object, reserved: Sequence[str] = RESERVED_MARKERS) -> str | None:
    """Why `messages` is not a trainable OpenAI-style conversation (for a model whose special tokens are
    `reserved`), or None when it is."""
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
        marker = next((x for x in reserved if x in m["content"]), None)
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


def read_chat_jsonl(path: Path, strict: bool = False, reserved: Sequence[str] = RESERVED_MARKERS) -> ChatFile:
    """Read OpenAI `{"messages": [...]}` lines; bad lines are reported by number and skipped (or fatal if strict).
    A message holding one of the `reserved` markers (the model's special tokens) is a bad line."""
    path = Path(path)
    if not path.is_file():
        raise HomegrownError(f"chat data {path} does not exist; pass a JSONL file of {{\"messages\": [...]}} lines")
    result = ChatFile([], [])
    with path.open(encoding="utf-8") as f:
        for lineno, record, err in numbered_json_lines(f):
            if err is not None:
                problem = f"not valid JSON ({err.msg})"
            else:
                problem = (message_problem(record.get("messages"), reserved) if isinstance(record, dict)
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
