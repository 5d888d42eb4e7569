"""Tools into the prompt: a chat request's tools, assistant tool calls and tool results → what the model's chat
template renders.

A template that supports tools (`ChatTemplate.supports_tools`: ours, Qwen's, Hermes') gets them as transformers'
`apply_chat_template(tools=...)` passes them: the tool definitions as `tools`, an assistant's calls as
`tool_calls` with `arguments` parsed into an object (what templates expect; vLLM converts them the same way),
and tool results as `tool` messages. A template without tool support (SmolLM2's ChatML) gets the same content
in plain messages instead, as llama.cpp's server does for such templates: the tool definitions and the call
format (Qwen2.5's wording) appended to the system message, each call written as `<tool_call>` JSON after the
assistant's content, and consecutive tool results as one user message of `<tool_response>` blocks — which is
what our own template renders natively, so both paths teach the model one format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from homegrown.chat_template import (
    TOOL_ARGUMENTS_PREFIX,
    TOOL_CALL_PREFIX,
    TOOL_CALL_SUFFIX,
    TOOLS_INSTRUCTIONS,
    TOOLS_PREAMBLE,
    ChatTemplate,
)
from homegrown.errors import HomegrownError


class ToolRequestError(HomegrownError):
    """A tool-calling request that cannot be served as sent; `param` names the field, as OpenAI's 400s do."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it: `<tool_call>\\n{"name": …, "arguments": …}\\n</tool_call>`."""
    return TOOL_CALL_PREFIX + name + TOOL_ARGUMENTS_PREFIX + json.dumps(arguments, ensure_ascii=False) + \
        TOOL_CALL_SUFFIX


def describe_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools' part of a system message: their definitions as JSON, one a line, and the call format."""
    return TOOLS_PREAMBLE + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_INSTRUCTIONS


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages (already validated: roles, text content) → the dicts a tool-aware template reads.

    Tool calls keep `id` and `type` and get their `arguments` string parsed into JSON; a tool result gets the
    `name` of the call it answers (templates such as Llama 3.1's print it). A tool message must answer a call of
    an earlier assistant message, and arguments must be JSON: anything else is a 400 naming the field.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        calls = m.get("tool_calls") or []
        if calls and m["role"] != "assistant":
            raise ToolRequestError(f"messages.{i}.tool_calls: only assistant messages make tool calls",
                                   f"messages.{i}.tool_calls")
        if (m.get("tool_call_id") is not None) != (m["role"] == "tool"):
            raise ToolRequestError(f"messages.{i}.tool_call_id: a tool message needs the id of the call it answers, "
                                   "and only a tool message has one", f"messages.{i}.tool_call_id")
        if calls:
            d["tool_calls"] = []
            for j, call in enumerate(calls):
                function = call["function"]
                try:
                    arguments = json.loads(function["arguments"])
                except ValueError as err:
                    param = f"messages.{i}.tool_calls.{j}.function.arguments"
                    raise ToolRequestError(f"{param} is not valid JSON ({err}); send the arguments the call was "
                                           "made with, a JSON object as a string", param) from err
                d["tool_calls"].append({"id": call["id"], "type": "function",
                                        "function": {"name": function["name"], "arguments": arguments}})
                names[call["id"]] = function["name"]
        if m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in names:
                param = f"messages.{i}.tool_call_id"
                known = ", ".join(sorted(names)) or "none"
                raise ToolRequestError(f"{param} {call_id!r} does not answer a tool call of an earlier assistant "
                                       f"message (calls so far: {known})", param)
            d["tool_call_id"], d["name"] = call_id, names[call_id]
        out.append(d)
    return out


def fallback_messages(messages: Sequence[Mapping[str, Any]],
                      tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Template messages (from `template_messages`) rewritten for a template without tool support: plain
    system / user / assistant turns that say the same thing in the Hermes format (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
            continue
        content = m["content"]
        if m.get("tool_calls"):
            calls = "\n".join(format_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": m["role"], "content": content})
    if tools:
        description = describe_tools(tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" if out[0]["content"] else "") + description
        else:
            out.insert(0, {"role": "system", "content": description})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def prompt_inputs(template: ChatTemplate | None, messages: Sequence[Mapping[str, Any]],
                  tools: Sequence[Mapping[str, Any]] | None) -> tuple[list[dict[str, Any]], list[dict] | None]:
    """(messages, tools) to render a conversation with: native for a template that supports tools, else the
    fallback (tools folded into the messages, None for `tools`). `tools` None: the conversation may still hold
    earlier calls and results (`tool_choice: "none"`, or a follow-up without tools), rendered the same way."""
    converted = template_messages(messages)
    uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in converted)
    if not uses_tools:
        return converted, None
    if template is not None and template.supports_tools:
        return converted, [dict(t) for t in tools] if tools else None
    return fallback_messages(converted, tools), None
