"""Scale planner, data side: what ingesting a crawl costs — CPU-hours per stage, memory per worker, shuffle, storage.

The planner multiplies a crawl's size by per-stage rates measured here, by the real stage code:
`measure_rates` (``homegrown plan --measure-data``) turns the bundled sample back into HTML pages (with 10 %
exact and 10 % near copies so dedup has work), writes them as WARC files, and runs each stage in this one
process, without Ray, timing it by CPU time (``time.process_time``, so other processes on a loaded machine
distort it less than wall time would):

* ``extract``: phase 1 of ingest per file (ingest._part_task: read WARC, extract HTML, language, quality
  rules, PII) minus the MinHash signature, which is timed on its own; rate per HTML byte.
* ``signatures``: the MinHash signatures plus dedup_stages.keys_task (band hashes and exact keys by
  partition); rate per document that passed the filters — as every later stage but ``pack``.
* ``exact``: exact_task; ``buckets``: buckets_task + verify_task (candidate and duplicate pairs);
  ``components``: components_task; ``write``: ingest._write_shard (filter and write the corpus shards).
* ``pack``: tokenize and pack the kept text (pack.pack_texts) with a BPE trained on it; rate per text byte.

Beside the rates it records the bytes each document leaves in every dedup file (signatures, keys, pairs:
the shuffle), in the corpus and in the token shards, the share of pages the filters and the dedup kept, the
CPU model and flags, the load average and the date. A rates file measured on the maintainers' machine ships
as ``data_rates.json`` next to this module; ``--rates FILE`` uses another.

The estimate (`data_plan`) is that arithmetic and nothing else: CPU-hours = units ÷ rate; the dedup's
partitions are as many as keep one partition's keys within a worker's memory; the components task holds
the duplicate pairs only (as datatrove's, one task). `FINEWEB_BUDGET` is the check against a published
figure: the CPU time Hugging Face's own FineWeb script reserves per Common Crawl snapshot.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import platform
import random
import re
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homegrown.errors import HomegrownError

RATES_FORMAT = "homegrown-data-rates/1"
DEFAULT_RATES = Path(__file__).with_name("data_rates.json")
STAGES = ("extract", "signatures", "exact", "buckets", "components", "write", "pack")
STAGE_UNITS = {"extract": "html_byte", "signatures": "doc", "exact": "doc", "buckets": "doc", "components": "doc",
               "write": "doc", "pack": "text_byte"}
STAGE_TEXT = {
    "extract": "read + extract HTML + language + quality rules + PII",
    "signatures": "MinHash signatures + band/exact keys by partition",
    "exact": "exact dedup (sort each hash partition)",
    "buckets": "LSH buckets → candidate pairs → verified pairs",
    "components": "connected components over the pairs (one task)",
    "write": "filter duplicates, write corpus shards + manifest",
    "pack": "tokenize + pack token shards",
}
SORT_OVERHEAD = 3.0
"""A partition task holds its keys about three times over while it concatenates, sorts (lexsort's index) and
splits them."""
UNION_FIND_BYTES_PER_PAIR = 250.0
"""components_task keeps a Python dict of ints: about two entries (≈ 100 bytes each with their int objects)
per duplicate pair, plus the pairs array (16 bytes) — a round figure, not a measurement."""


# ---- the published figure the estimate is checked against ----


@dataclass(frozen=True)
class BudgetStage:
    name: str
    tasks: int
    hours: float
    cpus: int

    @property
    def cpu_hours(self) -> float:
        return self.tasks * self.hours * self.cpus


FINEWEB_SOURCE = ("huggingface/datatrove examples/fineweb.py (\"the code used to process and create the FineWeb "
                  "dataset\"), SLURM reservations per Common Crawl snapshot")
FINEWEB_BUDGET = (
    BudgetStage("base processing: WARC read, URL filter, trafilatura, language, Gopher/C4/FineWeb filters", 8000,
                10.0, 1),
    BudgetStage("MinHash signatures", 1000, 5.0, 1),
    BudgetStage("MinHash buckets", 14 * 50, 2.0, 3),
    BudgetStage("MinHash clusters", 1, 30.0, 8),
    BudgetStage("MinHash filter + PII + write", 1000, 5.0, 1),
)
"""tasks × `time=` limit × `cpus_per_task` of each SlurmPipelineExecutor in FineWeb's script: the CPU time HF
reserved per snapshot — an upper bound on what each stage used (a task ends before its limit)."""


@dataclass(frozen=True)
class Crawl:
    """A crawl as the planner sees it; `filter_keep` and `dedup_keep` default to the rates file's."""

    name: str
    docs: float
    html_bytes: float
    snapshots: int = 1
    filter_keep: float | None = None
    dedup_keep: float | None = None
    notes: tuple[str, ...] = ()


CRAWLS = {
    "fineweb": Crawl(
        "fineweb", docs=96 * 2.64e9, html_bytes=96 * 394 * 2**40, snapshots=96, filter_keep=0.15, dedup_keep=0.42,
        notes=("96 snapshots (FineWeb), each sized like CC-MAIN-2024-51: 2.64 billion pages, 394 TiB uncompressed "
               "(blog.commoncrawl.org, 'December 2024 crawl archive now available'); older snapshots are smaller",
               "filter_keep 0.15 (English pages passing the filters) is an assumption; dedup_keep 0.42 = 15T / 36T "
               "tokens after / before FineWeb's per-snapshot MinHash (FineWeb paper, as quoted by third parties)")),
}


# ---- rates file ----


def load_rates(path: Path | None = None) -> dict:
    """Read and check a rates file (default: the one shipped with homegrown)."""
    path = Path(path) if path is not None else DEFAULT_RATES
    if not path.is_file():
        raise HomegrownError(f"rates file {path} not found; measure one with `homegrown plan --measure-data "
                             f"--rates-out {path}` or leave --rates out to use the shipped one")
    try:
        rates = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HomegrownError(f"rates file {path} is not readable JSON ({err})") from None
    if not isinstance(rates, dict) or rates.get("format") != RATES_FORMAT:
        raise HomegrownError(f"{path} is not a homegrown data rates file (format {RATES_FORMAT!r})")
    missing = [s for s in STAGES if s not in rates.get("stages", {})]
    if missing:
        raise HomegrownError(f"rates file {path} lacks stages: {', '.join(missing)}; measure it again")
    for name in STAGES:
        if not rates["stages"][name].get("per_core_s", 0) > 0:
            raise HomegrownError(f"rates file {path}: stage {name!r} has no positive rate; measure it again")
    return rates


# ---- the estimate ----


@dataclass
class StageCost:
    name: str
    units: float
    unit: str
    cpu_hours: float


@dataclass
class DataPlan:
    crawl: Crawl
    filter_keep: float
    dedup_keep: float
    docs_filtered: float
    docs_kept: float
    stages: list[StageCost]
    partitions: int
    memory: dict[str, float]
    """Peak bytes per worker: `baseline` (a worker process with the stage code loaded), `partition` (an exact or
    buckets task), `components` (the one union-find task, over the whole crawl or one snapshot)."""
    shuffle_bytes: float
    storage: dict[str, float]
    rates_info: dict
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_hours(self) -> float:
        return sum(s.cpu_hours for s in self.stages)

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_hours": self.cpu_hours}


def data_plan(crawl: Crawl, rates: dict, worker_memory_bytes: float = 4e9) -> DataPlan:
    """CPU-hours per stage, memory per worker, shuffle and storage for `crawl` at `rates` (see the module doc)."""
    for label, value in (("documents", crawl.docs), ("HTML bytes", crawl.html_bytes),
                         ("snapshots", crawl.snapshots), ("worker memory", worker_memory_bytes)):
        if not value > 0:
            raise HomegrownError(f"crawl {label} must be positive, got {value:g}")
    yields, state = rates["yields"], rates["state"]
    filter_keep = crawl.filter_keep if crawl.filter_keep is not None else yields["filter_keep"]
    dedup_keep = crawl.dedup_keep if crawl.dedup_keep is not None else yields["dedup_keep"]
    for label, value in (("filter_keep", filter_keep), ("dedup_keep", dedup_keep)):
        if not 0 < value <= 1:
            raise HomegrownError(f"{label} must be in (0, 1], got {value:g}")
    filtered = crawl.docs * filter_keep
    kept = filtered * dedup_keep
    text_bytes = kept * state["text_bytes_per_doc"]
    units = {"extract": crawl.html_bytes, "pack": text_bytes}
    stages = []
    for name in STAGES:
        n = units.get(name, filtered)
        stages.append(StageCost(name, n, STAGE_UNITS[name], n / rates["stages"][name]["per_core_s"] / 3600))
    key_bytes = filtered * (state["exact_key_bytes_per_doc"] + state["band_key_bytes_per_doc"])
    pair_bytes = filtered * state["candidate_pair_bytes_per_doc"]
    baseline = state["worker_baseline_bytes"]
    room = worker_memory_bytes - baseline
    if room <= 0:
        raise HomegrownError(f"a worker needs more than {baseline / 1e9:.1f} GB before it holds any data; "
                             "give --worker-memory-gb above that")
    largest_keys = filtered * max(state["exact_key_bytes_per_doc"], state["band_key_bytes_per_doc"])
    partitions = max(1, math.ceil(largest_keys * SORT_OVERHEAD / room))
    dup_pairs = filtered * state["duplicate_pairs_per_doc"]
    memory = {
        "baseline": baseline,
        "partition": baseline + largest_keys * SORT_OVERHEAD / partitions,
        "components": baseline + dup_pairs * UNION_FIND_BYTES_PER_PAIR,
        "components, one snapshot alone": baseline + dup_pairs / crawl.snapshots * UNION_FIND_BYTES_PER_PAIR,
    }
    storage = {
        "raw HTML": crawl.html_bytes,
        "parts (phase 1, deleted after merge)": filtered * state["part_bytes_per_doc"],
        "dedup work files (deleted after merge)": filtered * state["signature_bytes_per_doc"] + key_bytes + pair_bytes,
        "corpus shards (text + manifest, gzip)": kept * state["corpus_bytes_per_doc"],
        "token shards": text_bytes * state["tokens_per_text_byte"] * state["token_bytes"],
    }
    notes = list(crawl.notes)
    if memory["components"] > worker_memory_bytes:
        notes.append(f"the components task needs {memory['components'] / 1e9:,.0f} GB, above a "
                     f"{worker_memory_bytes / 1e9:g} GB worker: run it on a large-memory node (datatrove's FineWeb "
                     "script gives its one clustering task 8 CPUs × 25 GB), or dedup per snapshot as FineWeb did")
    return DataPlan(crawl, filter_keep, dedup_keep, filtered, kept, stages, partitions, memory, key_bytes + pair_bytes,
                    storage, {k: rates.get(k) for k in ("measured_at", "host", "input", "note")}, notes)


def fineweb_check(plan: DataPlan) -> dict[str, float]:
    """The plan's CPU-hours per snapshot next to FineWeb's reserved CPU-hours per snapshot, and their ratio."""
    published = sum(s.cpu_hours for s in FINEWEB_BUDGET)
    ours = plan.cpu_hours / plan.crawl.snapshots
    return {"published_cpu_hours_per_snapshot": published, "estimate_cpu_hours_per_snapshot": ours,
            "ratio": ours / published}


# ---- parsing and printing ----

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgtpe]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str) -> float:
    """`394TiB`, `2.5e9`, `3G` → a number (K/M/G/T/P/E decimal, with `i` binary); negative or junk → error."""
    m = _SIZE.match(text)
    if not m:
        raise HomegrownError(f"{what} {text!r} is not a non-negative size such as 2.64e9, 394TiB or 3G")
    value, prefix, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    power = "kmgtpe".index(prefix) + 1 if prefix else 0
    return value * (1024 if binary else 1000) ** power


