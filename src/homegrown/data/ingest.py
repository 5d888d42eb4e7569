"""Ingest stage: a crawl (HTML, WARC, JSONL, Parquet, text) → clean, deduplicated, sharded text with lineage.

Every step runs as tasks on the engine (data/engine.py: Ray, local or a cluster), so the work spreads over
processes and machines while the result stays exactly reproducible:

1. **Parts** (a task per input file, resumable). Read (`sources.iter_file`) → extract HTML → language →
   quality rules → PII scrub → MinHash signature. The survivors are written to
   ``OUT/parts/SSS-FFFFFFF.jsonl.gz`` with their signatures, then a ``.json`` marker with the file's counts.
   A file with a marker is done: an interrupted run resumes at the first file without one. ``--shard i/n``
   takes every n-th file so SLURM array jobs can each run a slice, writing into one shared ``parts/``.
2. **Merge** (`merge`): opt-out, exact and near dedup by hash partitioning (data/dedup_stages.py: keys →
   exact / buckets → verify → components), then a task per corpus shard writes its block of input files,
   in plan order — never the order of completion — split into train/val. So 1 worker, 8 workers or 50
   machines give byte-identical output. Every task leaves a marker under ``OUT/dedup/``: a re-run after a
   crash redoes only unfinished tasks.

Output (``OUT``, layout in data/corpus.py): per shard ``train-NNNNN.jsonl.gz`` / ``val-NNNNN.jsonl.gz``
(``text``, ``title``, ``source``, ``licence``, ``sha256``) and ``manifest-NNNNN.jsonl.gz`` (one provenance
row per kept document, see provenance.py); ``MANIFEST.json`` (every count: rejections per reason and
quality rule, PII per kind, dedup, opt-out; the shards; sizes and sha256 of every file) is written last:
its presence means complete.

The split depends on the page's URL only, so a page stays in the same split when sources are added or
the corpus is rebuilt, and val never leaks into train.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from homegrown.config import DataConfig, IngestConfig
from homegrown.data import engine
from homegrown.data.corpus import KINDS, SINGLE_FILE, shard_names
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
from homegrown.data.extract import EXTRACTOR_OPTIONS, extract_html, identify_language
from homegrown.data.filters import QualityFilter
from homegrown.data.pii import find, scrub
from homegrown.data.provenance import (
    AtomicJsonlGz,
    OptOut,
    doc_id,
    file_digest,
    iter_jsonl_gz,
    text_sha256,
)
from homegrown.data.sources import RawDoc, Skip, SourceSpec, iter_file, list_files
from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic, write_text_atomic
from homegrown.layout import MANIFEST
from homegrown.progress import console

__all__ = ["IngestStats", "SourceSpec", "ingest", "ingest_parts", "merge", "split_of"]

log = logging.getLogger(__name__)

SPLIT_RULE = (
    "val if int(sha256(source URL as UTF-8).hexdigest()[:8], 16) % 1000 < round(holdout_fraction * 1000), "
    "else train; when that leaves val empty (a small crawl) and at least 2 pages are kept, the page with the "
    "lowest such number goes to val"
)
PARTS = "parts"
DEDUP = "dedup"
PLAN = "PLAN.json"


def split_bucket(source: str) -> int:
    """The page's number in 0..999 that decides its split (see SPLIT_RULE)."""
    return int(hashlib.sha256(source.encode("utf-8")).hexdigest()[:8], 16) % 1000


def split_of(source: str, holdout_fraction: float) -> str:
    """'val' or 'train' for a page, from its URL alone (see SPLIT_RULE)."""
    return "val" if split_bucket(source) < round(holdout_fraction * 1000) else "train"


