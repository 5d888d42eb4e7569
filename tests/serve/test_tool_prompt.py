"""Tools into the prompt: natively for a template with tool support, through the Hermes-format fallback for one
without (SmolLM2's ChatML), and both say the same thing: the fallback through plain ChatML renders exactly what
a Qwen2.5-style tool template renders, and through our template exactly what our template renders natively."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from homegrown.chat_template import ChatTemplate, read_chat_format
from homegrown.serve.tool_prompt import ToolRequestError, prompt_inputs, template_messages
from tests.test_chat_template import HERMES_TEMPLATE, TOOL_CONVERSATION, TOOLS


def _openai_shaped(messages: list[dict]) -> list[dict]:
    """The conversation as a client sends it: arguments as JSON strings, no `name` on tool results."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if not (m["role"] == "tool" and k == "name")}
        if "tool_calls" in m:
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_fallback_through_chatml_equals_a_tool_template(smollm2_template: str, with_system: bool) -> None:
    messages = _openai_shaped(TOOL_CONVERSATION if with_system else TOOL_CONVERSATION[1:])
    smol = ChatTemplate(smollm2_template)
    assert not smol.supports_tools
    plain, tools = prompt_inputs(smol, messages, TOOLS)
    assert tools is None and [m["role"] for m in plain] == ["system", "user", "assistant", "user", "assistant", "user"]
    hermes = ChatTemplate(HERMES_TEMPLATE)
    native, native_tools = prompt_inputs(hermes, messages, TOOLS)
    calls = next(m["tool_calls"] for m in native if m.get("tool_calls"))
    assert native_tools == TOOLS and calls[1]["function"]["arguments"] == {"city": "Oslo", "unit": "C"}
    assert [m.get("name") for m in native if m["role"] == "tool"] == ["get_weather", "get_weather"]
    assert smol.render(plain) == hermes.render(native, tools=native_tools)


def test_fallback_through_our_template_equals_its_native_rendering(tiny_run: Path) -> None:
    ours = read_chat_format(tiny_run, Tokenizer.from_file(str(tiny_run / "tokenizer.json"))).template
    messages = _openai_shaped(TOOL_CONVERSATION)
    native, tools = prompt_inputs(ours, messages, TOOLS)
    assert tools == TOOLS
    fallback, none = prompt_inputs(ChatTemplate("{{ messages }}"), messages, TOOLS)
    assert none is None
    assert ours.render(native, tools=tools) == ours.render(fallback)


def test_a_conversation_with_earlier_calls_renders_without_tools(smollm2_template: str) -> None:
    """tool_choice none (or a follow-up without tools): earlier calls and results still reach the prompt."""
    plain, tools = prompt_inputs(ChatTemplate(smollm2_template), _openai_shaped(TOOL_CONVERSATION), None)
    assert tools is None and '"name": "get_weather"' not in plain[0]["content"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in plain[2]["content"]


@pytest.mark.parametrize("messages,param", [
    ([{"role": "tool", "tool_call_id": "call_9", "content": "x"}], "messages.0.tool_call_id"),
    ([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "call_2", "content": "x"}], "messages.1.tool_call_id"),
    ([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages.0.tool_calls.0.function.arguments"),
    ([{"role": "user", "content": "hi", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], "messages.0.tool_calls"),
    ([{"role": "user", "content": "hi", "tool_call_id": "call_1"}], "messages.0.tool_call_id"),
    ([{"role": "tool", "content": "x"}], "messages.0.tool_call_id"),
])
def test_calls_and_results_that_do_not_fit_are_named(messages: list[dict], param: str) -> None:
    with pytest.raises(ToolRequestError) as e:
        template_messages(messages)
    assert e.value.param == param and param in str(e.value)
