"""Preference pairs: a prompt conversation and two answers to it, the chosen one better than the rejected one.

The file format is TRL's preference format, both flavours: `{"prompt": "text", "chosen": "text", "rejected":
"text"}`, or conversational — `"prompt"` (or `"messages"`) a list of OpenAI messages ending before the reply and
`"chosen"` / `"rejected"` each a one-message assistant list. Anything else on a line (provenance: judge, seed,
date) is kept as the pair's metadata. Lines that cannot train — unreadable, an empty answer, both answers the same
— are reported by line number and skipped, as SFT's chat reader does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homegrown.data.sources import numbered_json_lines
from homegrown.errors import HomegrownError
from homegrown.posttrain.chat import RESERVED_MARKERS, message_problem

Messages = list[dict[str, str]]


@dataclass
class Pair:
    prompt: Messages
    chosen: str
    rejected: str
    where: str
    """`file:line`, for reports about this pair later (too long for the context)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def conversation(self, answer: str) -> Messages:
        return [*self.prompt, {"role": "assistant", "content": answer}]

    def key(self) -> str:
        """Content hash: which pairs are held out, and whether stored reference log-probs still fit the data."""
        return hashlib.sha256(json.dumps([self.prompt, self.chosen, self.rejected]).encode()).hexdigest()


@dataclass
class PairFile:
    pairs: list[Pair]
    problems: list[str]


def _answer(value: object, name: str) -> tuple[str | None, str | None]:
    """(answer text, None) from a string or a one-message assistant list, else (None, why not)."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            return None, f'"{name}" must be a string or a list of one assistant message'
        value = value[0].get("content")
    if not isinstance(value, str):
        return None, f'"{name}" must be a string or a list of one assistant message, got {type(value).__name__}'
    if not value.strip():
        return None, f'"{name}" is empty'
    return value, None


def _prompt(record: dict[str, Any]) -> tuple[Messages | None, str | None]:
    value = record.get("prompt", record.get("messages"))
    if isinstance(value, str):
        if not value.strip():
            return None, '"prompt" is empty'
        return [{"role": "user", "content": value}], None
    if not isinstance(value, list) or not value:
        return None, 'expected "prompt" (a string or a list of messages) or "messages"'
    if any(not isinstance(m, dict) for m in value):
        return None, "every prompt message must be an object with role and content"
    if value[-1].get("role") == "assistant":
        return None, "the prompt ends with an assistant message; the answers are what follows it"
    return [dict(m) for m in value], None


def parse_pair(record: object, where: str, reserved: Sequence[str] = RESERVED_MARKERS) -> tuple[Pair | None, str]:
    """A pair from one decoded JSON line, or (None, why it cannot train)."""
    if not isinstance(record, dict):
        return None, 'expected an object with "prompt", "chosen" and "rejected"'
    prompt, problem = _prompt(record)
    if prompt is None:
        return None, problem or ""
    chosen, problem = _answer(record.get("chosen"), "chosen")
    if chosen is None:
        return None, problem or ""
    rejected, problem = _answer(record.get("rejected"), "rejected")
    if rejected is None:
        return None, problem or ""
    if chosen.strip() == rejected.strip():
        return None, "chosen and rejected are the same answer: nothing to prefer"
    for answer in (chosen, rejected):
        problem = message_problem([*prompt, {"role": "assistant", "content": answer}], reserved)
        if problem is not None:
            return None, problem
    meta = {k: v for k, v in record.items() if k not in ("prompt", "messages", "chosen", "rejected")}
    return Pair([{"role": m["role"], "content": m["content"]} for m in prompt], chosen, rejected, where, meta), ""


def read_pairs(path: Path, strict: bool = False, reserved: Sequence[str] = RESERVED_MARKERS) -> PairFile:
    """Every usable pair of a JSONL file; bad lines are reported by number and skipped (fatal if strict)."""
    path = Path(path)
    if not path.is_file():
        raise HomegrownError(f"preference data {path} does not exist; pass a JSONL file of "
                             '{"prompt", "chosen", "rejected"} lines (`homegrown data pairs` writes one)')
    result = PairFile([], [])
    with path.open(encoding="utf-8") as f:
        for lineno, record, err in numbered_json_lines(f):
            where = f"{path}:{lineno}"
            pair, problem = (None, f"not valid JSON ({err.msg})") if err is not None else parse_pair(
                record, where, reserved)
            if pair is not None:
                result.pairs.append(pair)
                continue
            if strict:
                raise HomegrownError(f"{where}: {problem} (fix the line, or drop --strict to skip bad lines)")
            result.problems.append(f"{where}: {problem}")
    if not result.pairs:
        raise HomegrownError(f"{path} holds no usable preference pairs ({len(result.problems)} bad lines)")
    return result
