"""The corpus directory's files: N shards, each a train, a val and a manifest JSONL.gz, listed in MANIFEST.json.

```
CORPUS/
  train-00000.jsonl.gz  val-00000.jsonl.gz  manifest-00000.jsonl.gz     shard 0 (input files of block 0)
  train-00001.jsonl.gz  …                                                 shard 1 …
  MANIFEST.json        counts, settings, "shards": [{"train": …, "val": …, "manifest": …}], sizes + sha256
```

Each shard is written by one task, atomically; MANIFEST.json is written last and names every shard, so its
presence means the whole corpus is there. Readers go through `list_shards`, shard by shard in order: the
single-file layout (``train.jsonl.gz``, ``val.jsonl.gz``, ``manifest.jsonl.gz`` — the bundled sample and
corpora built before shards) reads as one shard. A leaf of the data package: it imports no other stage.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from homegrown.errors import HomegrownError
from homegrown.layout import MANIFEST

MANIFEST_NAME = "manifest.jsonl.gz"
SPLITS = ("train", "val")
KINDS = (*SPLITS, "manifest")
SINGLE_FILE = {"train": "train.jsonl.gz", "val": "val.jsonl.gz", "manifest": MANIFEST_NAME}
"""File names of the single-file layout, read as shard 0."""


def shard_names(index: int) -> dict[str, str]:
    """File name of each kind (train, val, manifest) in shard `index`."""
    return {kind: f"{kind}-{index:05d}.jsonl.gz" for kind in KINDS}


def list_shards(corpus_dir: Path) -> list[dict[str, Path]]:
    """Every shard's paths by kind, in corpus order; the single-file layout is one shard.

    A shard's manifest path may not exist (a corpus made before manifests); its splits must.
    """
    corpus_dir = Path(corpus_dir)
    meta = corpus_dir / MANIFEST
    if meta.is_file():
        shards = json.loads(meta.read_text()).get("shards")
        if shards:
            return [{kind: corpus_dir / entry[kind] for kind in KINDS} for entry in shards]
    return [{kind: corpus_dir / name for kind, name in SINGLE_FILE.items()}]


def iter_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_split(corpus_dir: Path, split: str) -> Iterator[dict]:
    """The records of one split (train or val), shard after shard."""
    for shard in list_shards(corpus_dir):
        if not shard[split].is_file():
            raise HomegrownError(f"corpus split {shard[split]} not found; build it with `homegrown data ingest` "
                                 "(the bundled sample: `bash scripts/build_sample.sh`)")
        yield from iter_jsonl_gz(shard[split])


def corpus_files(corpus_dir: Path) -> list[str]:
    """Names (relative to the corpus) of every shard file that exists, for MANIFEST.json's digests."""
    return [path.name for shard in list_shards(corpus_dir) for path in shard.values() if path.is_file()]