def crawl_from(preset: str | None, docs: str | None, html_bytes: str | None, snapshots: int | None,
               filter_keep: float | None, dedup_keep: float | None) -> Crawl:
    """A named crawl, or one from explicit sizes; explicit values override the preset's."""
    if preset is not None:
        if preset not in CRAWLS:
            raise HomegrownError(f"unknown crawl {preset!r}; choose one of: {', '.join(CRAWLS)}")
        base = CRAWLS[preset]
    elif docs is None or html_bytes is None:
        raise HomegrownError("give --crawl NAME, or both --data-docs and --data-bytes")
    else:
        base = Crawl("custom", 0.0, 0.0)
    per = {k: v for k, v in (("filter_keep", filter_keep), ("dedup_keep", dedup_keep)) if v is not None}
    if snapshots is not None and snapshots < 1:
        raise HomegrownError(f"--snapshots must be at least 1, got {snapshots}")
    return Crawl(base.name, parse_size(docs, "--data-docs") if docs is not None else base.docs,
                 parse_size(html_bytes, "--data-bytes") if html_bytes is not None else base.html_bytes,
                 snapshots if snapshots is not None else base.snapshots, per.get("filter_keep", base.filter_keep),
                 per.get("dedup_keep", base.dedup_keep), base.notes)


