"""Loss and bits-per-byte on held-out shards: the tokenizer-independent quality number every report uses."""

from __future__ import annotations

import math

import torch

from homegrown.data.pack import TokenShards
from homegrown.errors import HomegrownError
from homegrown.model import Transformer


@torch.no_grad()
def evaluate(model: Transformer, val: TokenShards, byte_lengths: torch.Tensor, batch: int, seq_len: int,
             max_batches: int | None, device: torch.device, amp: torch.dtype | None) -> tuple[float, float]:
    """Mean token loss (nats) and bits per byte over the fixed validation windows.

    Bits per byte divides summed token losses by the UTF-8 bytes those tokens cover, so models with different
    tokenizers compare on the same footing.
    """
    was_training = model.training
    model.eval()
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    for x, y in val.sequential(batch, seq_len, max_batches):
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
    return total_nll / total_tokens, total_nll / math.log(2) / max(total_bytes, 1)
