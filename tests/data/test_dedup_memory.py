"""Memory per dedup task is bounded by its shard: 4× more distinct pages (in 4× the files, partitions and
shards) leave every per-shard task's peak where it was, while the single-process replay it replaced grows.

Peaks are Python + numpy allocations traced by tracemalloc inside each task (numpy reports its buffers to it),
so they do not depend on the machine, its load or the allocator. Two controls show the measurement can fail:
the single-process replay grows with the input, and so does a bucket task when the partitions are not scaled.
At this size a task's fixed cost (opening one small array per input file) is a large part of the exact task's
peak, so that one grows most (1.4× at 4× the files); its keys are 16 bytes a page.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from homegrown.data.dedup import NearDedup
from homegrown.data.dedup_stages import (
    DedupPlan,
    buckets_task,
    components_task,
    duplicates_of_shard,
    exact_task,
    keys_task,
    lsh_bands,
    verify_task,
)
from homegrown.data.provenance import OptOut
from tests.data.test_dedup_stages import _sequential, _write_parts

PAGES_PER_FILE = 500
NEAR_SHARE = 0.1


def _files(n_files: int, seed: int) -> list[list[str]]:
    """Distinct pages (random 150-word texts over a 50,000-word vocabulary share almost no 5-gram), each file with
    a tenth of near copies (one word changed) of its own pages."""
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(50_000)]
    files = []
    for _ in range(n_files):
        pages = [" ".join(rng.choice(vocab) for _ in range(150)) for _ in range(PAGES_PER_FILE)]
        for i in range(int(PAGES_PER_FILE * NEAR_SHARE)):
            words = pages[i].split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            pages.append(" ".join(words))
        files.append(pages)
    return files


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _task_peaks(root: Path, scale: int, partitions: int = 0) -> tuple[dict[str, int], int, int]:
    """Largest traced peak of each kind of task for a crawl of 2·scale files, with as many shards and partitions
    (or `partitions`); the number of near duplicates found; and the peak of the single-process replay."""
    files = _files(2 * scale, seed=scale)
    near = NearDedup(0.8, 128, 5)
    root.mkdir()
    parts = _write_parts(root / "parts", files, near)
    n = len(files)
    parts_n = partitions or n
    plan = DedupPlan(root / "work", parts_n, n, n, 0.8, 128, *lsh_bands(0.8, 128))
    peaks: dict[str, int] = {}

    def run(kind: str, fn: Callable[[], object]) -> None:
        peaks[kind] = max(peaks.get(kind, 0), _peak(fn))

    for f, part in enumerate(parts):
        run("keys", lambda f=f, part=part: keys_task(plan, f, part, OptOut()))
    for p in range(parts_n):
        run("exact", lambda p=p: exact_task(plan, p))
        run("buckets", lambda p=p: buckets_task(plan, p))
    for p in range(parts_n):
        run("verify", lambda p=p: verify_task(plan, p))
    components_task(plan)
    found = 0
    for s in range(n):
        run("filter", lambda s=s: duplicates_of_shard(plan, s))
        found += len(duplicates_of_shard(plan, s)[1])
    return peaks, found, _peak(lambda: _sequential(files, near))


def test_per_shard_dedup_tasks_do_not_grow_with_distinct_input(tmp_path: Path) -> None:
    one, found_one, replay_one = _task_peaks(tmp_path / "x1", 1)
    four, found_four, replay_four = _task_peaks(tmp_path / "x4", 4)
    near_per_file = int(PAGES_PER_FILE * NEAR_SHARE)
    assert (found_one, found_four) == (2 * near_per_file, 8 * near_per_file)  # every near copy, at both sizes
    for kind, peak in four.items():
        assert peak <= 1.5 * one[kind], f"{kind}: {one[kind]:,} → {peak:,} bytes at 4× the input"
    assert replay_four >= 2.5 * replay_one  # the one-process index does grow with the input
    # The measurement sees a partition's state: with the partitions held at 2, a bucket task holds 4× the keys.
    fixed, _, _ = _task_peaks(tmp_path / "x4_fixed", 4, partitions=2)
    assert fixed["buckets"] >= 2.5 * one["buckets"]