def _bytes(x: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if x >= size:
            return f"{x / size:,.1f} {unit}"
    return f"{x:,.0f} B"


def render(plan: DataPlan, console) -> None:
    from rich.table import Table

    c = plan.crawl
    info = plan.rates_info
    head = Table(title=f"data plan: {c.name} crawl", show_header=False)
    head.add_row("crawl", f"{c.docs:,.3g} pages, {_bytes(c.html_bytes)} HTML, {c.snapshots} snapshot(s)")
    head.add_row("kept", f"filters keep {plan.filter_keep:.0%} → {plan.docs_filtered:,.3g} docs; dedup keeps "
                 f"{plan.dedup_keep:.0%} → {plan.docs_kept:,.3g} docs")
    host = info.get("host") or {}
    head.add_row("rates", f"measured {info.get('measured_at')} on {host.get('cpu_model')} "
                 f"(load average {host.get('loadavg')}); {info.get('note') or ''}".strip())
    console.print(head)
    table = Table(title="CPU-hours per stage (one core of the measuring machine)")
    for col in ("stage", "what", "units", "CPU-hours", "share"):
        table.add_column(col, justify="left" if col in ("stage", "what") else "right")
    total = plan.cpu_hours
    for s in plan.stages:
        table.add_row(s.name, STAGE_TEXT[s.name], f"{s.units:,.3g} {s.unit}s", f"{s.cpu_hours:,.0f}",
                      f"{s.cpu_hours / total:.1%}")
    table.add_row("total", "", "", f"{total:,.0f}", "100%")
    console.print(table)
    res = Table(title="memory, shuffle, storage", show_header=False)
    res.add_row("dedup partitions", f"{plan.partitions:,} (keys of one partition fit one worker: ingest --shards)")
    for k, v in plan.memory.items():
        res.add_row(f"peak per worker: {k}", _bytes(v))
    res.add_row("dedup shuffle", f"{_bytes(plan.shuffle_bytes)} (keys by partition + candidate pairs)")
    for k, v in plan.storage.items():
        res.add_row(f"storage: {k}", _bytes(v))
    console.print(res)
    check = fineweb_check(plan)
    console.print(f"check: {check['estimate_cpu_hours_per_snapshot']:,.0f} CPU-hours per snapshot estimated here vs "
                  f"{check['published_cpu_hours_per_snapshot']:,.0f} reserved by FineWeb ({FINEWEB_SOURCE}): "
                  f"ratio {check['ratio']:.2f}", highlight=False)
    for b in FINEWEB_BUDGET:
        console.print(f"  FineWeb {b.name}: {b.tasks} tasks × {b.hours:g} h × {b.cpus} CPU = {b.cpu_hours:,.0f}",
                      highlight=False)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False)


