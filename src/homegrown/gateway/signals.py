"""Cheap reference signals on a pair of answers: what can be checked without asking a judge.

A judge call costs a request to a strong model; these cost nothing and catch the failures a switch-over most
often hits (an in-house model that refuses, answers nothing, or runs out of tokens), so they are computed for
every shadowed pair, judged or not, and reported next to the win rate.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

REFUSAL = re.compile(
    r"\b(I(?:'m| am) (?:sorry|afraid)|I (?:can(?:'|no)t|cannot|won't|will not|am unable to|'m unable to) "
    r"(?:help|assist|provide|do that|comply|answer)|as an AI(?: language model)?|I'm not able to)\b",
    re.IGNORECASE)
"""Stock refusal openings of instruction-tuned models; checked in the first 300 characters only, where a
refusal states itself (an answer that quotes "I cannot" later on is not a refusal)."""


@dataclass(frozen=True)
class Answer:
    """One backend's answer to a request, as the gateway saw it."""

    text: str
    finish_reason: str | None
    latency_s: float
    error: str | None = None


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text[:300]))


@dataclass(frozen=True)
class Signals:
    """Per-pair flags for the candidate and the incumbent, plus how their lengths and latencies compare."""

    candidate_error: bool
    candidate_empty: bool
    candidate_refusal: bool
    candidate_truncated: bool
    incumbent_empty: bool
    incumbent_refusal: bool
    incumbent_truncated: bool
    length_ratio: float | None
    """Candidate characters / incumbent characters (None when the incumbent's answer is empty)."""
    latency_ratio: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def signals(candidate: Answer, incumbent: Answer) -> Signals:
    """Compare two answers to the same request; an answer that errored counts as empty."""
    c_text = "" if candidate.error else candidate.text
    i_text = "" if incumbent.error else incumbent.text
    return Signals(
        candidate_error=candidate.error is not None,
        candidate_empty=not c_text.strip(),
        candidate_refusal=is_refusal(c_text),
        candidate_truncated=candidate.finish_reason == "length",
        incumbent_empty=not i_text.strip(),
        incumbent_refusal=is_refusal(i_text),
        incumbent_truncated=incumbent.finish_reason == "length",
        length_ratio=len(c_text) / len(i_text) if i_text else None,
        latency_ratio=candidate.latency_s / incumbent.latency_s if incumbent.latency_s > 0 else None,
    )
