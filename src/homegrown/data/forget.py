"""`homegrown data forget`: remove documents from a run's corpus and shards, and name what was trained on them.

Above both the manifest (data/provenance.py) and the packer (data/mixture.py): forgetting rewrites the corpus
through its manifest and re-packs the shards with the run's own mixture.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from homegrown.data.corpus import corpus_files, iter_jsonl_gz, list_shards
from homegrown.data.mixture import pack_corpus
from homegrown.data.provenance import (
    SPLITS,
    AtomicJsonlGz,
    corpus_dir_of,
    file_digest,
    iter_documents_of,
)
from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic, write_text_atomic
from homegrown.layout import MANIFEST, RunLayout
from homegrown.progress import console
from homegrown.train.checkpoint import WEIGHTS

FORGET_LOG = "forget_log.jsonl"


@dataclass
class ForgetResult:
    """What `forget` removed and which checkpoints were trained on shards that contained it."""

    removed: list[dict]
    checkpoints: list[Path]
    shards_repacked: bool
    tokenizer_trained_on_it: bool


def _checkpoints_after(run: Path, since: float) -> list[Path]:
    """Every model under the run (ckpt/step_N, sft/, distill/, exports) whose weights were written since `since`.

    All of them descend from training on the run's shards, so all of them saw what the shards held.
    """
    return [w.parent for w in sorted(run.glob(f"**/{WEIGHTS}"))
            if not any(part.startswith(".") for part in w.relative_to(run).parts) and w.stat().st_mtime >= since]


def forget(run: Path, urls: Iterable[str] = (), hashes: Iterable[str] = (), ids: Iterable[str] = ()) -> ForgetResult:
    """Remove documents (by exact URL, content sha256 or manifest id) from `run`'s corpus and shards.

    Each corpus shard holding one of them has its splits and manifest rewritten under temporary names,
    renamed together once every shard is done, MANIFEST.json last; other shards are not touched. Packed
    shards are rebuilt from the new corpus with the run's tokenizer (and mixture). Every checkpoint written
    after the shards were first packed (`packed_since` in the shard index survives re-packs by forget) was
    trained on data that held the document: they are listed and logged in ``forget_log.jsonl`` so a team
    knows what to retrain.
    """
    urls, hashes, ids = set(urls), {h.lower() for h in hashes}, set(ids)
    if not (urls or hashes or ids):
        raise HomegrownError("say what to forget: --url URL, --hash SHA256 or --id ID (repeatable)")
    run = Path(run)
    corpus = corpus_dir_of(run)
    is_run = corpus != run
    removed: list[dict] = []
    shards = list_shards(corpus)
    counts = {split: [0, 0] for split in SPLITS}  # pages, text bytes
    rewritten: list[dict[str, AtomicJsonlGz]] = []  # per shard; a shard nothing leaves is not rewritten
    try:
        for shard in shards:
            writers = {kind: AtomicJsonlGz(path) for kind, path in shard.items()}
            rewritten.append(writers)
            before = len(removed)
            for record, row in iter_documents_of(shard):
                if row["source"] in urls or row["sha256"] in hashes or row["id"] in ids:
                    removed.append({k: row[k] for k in ("id", "source", "sha256", "split")})
                    continue
                writers[row["split"]].write(record)
                writers["manifest"].write(row)
                counts[row["split"]][0] += 1
                counts[row["split"]][1] += len(record["text"].encode("utf-8"))
            for kind, w in writers.items():
                # unchanged shards and a missing manifest (a corpus from before manifests) stay as they are
                (w.close if len(removed) > before and shard[kind].is_file() else w.abort)()
        if not removed:
            raise HomegrownError("no document matches; check the URL, hash or id with `homegrown data audit`")
    except BaseException:
        for writers in rewritten:
            for w in writers.values():
                w.abort()
        raise
    meta_path = corpus / MANIFEST
    meta = json.loads(meta_path.read_text())
    names = corpus_files(corpus)
    meta_path.unlink()  # the corpus is incomplete until MANIFEST.json is rewritten
    for writers in rewritten:
        for w in writers.values():
            if w.tmp.is_file():
                w.commit()
    for split in SPLITS:
        meta[f"{split}_pages"], meta[f"{split}_text_bytes"] = counts[split]
    meta["kept"] = counts["train"][0] + counts["val"][0]
    meta["forgotten"] = meta.get("forgotten", 0) + len(removed)
    for entry, shard in zip(meta.get("shards", []), shards, strict=False):
        for split in SPLITS:
            entry[f"{split}_pages"] = sum(1 for _ in iter_jsonl_gz(shard[split]))
    meta["files"] = {name: file_digest(corpus / name) for name in names}
    write_json_atomic(meta_path, meta)

    checkpoints: list[Path] = []
    repacked = tokenizer_used = False
    if is_run:
        paths = RunLayout(run)
        index = paths.shard_index
        packed = json.loads(index.read_text()) if index.is_file() else {}
        # shards re-packed by an earlier forget still descend from the first pack, which held this document
        since = packed.get("packed_since", index.stat().st_mtime if index.is_file() else 0.0)
        checkpoints = _checkpoints_after(run, since)
        tokenizer_used = paths.tokenizer_done()
        if packed and tokenizer_used:
            mixture = packed.get("mixture") or {}
            pack_corpus(corpus, paths.tokenizer, paths.shards, mixture=mixture.get("spec", ""),
                        max_repeat=mixture.get("max_repeat", 1.0), packed_since=since)
            repacked = True
    entry = {
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request": {"urls": sorted(urls), "hashes": sorted(hashes), "ids": sorted(ids)},
        "removed": removed,
        "shards_repacked": repacked,
        "checkpoints_trained_on_it": [str(p.relative_to(run)) for p in checkpoints],
        "tokenizer_trained_on_it": tokenizer_used,
    }
    log = corpus / FORGET_LOG
    old = log.read_text(encoding="utf-8") if log.is_file() else ""
    write_text_atomic(log, old + json.dumps(entry, ensure_ascii=False) + "\n")
    return ForgetResult(removed, checkpoints, repacked, tokenizer_used)


def print_result(result: ForgetResult) -> None:
    """What was removed, what was trained on it, and the opt-out lines that keep it out of a re-ingest."""
    for doc in result.removed:
        console.print(f"removed {doc['id']}  {doc['source']}  ({doc['split']})", highlight=False)
    if result.shards_repacked:
        console.print("shards re-packed without it")
    if result.checkpoints:
        console.print("trained on data containing it — retrain or retire:")
        for path in result.checkpoints:
            console.print(f"  {path}")
    else:
        console.print("no checkpoint was trained on it")
    if result.tokenizer_trained_on_it:
        console.print("tokenizer.json was trained on a corpus containing it (its merges hold no text, it is kept)")
    console.print("so a re-ingest leaves it out too, add to the opt-out list: "
                  + ", ".join(f"sha256: {doc['sha256']}" for doc in result.removed), highlight=False)
