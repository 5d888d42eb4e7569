"""Hash-partitioned dedup decides as the sequential replay through ExactDedup + NearDedup did, whatever P is."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from homegrown.data.dedup import ExactDedup, NearDedup
from homegrown.data.dedup_stages import (
    DedupPlan,
    buckets_task,
    components_task,
    duplicates_of_shard,
    exact_task,
    keys_task,
    lsh_bands,
    order_of,
    verify_task,
)
from homegrown.data.provenance import AtomicJsonlGz, OptOut, text_sha256

WORDS = [f"w{i}" for i in range(5000)]


def _corpus(seed: int = 0) -> list[list[str]]:
    """Files of texts: distinct pages, near copies (2 words changed in 150), re-cased exact copies, across files."""
    rng = random.Random(seed)
    base = [" ".join(rng.choice(WORDS) for _ in range(150)) for _ in range(40)]
    texts = list(base)
    for i in range(0, 40, 3):
        words = base[i].split()
        for _ in range(2):
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        texts.append(" ".join(words))
    texts += [base[i].upper() for i in range(1, 40, 7)]
    rng.shuffle(texts)
    return [texts[k::4] for k in range(4)]


def _write_parts(root: Path, files: list[list[str]], near: NearDedup) -> list[Path]:
    root.mkdir()
    paths = []
    for f, texts in enumerate(files):
        writer = AtomicJsonlGz(root / f"{f}.jsonl.gz")
        for line, text in enumerate(texts):
            sig = near.signature(text)
            writer.write({"url": f"https://x.example/{f}/{line}", "text": text, "extracted_sha256": text_sha256(text),
                          "sig": base64.b64encode(sig.tobytes()).decode(), "sig_dtype": sig.dtype.str})
        writer.commit()
        paths.append(root / f"{f}.jsonl.gz")
    return paths


def _sequential(files: list[list[str]], near: NearDedup) -> tuple[set[int], set[int]]:
    """What the single-process merge decided: exact copies, then near copies of a kept page, in input order."""
    exact, dedup = ExactDedup(), NearDedup(near.threshold, near.num_perm, near.ngram)
    exact_dups, near_dups = set(), set()
    for f, texts in enumerate(files):
        for line, text in enumerate(texts):
            order = order_of(f, line)
            if exact.seen(text):
                exact_dups.add(order)
            elif dedup.seen_or_add(str(order), near.signature(text)) is not None:
                near_dups.add(order)
    return exact_dups, near_dups


@pytest.mark.parametrize("partitions", [1, 3])
def test_partitioned_dedup_equals_the_sequential_merge(tmp_path: Path, partitions: int) -> None:
    files = _corpus()
    near = NearDedup(0.8, 128, 5)
    parts = _write_parts(tmp_path / "parts", files, near)
    plan = DedupPlan(tmp_path / "work", partitions, len(files), 2, 0.8, 128, *lsh_bands(0.8, 128))
    for f, part in enumerate(parts):
        keys_task(plan, f, part, OptOut())
    for p in range(partitions):
        exact_task(plan, p)
        buckets_task(plan, p)
    for p in range(partitions):
        verify_task(plan, p)
    components_task(plan)
    exact, near_dups = set(), set()
    for shard in range(2):
        e, n = duplicates_of_shard(plan, shard)
        exact |= e
        near_dups |= n - e
    want_exact, want_near = _sequential(files, near)
    assert len(want_exact) == 6 and len(want_near) == 14  # the corpus does have both kinds
    assert (exact, near_dups) == (want_exact, want_near)
