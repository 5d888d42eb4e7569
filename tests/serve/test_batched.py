"""The engine's batched forward (serve/batched.py) on each architecture switch: every row's logits are the ones the
model's own forward gives that sequence alone."""

from __future__ import annotations

import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.model import KVCache, Transformer
from homegrown.serve.batched import forward_groups, forward_rows, head_logits, hidden_last

SWITCHES = {"plain": {}, "qk_norm": {"qk_norm": True}, "logit_softcap": {"logit_softcap": 0.5},
            "relu2": {"mlp": "relu2"}}


def _model(**switches) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, ffn_hidden=64,
                      **switches)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # norm weights off their init of ones, so a skipped norm would show
            p.add_(torch.randn_like(p) * 0.1)
    return model.prepare_for_inference()


@pytest.mark.parametrize("switch", SWITCHES)
def test_decode_and_prefill_groups_give_each_row_its_own_forward(switch: str) -> None:
    """Two running rows decode their 9th token while two new prompts prefill, in one pass (forward_groups); the
    prompts' every-position logits come from forward_rows; hidden_last + head_logits is forward_groups."""
    model = _model(**SWITCHES[switch])
    seqs = torch.randint(0, 97, (4, 9), generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        full = model(seqs)
        cache = KVCache.allocate(model.cfg, 4, max_len=16)
        forward_rows(model, cache, seqs[:2, :8], zeros, torch.full((2,), 7))
        groups = [(seqs[:2, 8:], torch.full((2,), 8), zeros, 0), (seqs[2:, :6], zeros, torch.full((2,), 5), 2)]
        snapshot = KVCache(cache.k.clone(), cache.v.clone())
        together = forward_groups(model, cache, groups)
        split = head_logits(model, hidden_last(model, snapshot, groups))
        prompts = KVCache.allocate(model.cfg, 2, max_len=16)
        last, every = forward_rows(model, prompts, seqs[2:, :6], zeros, torch.full((2,), 5),
                                   every_position=torch.arange(2))
    torch.testing.assert_close(together[:2], full[:2, 8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[2:], full[2:, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split, together, atol=0, rtol=0)
    torch.testing.assert_close(last, full[2:, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every, full[2:4, :6], atol=1e-5, rtol=1e-5)
