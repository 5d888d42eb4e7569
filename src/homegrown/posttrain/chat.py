"""The chat template of DESIGN.md, in one place: the CLI chat, the server and the HF export all render with it.

Roles are marked by reserved special tokens, each turn closed by <|end|>, so a model learns turn boundaries
as single tokens and a server stops generation on exactly one id.
"""

from __future__ import annotations

from homegrown.errors import HomegrownError

ROLES = ("system", "user", "assistant")
END = "<|end|>"

CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""The same format as `render_prompt`, for tokenizer_config.json so `apply_chat_template` agrees with us."""


def render_turn(role: str, content: str) -> str:
    if role not in ROLES:
        raise HomegrownError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
    return f"<|{role}|>\n{content}{END}\n"


def render_prompt(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Messages in OpenAI shape ({"role", "content"}) → the text the model sees, ready for the reply."""
    text = "".join(render_turn(m["role"], m["content"]) for m in messages)
    return text + "<|assistant|>\n" if add_generation_prompt else text
