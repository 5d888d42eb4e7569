"""Claim: our ingest processes a crawl at least as fast as datatrove doing the equivalent steps (≥ 1×).

Both read the same WARC.gz of HTML pages and run: HTML extraction (trafilatura in both), a Gopher-style
quality filter, and MinHash near-duplicate removal (5-gram shingles, ~0.8 Jaccard), writing the kept text
(datatrove: Parquet, as its JSONL writer needs orjson; we: JSONL.gz). datatrove runs its standard four
MinHash stages (signatures, buckets, clusters, filter) with a Parquet file of the filtered documents
between stage 1 and 4, on one task, as its docs show; we run
`homegrown.data.ingest.ingest` with one worker and trafilatura — which also does language id, PII
scrubbing and exact dedup, so the comparison is conservative. A third line times our default extractor
(resiliparse) for reference. Imports happen before the clock starts; each side is timed once
per repeat, alternating, and the median counts.

The input is the bundled corpus turned back into HTML pages (navigation and footer around the text), with
10 % exact and 10 % near copies so dedup has work:

    python benchmarks/ingest.py                 # all 618 sample pages (+ copies), 3 repeats
    python benchmarks/ingest.py --docs 60 --repeats 1
    python benchmarks/ingest.py --warc crawl.warc.gz
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from homegrown.data.ingest import SourceSpec, ingest
from homegrown.data.sources import iter_corpus
from homegrown.pipeline import SAMPLE_DIR


def html_page(title: str, text: str) -> str:
    import html

    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in text.split("\n") if p.strip())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/blog'>Blog</a></nav>"
            f"<main><article><h1>{html.escape(title)}</h1>\n{body}</article></main>"
            "<footer>Copyright the authors. Contact the webmaster.</footer></body></html>")


def build_warc(path: Path, docs: int, seed: int = 0) -> tuple[int, int]:
    """A WARC.gz of `docs` sample pages plus 10 % exact and 10 % near copies; returns (pages, HTML bytes)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    records = [r for split in ("train", "val") for r in iter_corpus(SAMPLE_DIR, split)][:docs]
    rng = random.Random(seed)
    pages = [(r["source"], r["title"] or "Untitled", r["text"]) for r in records]
    for src, title, text in rng.sample(pages, len(pages) // 10):
        pages.append((src + "?copy", title, text))
    for src, title, text in rng.sample(pages[:len(records)], len(pages) // 10):
        pages.append((src + "?near", title, text + "\nThis page was last updated recently."))
    total = 0
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, title, text in pages:
            payload = html_page(title, text).encode("utf-8")
            total += len(payload)
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                          http_headers=headers))
    return len(pages), total


def run_ours(warc: Path, out: Path, extractor: str = "trafilatura") -> int:
    stats = ingest([SourceSpec(path=warc, licence="mixed", name="bench")], out, progress=False, extractor=extractor)
    return stats.kept


def run_ours_resiliparse(warc: Path, out: Path) -> int:
    """Our default extractor (DataConfig.extractor); not part of the like-for-like ratio."""
    return run_ours(warc, out, "resiliparse")


def _regex_word_tokenizer():
    """Words by regex: datatrove's English tokenizer needs spaCy; this one is faster, which favours datatrove."""
    import re

    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        word = re.compile(r"\w+|[^\w\s]")
        sentence_end = re.compile(r"(?<=[.!?])\s+")

        def word_tokenize(self, text: str) -> list[str]:
            return self.word.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return self.sentence_end.split(text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in self.word.finditer(text)]

    return RegexWordTokenizer("en")


def run_datatrove(warc: Path, out: Path) -> int:
    """datatrove's documented MinHash pipeline with the same extractor and a Gopher quality filter."""
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.readers import ParquetReader, WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    # datatrove's default bands (≈0.8 Jaccard); sha1 32-bit shingle hashes like datasketch's (its xxhash path
    # fails on str input with the installed xxhash)
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                        hash_config=HashConfig(precision=32, hash_fc="sha1"))
    words = _regex_word_tokenizer()
    stages = [
        [WarcReader(str(warc.parent), glob_pattern=warc.name), Trafilatura(favour_precision=False, timeout=10),
         GopherQualityFilter(language=words), ParquetWriter(str(out / "filtered")),
         MinhashDedupSignature(output_folder=str(out / "sigs"), config=cfg, language=words)],
        [MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg)],
        [ParquetReader(str(out / "filtered")), MinhashDedupFilter(input_folder=str(out / "remove")),
         ParquetWriter(str(out / "kept"))],
    ]
    tasks = [1, cfg.num_buckets, 1, 1]
    for i, (pipeline, n) in enumerate(zip(stages, tasks, strict=True)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=1, logging_dir=str(out / f"logs{i}"),
                              skip_completed=False).run()
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "kept").glob("*.parquet"))


def timed(fn: Callable[[Path, Path], int], warc: Path, root: Path, tag: str) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix=tag, dir=root))
    t0 = time.perf_counter()
    kept = fn(warc, out)
    return time.perf_counter() - t0, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="sample pages to use (all 618 by default)")
    parser.add_argument("--warc", type=Path, default=None, help="use this WARC instead of building one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import datatrove.pipeline.extractors  # noqa: F401 - import cost is not part of the measurement

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.warc:
            warc, pages, nbytes = args.warc.resolve(), None, args.warc.stat().st_size
        else:
            warc = root / "input" / "crawl.warc.gz"
            warc.parent.mkdir()
            pages, nbytes = build_warc(warc, args.docs)
        runs = (("homegrown", run_ours), ("datatrove", run_datatrove), ("homegrown+resiliparse", run_ours_resiliparse))
        times: dict[str, list[float]] = {name: [] for name, _ in runs}
        kept: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in runs:
                seconds, kept[name] = timed(fn, warc, root, name)
                times[name].append(seconds)
        med = {k: statistics.median(v) for k, v in times.items()}
    label = f"{pages} pages, " if pages else ""
    print(f"input: {label}{nbytes / 1e6:.1f} MB {'HTML' if pages else 'WARC'}; python {sys.version.split()[0]}")
    for name in times:
        rate = f"{pages / med[name]:.1f} docs/s, " if pages else ""
        print(f"{name:>21}: {med[name]:.2f} s  {rate}{nbytes / 1e6 / med[name]:.2f} MB/s  kept {kept[name]}")
    print(f"ratio (datatrove time / homegrown time): {med['datatrove'] / med['homegrown']:.2f}x  (target ≥ 1x)")


if __name__ == "__main__":
    main()
