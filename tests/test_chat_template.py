"""Chat rendering must be transformers' `apply_chat_template`, character for character, for our template and for a
real model's (SmolLM2's ChatML, read from its GGUF); the chat files round-trip and old checkpoints get ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from homegrown.chat_template import (
    CHAT_TEMPLATE,
    GENERATION_CONFIG,
    TEMPLATE_FILE,
    TOKENIZER_CONFIG,
    TOOLS_INSTRUCTIONS,
    TOOLS_PREAMBLE,
    ChatTemplateError,
    copy_tokenizer_files,
    read_chat_format,
    write_chat_format,
)
from homegrown.errors import HomegrownError

transformers = pytest.importorskip("transformers")

CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
                   {"role": "user", "content": "List files:\n  ls -la  # and \"quotes\" <b>&</b> ünïcode"}],
    "system-prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Because."}, {"role": "user", "content": "Thanks"}],
}


def _model_dir(path: Path, tokenizer_json: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_json, path / "tokenizer.json")
    (path / TOKENIZER_CONFIG).write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    return path


@pytest.fixture
def model_dirs(tiny_run: Path, chatml_dir: Path, tmp_path: Path, smollm2_template: str) -> dict[str, Path]:
    """A directory per template with tokenizer.json + tokenizer_config.json, as a checkpoint or HF model holds."""
    ours = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
    smollm2 = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": smollm2_template}
    return {"ours": _model_dir(tmp_path / "ours", tiny_run / "tokenizer.json", ours),
            "smollm2": _model_dir(tmp_path / "smollm2", chatml_dir / "tokenizer.json", smollm2)}


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen-prompt", "no-gen-prompt"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("template", ["ours", "smollm2"])
def test_rendering_equals_transformers_apply_chat_template(model_dirs, template, conversation,
                                                           add_generation_prompt):
    directory = model_dirs[template]
    messages = CONVERSATIONS[conversation]
    theirs = transformers.AutoTokenizer.from_pretrained(directory).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    chat = read_chat_format(directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    ours = chat.render(messages, add_generation_prompt)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n" if template == "smollm2" else "<|assistant|>\n") \
        == add_generation_prompt


def test_smollm2_template_adds_its_default_system_prompt(model_dirs, chatml_dir):
    chat = read_chat_format(model_dirs["smollm2"], Tokenizer.from_file(str(chatml_dir / "tokenizer.json")))
    text = chat.render(CONVERSATIONS["single-turn"])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|im_start|>system" not in chat.render(CONVERSATIONS["system-prompt"])[30:]


def test_template_features_transformers_provides(tiny_run, tmp_path):
    """raise_exception, tojson without HTML escaping, strftime_now, loop controls, trim/lstrip blocks, bos_token."""
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
                "  {{ m | tojson }}{% endfor %}{% if messages | length > 9 %}{{ raise_exception('too long') }}"
                "{% endif %}{{ strftime_now('%Y') | length }}")
    directory = _model_dir(tmp_path / "m", tiny_run / "tokenizer.json",
                           {"bos_token": "<|endoftext|>", "eos_token": "<|end|>", "chat_template": template})
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "<a & b>"}]
    chat = read_chat_format(directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    theirs = transformers.AutoTokenizer.from_pretrained(directory).apply_chat_template(messages, tokenize=False)
    assert chat.render(messages, add_generation_prompt=False) == theirs
    assert theirs == '<|endoftext|>  {"role": "user", "content": "<a & b>"}4'
    with pytest.raises(ChatTemplateError, match="too long"):
        chat.render(messages * 5)


def test_sandbox_refuses_python_internals(tiny_run, tmp_path):
    directory = _model_dir(tmp_path / "m", tiny_run / "tokenizer.json",
                           {"eos_token": "<|endoftext|>", "chat_template": "{{ messages.__class__.__mro__ }}"})
    chat = read_chat_format(directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    with pytest.raises(ChatTemplateError):
        chat.render([{"role": "user", "content": "x"}])


def test_transformers5_template_file_wins_and_stops_come_from_generation_config(tiny_run, tmp_path):
    tok = Tokenizer.from_file(str(tiny_run / "tokenizer.json"))
    directory = _model_dir(tmp_path / "m", tiny_run / "tokenizer.json",
                           {"eos_token": "<|endoftext|>", "chat_template": "old"})
    (directory / TEMPLATE_FILE).write_text("new {{ messages[0]['content'] }}")
    (directory / GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": [4, 0], "bos_token_id": 0}))
    chat = read_chat_format(directory, tok)
    assert chat.render([{"role": "user", "content": "x"}]) == "new x"
    assert chat.stop_ids == (4, 0) and chat.bos_id == 0
    (directory / GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": 99999}))
    with pytest.raises(HomegrownError, match="not all ids"):
        read_chat_format(directory, tok)


def test_checkpoint_without_chat_files_gets_ours_and_copies_write_them(tiny_run, tmp_path):
    tok = Tokenizer.from_file(str(tiny_run / "tokenizer.json"))
    old = tmp_path / "old"
    old.mkdir()
    shutil.copyfile(tiny_run / "tokenizer.json", old / "tokenizer.json")
    chat = read_chat_format(old, tok)
    eot, end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")
    assert chat.template.source == CHAT_TEMPLATE and chat.stop_ids == (eot, end) and not chat.add_bos
    assert chat.end_of_turn_id(tok) == end
    new = tmp_path / "new"
    new.mkdir()
    copy_tokenizer_files(old / "tokenizer.json", new)
    assert json.loads((new / GENERATION_CONFIG).read_text())["eos_token_id"] == [eot, end]
    assert read_chat_format(new, tok) == chat
    copied = tmp_path / "copied"  # an imported model's files travel verbatim
    copied.mkdir()
    write_chat_format(old, read_chat_format(new, tok))
    (old / TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
    copy_tokenizer_files(old / "tokenizer.json", copied)
    assert sorted(p.name for p in copied.iterdir()) == sorted(
        ["tokenizer.json", TOKENIZER_CONFIG, GENERATION_CONFIG, TEMPLATE_FILE])


def test_a_base_model_without_template_refuses_chat(tiny_run, tmp_path):
    directory = _model_dir(tmp_path / "m", tiny_run / "tokenizer.json", {"eos_token": "<|endoftext|>"})
    chat = read_chat_format(directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    assert chat.template is None and chat.stop_ids == (0,)
    with pytest.raises(HomegrownError, match="no chat template"):
        chat.render([{"role": "user", "content": "x"}])


# -- tools ------------------------------------------------------------------------------------------------------

HERMES_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '" + TOOLS_PREAMBLE + "' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '" + TOOLS_INSTRUCTIONS + "<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""A small Hermes-style template with tool support, in the shape and wording of Qwen2.5's: tools in the system
turn, calls as `<tool_call>` JSON, results as `<tool_response>` blocks in a user turn."""

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "description": "The time, ünïcode <&>.",
                                      "parameters": {"type": "object", "properties": {}}}},
]
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "21 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_weather", "content": "4 C, rain"},
    {"role": "assistant", "content": "Paris 21 C, Oslo 4 C."},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen-prompt", "no-gen-prompt"])
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("template", ["ours", "hermes"])
def test_tool_rendering_equals_transformers_apply_chat_template(tiny_run, chatml_dir, tmp_path, template,
                                                                with_system, add_generation_prompt):
    """transformers' `apply_chat_template(tools=...)` and ours render tools, calls and results identically."""
    config = {"ours": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE},
              "hermes": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": HERMES_TEMPLATE}}
    tokenizer = (tiny_run if template == "ours" else chatml_dir) / "tokenizer.json"
    directory = _model_dir(tmp_path / template, tokenizer, config[template])
    messages = TOOL_CONVERSATION if with_system else TOOL_CONVERSATION[1:]
    theirs = transformers.AutoTokenizer.from_pretrained(directory).apply_chat_template(
        messages, tools=TOOLS, tokenize=False, add_generation_prompt=add_generation_prompt)
    chat = read_chat_format(directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    assert chat.render(messages, add_generation_prompt, tools=TOOLS) == theirs
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>' in theirs
    assert "<tool_response>\n21 C, sunny\n</tool_response>\n<tool_response>\n4 C, rain\n</tool_response>" in theirs
    assert json.dumps(TOOLS[1], ensure_ascii=False) in theirs and chat.template.supports_tools


def test_our_template_renders_as_before_without_tools(tiny_run):
    """Tool support changed nothing for plain conversations: each turn `<|role|>\\n{content}<|end|>\\n`."""
    chat = read_chat_format(tiny_run, Tokenizer.from_file(str(tiny_run / "tokenizer.json")))
    messages = CONVERSATIONS["system-prompt"]
    expected = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages) + "<|assistant|>\n"
    assert chat.render(messages) == chat.render(messages, tools=[]) == expected


def test_templates_without_tool_support_are_detected(model_dirs, chatml_dir, tmp_path):
    """SmolLM2's ChatML ignores `tools` (it gets the fallback prompt); a template that shows tools but refuses the
    tool role is no tool template either."""
    chat = read_chat_format(model_dirs["smollm2"], Tokenizer.from_file(str(chatml_dir / "tokenizer.json")))
    assert not chat.template.supports_tools
    assert "get_weather" not in chat.render(TOOL_CONVERSATION[1:2], tools=TOOLS)
    half = ("{{ tools | tojson }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
            "{{ raise_exception('no ' + m['role']) }}{% endif %}{{ m['content'] }}{% endfor %}")
    directory = _model_dir(tmp_path / "half", chatml_dir / "tokenizer.json",
                           {"eos_token": "<|im_end|>", "chat_template": half})
    chat = read_chat_format(directory, Tokenizer.from_file(str(chatml_dir / "tokenizer.json")))
    assert "get_weather" in chat.render(TOOL_CONVERSATION[1:2], tools=TOOLS)
    assert not chat.template.supports_tools
