"""Cheap signals on a pair of answers."""

from __future__ import annotations

import pytest

from homegrown.gateway.signals import Answer, is_refusal, signals


@pytest.mark.parametrize(("text", "refusal"), [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot assist with this request.", True),
    ("As an AI language model, I do not have opinions.", True),
    ("The function returns None. " + "x" * 400 + " I cannot help it.", False),  # quoted late: not a refusal
    ("Use `os.path.join` to build the path.", False),
])
def test_refusal(text: str, refusal: bool) -> None:
    assert is_refusal(text) is refusal


def test_signals_compare_the_pair() -> None:
    s = signals(Answer("abcd", "length", 2.0), Answer("ab", "stop", 1.0))
    assert (s.candidate_truncated, s.incumbent_truncated) == (True, False)
    assert (s.length_ratio, s.latency_ratio) == (2.0, 2.0)
    failed = signals(Answer("partial", None, 0.5, error="timeout"), Answer("", "stop", 1.0))
    assert failed.candidate_error and failed.candidate_empty and failed.incumbent_empty
    assert failed.length_ratio is None
