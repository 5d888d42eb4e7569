"""A model's chat format: its jinja chat template, BOS and stop tokens — rendered as transformers renders them,
stored in the Hugging Face files every checkpoint carries.

Every chat path (CLI chat, server, SFT masks, eval chat tasks, export) renders with the template of the model at
hand, so an imported model keeps the exact format it was tuned on. Rendering copies transformers'
`apply_chat_template` environment (sandboxed, trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`,
`strftime_now`, an unescaped `tojson`, the special tokens as variables) without importing transformers, which
is a test-only dependency. Our own models' format is defined here too: `<|role|>\\n{content}<|end|>\\n`, its
tokens reserved in every tokenizer we train. A checkpoint written before the chat files existed gets ours.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from homegrown.errors import HomegrownError
from homegrown.layout import TOKENIZER

EOT = "<|endoftext|>"
"""Our models' end of document: separates training documents, starts plain-text prompts."""
END = "<|end|>"
"""Our models' end of turn."""
CHAT_SPECIAL_TOKENS = [EOT, "<|system|>", "<|user|>", "<|assistant|>", END]
"""Reserved from the first tokenizer on, so base and chat models share one vocabulary (DESIGN: chat template)."""

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_CALL_PREFIX = TOOL_CALL_START + '\n{"name": "'
"""A call is written `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`: the Hermes format that
Qwen2.5's template renders and xgrammar's Qwen structural tag constrains; what follows the name is fixed too."""
TOOL_ARGUMENTS_PREFIX = '", "arguments": '
TOOL_CALL_SUFFIX = "}\n" + TOOL_CALL_END
TOOLS_PREAMBLE = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_INSTRUCTIONS = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                      "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                      '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
"""What a prompt says about the tools (Qwen2.5's wording): their JSON schemas one per line between the two."""