@dataclass
class SourceStats:
    """Counts for one source; `text_bytes` is the UTF-8 size of the kept text."""

    name: str
    url_prefix: str
    licence: str
    files: int = 0
    pages_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    text_bytes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestStats:
    """What `ingest` read, kept and dropped: totals, each rejection reason, PII kinds, dedup, per source.

    `rejected` keys: reading problems (`binary`, `corrupt_compression`, `truncated_warc`, `bad_json` …),
    `empty` (no text after extraction), `extract_error` (markup the extractor cannot parse), `language`,
    `quality:<rule>`, `duplicate_exact`, `duplicate_near`, `opt_out_domain` / `opt_out_prefix` / `opt_out_hash`.
    `notes` counts kept-but-altered documents (`truncated`: cut at max_doc_bytes; `invalid_utf8`: bad
    bytes replaced).
    """

    pages_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    train_pages: int = 0
    val_pages: int = 0
    train_text_bytes: int = 0
    val_text_bytes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    per_source: list[SourceStats] = field(default_factory=list)


# ---- the plan: which files, in which order, under which settings ----


@dataclass
class _FileTask:
    index: int
    source: int
    path: Path

    @property
    def part(self) -> str:
        return f"{self.source:03d}-{self.index:07d}"


def _plan(sources: Sequence[SourceSpec], cfg: IngestConfig, extractor: str) -> tuple[dict, list[_FileTask]]:
    """The files to read, in order, and a JSON plan whose `id` changes whenever a part's content would."""
    if not sources:
        raise HomegrownError("no sources given; pass at least one source directory or file")
    if extractor not in EXTRACTOR_OPTIONS:
        raise HomegrownError(f"unknown extractor {extractor!r}; choose one of: {', '.join(EXTRACTOR_OPTIONS)}")
    try:
        find("", cfg.pii_kinds)
    except ValueError as err:
        raise HomegrownError(f"pii_kinds={cfg.pii_kinds!r}: {err}") from None
    tasks: list[_FileTask] = []
    for i, spec in enumerate(sources):
        found = list_files(Path(spec.path), spec.glob, spec.exclude)
        if not found:
            raise HomegrownError(f"no files match {spec.glob!r} under {spec.path} (after excludes); "
                                 "pass --glob, e.g. '**/*.warc.gz'")
        tasks.extend(_FileTask(len(tasks), i, p) for p in found)
    settings = {
        "sources": [{**asdict(s), "path": str(s.path)} for s in sources],
        # size and mtime: a file changed since its part was made must be read again
        "files": [[t.source, str(t.path), t.path.stat().st_size, t.path.stat().st_mtime_ns] for t in tasks],
        "extractor": extractor,
        "extraction": EXTRACTOR_OPTIONS.get(extractor, {}),
        "filters": asdict(cfg.filters),
        "languages": sorted(cfg.languages),
        "pii": [cfg.pii_kinds, cfg.pii_private_ips],
        "max_doc_bytes": cfg.max_doc_bytes,
        "num_perm": cfg.num_perm,
        "ngram": cfg.ngram,
    }
    plan_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": "homegrown-ingest-plan/1", "id": plan_id, **settings}, tasks


