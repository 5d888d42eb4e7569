"""Exact and near dedup that scale out: hash partitioning instead of one in-memory index (datatrove's MinHash plan).

Every document has an `order`: (input file index << 32) | its line in that file's part — the order of the
plan, so "first copy" means the same thing however many workers run. The stages, each a set of engine
tasks writing files under WORK (one directory per dedup setting):

1. **keys** (a task per part): the opted-out documents are left out; for every other one, its exact key
   (the first 16 bytes of dedup.text_key) and one (band, hash of the band's MinHash values) per LSH band go
   to partition ``hash % P``; the part's signatures are saved as one ``.npy`` (row = line) for step 4.
2. **exact** (a task per partition): sort the partition's keys; in every group of equal keys all but the
   lowest order are duplicates. Output: duplicate orders, split by output shard.
3. **buckets** (a task per partition): sort the partition's (band, hash) records; in every bucket of two
   or more documents, each one pairs with the bucket's lowest order — candidate pairs, split by the
   partition of their second document.
4. **verify** (a task per partition): a candidate pair is a duplicate pair when the two signatures agree
   on at least `threshold` of their values (read row by row from the memory-mapped ``.npy`` files), so the
   threshold means what it says, as in dedup.NearDedup.
5. **components** (one task, over the duplicate pairs only): union-find; each cluster keeps its lowest
   order, every other member is a near duplicate. Output split by output shard.

Memory: a keys task holds one part; an exact or buckets task 1/P of all keys; verify its candidate pairs;
components the duplicate pairs (never all documents). P grows with the crawl, so each task stays bounded.

Exact copies share their signature, so an exact group lies inside one cluster, whose lowest order is then
the exact group's keeper: running the two dedups side by side gives "exact first, then near" without a
barrier between them. Difference from the sequential merge it replaces (dedup.NearDedup, first copy kept,
each new page compared with the kept ones): there a chain A≈B≈C with A≉C keeps A and C (B, dropped, is
not compared with C); components drop B and C. LSH stays probabilistic only through its fixed hash seeds.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homegrown.data.dedup import LSH_WEIGHTS, text_key
from homegrown.data.provenance import OptOut, iter_jsonl_gz, text_sha256
from homegrown.io import atomic_open

LINE_BITS = 32
_BAND = np.dtype([("band", "<u2"), ("hash", "<u8"), ("order", "<i8")])
_EXACT = np.dtype([("k0", "<u8"), ("k1", "<u8"), ("order", "<i8")])


def order_of(file_index: int, line: int) -> int:
    return (file_index << LINE_BITS) | line


def file_of(order: np.ndarray | int) -> np.ndarray | int:
    return order >> LINE_BITS


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as datasketch's MinHashLSH picks them for dedup.NearDedup's recall-weighted setting."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


@dataclass(frozen=True)
class DedupPlan:
    """Where one dedup's files go and how its data is partitioned; the same in every task."""

    work: Path
    partitions: int
    files: int
    """Input files (parts) of the plan; file f belongs to output shard f * shards // files."""
    shards: int
    threshold: float
    num_perm: int
    bands: int
    rows: int

    def shard_of(self, file_index: np.ndarray | int) -> np.ndarray | int:
        return file_index * self.shards // self.files

    def path(self, stage: str, name: str) -> Path:
        return self.work / stage / name

    def done(self, stage: str, task: int) -> Path:
        return self.path(stage, f"{task:07d}.done")


def _finish(plan: DedupPlan, stage: str, task: int) -> None:
    with atomic_open(plan.done(stage, task)) as f:
        f.write("done\n")


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def _split_save(plan: DedupPlan, stage: str, prefix: str, array: np.ndarray, dest: np.ndarray, n: int) -> None:
    for d in range(n):
        _save(plan.path(stage, f"{prefix}-{d:04d}.npy"), array[dest == d])


def _load_all(plan: DedupPlan, stage: str, names: list[str], dtype: np.dtype) -> np.ndarray:
    arrays = [np.load(plan.path(stage, name)) for name in names]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def keys_task(plan: DedupPlan, file_index: int, part: Path, optout: OptOut) -> int:
    """Stage 1 for one part: exact keys and band hashes by partition, and the part's signatures."""
    signatures: list[np.ndarray] = []
    exact: list[tuple[int, int, int]] = []
    bands: list[tuple[int, int, int]] = []
    for line, record in enumerate(iter_jsonl_gz(part)):
        sig = np.frombuffer(base64.b64decode(record["sig"]), dtype=np.dtype(record["sig_dtype"]))
        signatures.append(sig.astype(np.uint64))
        if optout.match(record["url"], (text_sha256(record["text"]), record["extracted_sha256"])):
            continue
        order = order_of(file_index, line)
        key = text_key(record["text"])
        exact.append((int.from_bytes(key[:8], "little"), int.from_bytes(key[8:16], "little"), order))
        for b in range(plan.bands):
            chunk = sig[b * plan.rows:(b + 1) * plan.rows].astype("<u8").tobytes()
            h = hashlib.blake2b(b.to_bytes(2, "little") + chunk, digest_size=8).digest()
            bands.append((b, int.from_bytes(h, "little"), order))
    sigs = np.stack(signatures) if signatures else np.zeros((0, plan.num_perm), dtype=np.uint64)
    _save(plan.path("sigs", f"{file_index:07d}.npy"), sigs)
    e = np.array(exact, dtype=_EXACT)
    _split_save(plan, "exact_keys", f"{file_index:07d}", e, (e["k0"] % plan.partitions).astype(np.int64),
                plan.partitions)
    k = np.array(bands, dtype=_BAND)
    _split_save(plan, "band_keys", f"{file_index:07d}", k, (k["hash"] % plan.partitions).astype(np.int64),
                plan.partitions)
    _finish(plan, "keys", file_index)
    return len(exact)


