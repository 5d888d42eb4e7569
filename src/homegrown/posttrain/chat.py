"""The chat template of DESIGN.md, in one place: the CLI chat, the server and the HF export all render with it.

Roles are marked by reserved special tokens, each turn closed by <|end|>, so a model learns turn boundaries
as single tokens and a server stops generation on exactly one id.
"""

from __future__ import annotations

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
