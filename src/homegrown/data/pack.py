"""Tokenize documents and pack them into flat uint16/uint32 token shards with a JSON index.

Shards are raw arrays so training memory-maps them: the corpus never has to fit in RAM, any worker can
read any window, and a random window costs one slice. Documents are separated by <|endoftext|>, which
is how the model learns where a text ends. The index is written last: no index, no finished shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from homegrown.errors import HomegrownError
from homegrown.io import atomic_path, write_json_atomic
from homegrown.layout import SHARD_INDEX
from homegrown.tokenizer import encode_batch, eot_id, iter_batches

INDEX_NAME = SHARD_INDEX


@dataclass
class PackStats:
    tokens: dict[str, int]
    text_bytes: dict[str, int]
    documents: dict[str, int]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens), to turn token losses into bits per byte.

    Byte-level BPE writes each byte as one printable character, so a token's byte count is its length.
    """
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece in special else len(piece)
    return lengths


class _ShardWriter:
    def __init__(self, out_dir: Path, prefix: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.prefix, self.dtype, self.shard_tokens = out_dir, prefix, dtype, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []

    def add(self, ids: list[int]) -> None:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        name = f"{self.prefix}_{len(self.shards):05d}.bin"
        with atomic_path(self.out_dir / name) as tmp:
            np.concatenate(self.buffer).tofile(tmp)
        self.shards.append({"file": name, "tokens": self.buffered})
        self.buffer, self.buffered = [], 0


def pack_texts(texts: Iterable[str], tok: Tokenizer, out_dir: Path, prefix: str,
               shard_tokens: int = 50_000_000) -> dict:
    """Tokenize `texts` into `out_dir/{prefix}_NNNNN.bin` files; their index entry (shards, tokens, bytes, docs).

    One call per split of one corpus shard, so corpus shards pack in parallel (mixture.pack_corpus).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, prefix, token_dtype(tok.get_vocab_size()), shard_tokens)
    eot = eot_id(tok)
    n_tokens = n_bytes = n_docs = 0
    for batch in iter_batches(texts):
        for text, ids in zip(batch, encode_batch(tok, batch), strict=True):
            ids.append(eot)
            writer.add(ids)
            n_tokens += len(ids)
            n_bytes += len(text.encode("utf-8"))
            n_docs += 1
    writer.flush()
    return {"shards": writer.shards, "tokens": n_tokens, "text_bytes": n_bytes, "documents": n_docs}


def write_index(out_dir: Path, tok: Tokenizer, splits: dict[str, list[dict]], extra: dict | None = None) -> PackStats:
    """Join the entries of each split's pieces (pack_texts, in corpus order) into index.json, written last."""
    stats = PackStats({}, {}, {})
    index: dict = {"dtype": token_dtype(tok.get_vocab_size()).name, "vocab_size": tok.get_vocab_size(),
                   "eot_id": eot_id(tok), "splits": {}}
    for split, pieces in splits.items():
        entry = {"shards": [s for p in pieces for s in p["shards"]],
                 **{k: sum(p[k] for p in pieces) for k in ("tokens", "text_bytes", "documents")}}
        if entry["documents"] == 0:
            raise HomegrownError(f"split {split!r} has no documents to pack")
        index["splits"][split] = entry
        stats.tokens[split], stats.text_bytes[split], stats.documents[split] = (
            entry["tokens"], entry["text_bytes"], entry["documents"])
    index.update(extra or {})
    write_json_atomic(Path(out_dir) / INDEX_NAME, index)
    return stats


def pack(
    docs: dict[str, Iterable[str]], tok: Tokenizer, out_dir: Path, shard_tokens: int = 50_000_000,
    index_extra: Callable[[], dict] | None = None,
) -> PackStats:
    """Pack each split's documents (e.g. {"train": ..., "val": ...}) into `out_dir`; index.json last.

    `index_extra` is called once every split is packed; its keys are added to the index (the mixture
    report, which is only known once the documents have been drawn).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX_NAME).unlink(missing_ok=True)
    splits = {split: [pack_texts(texts, tok, out_dir, split, shard_tokens)] for split, texts in docs.items()}
    return write_index(out_dir, tok, splits, index_extra() if index_extra is not None else None)


class TokenShards:
    """Memory-mapped view of one split; windows are sampled without reading the rest of the corpus."""

    def __init__(self, shard_dir: Path, split: str) -> None:
        shard_dir = Path(shard_dir)
        index_path = shard_dir / INDEX_NAME
        if not index_path.exists():
            raise HomegrownError(
                f"no packed shards at {shard_dir} (missing {INDEX_NAME}); run the pack stage"
            )
        self.index = json.loads(index_path.read_text())
        if split not in self.index["splits"]:
            raise HomegrownError(f"shards at {shard_dir} have no {split!r} split")
        info = self.index["splits"][split]
        dtype = np.dtype(self.index["dtype"])
        self.arrays = [np.memmap(shard_dir / s["file"], dtype=dtype, mode="r") for s in info["shards"]]
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.tokens = int(self.lengths.sum())
        self.text_bytes = int(info["text_bytes"])

    def _window(self, shard: int, start: int, length: int) -> torch.Tensor:
        return torch.from_numpy(self.arrays[shard][start : start + length].astype(np.int64))

    def sample(
        self, batch: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (input, target) windows; shards are chosen in proportion to their usable length."""
        usable = np.maximum(self.lengths - seq_len - 1, 0)
        if usable.sum() == 0:
            raise HomegrownError(f"split has {self.tokens} tokens, too few for windows of {seq_len + 1}")
        weights = torch.tensor(usable, dtype=torch.float64)
        shards = torch.multinomial(weights, batch, replacement=True, generator=generator).tolist()
        rows = []
        for s in shards:
            start = int(torch.randint(0, int(usable[s]) + 1, (1,), generator=generator))
            rows.append(self._window(s, start, seq_len + 1))
        data = torch.stack(rows)
        return data[:, :-1], data[:, 1:]

    def sequential(
        self, batch: int, seq_len: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, non-overlapping windows from the start of the split: the same val set at every eval."""
        rows: list[torch.Tensor] = []
        produced = 0
        for s, length in enumerate(self.lengths):
            for start in range(0, int(length) - seq_len - 1 + 1, seq_len):
                rows.append(self._window(s, start, seq_len + 1))
                if len(rows) == batch:
                    data = torch.stack(rows)
                    yield data[:, :-1], data[:, 1:]
                    rows, produced = [], produced + 1
                    if max_batches is not None and produced >= max_batches:
                        return
        if rows:
            data = torch.stack(rows)
            yield data[:, :-1], data[:, 1:]