def _group_starts(*columns: np.ndarray) -> np.ndarray:
    """Boolean mask: True where a row starts a new group of equal `columns` (rows already sorted)."""
    n = len(columns[0])
    new = np.ones(n, dtype=bool)
    if n:
        same = np.ones(n - 1, dtype=bool)
        for c in columns:
            same &= c[1:] == c[:-1]
        new[1:] = ~same
    return new


def exact_task(plan: DedupPlan, partition: int) -> int:
    """Stage 2 for one partition: every exact copy but the first, split by output shard."""
    keys = _load_all(plan, "exact_keys", [f"{f:07d}-{partition:04d}.npy" for f in range(plan.files)], _EXACT)
    keys = keys[np.lexsort((keys["order"], keys["k1"], keys["k0"]))]
    dup = np.sort(keys["order"][~_group_starts(keys["k0"], keys["k1"])])
    _split_save(plan, "exact", f"{partition:04d}", dup, plan.shard_of(file_of(dup)), plan.shards)
    _finish(plan, "exact", partition)
    return len(dup)


def buckets_task(plan: DedupPlan, partition: int) -> int:
    """Stage 3 for one partition: (bucket's first, other) candidate pairs, split by the other's partition."""
    keys = _load_all(plan, "band_keys", [f"{f:07d}-{partition:04d}.npy" for f in range(plan.files)], _BAND)
    keys = keys[np.lexsort((keys["order"], keys["hash"], keys["band"]))]
    starts = _group_starts(keys["band"], keys["hash"])
    first = keys["order"][np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    pairs = np.stack([first[~starts], keys["order"][~starts]], axis=1) if len(keys) else np.zeros((0, 2), np.int64)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    dest = (file_of(pairs[:, 1]) % plan.partitions) if len(pairs) else np.zeros(0, np.int64)
    _split_save(plan, "pairs", f"{partition:04d}", pairs, dest, plan.partitions)
    _finish(plan, "buckets", partition)
    return len(pairs)


def verify_task(plan: DedupPlan, partition: int) -> int:
    """Stage 4 for one partition: the candidate pairs whose signatures agree on ≥ threshold of their values."""
    names = [f"{p:04d}-{partition:04d}.npy" for p in range(plan.partitions)]
    pairs = np.concatenate([np.load(plan.path("pairs", n)).reshape(-1, 2) for n in names])
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    mapped: dict[int, np.ndarray] = {}

    def sig(order: int) -> np.ndarray:
        f = int(file_of(order))
        if f not in mapped:
            mapped[f] = np.load(plan.path("sigs", f"{f:07d}.npy"), mmap_mode="r")
        return mapped[f][order & ((1 << LINE_BITS) - 1)]

    keep = np.array([float(np.mean(sig(a) == sig(b))) >= plan.threshold for a, b in pairs.tolist()], dtype=bool)
    verified = pairs[keep] if len(pairs) else pairs
    _save(plan.path("verified", f"{partition:04d}.npy"), verified)
    _finish(plan, "verify", partition)
    return len(verified)


def components_task(plan: DedupPlan) -> int:
    """Stage 5: union-find over the duplicate pairs; every member of a cluster but its lowest order is dropped."""
    pairs = np.concatenate([np.load(plan.path("verified", f"{p:04d}.npy")).reshape(-1, 2)
                            for p in range(plan.partitions)])
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent.get(x, x)
        return root

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    dup = np.array(sorted(x for x in parent if find(x) != x), dtype=np.int64)
    _split_save(plan, "near", "all", dup, plan.shard_of(file_of(dup)), plan.shards)
    _finish(plan, "components", 0)
    return len(dup)


def duplicates_of_shard(plan: DedupPlan, shard: int) -> tuple[set[int], set[int]]:
    """(exact duplicate orders, near duplicate orders) in one output shard: what its writer drops."""
    exact = _load_all(plan, "exact", [f"{p:04d}-{shard:04d}.npy" for p in range(plan.partitions)],
                      np.dtype(np.int64))
    near = np.load(plan.path("near", f"all-{shard:04d}.npy"))
    return set(exact.tolist()), set(near.tolist())


__all__ = ["DedupPlan", "buckets_task", "components_task", "duplicates_of_shard", "exact_task",
           "keys_task", "lsh_bands", "order_of", "verify_task"]
