"""Claim: our ingest, on its engine (Ray tasks), processes a crawl at least as fast as datatrove doing the
equivalent steps (≥ 1×), with 1 and with 2 workers.

Both read the same WARC.gz files of HTML pages and run: HTML extraction (trafilatura in both), the SAME
quality rules (homegrown.data.filters.QualityFilter, wrapped in a datatrove LambdaFilter on its side, so both
keep the same pages; datatrove's Gopher defaults would drop most of these documentation pages), and MinHash
near-duplicate removal (5-gram shingles, ~0.8 Jaccard), writing the kept text (datatrove: Parquet, as its
JSONL writer needs orjson; we: JSONL.gz shards). datatrove runs its standard four MinHash stages
(signatures, buckets, clusters, filter) with its LocalPipelineExecutor, the first stage as one task per
input file on `workers` processes; we run `homegrown.data.ingest.ingest` with `workers` — which also does
language id, PII scrubbing, exact dedup and the provenance manifest, so the comparison is conservative.
Imports and Ray's start-up (printed apart: paid once per `homegrown data ingest`, not per stage) happen
before the clock starts; each side is timed once per repeat, alternating, and the median counts.

The input is the bundled corpus turned back into HTML pages (navigation and footer around the text), with
10 % exact and 10 % near copies so dedup has work, split over `--files` WARC files:

    python benchmarks/ingest.py                 # all 618 sample pages (+ copies), 4 files, 3 repeats
    python benchmarks/ingest.py --docs 60 --repeats 1
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from homegrown.config import IngestConfig
from homegrown.data.filters import QualityFilter
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


def build_warc(path: Path, docs: int, seed: int = 0, files: int = 1) -> tuple[int, int]:
    """A WARC.gz of `docs` sample pages plus 10 % exact and 10 % near copies; returns (pages, HTML bytes).

    With `files` > 1 the pages go round-robin into `files` WARCs named after `path` (`crawl-0.warc.gz` …).
    """
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
    paths = [path] if files == 1 else [path.with_name(path.name.replace(".warc", f"-{i}.warc")) for i in range(files)]
    for i, target in enumerate(paths):
        with target.open("wb") as f:
            writer = WARCWriter(f, gzip=True)
            for url, title, text in pages[i::files]:
                payload = html_page(title, text).encode("utf-8")
                total += len(payload)
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                           protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                              http_headers=headers))
    return len(pages), total


def run_ours(crawl: Path, out: Path, workers: int) -> int:
    stats = ingest([SourceSpec(path=crawl, licence="mixed", name="bench", glob="*.warc.gz")], out, progress=False,
                   extractor="trafilatura", cfg=IngestConfig(workers=workers))
    return stats.kept


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


def run_datatrove(crawl: Path, out: Path, workers: int) -> int:
    """datatrove's documented MinHash pipeline with the same extractor and our quality rules."""
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import ParquetReader, WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    # datatrove's default bands (≈0.8 Jaccard); sha1 32-bit shingle hashes like datasketch's (its xxhash path
    # fails on str input with the installed xxhash)
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                        hash_config=HashConfig(precision=32, hash_fc="sha1"))
    words = _regex_word_tokenizer()
    quality = QualityFilter()
    files = len(list(crawl.glob("*.warc.gz")))
    stages = [
        [WarcReader(str(crawl), glob_pattern="*.warc.gz"), Trafilatura(favour_precision=False, timeout=10),
         LambdaFilter(lambda doc: quality.check(doc.text) is None), ParquetWriter(str(out / "filtered")),
         MinhashDedupSignature(output_folder=str(out / "sigs"), config=cfg, language=words)],
        [MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg)],
        [ParquetReader(str(out / "filtered")), MinhashDedupFilter(input_folder=str(out / "remove")),
         ParquetWriter(str(out / "kept"))],
    ]
    tasks = [files, cfg.num_buckets, 1, files]
    for i, (pipeline, n) in enumerate(zip(stages, tasks, strict=True)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n), logging_dir=str(out / f"logs{i}"),
                              skip_completed=False).run()
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "kept").glob("*.parquet"))


def timed(fn: Callable[[Path, Path, int], int], crawl: Path, root: Path, tag: str, workers: int) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix=tag, dir=root))
    t0 = time.perf_counter()
    kept = fn(crawl, out, workers)
    return time.perf_counter() - t0, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="sample pages to use (all 618 by default)")
    parser.add_argument("--files", type=int, default=4, help="WARC files the pages are split over")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import datatrove.pipeline.extractors  # noqa: F401 - import cost is not part of the measurement
    import ray

    from homegrown.data.engine import OBJECT_STORE_BYTES

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crawl = root / "input"
        crawl.mkdir()
        pages, nbytes = build_warc(crawl / "crawl.warc.gz", args.docs, files=args.files)
        runs = [(f"{name} w{w}", fn, w) for w in (1, 2) for name, fn in (("homegrown", run_ours),
                                                                           ("datatrove", run_datatrove))]
        times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        kept: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn, workers in runs:
                seconds, kept[name] = timed(fn, crawl, root, name.replace(" ", "_"), workers)
                times[name].append(seconds)
        med = {k: statistics.median(v) for k, v in times.items()}
    print(f"input: {pages} pages, {nbytes / 1e6:.1f} MB HTML in {args.files} WARC files; python "
          f"{sys.version.split()[0]}; {os.cpu_count()} CPUs; median of {args.repeats}; Ray start-up {ray_start:.1f} s "
          "(not in the times)")
    for name in times:
        print(f"{name:>13}: {med[name]:.2f} s  {pages / med[name]:.1f} docs/s  {nbytes / 1e6 / med[name]:.2f} MB/s  "
              f"kept {kept[name]}")
    for w in (1, 2):
        print(f"ratio with {w} worker(s) (datatrove time / homegrown time): "
              f"{med[f'datatrove w{w}'] / med[f'homegrown w{w}']:.2f}x  (target ≥ 1x)")
    print(f"homegrown speed-up 1 -> 2 workers: {med['homegrown w1'] / med['homegrown w2']:.2f}x")


if __name__ == "__main__":
    main()
