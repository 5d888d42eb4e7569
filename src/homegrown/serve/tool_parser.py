"""The model's output → OpenAI `content` and `tool_calls`, incrementally, so a stream sends tool calls as deltas
the way OpenAI does (a first delta with the call's index, id, type, name and empty arguments, then argument
fragments), and a whole reply is the same parse of all its text at once.

Calls are in the Hermes format every tool prompt here asks for and constrained decoding enforces:
`<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>`. Once the name is read, the arguments
object is streamed as it is generated, its end found by tracking JSON nesting (so a `}` or `</tool_call>` inside a
string does not end it). A block that is not in that shape (an unconstrained model's own order of keys) is parsed
whole at its `</tool_call>`; one that does not parse stays content. Whitespace between content and calls is
dropped; without a call the content is the text exactly as generated.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from homegrown.chat_template import TOOL_CALL_END, TOOL_CALL_START

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*', re.DOTALL)


def new_call_id() -> str:
    """OpenAI's shape: `call_` and 24 characters."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str = ""


@dataclass
class Events:
    """What one piece of output produced: content text, calls that started (name known) and argument text per
    call index, in order of appearance within each kind."""

    content: str = ""
    started: list[ToolCall] = field(default_factory=list)
    arguments: dict[int, str] = field(default_factory=dict)

    def extend(self, more: Events) -> None:
        self.content += more.content
        self.started += more.started
        for index, text in more.arguments.items():
            self.arguments[index] = self.arguments.get(index, "") + text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (it may become the marker)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class _JsonEnd:
    """Finds where one JSON value ends in text fed piece by piece: nesting depth outside strings."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped = 0, False, False

    def scan(self, text: str) -> int | None:
        """The index just past the value's end within `text`, or None if it goes on."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return None


class ToolCallParser:
    """Feed it generated text (`feed`), then `finish()`; each returns the Events to send. `max_calls` is 1 for
    `parallel_tool_calls: false`: a later `<tool_call>` block stays content."""

    def __init__(self, max_calls: int | None = None) -> None:
        self.max_calls = max_calls
        self.calls: list[ToolCall] = []
        self.content = ""
        self._state = "text"  # text | header | arguments | closing | raw
        self._buf = ""
        self._held_space = ""
        self._drop_leading = False
        self._json: _JsonEnd | None = None

    @property
    def _may_call(self) -> bool:
        return self.max_calls is None or len(self.calls) < self.max_calls

    def feed(self, text: str) -> Events:
        events = Events()
        self._buf += text
        while self._step(events):
            pass
        return events

    def finish(self) -> Events:
        """Flush at the end of generation: held-back text is content (an unfinished call's raw text too, when it
        never got a name); a started call keeps the arguments it streamed."""
        events = Events()
        if self._state == "text":
            self._text(events, self._buf, final=True)
        elif self._state in ("header", "raw"):
            self._raw_call(events, self._buf, closed=False)
        self._buf, self._held_space, self._state = "", "", "text"
        return events

    # -- the states -------------------------------------------------------------------------------------------

    def _step(self, events: Events) -> bool:
        """Consume what the current state can; True when the state changed and the buffer should be looked at
        again."""
        if self._state == "text":
            at = self._buf.find(TOOL_CALL_START) if self._may_call else -1
            if at < 0:
                keep = _partial_suffix(self._buf, TOOL_CALL_START) if self._may_call else 0
                ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                self._text(events, ready, final=False)
                return False
            self._text(events, self._buf[:at], final=False)
            self._held_space = ""
            self._buf, self._state = self._buf[at + len(TOOL_CALL_START):], "header"
            return True
        if self._state == "header":
            match = _HEADER.match(self._buf)
            if match:
                name = json.loads(f'"{match.group(1)}"')
                call = ToolCall(len(self.calls), new_call_id(), name)
                self.calls.append(call)
                events.started.append(call)
                self._buf, self._state, self._json = self._buf[match.end():], "arguments", _JsonEnd()
                return True
            if TOOL_CALL_END in self._buf:
                self._state = "raw"
                return True
            return False
        if self._state == "arguments":
            assert self._json is not None
            end = self._json.scan(self._buf)
            piece = self._buf if end is None else self._buf[:end]
            if not self.calls[-1].arguments:
                piece = piece.lstrip()
            if piece:
                self.calls[-1].arguments += piece
                events.arguments[self.calls[-1].index] = events.arguments.get(self.calls[-1].index, "") + piece
            if end is None:
                self._buf = ""
                return False
            self._buf, self._state = self._buf[end:], "closing"
            return True
        if self._state == "closing":
            at = self._buf.find(TOOL_CALL_END)
            if at < 0:
                return False
            self._buf, self._state, self._drop_leading = self._buf[at + len(TOOL_CALL_END):], "text", True
            return True
        # raw: a block not in the streaming shape, parsed whole at its end
        at = self._buf.find(TOOL_CALL_END)
        if at < 0:
            return False
        body, self._buf = self._buf[:at], self._buf[at + len(TOOL_CALL_END):]
        self._raw_call(events, body, closed=True)
        self._state = "text"
        return True

    def _text(self, events: Events, text: str, final: bool) -> None:
        """Content, with trailing whitespace held back until something follows it: whitespace right before or
        after a call, or at the end after calls, is dropped; anywhere else it is content."""
        if self._drop_leading:
            text = text.lstrip()
            self._drop_leading = not text
        text = self._held_space + text
        if final:
            kept, self._held_space = (text.rstrip() if self.calls else text), ""
        else:
            kept = text.rstrip()
            self._held_space = text[len(kept):]
        if kept:
            self.content += kept
            events.content += kept

    def _raw_call(self, events: Events, body: str, closed: bool) -> None:
        """A `<tool_call>` block parsed whole: `{"name", "arguments"}` in any order; else the text is content."""
        try:
            value = json.loads(body)
            name, arguments = value["name"], value["arguments"]
            if not isinstance(name, str):
                raise TypeError(name)
        except (ValueError, KeyError, TypeError):
            raw = TOOL_CALL_START + body + (TOOL_CALL_END if closed else "")
            self.content += raw
            events.content += raw
            return
        call = ToolCall(len(self.calls), new_call_id(), name,
                        arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))
        self.calls.append(call)
        events.started.append(call)
        events.arguments[call.index] = call.arguments
        self._drop_leading = True


def deltas(events: Events) -> list[dict[str, Any]]:
    """A piece's events as the `delta`s of OpenAI stream chunks, one chunk each: content first, then per call
    (in index order) its opening delta (index, id, type, name, empty arguments) and its argument text."""
    out: list[dict[str, Any]] = [{"content": events.content}] if events.content else []
    started = {c.index: c for c in events.started}
    for index in sorted({*started, *events.arguments}):
        if index in started:
            call = started[index]
            out.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]})
        if events.arguments.get(index):
            out.append({"tool_calls": [{"index": index, "function": {"arguments": events.arguments[index]}}]})
    return out


def message(parser: ToolCallParser) -> dict[str, Any]:
    """A whole reply's `content` (null when it is only calls, as OpenAI's) and `tool_calls` (absent without)."""
    if not parser.calls:
        return {"content": parser.content}
    return {"content": parser.content or None,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in parser.calls]}


def finish_reason(parser: ToolCallParser, reason: str) -> str:
    """`tool_calls` when the reply ended by itself after making calls; a cut one (`length`) says so."""
    return "tool_calls" if parser.calls and reason == "stop" else reason
