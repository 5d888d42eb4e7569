"""One forward pass over many sequences at different positions, reading and writing a slot KV cache.

`Transformer.decode` advances a whole batch by one shared position, which is right for one prompt but not for
continuous batching, where every row is a different request at its own length. Here each row carries its own
start position: RoPE is looked up per row, new keys/values are written at each row's positions, and a
per-row mask hides keys past the row's length (stale entries from an earlier occupant of the slot included).
The arithmetic is `Transformer.decode`'s, term for term, so a row computes what it would alone
(tests/serve/test_engine.py checks token-for-token equality).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from homegrown.model import KVCache, Transformer, apply_rope, linear


def forward_rows(model: Transformer, cache: KVCache, idx: torch.Tensor, starts: torch.Tensor,
                 last: torch.Tensor, first_slot: int = 0, every_position: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, V) at position `last[b]` of each row of `idx` (B, T); with `every_position` (row indices),
    also those rows' logits at every position, (R, T, V), for prompt log-probabilities.

    Row b holds tokens for absolute positions starts[b] .. starts[b]+T-1 and lives in cache slot
    first_slot + b. Right padding (prefill of prompts of unequal length) is allowed: padded positions write
    cache entries that no real query can see and that the slot's next tokens overwrite. `cache.pos` is not used.
    """
    cfg = model.cfg
    b, t = idx.shape
    device = idx.device
    n_q, n_qk, n_kv, d = cfg.n_heads, cfg.n_heads + cfg.n_kv_heads, cfg.n_kv_heads, cfg.d_model
    positions = starts[:, None] + torch.arange(t, device=device)  # (B, T)
    span = int(positions.max()) + 1
    if span > cache.max_len:
        raise ValueError(f"sequence of {span} tokens exceeds the cache's {cache.max_len}")
    cos, sin = model.rope_cos[positions].unsqueeze(1), model.rope_sin[positions].unsqueeze(1)
    # Query (b, i) may see key j when j <= its own position.
    mask = (torch.arange(span, device=device) <= positions[:, :, None]).unsqueeze(1)  # (B, 1, T, span)
    rows = torch.arange(first_slot, first_slot + b, device=device)[:, None].expand(b, t)
    x = model.embed_tokens(idx)
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = F.rms_norm(x, (d,), layer.input_layernorm.weight, cfg.norm_eps)
        heads = linear(h, attn.qkv).view(b, t, n_qk + n_kv, cfg.head_dim).transpose(1, 2)
        qk = apply_rope(heads[:, :n_qk], cos, sin)
        layer_k, layer_v = cache.k[i], cache.v[i]
        layer_k[rows, :, positions] = qk[:, n_q:].transpose(1, 2).to(layer_k.dtype)
        layer_v[rows, :, positions] = heads[:, n_qk:].transpose(1, 2).to(layer_v.dtype)
        keys = layer_k[first_slot:first_slot + b, :, :span]
        values = layer_v[first_slot:first_slot + b, :, :span]
        y = F.scaled_dot_product_attention(qk[:, :n_q], keys, values, attn_mask=mask, enable_gqa=n_q != n_kv)
        x = x + linear(y.transpose(1, 2).reshape(b, t, d), attn.o_proj)
        h = F.rms_norm(x, (d,), layer.post_attention_layernorm.weight, cfg.norm_eps)
        gate, up = linear(h, mlp.gate_up).chunk(2, dim=-1)
        x = x + linear(F.silu(gate).mul_(up), mlp.down_proj)
    h = F.rms_norm(x[torch.arange(b, device=device), last], (d,), model.norm.weight, cfg.norm_eps)
    logits = linear(h, model.lm_head)
    if every_position is None:
        return logits
    h = F.rms_norm(x[every_position], (d,), model.norm.weight, cfg.norm_eps)
    return logits, linear(h, model.lm_head)


def move_slot(cache: KVCache, src: int, dst: int, length: int) -> None:
    """Copy a sequence's first `length` cache entries from slot `src` to `dst`: keeps running slots contiguous
    so every decode step reads the cache as a slice (a view) rather than a gathered copy."""
    cache.k[:, dst, :, :length] = cache.k[:, src, :, :length]
    cache.v[:, dst, :, :length] = cache.v[:, src, :, :length]
