"""Mix named sources (web / licensed / synthetic …) into the train shards by target token share.

Phi-style small models are made by their data mixture, so the share of each source is a setting, not
an accident of how much was crawled. The corpus keeps every document once; packing decides how often
each is used. For a source with T tokens and target share w of a budget N (the corpus size), the
rate is r = w·N / T: below 1 the source is down-sampled, above 1 repeated, capped at `max_repeat`
(repeating a small source many times overfits it). Documents are taken by systematic sampling in
corpus order — a document is emitted while the source's emitted tokens stay within half a document of
r × tokens seen — so the pick is deterministic, spread evenly over the source and within one document of
the target. Corpus shards are packed by parallel engine tasks: a first pass counts tokens per document,
the sampler is replayed over the counts alone, one shard's count file at a time (no process holds
every document's count), to find the state each shard starts from, and each task then draws exactly
what one pass over the whole corpus would. The achieved shares are written to the
shard index and returned. Val is never mixed: it measures the corpus as it is.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from homegrown.data.corpus import list_shards
from homegrown.data.pack import PackStats, pack_texts, write_index
from homegrown.data.provenance import iter_documents_of
from homegrown.errors import HomegrownError
from homegrown.io import atomic_open
from homegrown.layout import SHARD_INDEX
from homegrown.tokenizer import load_tokenizer

COUNTS_DIR = ".mixture-counts"
"""Per-shard token counts of the mixture's first pass, under the shard directory while packing."""
_COUNTS = np.dtype([("source", "<i4"), ("tokens", "<i8")])


def parse_mixture(spec: str) -> dict[str, float]:
    """`web=0.6,licensed=0.3,synthetic=0.1` → shares normalised to sum to 1."""
    shares: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or share < 0:
            raise HomegrownError(f"mixture entry {item!r} must look like NAME=SHARE with SHARE ≥ 0, "
                                 "e.g. web=0.6,licensed=0.4")
        shares[name.strip()] = share
    total = sum(shares.values())
    if not shares or total <= 0:
        raise HomegrownError(f"mixture {spec!r} names no source with a positive share")
    return {k: v / total for k, v in shares.items()}


@dataclass
class MixturePlan:
    """Per-source token counts, the rates that reach the target shares, and what was achieved."""

    target: dict[str, float]
    available: dict[str, int]
    rate: dict[str, float]
    emitted: dict[str, int] = field(default_factory=dict)

    @property
    def achieved(self) -> dict[str, float]:
        total = sum(self.emitted.values())
        return {k: (v / total if total else 0.0) for k, v in self.emitted.items()}

    def to_json(self, spec: str, max_repeat: float) -> dict:
        return {"spec": spec, "max_repeat": max_repeat, "target": self.target, "available_tokens": self.available,
                "rate": {k: round(v, 6) for k, v in self.rate.items()}, "emitted_tokens": self.emitted,
                "achieved": {k: round(v, 6) for k, v in self.achieved.items()}}


def plan_mixture(available: dict[str, int], target: dict[str, float], max_repeat: float) -> MixturePlan:
    """Rates per source for a budget equal to the corpus size; sources not named in `target` get rate 0."""
    missing = [name for name, share in target.items() if share > 0 and not available.get(name)]
    if missing:
        have = ", ".join(f"{k} ({v:,} tokens)" for k, v in sorted(available.items())) or "none"
        raise HomegrownError(f"mixture names sources with no train documents: {', '.join(missing)}; "
                             f"the corpus has: {have}")
    budget = sum(available.values())
    rate = {name: min(target.get(name, 0.0) * budget / tokens, max_repeat) for name, tokens in available.items()}
    return MixturePlan(target, dict(available), rate)


def _train_docs(shard: dict[str, Path], tok) -> Iterator[tuple[str, str, int]]:
    """(source name, text, token count) of every train document of one corpus shard, tokenized in batches."""
    batch: list[tuple[str, str]] = []

    def flush() -> Iterator[tuple[str, str, int]]:
        encodings = tok.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (name, text), enc in zip(batch, encodings, strict=True):
            yield name, text, len(enc.ids) + 1  # + <|endoftext|>
        batch.clear()

    for record, row in iter_documents_of(shard):
        if row["split"] == "train":
            batch.append((row["name"], record["text"]))
            if len(batch) >= 256:
                yield from flush()
    yield from flush()


def mixed_texts(docs: Iterator[tuple[str, str, int]], rate: dict[str, float], seen: dict[str, int],
                emitted: dict[str, int]) -> Iterator[str]:
    """Train texts by systematic sampling at `rate`, from the state (`seen`, `emitted` tokens per source) the
    corpus's earlier shards left; both dicts are advanced as it goes."""
    for name, text, n in docs:
        seen[name] += n
        while emitted[name] + n / 2 <= rate[name] * seen[name]:
            emitted[name] += n
            yield text


def _count_task(shard: dict[str, Path], tokenizer_path: Path, out: Path) -> dict:
    """Engine task, the mixture's first pass over one corpus shard: each train document's (source, tokens) go
    to `out` (.npy, in corpus order); returns only the shard's source names and tokens per source, so the
    driver never holds per-document state."""
    tok = load_tokenizer(tokenizer_path)
    names: dict[str, int] = {}
    rows = [(names.setdefault(name, len(names)), n) for name, _, n in _train_docs(shard, tok)]
    counts = np.array(rows, dtype=_COUNTS)
    with atomic_open(out, "wb") as f:
        np.save(f, counts)
    totals = np.bincount(counts["source"], weights=counts["tokens"], minlength=len(names))
    return {"names": list(names), "totals": {name: int(totals[i]) for name, i in names.items()}}


