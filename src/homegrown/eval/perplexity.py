"""Loss and bits-per-byte on held-out text: the tokenizer-independent quality number every report uses.

Training evaluates a fixed sample of validation windows (`evaluate`, cheap enough to run every few hundred
steps); reports evaluate the whole held-out split (`evaluate_split`), tokenised with the checkpoint's own
tokenizer, so two models with different vocabularies are measured on exactly the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from homegrown.data.pack import TokenShards, token_byte_lengths
from homegrown.data.sources import iter_corpus
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.tokenizer import encode_batch, eot_id, iter_batches

LOGITS_BUDGET = 1 << 28
"""Logits held at once when scoring a split (1 GiB in fp32): whole-context windows of a large-vocabulary model
(SmolLM2: 8,192 × 49,152 per window) go one at a time instead of sixteen (26 GB)."""


@dataclass
class SplitScore:
    loss: float
    """Mean token loss in nats."""
    bpb: float
    """Summed token losses in bits over the UTF-8 bytes those tokens cover."""
    tokens: int
    bytes: int


@torch.no_grad()
def _score(model: Transformer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], byte_lengths: torch.Tensor,
           device: torch.device, amp: torch.dtype | None) -> SplitScore:
    was_training = model.training
    model.eval()
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                reduction="sum")
        total_nll += float(nll)
        total_tokens += y.numel()
        total_bytes += int(byte_lengths[y.cpu()].sum())
    model.train(was_training)
    if total_tokens == 0:
        raise HomegrownError("validation split is empty; cannot evaluate")
    return SplitScore(total_nll / total_tokens, total_nll / math.log(2) / max(total_bytes, 1), total_tokens,
                      total_bytes)


def evaluate(model: Transformer, val: TokenShards, byte_lengths: torch.Tensor, batch: int, seq_len: int,
             max_batches: int | None, device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """Mean token loss (nats) and bits per byte over the fixed validation windows (all of them when
    `max_batches` is None)."""
    score = _score(model, val.sequential(batch, seq_len, max_batches), byte_lengths, device, amp)
    return score.loss, score.bpb


def _windows(stream: np.ndarray, batch: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering every token once; the last, shorter window is its own batch."""
    data = torch.from_numpy(stream.astype(np.int64))
    full = (len(data) - 1) // seq_len
    rows = [data[i * seq_len:i * seq_len + seq_len + 1] for i in range(full)]
    for start in range(0, len(rows), batch):
        chunk = torch.stack(rows[start:start + batch])
        yield chunk[:, :-1], chunk[:, 1:]
    tail = data[full * seq_len:]
    if len(tail) > 1:
        yield tail[None, :-1], tail[None, 1:]


def evaluate_split(model: Transformer, tok: Tokenizer, corpus_dir: Path, split: str = "val", batch: int = 16,
                   seq_len: int | None = None) -> SplitScore:
    """Loss and bits per byte over every page of a corpus split, each page followed by <|endoftext|> as in
    training. Windows are the model's full context unless `seq_len` is given."""
    eot = eot_id(tok)
    ids: list[int] = []
    for texts in iter_batches(r["text"] for r in iter_corpus(corpus_dir, split)):
        for doc in encode_batch(tok, texts):
            ids.extend(doc)
            ids.append(eot)
    lengths = torch.from_numpy(token_byte_lengths(tok))
    device = next(model.parameters()).device
    seq_len = seq_len or model.cfg.max_seq_len
    batch = max(1, min(batch, LOGITS_BUDGET // (seq_len * model.cfg.vocab_size)))
    return _score(model, _windows(np.asarray(ids), batch, seq_len), lengths, device, None)