def _write_plan(parts: Path, plan: dict, replace_stale: bool) -> None:
    """Record the plan in `parts/`. Parts of another plan (other files or settings) would mix two inputs:
    a whole-crawl run on one machine replaces them; a `--shard` run refuses, as other shards may be writing.
    """
    path = parts / PLAN
    if path.is_file() and json.loads(path.read_text()).get("id") != plan["id"]:
        if not replace_stale:
            raise HomegrownError(f"{parts} holds parts of a different ingest (other files or settings); "
                                 f"use another --out, or delete {parts} once no shard is running")
        log.info("ingest: input or settings changed since %s was written; starting over", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        write_json_atomic(path, plan)


# ---- phase 1: one file → one part ----


class _Processor:
    """Everything applied to one document before dedup; built once per worker process."""

    def __init__(self, cfg: IngestConfig, extractor: str) -> None:
        self.cfg = cfg
        self.extractor = extractor
        from homegrown.data.dedup import NearDedup  # datasketch loads only when a crawl is ingested

        self.quality = QualityFilter(cfg.filters)
        self.near = NearDedup(cfg.near_dedup_threshold, cfg.num_perm, cfg.ngram)
        self.languages = set(cfg.languages)

    def document(self, raw: RawDoc) -> tuple[dict | None, str | None]:
        """(part record, None) for a document that survives, or (None, rejection reason)."""
        title = raw.title
        if raw.is_html:
            try:
                page = extract_html(raw.content, url=raw.url, extractor=self.extractor)
            except (ValueError, RecursionError, UnicodeError, LookupError):
                # pathological markup (nesting depth, unknown charsets) must not stop a crawl
                return None, "extract_error"
            if page is None:
                return None, "empty"
            text, title, lang = page.text, page.title or title, page.lang
        else:
            text = str(raw.content).strip()
            if not text:
                return None, "empty"
            lang, _ = identify_language(text)
        if self.languages and lang not in self.languages:
            return None, "language"
        failed = self.quality.check(text)
        if failed:
            return None, f"quality:{failed}"
        extracted_sha = text_sha256(text)
        text, found = scrub(text, self.cfg.pii_kinds, self.cfg.pii_private_ips)
        sig = np.ascontiguousarray(self.near.signature(text))
        return {
            "url": raw.url, "title": title, "text": text, "retrieved": raw.retrieved, "language": lang,
            "extracted_sha256": extracted_sha, "pii": dict(found), "truncated": raw.truncated,
            "sig": base64.b64encode(sig.tobytes()).decode(), "sig_dtype": sig.dtype.str,
        }, None

    def run(self, spec: SourceSpec, task: _FileTask, parts: Path, plan_id: str) -> dict:
        """Process one file into its part and marker; returns the marker."""
        rejected: Counter[str] = Counter()
        notes: Counter[str] = Counter()
        read = candidates = 0
        writer = AtomicJsonlGz(parts / f"{task.part}.jsonl.gz")
        try:
            for item in iter_file(spec, task.path, self.cfg.max_doc_bytes):
                read += 1
                if isinstance(item, Skip):
                    rejected[item.reason] += 1
                    continue
                notes.update(k for k in ("truncated", "invalid_utf8") if getattr(item, k))
                record, reason = self.document(item)
                if record is None:
                    rejected[reason] += 1
                    continue
                writer.write(record)
                candidates += 1
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        marker = {"plan": plan_id, "index": task.index, "source": task.source, "file": str(task.path),
                  "read": read, "candidates": candidates, "rejected": dict(rejected), "notes": dict(notes)}
        write_json_atomic(parts / f"{task.part}.json", marker)
        return marker


_PROCESSORS: dict[str, _Processor] = {}


def _part_task(spec: SourceSpec, task: _FileTask, parts: Path, plan_id: str, cfg: IngestConfig,
               extractor: str) -> dict:
    """One engine task: one input file → its part. The processor is built once per worker process."""
    key = json.dumps([asdict(cfg), extractor], sort_keys=True)
    if key not in _PROCESSORS:
        _PROCESSORS[key] = _Processor(cfg, extractor)
    return _PROCESSORS[key].run(spec, task, parts, plan_id)


def _done(parts: Path, task: _FileTask, plan_id: str) -> bool:
    marker = parts / f"{task.part}.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("plan") == plan_id
    except json.JSONDecodeError:
        return False


def parse_shard(shard: str) -> tuple[int, int]:
    """`i/n` (0-based i) → (i, n)."""
    i, sep, n = shard.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise HomegrownError(f"--shard must be i/n with 0 ≤ i < n (e.g. 0/4), got {shard!r}")
    return index, count


def ingest_parts(
    sources: Sequence[SourceSpec],
    out_dir: Path,
    cfg: IngestConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    extractor: str = DataConfig.extractor,
    progress: bool = True,
) -> int:
    """Phase 1 for this shard's files (file k belongs to shard k mod n); returns how many files it processed.

    Files whose part is already complete are skipped, so re-running after a crash resumes.
    """
    cfg = cfg or IngestConfig()
    sources = [dataclasses.replace(s, path=Path(s.path).resolve()) for s in sources]  # workers may run elsewhere
    plan, tasks = _plan(sources, cfg, extractor)
    parts = Path(out_dir).resolve() / PARTS
    _write_plan(parts, plan, replace_stale=shard == (0, 1))
    mine = [t for t in tasks if t.index % shard[1] == shard[0]]
    todo = [t for t in mine if not _done(parts, t, plan["id"])]
    if len(todo) < len(mine):
        console.print(f"ingest: {len(mine) - len(todo)} of {len(mine)} files already done, resuming")
    calls = [(sources[t.source], t, parts, plan["id"], cfg, extractor) for t in todo]
    with engine.connect(cfg.workers, cfg.ray_address):
        engine.run_tasks(_part_task, calls, cfg.workers, "ingest", progress)
    return len(todo)


# ---- phase 2: parts → corpus, on the engine ----


def _stage(dplan: DedupPlan, name: str, fn: Callable[..., Any], calls: list[tuple], ids: list[int],
           cfg: IngestConfig, progress: bool) -> None:
    """Run the tasks of one stage whose done-marker is missing; a re-run after a crash redoes only those."""
    todo = [call for call, i in zip(calls, ids, strict=True) if not dplan.done(name, i).is_file()]
    log.info("ingest %s: %d of %d tasks to run", name, len(todo), len(calls))
    engine.run_tasks(fn, todo, cfg.workers, name, progress)


def _write_shard(dplan: DedupPlan, shard: int, files: list[tuple[_FileTask, Path]], sources: list[SourceSpec],
                 holdout_fraction: float, quality_rules: list[str], optout: OptOut, out_dir: Path,
                 force_val: str | None = None) -> None:
    """One engine task: the parts of one block of input files → one corpus shard (corpus.py) and its counts.

    A document leaves if opted out, else if an exact or near duplicate (dedup_stages decided which); the
    rest go to their split with a manifest row. `force_val` is the one page a crawl too small to draw any
    val page puts there (see SPLIT_RULE).
    """
    exact, near = duplicates_of_shard(dplan, shard)
    names = shard_names(shard)
    writers = {kind: AtomicJsonlGz(out_dir / names[kind]) for kind in KINDS}
    per_source: dict[int, dict] = {}
    rejected: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    counts = dict.fromkeys(("train_pages", "val_pages", "train_text_bytes", "val_text_bytes"), 0)
    fallback: list | None = None  # [bucket, id] of the train page nearest to val
    try:
        for task, where in files:
            spec = sources[task.source]
            src = per_source.setdefault(task.source, {"files": 0, "pages_read": 0, "kept": 0, "text_bytes": 0,
                                                      "rejected": {}})
            marker = json.loads((where / f"{task.part}.json").read_text())
            src["files"] += 1
            src["pages_read"] += marker["read"]
            file_rejects = Counter(marker["rejected"])
            notes.update(marker["notes"])
            for line, record in enumerate(iter_jsonl_gz(where / f"{task.part}.jsonl.gz")):
                order = order_of(task.index, line)
                sha = text_sha256(record["text"])
                reason = optout.match(record["url"], (sha, record["extracted_sha256"]))
                if reason is None and order in exact:
                    reason = "duplicate_exact"
                elif reason is None and order in near:
                    reason = "duplicate_near"
                if reason is not None:
                    file_rejects[reason] += 1
                    continue
                ident = doc_id(record["url"], sha)
                split = "val" if ident == force_val else split_of(record["url"], holdout_fraction)
                nbytes = len(record["text"].encode("utf-8"))
                if split == "train" and (fallback is None or [split_bucket(record["url"]), ident] < fallback):
                    fallback = [split_bucket(record["url"]), ident]
                writers[split].write({"text": record["text"], "title": record["title"], "source": record["url"],
                                      "licence": spec.licence, "sha256": sha})
                writers["manifest"].write({
                    "id": ident, "source": record["url"], "name": spec.label, "licence": spec.licence,
                    "retrieved": record["retrieved"], "sha256": sha, "language": record["language"],
                    "chars": len(record["text"]), "split": split, "title": record["title"],
                    "filters": quality_rules, "pii": record["pii"], "truncated": record["truncated"],
                })
                pii.update(record["pii"])
                src["kept"] += 1
                src["text_bytes"] += nbytes
                counts[f"{split}_pages"] += 1
                counts[f"{split}_text_bytes"] += nbytes
            src["rejected"] = dict(Counter(src["rejected"]) + file_rejects)
            rejected.update(file_rejects)
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    write_json_atomic(dplan.path("write", f"{shard:07d}.json"), {
        **counts, "files": names, "rejected": dict(rejected), "notes": dict(notes), "pii": dict(pii),
        "sources": {str(k): v for k, v in per_source.items()}, "fallback": fallback,
        "digests": {name: file_digest(out_dir / name) for name in names.values()},
    })
    write_text_atomic(dplan.done("write", shard), "done\n")


def _dedup_plan(out_dir: Path, plan: dict, cfg: IngestConfig, optout: OptOut, n_files: int) -> DedupPlan:
    """The work directory and partitioning of this merge: a new one whenever an input to the result changes."""
    shards = max(1, min(cfg.shards, n_files))
    bands, rows = lsh_bands(cfg.near_dedup_threshold, cfg.num_perm)
    settings = [plan["id"], optout.sha256, cfg.near_dedup_threshold, cfg.num_perm, bands, rows, shards,
                cfg.holdout_fraction]
    ident = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    root = out_dir / DEDUP
    if root.is_dir():
        for old in root.iterdir():
            if old.name != ident:
                shutil.rmtree(old)
    return DedupPlan(root / ident, shards, n_files, shards, cfg.near_dedup_threshold, cfg.num_perm, bands, rows)


def merge(
    out_dir: Path,
    cfg: IngestConfig | None = None,
    opt_out: Path | str | None = None,
    extra_parts: Sequence[Path] = (),
    progress: bool = True,
) -> IngestStats:
    """Phase 2 on the engine: opt-out, exact and near dedup by hash partitioning, then one task per corpus shard.

    `extra_parts` are more `parts/` directories (from machines without a shared filesystem) to draw
    markers and parts from. Every file of the plan must have a part; the error lists the missing ones.
    Work files go to ``OUT/dedup/`` and are removed at the end unless `cfg.keep_parts`; a merge
    interrupted anywhere resumes at the first unfinished task of the first unfinished stage.
    """
    cfg = cfg or IngestConfig()
    if not 0.0 <= cfg.holdout_fraction < 1.0:
        raise HomegrownError(f"holdout_fraction must be in [0, 1), got {cfg.holdout_fraction}")
    out_dir = Path(out_dir).resolve()
    dirs = [out_dir / PARTS, *(Path(d).resolve() for d in extra_parts)]
    plan_path = next((d / PLAN for d in dirs if (d / PLAN).is_file()), None)
    if plan_path is None:
        raise HomegrownError(f"no {PLAN} in {', '.join(map(str, dirs))}; run `homegrown data ingest` first")
    plan = json.loads(plan_path.read_text())
    sources = [SourceSpec(**{**s, "path": Path(s["path"])}) for s in plan["sources"]]
    tasks = [_FileTask(i, src, Path(p)) for i, (src, p, *_) in enumerate(plan["files"])]
    found: list[tuple[_FileTask, Path]] = []
    missing: list[int] = []
    for t in tasks:
        where = next((d for d in dirs if _done(d, t, plan["id"])), None)
        (missing.append(t.index) if where is None else found.append((t, where)))
    if missing:
        raise HomegrownError(f"{len(missing)} of {len(tasks)} input files have no finished part (first: "
                             f"{tasks[missing[0]].path}); run the missing `--shard` slices, then merge again")
    optout = OptOut.load(opt_out)
    quality_rules = QualityFilter(cfg.filters).rule_names
    dplan = _dedup_plan(out_dir, plan, cfg, optout, len(tasks))
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the corpus is incomplete until it is rewritten
    parts = [(dplan, t.index, where / f"{t.part}.jsonl.gz", optout) for t, where in found]
    partitions = list(range(dplan.partitions))
    by_shard: list[list[tuple[_FileTask, Path]]] = [[] for _ in range(dplan.shards)]
    for t, where in found:
        by_shard[dplan.shard_of(t.index)].append((t, where))
    shards = list(range(dplan.shards))
    writes = [(dplan, s, by_shard[s], sources, cfg.holdout_fraction, quality_rules, optout, out_dir)
              for s in shards]
    with engine.connect(cfg.workers, cfg.ray_address):
        _stage(dplan, "keys", keys_task, parts, [t.index for t, _ in found], cfg, progress)
        _stage(dplan, "exact", exact_task, [(dplan, p) for p in partitions], partitions, cfg, progress)
        _stage(dplan, "buckets", buckets_task, [(dplan, p) for p in partitions], partitions, cfg, progress)
        _stage(dplan, "verify", verify_task, [(dplan, p) for p in partitions], partitions, cfg, progress)
        _stage(dplan, "components", components_task, [(dplan,)], [0], cfg, progress)
        _stage(dplan, "write", _write_shard, writes, shards, cfg, progress)
        markers = [json.loads(dplan.path("write", f"{s:07d}.json").read_text()) for s in shards]
        if (cfg.holdout_fraction > 0 and not sum(m["val_pages"] for m in markers)
                and sum(m["train_pages"] for m in markers) >= 2):
            best, shard = min((m["fallback"], s) for s, m in enumerate(markers) if m["fallback"])
            engine.run_tasks(_write_shard, [(*writes[shard], best[1])], 1, "hold out", progress)
            markers[shard] = json.loads(dplan.path("write", f"{shard:07d}.json").read_text())
    stats = _finish_corpus(out_dir, plan, cfg, optout, sources, markers, quality_rules, dplan)
    if not cfg.keep_parts:
        shutil.rmtree(out_dir / DEDUP)
    return stats


def _finish_corpus(out_dir: Path, plan: dict, cfg: IngestConfig, optout: OptOut, sources: list[SourceSpec],
                   markers: list[dict], quality_rules: list[str], dplan: DedupPlan) -> IngestStats:
    """Add up the shards' counts and write MANIFEST.json, last; shard files of an earlier layout are removed."""
    stats = IngestStats(per_source=[SourceStats(s.label, s.url_prefix, s.licence) for s in sources])
    rejected: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    for m in markers:
        for key in ("train_pages", "val_pages", "train_text_bytes", "val_text_bytes"):
            setattr(stats, key, getattr(stats, key) + m[key])
        rejected.update(m["rejected"])
        notes.update(m["notes"])
        pii.update(m["pii"])
        for index, counts in m["sources"].items():
            src = stats.per_source[int(index)]
            for key in ("files", "pages_read", "kept", "text_bytes"):
                setattr(src, key, getattr(src, key) + counts[key])
            src.rejected = dict(sorted((Counter(src.rejected) + Counter(counts["rejected"])).items()))
    for src in stats.per_source:
        src.dropped_empty = src.rejected.get("empty", 0)
        src.dropped_duplicate = src.rejected.get("duplicate_exact", 0) + src.rejected.get("duplicate_near", 0)
    stats.pages_read = sum(s.pages_read for s in stats.per_source)
    stats.kept = stats.train_pages + stats.val_pages
    stats.dropped_empty = rejected["empty"]
    stats.dropped_duplicate = rejected["duplicate_exact"] + rejected["duplicate_near"]
    stats.rejected, stats.notes, stats.pii = (dict(sorted(c.items())) for c in (rejected, notes, pii))
    listed = {name for m in markers for name in m["files"].values()}
    for kind in KINDS:
        for old in (*out_dir.glob(f"{kind}-*.jsonl.gz"), out_dir / SINGLE_FILE[kind]):
            if old.name not in listed:
                old.unlink(missing_ok=True)
    meta = {
        "format": "homegrown-corpus/3",
        **{k: v for k, v in asdict(stats).items() if k != "per_source"},
        "holdout_fraction": cfg.holdout_fraction,
        "split_rule": SPLIT_RULE,
        "dedup": (f"exact: sha256 of lowercased, whitespace-collapsed text; near: MinHash over word {cfg.ngram}-grams, "
                  f"{cfg.num_perm} permutations, LSH {dplan.bands} bands × {dplan.rows} rows, a pair counts when "
                  f"its signatures agree on ≥ {cfg.near_dedup_threshold}, clusters = connected components of "
                  "the pairs; the first copy in input order is kept, across all files and shards "
                  f"(hash-partitioned over {dplan.partitions} partitions, data/dedup_stages.py)"),
        "extraction": {"tool": plan["extractor"], **plan["extraction"]},
        "quality_rules": quality_rules,
        "filters": plan["filters"],
        "languages": plan["languages"],
        "max_doc_bytes": plan["max_doc_bytes"],
        "opt_out": {"entries": len(optout), "sha256": optout.sha256},
        "plan": plan["id"],
        "sources": [asdict(s) for s in stats.per_source],
        "shards": [{**m["files"], "train_pages": m["train_pages"], "val_pages": m["val_pages"]} for m in markers],
        "files": {name: digest for m in markers for name, digest in m["digests"].items()},
    }
    write_json_atomic(out_dir / MANIFEST, meta)
    log.info("ingest: kept %d of %d documents (train %d, val %d) in %d shards -> %s; rejected %s", stats.kept,
             stats.pages_read, stats.train_pages, stats.val_pages, len(markers), out_dir, stats.rejected)
    return stats


def sources_from(paths: Sequence[Path], sources_file: Path | None = None, **common: object) -> list[SourceSpec]:
    """SourceSpecs from CLI paths (sharing `common` settings) plus a JSON list of per-source objects."""
    specs = []
    for path in paths:
        spec = SourceSpec(path=Path(path), **common)  # type: ignore[arg-type]
        spec.url_prefix = spec.url_prefix or Path(path).resolve().as_uri() + "/"
        specs.append(spec)
    if sources_file is not None:
        try:
            entries = json.loads(Path(sources_file).read_text())
            specs.extend(SourceSpec(**{**e, "path": Path(e["path"])}) for e in entries)
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise HomegrownError(f"cannot read sources file {sources_file} ({err}); it must be a JSON list of "
                                 '{"path": …, "licence": …, "url_prefix": …} objects') from err
    if not specs:
        raise HomegrownError("no sources given; pass directories/files or --sources-file")
    return specs


def print_stats(stats: IngestStats, out: Path) -> None:
    """The per-source table and the counts `homegrown data ingest` and `data merge` end with."""
    from rich.table import Table

    table = Table(title=f"ingest → {out}")
    for col in ("source", "licence", "files", "read", "kept", "text MB"):
        table.add_column(col, justify="left" if col in ("source", "licence") else "right")
    for s in stats.per_source:
        table.add_row(s.name, s.licence, str(s.files), f"{s.pages_read:,}", f"{s.kept:,}", f"{s.text_bytes / 1e6:.2f}")
    console.print(table)
    console.print(f"kept {stats.kept:,} of {stats.pages_read:,} (train {stats.train_pages:,}, val {stats.val_pages:,})")
    console.print("rejected: " + (", ".join(f"{k} {v:,}" for k, v in stats.rejected.items()) or "none"))
    console.print("PII replaced: " + (", ".join(f"{k} {v:,}" for k, v in stats.pii.items()) or "none"))
    if stats.notes:
        console.print("altered: " + ", ".join(f"{k} {v:,}" for k, v in stats.notes.items()))


def ingest(
    sources: Sequence[SourceSpec],
    out_dir: Path,
    holdout_fraction: float | None = None,
    progress: bool = True,
    cfg: IngestConfig | None = None,
    opt_out: Path | str | None = None,
    extractor: str = DataConfig.extractor,
) -> IngestStats:
    """Both phases on the engine (`cfg.workers` tasks at once): parts for every file, then merge.

    The parts are deleted after a successful merge unless `cfg.keep_parts` (they hold a second copy of
    the text); `--shard` runs and `merge` never delete them.
    """
    cfg = dataclasses.replace(cfg or IngestConfig())
    if holdout_fraction is not None:
        cfg.holdout_fraction = holdout_fraction
    if not 0.0 <= cfg.holdout_fraction < 1.0:
        raise HomegrownError(f"holdout_fraction must be in [0, 1), got {cfg.holdout_fraction}")
    with engine.connect(cfg.workers, cfg.ray_address):  # one Ray for both phases
        ingest_parts(sources, out_dir, cfg, extractor=extractor, progress=progress)
        stats = merge(out_dir, cfg, opt_out=opt_out, progress=progress)
    if not cfg.keep_parts:
        shutil.rmtree(Path(out_dir) / PARTS)
    return stats


# ---- `python -m homegrown.data.ingest`: several sources, each with its own licence and excludes ----


class _AddSource(argparse.Action):
    """`--source PATH:LICENCE:URL_PREFIX` starts a new source; the URL prefix may itself contain colons."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str,
                 option_string: str | None = None) -> None:
        parts = value.split(":", 2)
        if len(parts) != 3 or not all(parts[:2]):
            parser.error(f"--source expects PATH:LICENCE:URL_PREFIX, got {value!r}")
        namespace.sources.append(SourceSpec(path=Path(parts[0]), licence=parts[1], url_prefix=parts[2]))


class _SetOnLastSource(argparse.Action):
    """`--exclude` / `--glob` / `--name` apply to the `--source` given just before them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str,
                 option_string: str | None = None) -> None:
        if not namespace.sources:
            parser.error(f"{option_string} must follow the --source it applies to")
        spec = namespace.sources[-1]
        if self.dest == "exclude":
            spec.exclude.append(value)
        else:
            setattr(spec, self.dest, value)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse sources and run `ingest`; user errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m homegrown.data.ingest", description=__doc__.splitlines()[0])
    parser.set_defaults(sources=[])
    parser.add_argument("--source", action=_AddSource, metavar="PATH:LICENCE:URL_PREFIX", required=True,
                        help="a source tree, its licence (SPDX) and the public URL its files are served at")
    parser.add_argument("--exclude", action=_SetOnLastSource, metavar="PATTERN",
                        help="skip files whose relative path or any path component matches (repeatable)")
    parser.add_argument("--glob", action=_SetOnLastSource, metavar="GLOB", help="files to read, default **/*.html")
    parser.add_argument("--name", action=_SetOnLastSource, metavar="NAME", help="source name for audit/mixture")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--holdout-fraction", type=float, default=IngestConfig.holdout_fraction)
    parser.add_argument("--workers", type=int, default=IngestConfig.workers)
    parser.add_argument("--shards", type=int, default=IngestConfig.shards, help="corpus shards to write")
    parser.add_argument("--opt-out", type=Path, default=None, help="opt-out list (see provenance.py)")
    parser.add_argument("--pii-private-ips", action="store_true",
                        help="also replace private, link-local and documentation IP addresses")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ingest(args.sources, args.out, holdout_fraction=args.holdout_fraction, progress=not args.no_progress,
               cfg=IngestConfig(workers=args.workers, shards=args.shards, pii_private_ips=args.pii_private_ips),
               opt_out=args.opt_out)
    except HomegrownError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
