"""Exact and near-duplicate detection: near copies caught, different texts kept, threshold honoured, replayable."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from homegrown.data.dedup import ExactDedup, NearDedup

_VOCAB = [
    "python",
    "module",
    "function",
    "class",
    "object",
    "method",
    "value",
    "list",
    "string",
    "file",
    "error",
    "thread",
    "socket",
    "buffer",
    "handler",
    "parser",
    "token",
    "stream",
    "server",
    "client",
    "request",
    "response",
    "cache",
    "index",
    "record",
    "field",
    "schema",
    "table",
    "query",
    "lock",
    "queue",
    "event",
    "signal",
    "process",
    "memory",
    "pointer",
    "array",
    "byte",
    "integer",
    "float",
    "decimal",
    "format",
]


def _text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_VOCAB) for _ in range(words))


def _edit(text: str, changes: int, seed: int) -> str:
    """Replace `changes` words at random positions by a word from outside the vocabulary."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = f"changed{i}"
    return " ".join(words)


def test_exact_dedup_ignores_case_and_whitespace_only() -> None:
    d = ExactDedup()
    assert not d.seen("Hello  World\n")
    assert d.seen("hello world")
    assert not d.seen("hello, world")  # punctuation matters: code differs by it
    assert (d.checked, d.duplicates, d.unique) == (3, 1, 2)


def test_near_copies_are_caught_and_different_texts_kept() -> None:
    d = NearDedup(threshold=0.8)
    originals = [_text(seed) for seed in range(20)]
    for i, text in enumerate(originals):
        assert d.seen_or_add(f"doc{i}", d.signature(text)) is None
    for i, text in enumerate(originals):
        near = _edit(text, changes=3, seed=100 + i)  # 3 words of 300 changed: ~0.9 Jaccard of 5-grams
        assert d.seen_or_add(f"near{i}", d.signature(near)) == f"doc{i}"
    assert (d.checked, d.duplicates) == (40, 20)


def test_threshold_is_honoured() -> None:
    base = _text(1)
    far = _edit(base, changes=25, seed=7)  # ~25 % of the 5-grams touched: Jaccard near 0.4–0.6
    probe = NearDedup(threshold=0.8)
    similarity = probe.similarity(probe.signature(base), probe.signature(far))
    assert 0.2 < similarity < 0.75
    strict, loose = NearDedup(threshold=0.8), NearDedup(threshold=similarity - 0.15)
    for d in (strict, loose):
        assert d.seen_or_add("base", d.signature(base)) is None
    assert strict.seen_or_add("far", strict.signature(far)) is None
    assert loose.seen_or_add("far", loose.signature(far)) == "base"


def test_signatures_round_trip_through_numpy_files(tmp_path: Path) -> None:
    texts = [_text(s) for s in range(10)] + [_edit(_text(s), 2, s) for s in range(0, 10, 3)]
    first = NearDedup()
    sigs = np.stack([first.signature(t) for t in texts])
    decisions = [first.seen_or_add(f"k{i}", sig) for i, sig in enumerate(sigs)]
    assert decisions.count(None) == 10
    np.save(tmp_path / "shard.npy", sigs)
    replay = NearDedup()
    loaded = np.load(tmp_path / "shard.npy")
    assert [replay.seen_or_add(f"k{i}", sig) for i, sig in enumerate(loaded)] == decisions


def test_short_texts_and_bad_input() -> None:
    d = NearDedup()
    assert d.seen_or_add("a", d.signature("Hello world")) is None
    assert d.seen_or_add("b", d.signature("hello,  WORLD")) == "a"
    with pytest.raises(ValueError, match="already added"):
        d.seen_or_add("a", d.signature("something else entirely"))
    with pytest.raises(ValueError, match="shape"):
        d.seen_or_add("c", np.zeros(3, dtype=np.uint32))
    with pytest.raises(ValueError, match="threshold"):
        NearDedup(threshold=0.0)
