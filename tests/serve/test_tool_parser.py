"""Model output → content + tool calls: a stream cut anywhere parses exactly as the whole text does, and its
deltas are the ones OpenAI sends (opening delta with id and name, then argument fragments)."""

from __future__ import annotations

import json
import random

import pytest

from homegrown.serve.tool_parser import ToolCallParser, deltas, finish_reason, message

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": 2}]}}\n</tool_call>'
TRICKY = ('<tool_call>\n{"name": "echo", "arguments": {"text": "a } ] \\" </tool_call> <tool_call> {"}}\n'
          '</tool_call>')

CASES = {
    "content only": ("Just an answer.  \n", "Just an answer.  \n", []),
    "call only": (CALL, None, [("get_weather", '{"city": "Paris", "days": [1, {"x": 2}]}')]),
    "content then calls": (f"Let me check.\n{CALL}\n{TRICKY}\n", "Let me check.", [
        ("get_weather", '{"city": "Paris", "days": [1, {"x": 2}]}'),
        ("echo", '{"text": "a } ] \\" </tool_call> <tool_call> {"}')]),
    "text after a call": (f"{CALL}\n\nDone.", "Done.", [("get_weather", '{"city": "Paris", "days": [1, {"x": 2}]}')]),
    "unfinished trigger": ("almost <tool_c", "almost <tool_c", []),
    "keys in another order": ('<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>', None, [("f", '{"a": 1}')]),
    "not a call": ("<tool_call>nonsense</tool_call>", "<tool_call>nonsense</tool_call>", []),
    "cut by max_tokens": ('<tool_call>\n{"name": "f", "arguments": {"a": "partial', None, [("f", '{"a": "partial')]),
}


def _whole(text: str, max_calls: int | None = None) -> ToolCallParser:
    parser = ToolCallParser(max_calls)
    parser.feed(text)
    parser.finish()
    return parser


@pytest.mark.parametrize("case", list(CASES))
def test_whole_text_parses_into_content_and_calls(case: str) -> None:
    text, content, calls = CASES[case]
    parser = _whole(text)
    got = message(parser)
    assert got["content"] == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in got.get("tool_calls", [])] == calls
    assert all(c["id"].startswith("call_") and len(c["id"]) == 29 for c in got.get("tool_calls", []))
    assert finish_reason(parser, "stop") == ("tool_calls" if calls else "stop")
    assert finish_reason(parser, "length") == "length"


@pytest.mark.parametrize("case", list(CASES))
def test_any_split_of_the_stream_gives_the_same_reply(case: str) -> None:
    """Pieces of 1-5 characters, as tokens arrive: the deltas, accumulated as the openai client does, are the
    whole text's parse; each call opens with index, id, type, name and empty arguments."""
    text = CASES[case][0]
    whole = _whole(text)
    for seed in range(25):
        rng = random.Random(seed)
        parser, at, chunks = ToolCallParser(), 0, []
        while at < len(text):
            step = rng.randint(1, 5)
            chunks += deltas(parser.feed(text[at:at + step]))
            at += step
        chunks += deltas(parser.finish())
        content, calls = "", {}
        for delta in chunks:
            content += delta.get("content", "")
            for call in delta.get("tool_calls", []):
                if call["index"] not in calls:
                    assert set(call) == {"index", "id", "type", "function"} and call["function"]["arguments"] == ""
                    calls[call["index"]] = {"name": call["function"]["name"], "arguments": ""}
                else:
                    assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
                    calls[call["index"]]["arguments"] += call["function"]["arguments"]
        assert content == whole.content
        assert [calls[i] for i in sorted(calls)] == [{"name": c.name, "arguments": c.arguments} for c in whole.calls]


def test_one_call_when_parallel_calls_are_off() -> None:
    parser = _whole(f"{CALL}\n{CALL}", max_calls=1)
    assert len(parser.calls) == 1 and parser.content == CALL
    assert json.loads(parser.calls[0].arguments) == {"city": "Paris", "days": [1, {"x": 2}]}