def print_data_plan(crawl: Crawl, rates_path: Path | None, worker_memory_gb: float, as_json: bool) -> DataPlan:
    """`homegrown plan --crawl …`: the plan as tables (at least 120 columns) or JSON on stdout."""
    from rich.console import Console

    plan = data_plan(crawl, load_rates(rates_path), worker_memory_gb * 1e9)
    if as_json:
        print(json.dumps({**plan.to_dict(), "fineweb_check": fineweb_check(plan)}, indent=2, default=str))
    else:
        render(plan, Console(width=max(120, Console().width)))
    return plan


# ---- measuring the rates ----


def _html_page(title: str, text: str) -> str:
    import html

    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in text.split("\n") if p.strip())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/blog'>Blog</a></nav>"
            f"<main><article><h1>{html.escape(title)}</h1>\n{body}</article></main>"
            "<footer>Copyright the authors. Contact the webmaster.</footer></body></html>")


def write_sample_crawl(out: Path, docs: int, files: int, seed: int = 0) -> tuple[int, int]:
    """WARC.gz files of the first `docs` bundled sample pages as HTML, plus 10 % exact and 10 % near copies
    (a sentence appended); returns (pages, HTML bytes)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from homegrown.data.sources import iter_corpus
    from homegrown.layout import SAMPLE_DIR

    records = [r for split in ("train", "val") for r in iter_corpus(SAMPLE_DIR, split)][:docs]
    rng = random.Random(seed)
    pages = [(r["source"], r["title"] or "Untitled", r["text"]) for r in records]
    pages += [(u + "?copy", t, x) for u, t, x in rng.sample(pages, len(records) // 10)]
    pages += [(u + "?near", t, x + "\nThis page was last updated recently.")
              for u, t, x in rng.sample(pages[:len(records)], len(records) // 10)]
    rng.shuffle(pages)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(files):
        with (out / f"crawl-{i:03d}.warc.gz").open("wb") as f:
            writer = WARCWriter(f, gzip=True)
            for url, title, text in pages[i::files]:
                payload = _html_page(title, text).encode("utf-8")
                total += len(payload)
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")],
                                           protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                              http_headers=headers))
    return len(pages), total


def _host() -> dict[str, Any]:
    from homegrown.train.precision import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
    except OSError:
        pass
    have = cpu_flags()
    flags = [f for f in ("avx", "avx2", "avx512f", "avx512bw", "sse4_2", "bmi2", "sha_ni", "aes") if f in have]
    return {"cpu_model": model, "cpu_flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


class _Clock:
    """CPU seconds (this process) and wall seconds spent per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.wall: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def run(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        c, w = time.process_time(), time.perf_counter()
        out = fn(*args)
        self.cpu[stage] += time.process_time() - c
        self.wall[stage] += time.perf_counter() - w
        return out


def _own_peak_rss() -> float:
    """This process's peak resident bytes. Linux's VmHWM belongs to the process's own memory map; ru_maxrss does
    not: a child started by vfork (Python's subprocess) inherits its parent's peak at exec, so under a 4 GB test
    runner it read 4 GB before this process had loaded anything."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def measure_rates(docs: int = 100_000, files: int = 4, vocab: int = 8192, note: str = "") -> dict:
    """Run every stage on the bundled sample (at most `docs` pages + copies) here; the rates-file dict."""
    from homegrown.config import DataConfig, IngestConfig
    from homegrown.data import ingest
    from homegrown.data.dedup import NearDedup
    from homegrown.data.dedup_stages import (
        _BAND,
        _EXACT,
        buckets_task,
        components_task,
        exact_task,
        keys_task,
        verify_task,
    )
    from homegrown.data.filters import QualityFilter
    from homegrown.data.pack import pack_texts, token_dtype
    from homegrown.data.provenance import OptOut, iter_jsonl_gz
    from homegrown.data.sources import SourceSpec
    from homegrown.tokenizer import train_tokenizer

    if docs < 10 or files < 1:
        raise HomegrownError(f"--measure-docs must be at least 10 and files at least 1, got {docs} and {files}")
    cfg = IngestConfig(shards=files)
    extractor = DataConfig.extractor
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="homegrown-measure-") as tmp:
        root = Path(tmp)
        pages, html_bytes = write_sample_crawl(root / "crawl", docs, files)
        out = root / "out"
        sources = [SourceSpec(path=root / "crawl", licence="mixed", name="sample", glob="*.warc.gz",
                              url_prefix="https://sample.example/")]
        plan, tasks = ingest._plan(sources, cfg, extractor)
        parts = out / ingest.PARTS
        ingest._write_plan(parts, plan, replace_stale=True)
        ingest._part_task(sources[0], tasks[0], parts, plan["id"], cfg, extractor)  # warm-up: imports, models
        (parts / f"{tasks[0].part}.json").unlink()
        for t in tasks:
            clock.run("extract", ingest._part_task, sources[0], t, parts, plan["id"], cfg, extractor)
        part_files = [parts / f"{t.part}.jsonl.gz" for t in tasks]
        texts = [r["text"] for p in part_files for r in iter_jsonl_gz(p)]
        near = NearDedup(cfg.near_dedup_threshold, cfg.num_perm, cfg.ngram)
        for text in texts:  # the signature share of phase 1, moved from extract to signatures
            clock.run("signatures", near.signature, text)
        clock.cpu["extract"] = max(clock.cpu["extract"] - clock.cpu["signatures"], 1e-9)
        filtered = len(texts)
        if filtered == 0:
            raise HomegrownError("no sample page passed the filters; nothing to measure")
        optout = OptOut.load(None)
        dplan = ingest._dedup_plan(out, plan, cfg, optout, len(tasks))
        for t, p in zip(tasks, part_files, strict=True):
            clock.run("signatures", keys_task, dplan, t.index, p, optout)
        pairs = 0
        for p in range(dplan.partitions):
            clock.run("exact", exact_task, dplan, p)
            pairs += clock.run("buckets", buckets_task, dplan, p)
        dup_pairs = sum(clock.run("buckets", verify_task, dplan, p) for p in range(dplan.partitions))
        clock.run("components", components_task, dplan)
        rules = QualityFilter(cfg.filters).rule_names
        by_shard: list[list] = [[] for _ in range(dplan.shards)]
        for t in tasks:
            by_shard[dplan.shard_of(t.index)].append((t, parts))
        for s in range(dplan.shards):
            clock.run("write", ingest._write_shard, dplan, s, by_shard[s], sources, cfg.holdout_fraction, rules,
                      optout, out)
        kept_texts = [r["text"] for s in range(dplan.shards) for split in ("train", "val")
                      for r in iter_jsonl_gz(out / f"{split}-{s:05d}.jsonl.gz")]
        text_bytes = sum(len(t.encode("utf-8")) for t in kept_texts)
        tok = train_tokenizer(kept_texts, vocab, root / "tokenizer.json")
        packed = clock.run("pack", pack_texts, kept_texts, tok, root / "tokens", "train")
        state = {
            "text_bytes_per_doc": text_bytes / len(kept_texts),
            "part_bytes_per_doc": _dir_bytes(parts, "*.jsonl.gz") / filtered,
            "signature_bytes_per_doc": _dir_bytes(dplan.work / "sigs") / filtered,
            "exact_key_bytes_per_doc": float(_EXACT.itemsize),
            "band_key_bytes_per_doc": float(dplan.bands * _BAND.itemsize),
            "candidate_pair_bytes_per_doc": 16.0 * pairs / filtered,
            "duplicate_pairs_per_doc": dup_pairs / filtered,
            "corpus_bytes_per_doc": _dir_bytes(out, "*-*.jsonl.gz") / len(kept_texts),
            "tokens_per_text_byte": packed["tokens"] / text_bytes,
            "token_bytes": token_dtype(tok.get_vocab_size()).itemsize,
            "tokenizer_vocab": tok.get_vocab_size(),
            "worker_baseline_bytes": _own_peak_rss(),
        }
    units = {"extract": html_bytes, "pack": text_bytes}
    stages = {}
    for name in STAGES:
        n = units.get(name, filtered)
        stages[name] = {"unit": STAGE_UNITS[name], "units": n, "cpu_seconds": round(clock.cpu[name], 4),
                        "wall_seconds": round(clock.wall[name], 4), "per_core_s": n / max(clock.cpu[name], 1e-9)}
    return {
        "format": RATES_FORMAT,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": _host(),
        "note": note,
        "input": {"pages": pages, "html_bytes": html_bytes, "files": files, "extractor": extractor,
                  "filtered_docs": filtered, "kept_docs": len(kept_texts), "text_bytes": text_bytes,
                  "tokens": packed["tokens"]},
        "yields": {"filter_keep": filtered / pages, "dedup_keep": len(kept_texts) / filtered},
        "stages": stages,
        "state": state,
    }


def measure_to(path: Path, docs: int, note: str = "") -> dict:
    """`homegrown plan --measure-data`: measure, then write the rates file atomically; returns the rates."""
    from homegrown.io import write_json_atomic
    from homegrown.progress import console

    console.print(f"measuring the data stages on up to {docs:,} sample pages in this process …")
    rates = measure_rates(docs, note=note)
    write_json_atomic(Path(path), rates)
    for name in STAGES:
        s = rates["stages"][name]
        console.print(f"{name:>10}: {s['per_core_s']:,.1f} {s['unit']}s/s per core ({s['units']:,} in "
                      f"{s['cpu_seconds']:.2f} CPU-s)", highlight=False)
    console.print(f"rates → {path}", highlight=False)
    return rates

