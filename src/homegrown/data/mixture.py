"""Mix named sources (web / licensed / synthetic …) into the train shards by target token share.

Phi-style small models are made by their data mixture, so the share of each source is a setting, not
an accident of how much was crawled. The corpus keeps every document once; packing decides how often
each is used. For a source with T tokens and target share w of a budget N (the corpus size), the
rate is r = w·N / T: below 1 the source is down-sampled, above 1 repeated, capped at `max_repeat`
(repeating a small source many times overfits it). Documents are taken by systematic sampling in
corpus order — a document is emitted while the source's emitted tokens stay within half a document of
r × tokens seen — so the pick is deterministic, spread evenly over the source and within one document
of the target. The achieved shares are written to the shard index and returned. Val is never mixed:
it measures the corpus as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from homegrown.data.pack import PackStats, pack
from homegrown.data.provenance import iter_documents
from homegrown.errors import HomegrownError
from homegrown.tokenizer import load_tokenizer


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


def _train_docs(corpus: Path, tok) -> Iterator[tuple[str, str, int]]:
    """(source name, text, token count) of every train document, tokenized in batches."""
    batch: list[tuple[str, str]] = []

    def flush() -> Iterator[tuple[str, str, int]]:
        encodings = tok.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (name, text), enc in zip(batch, encodings, strict=True):
            yield name, text, len(enc.ids) + 1  # + <|endoftext|>
        batch.clear()

    for record, row in iter_documents(corpus):
        if row["split"] == "train":
            batch.append((row["name"], record["text"]))
            if len(batch) >= 256:
                yield from flush()
    yield from flush()


def mixed_texts(corpus: Path, tok, plan: MixturePlan) -> Iterator[str]:
    """Train texts by systematic sampling at `plan.rate`; fills `plan.emitted` as it goes."""
    seen = dict.fromkeys(plan.rate, 0)
    plan.emitted = dict.fromkeys(plan.rate, 0)
    for name, text, n in _train_docs(corpus, tok):
        seen[name] += n
        while plan.emitted[name] + n / 2 <= plan.rate[name] * seen[name]:
            plan.emitted[name] += n
            yield text


def pack_corpus(corpus: Path, tokenizer_path: Path, shard_dir: Path, mixture: str = "",
                max_repeat: float = 4.0, packed_since: float | None = None) -> tuple[PackStats, MixturePlan | None]:
    """Pack a corpus into shards; with `mixture`, the train split is drawn to the target token shares.

    The mixture report goes into the shard index (`mixture`) so later stages — and `forget`, which
    re-packs — know how the shards were made; `packed_since` (set by forget) carries the time the
    first generation of these shards was packed.
    """
    extra: dict = {} if packed_since is None else {"packed_since": packed_since}
    from homegrown.data.sources import iter_corpus

    tok = load_tokenizer(tokenizer_path)
    val = (r["text"] for r in iter_corpus(corpus, "val"))
    if not mixture:
        train = (r["text"] for r in iter_corpus(corpus, "train"))
        return pack({"train": train, "val": val}, tok, shard_dir, index_extra=lambda: extra), None
    available: dict[str, int] = {}
    for name, _, n in _train_docs(corpus, tok):
        available[name] = available.get(name, 0) + n
    plan = plan_mixture(available, parse_mixture(mixture), max_repeat)
    stats = pack({"train": mixed_texts(corpus, tok, plan), "val": val}, tok, shard_dir,
                 index_extra=lambda: {**extra, "mixture": plan.to_json(mixture, max_repeat)})
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