def _replay(counts: Path, names: list[str], rate: dict[str, float], seen: dict[str, int],
            emitted: dict[str, int]) -> None:
    """Advance the sampler's state over one shard's token counts (no text): what `mixed_texts` would emit."""
    docs = ((names[source], "", n) for source, n in np.load(counts).tolist())
    for _ in mixed_texts(docs, rate, seen, emitted):
        pass


def _pack_task(shard: dict[str, Path], index: int, tokenizer_path: Path, shard_dir: Path,
               rate: dict[str, float] | None, start: tuple[dict[str, int], dict[str, int]] | None) -> dict:
    """Engine task: one corpus shard → its token files (`{split}_{index}_NNNNN.bin`) and their index entries.

    With a mixture, the shard's sampling starts from `start` (seen, emitted), the state the shards before it
    leave, so the draw is the one a single pass over the whole corpus makes, whichever worker packs what.
    """
    from homegrown.data.corpus import iter_jsonl_gz

    tok = load_tokenizer(tokenizer_path)
    if rate is None or start is None:
        train: Iterator[str] = (r["text"] for r in iter_jsonl_gz(shard["train"]))
    else:
        train = mixed_texts(_train_docs(shard, tok), rate, dict(start[0]), dict(start[1]))
    out = {split: pack_texts(texts, tok, shard_dir, f"{split}_{index:05d}")
           for split, texts in (("train", train), ("val", (r["text"] for r in iter_jsonl_gz(shard["val"]))))}
    return out


def _run(fn, calls: list[tuple], workers: int, label: str) -> list:
    """On the engine when there is parallel work to share, else in this process (same results either way)."""
    if workers <= 1 or len(calls) <= 1:
        return [fn(*call) for call in calls]
    from homegrown.data import engine

    with engine.connect(workers):
        return engine.run_tasks(fn, calls, workers, label, progress=False)


def pack_corpus(corpus: Path, tokenizer_path: Path, shard_dir: Path, mixture: str = "",
                max_repeat: float = 4.0, packed_since: float | None = None,
                workers: int = 1) -> tuple[PackStats, MixturePlan | None]:
    """Pack a corpus into shards, one engine task per corpus shard; with `mixture`, the train split is drawn
    to the target token shares.

    The mixture report goes into the shard index (`mixture`) so later stages — and `forget`, which
    re-packs — know how the shards were made; `packed_since` (set by forget) carries the time the
    first generation of these shards was packed. The shards are the same whatever `workers` is.
    """
    shards = list_shards(corpus)
    tokenizer_path, shard_dir = Path(tokenizer_path).resolve(), Path(shard_dir).resolve()
    shard_dir.mkdir(parents=True, exist_ok=True)
    (shard_dir / SHARD_INDEX).unlink(missing_ok=True)
    for old in shard_dir.glob("*.bin"):
        old.unlink()
    plan = None
    starts: list[tuple[dict[str, int], dict[str, int]] | None] = [None] * len(shards)
    if mixture:
        work = shard_dir / COUNTS_DIR
        work.mkdir(exist_ok=True)
        paths = [work / f"{i:05d}.npy" for i in range(len(shards))]
        sizes = _run(_count_task, [(s, tokenizer_path, p) for s, p in zip(shards, paths, strict=True)], workers,
                     "count")
        available: dict[str, int] = {}
        for name, n in (item for info in sizes for item in info["totals"].items()):
            available[name] = available.get(name, 0) + n
        plan = plan_mixture(available, parse_mixture(mixture), max_repeat)
        # replay the sampler over token counts only, one shard's file at a time (sequential by nature: a
        # shard starts where the one before ended): the state each shard starts from
        seen, plan.emitted = dict.fromkeys(plan.rate, 0), dict.fromkeys(plan.rate, 0)
        for i, (info, path) in enumerate(zip(sizes, paths, strict=True)):
            starts[i] = (dict(seen), dict(plan.emitted))
            _replay(path, info["names"], plan.rate, seen, plan.emitted)
        shutil.rmtree(work)
    calls = [(s, i, tokenizer_path, shard_dir, plan.rate if plan else None, starts[i]) for i, s in enumerate(shards)]
    pieces = _run(_pack_task, calls, workers, "pack")
    extra: dict = {} if packed_since is None else {"packed_since": packed_since}
    if plan is not None:
        extra["mixture"] = plan.to_json(mixture, max_repeat)
    stats = write_index(shard_dir, load_tokenizer(tokenizer_path),
                        {split: [p[split] for p in pieces] for split in ("train", "val")}, extra)
    return stats, plan


def print_packing(stats: PackStats, plan: MixturePlan | None, shard_dir: Path) -> None:
    """Documents and tokens per split, then each source's target and achieved share (`homegrown data mix`)."""
    from homegrown.progress import console

    for split in ("train", "val"):
        console.print(f"{split}: {stats.documents[split]:,} documents, {stats.tokens[split]:,} tokens -> {shard_dir}")
    for name in sorted(plan.rate) if plan else []:
        console.print(f"{name:>20}  target {100 * plan.target.get(name, 0):5.1f}%  achieved "
                      f"{100 * plan.achieved[name]:5.1f}%  rate ×{plan.rate[name]:.2f}  "
                      f"{plan.emitted[name]:,} tokens")
