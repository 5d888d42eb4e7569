"""PII detector quality: per-kind precision and recall on tests/data/pii_cases.jsonl, and what it finds in the corpus.

Usage: python benchmarks/pii_eval.py [--corpus data/sample] [--examples 5]

The labelled set has positives for every kind and hard negatives (dates, times, versions, ports, hex
digests, Python reprs). Cases marked "split": "heldout" were written after the detectors were tuned;
their row is printed separately. The corpus part counts replacements per kind on the bundled docs and
prints a few in context, so a reader can judge false positives by eye.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from homegrown.data.pii import KINDS, evaluate, find

ROOT = Path(__file__).resolve().parents[1]


def _table(title: str, cases: list[dict], private_ips: bool = False) -> None:
    scores, mistakes = evaluate(cases, private_ips=private_ips)
    print(f"\n{title} ({len(cases)} cases)")
    print(f"{'kind':12} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>10} {'recall':>8}")
    for kind, s in scores.items():
        print(f"{kind:12} {s.tp:4d} {s.fp:4d} {s.fn:4d} {s.precision:10.3f} {s.recall:8.3f}")
    for m in mistakes:
        print("  ", m)


def _corpus(corpus: Path, examples: int) -> None:
    counts: Counter[str] = Counter()
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    chars = 0
    start = time.perf_counter()
    for split in ("train", "val"):
        with gzip.open(corpus / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                chars += len(text)
                for m in find(text):
                    counts[m.kind] += 1
                    seen[m.kind][text[max(0, m.start - 30) : m.end + 20].replace("\n", " ")] += 1
    elapsed = time.perf_counter() - start
    print(f"\ncorpus {corpus}: {chars / 1e6:.1f} M chars, {chars / 1e6 / elapsed:.2f} M chars/s")
    for kind in KINDS:
        print(f"{kind:12} {counts[kind]:5d} replacements, {len(seen[kind])} distinct contexts")
        for context, _ in seen[kind].most_common(examples):
            print(f"    {context!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=ROOT / "tests" / "data" / "pii_cases.jsonl")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "sample")
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    cases = [json.loads(line) for line in args.cases.read_text(encoding="utf-8").splitlines() if line.strip()]
    _table("all labelled cases (default: only globally reachable IPs replaced)", cases)
    _table("all labelled cases, private_ips=True (every IP address replaced)", cases, private_ips=True)
    _table("held-out cases only", [c for c in cases if c.get("split") == "heldout"])
    _corpus(args.corpus, args.examples)


if __name__ == "__main__":
    main()