CHAT_TEMPLATE = (
    "{% set ns = namespace(system_done=false) %}"
    "{% if tools %}"
    "{{ '<|system|>\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ (messages[0]['content'] or '') + '\n\n' }}{% set ns.system_done = true %}"
    "{% endif %}"
    "{{ '" + TOOLS_PREAMBLE + "' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '" + TOOLS_INSTRUCTIONS + "<|end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('roles must be system, user, assistant or tool, got ' + message['role']) }}"
    "{% endif %}"
    "{% if loop.first and ns.system_done %}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|user|>' }}{% endif %}"
    "{{ '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|end|>\n' }}{% endif %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '" + TOOL_CALL_PREFIX + "' + call['function']['name'] + '" + TOOL_ARGUMENTS_PREFIX + "' "
    "+ (call['function']['arguments'] | tojson) + '" + TOOL_CALL_SUFFIX + "' }}"
    "{% endfor %}"
    "{{ '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Our chat format as a jinja template: each turn is `<|role|>\\n{content}<|end|>\\n`, and the generation prompt
is `<|assistant|>\\n`. Role markers are single special tokens, so turn boundaries are single ids. With `tools`
(as transformers passes them) a system turn describes them first, merged with the conversation's own system
message; an assistant's tool calls follow its content in the Hermes format, and tool results come back in a user
turn, one `<tool_response>` block each (Qwen2.5's layout). Without tools it renders as it always has."""

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
TEMPLATE_FILE = "chat_template.jinja"
"""transformers 5 saves the template in its own file instead of tokenizer_config.json; it wins when present."""
CHAT_FILES = (TOKENIZER_CONFIG, GENERATION_CONFIG, TEMPLATE_FILE)


class ChatTemplateError(HomegrownError):
    """The model's chat template refused a conversation (its own `raise_exception`, or a sandbox violation)."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """jinja's own tojson escapes HTML characters; templates expect plain JSON, as transformers gives them."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates without handing them the type itself (as transformers does)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that rejects underscore attributes, so a template cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # `self` inside args, as jinja2.utils.Namespace does
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in: templates from the Hub are untrusted code."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token variables it sees (`bos_token`, `eos_token`, …)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise HomegrownError(f"the chat template does not parse (line {err.lineno}: {err.message})") from err
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ChatTemplate) and other.source == self.source
                and other.special_tokens == self.special_tokens)

    def __hash__(self) -> int:
        return hash(self.source)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """Messages in OpenAI shape → the text the model sees; with `add_generation_prompt`, ready for a reply.
        `tools` are OpenAI tool definitions (`{"type": "function", "function": {...}}`), handed to the template
        as transformers' `apply_chat_template(tools=...)` hands them; a template without tool support ignores
        them (see `supports_tools`)."""
        try:
            return self._compiled.render(messages=[dict(m) for m in messages],
                                         tools=[dict(t) for t in tools] if tools else None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the model's chat template refused the conversation: {err}") from err
        except (TypeError, KeyError, AttributeError) as err:  # `'x' + None` and the like inside the template
            raise ChatTemplateError(f"the model's chat template cannot render this conversation: {err}") from err

    @cached_property
    def supports_tools(self) -> bool:
        """Whether the template renders tool definitions, an assistant's tool call and a tool's result — the
        capability check llama.cpp's minja does: render a probe and look for each part in the output. A template
        without it gets tools through `serve.tool_prompt`'s fallback instead."""
        name, value, result = "homegrown_probe_tool", "homegrown_probe_value", "homegrown_probe_result"
        tool = {"type": "function", "function": {"name": name, "description": "probe", "parameters": {
            "type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}}}
        call = {"id": "call_probe", "type": "function", "function": {"name": name, "arguments": {"arg": value}}}
        probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "call_probe", "name": name, "content": result}]
        try:
            with_tools = self.render(probe[:1], True, tools=[tool])
            with_call = self.render(probe, True, tools=[tool])
        except ChatTemplateError:
            return False
        return name in with_tools and value in with_call and result in with_call


@dataclass(frozen=True)
class ChatFormat:
    """What a model says about chat: its template (None for a base model without one), the ids that end
    generation (EOS plus the end-of-turn token), and BOS with whether plain text starts with it."""

    template: ChatTemplate | None
    stop_ids: tuple[int, ...]
    bos_token: str | None = None
    eos_token: str | None = None
    bos_id: int | None = None
    add_bos: bool = False

    @property
    def text_bos_id(self) -> int | None:
        """The id a plain-text prompt (completions, generate, eval contexts) starts with, None when text starts
        bare. BOS when the tokenizer adds one (`add_bos_token`, as Llama's do); for our models <|endoftext|>,
        which starts every training document; SmolLM2 and other models that add none get none."""
        return self.bos_id if self.add_bos or self.bos_token == EOT else None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        if self.template is None:
            raise HomegrownError("this model has no chat template (a base model); use plain-text generation, or "
                                 "fine-tune it into a chat model with `homegrown sft`")
        return self.template.render(messages, add_generation_prompt, tools)

    def end_of_turn_id(self, tok: Tokenizer) -> int | None:
        """The stop token the template closes an assistant turn with (`<|end|>`, `<|im_end|>`, …); None without a
        template, when it does not render, or when the turn ends in none of the stop tokens."""
        if self.template is None:
            return None
        texts = {text: i for i in self.stop_ids if (text := tok.id_to_token(i))}
        try:
            found = turn_end_token(self.template, texts)
        except ChatTemplateError:
            return None
        return None if found is None else texts[found]


TURN_PROBE_REPLY = "homegrown-reply-marker"


def turn_end_token(template: ChatTemplate, candidates: Iterable[str]) -> str | None:
    """Which of `candidates` (token texts) a template closes an assistant turn with: render a one-turn
    conversation and take the candidate that occurs first after the reply (the longest on a tie, so
    `<|im_end|>` wins over a `<|im` prefix). Raises the template's error when it does not render."""
    probe = [{"role": "user", "content": "homegrown-question"}, {"role": "assistant", "content": TURN_PROBE_REPLY}]
    text = template.render(probe, add_generation_prompt=False)
    after = text.find(TURN_PROBE_REPLY)
    if after < 0:
        return None
    after += len(TURN_PROBE_REPLY)
    found = [(at, -len(c), c) for c in candidates if c and (at := text.find(c, after)) >= 0]
    return min(found)[2] if found else None


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HomegrownError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise HomegrownError(f"{path} is not a JSON object")
    return data


def _template_source(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config's `chat_template` (a string, or named templates: `default`)."""
    if (directory / TEMPLATE_FILE).is_file():
        return (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
    source = tokenizer_config.get("chat_template")
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        if "default" not in named:
            raise HomegrownError(f"{directory / TOKENIZER_CONFIG} has named chat templates {sorted(named)} but no "
                                 "'default' one")
        source = named["default"]
    return source if isinstance(source, str) else None


def our_chat_format(tok: Tokenizer) -> ChatFormat:
    """Our models' format: our template, stop at <|end|> or <|endoftext|>, chat prompts start bare."""
    eot, end = tok.token_to_id(EOT), tok.token_to_id(END)
    if eot is None or end is None:
        raise HomegrownError(f"the tokenizer has no {EOT} / {END} tokens and the checkpoint has no "
                             f"{TOKENIZER_CONFIG}; it needs the model's own chat files")
    return ChatFormat(ChatTemplate(CHAT_TEMPLATE, {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}),
                      (eot, end), bos_token=EOT, eos_token=EOT, bos_id=eot, add_bos=False)


def read_chat_format(directory: Path, tok: Tokenizer) -> ChatFormat:
    """The chat format stored beside a model's tokenizer.json; our own for a checkpoint without chat files."""
    directory = Path(directory)
    if not (directory / TOKENIZER_CONFIG).is_file():
        return our_chat_format(tok)
    config = _read_json(directory / TOKENIZER_CONFIG)
    tokens = {key: text for key in ("bos_token", "eos_token", "unk_token", "pad_token")
              if (text := _token_text(config.get(key))) is not None}
    bos, eos = tokens.get("bos_token"), tokens.get("eos_token")
    source = _template_source(directory, config)
    generation = _read_json(directory / GENERATION_CONFIG) if (directory / GENERATION_CONFIG).is_file() else {}
    for key, text in tokens.items():
        if key in ("bos_token", "eos_token") and tok.token_to_id(text) is None:
            raise HomegrownError(f"{directory / TOKENIZER_CONFIG}: {key} {text!r} is not a token of its tokenizer")
    stops = generation.get("eos_token_id")
    if stops is None:
        stops = [] if eos is None else [tok.token_to_id(eos)]
    stop_ids = tuple(dict.fromkeys(stops if isinstance(stops, list) else [stops]))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if any(not isinstance(i, int) or not 0 <= i < vocab for i in stop_ids):
        raise HomegrownError(f"{directory}: stop token ids {list(stop_ids)} are not all ids of its tokenizer")
    bos_id = generation.get("bos_token_id", tok.token_to_id(bos) if bos is not None else None)
    add_bos = bool(config.get("add_bos_token", False))
    if (add_bos or bos == EOT) and not (isinstance(bos_id, int) and 0 <= bos_id < vocab):
        raise HomegrownError(f"{directory}: plain text starts with BOS (add_bos_token) but its BOS id {bos_id!r} is "
                             "not a token of its tokenizer; set bos_token / bos_token_id to one")
    return ChatFormat(ChatTemplate(source, tokens) if source is not None else None, stop_ids,
                      bos_token=bos, eos_token=eos, bos_id=bos_id, add_bos=add_bos)


def write_chat_format(directory: Path, chat: ChatFormat, tokenizer_extra: Mapping[str, Any] | None = None,
                      generation_extra: Mapping[str, Any] | None = None) -> None:
    """Store `chat` as transformers stores it (tokenizer_config.json + generation_config.json), with any extra
    keys an export adds (tokenizer class, pad token)."""
    directory = Path(directory)
    config: dict[str, Any] = {"bos_token": chat.bos_token, "eos_token": chat.eos_token, "add_bos_token": chat.add_bos,
                              "add_eos_token": False}
    if chat.template is not None:
        config.update({k: v for k, v in chat.template.special_tokens.items() if k not in config})
        config["chat_template"] = chat.template.source
    config.update(tokenizer_extra or {})
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    generation = {"bos_token_id": chat.bos_id, "eos_token_id": list(chat.stop_ids), **(generation_extra or {})}
    (directory / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2), encoding="utf-8")


def copy_tokenizer_files(tokenizer_path: Path, out_dir: Path) -> None:
    """tokenizer.json and the chat files beside it into `out_dir` — ours written out when there are none, so
    every new checkpoint carries its chat format explicitly."""
    tokenizer_path, out_dir = Path(tokenizer_path), Path(out_dir)
    shutil.copyfile(tokenizer_path, out_dir / TOKENIZER)
    source = tokenizer_path.parent
    if (source / TOKENIZER_CONFIG).is_file():
        for name in CHAT_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out_dir / name)
    else:
        write_chat_format(out_dir, our_chat_format(Tokenizer.from_file(str(tokenizer_path))))
