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
    x = hidden_rows(model, cache, idx, starts, first_slot)
    logits = head_logits(model, x[torch.arange(idx.shape[0], device=idx.device), last])
    if every_position is None:
        return logits
    return logits, head_logits(model, x[every_position])


def hidden_rows(model: Transformer, cache: KVCache, idx: torch.Tensor, starts: torch.Tensor,
                first_slot: int = 0) -> torch.Tensor:
    """The last block's output (B, T, d) for `forward_rows`'s rows, their keys/values written to the cache;
    `head_logits` makes logits of the positions wanted (the engine runs the two on different thread counts)."""
    cfg = model.cfg
    b, t = idx.shape
    device = idx.device
    n_q, n_qk, n_kv, d, hd = cfg.n_heads, cfg.n_heads + cfg.n_kv_heads, cfg.n_kv_heads, cfg.d_model, cfg.head_dim
    positions = starts[:, None] + torch.arange(t, device=device)  # (B, T)
    span = int(positions.max()) + 1
    if span > cache.max_len:
        raise ValueError(f"sequence of {span} tokens exceeds the cache's {cache.max_len}")
    cos, sin = model.rope_cos[positions].unsqueeze(1), model.rope_sin[positions].unsqueeze(1)
    # Query (b, i) may see key j when j <= its own position; rows decoding in step (one token each, all at the
    # same length, batch 1 included) see every key up to span, so they need no mask.
    mask = None
    if t > 1 or int(starts.min()) != span - 1:
        mask = (torch.arange(span, device=device) <= positions[:, :, None]).unsqueeze(1)  # (B, 1, T, span)
    # Each new key/value row's index in a layer's cache viewed as (slots·n_kv·max_len, head_dim), in the
    # (row, head, position) order of the heads: one index_copy_ per tensor and layer writes them all.
    slot_heads = (torch.arange(first_slot, first_slot + b, device=device)[:, None] * n_kv
                  + torch.arange(n_kv, device=device))  # (B, n_kv)
    writes = (slot_heads[:, :, None] * cache.max_len + positions[:, None, :]).reshape(-1)
    x = model.embed_tokens(idx)
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = F.rms_norm(x, (d,), layer.input_layernorm.weight, cfg.norm_eps)
        heads = linear(h, attn.qkv).view(b, t, n_qk + n_kv, hd).transpose(1, 2)
        qk = apply_rope(heads[:, :n_qk], cos, sin)
        layer_k, layer_v = cache.k[i], cache.v[i]
        layer_k.view(-1, hd).index_copy_(0, writes, qk[:, n_q:].reshape(-1, hd).to(layer_k.dtype))
        layer_v.view(-1, hd).index_copy_(0, writes, heads[:, n_qk:].reshape(-1, hd).to(layer_v.dtype))
        keys = layer_k[first_slot:first_slot + b, :, :span]
        values = layer_v[first_slot:first_slot + b, :, :span]
        y = F.scaled_dot_product_attention(qk[:, :n_q], keys, values, attn_mask=mask, enable_gqa=n_q != n_kv)
        x = x + linear(y.transpose(1, 2).reshape(b, t, d), attn.o_proj)
        h = F.rms_norm(x, (d,), layer.post_attention_layernorm.weight, cfg.norm_eps)
        gate, up = linear(h, mlp.gate_up).chunk(2, dim=-1)
        x = x + linear(F.silu(gate).mul_(up), mlp.down_proj)
    return x


def head_logits(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Logits (…, V) of hidden states (…, d) from `hidden_rows`: the final norm, then the head."""
    return linear(F.rms_norm(x, (model.cfg.d_model,), model.norm.weight, model.cfg.norm_eps), model.lm_head)


def move_slot(cache: KVCache, src: int, dst: int, length: int) -> None:
    """Copy a sequence's first `length` cache entries from slot `src` to `dst`: keeps running slots contiguous
    so every decode step reads the cache as a slice (a view) rather than a gathered copy."""
    cache.k[:, dst, :, :length] = cache.k[:, src, :, :length]
    cache.v[:, dst, :, :length] = cache.v[:, src, :, :length]
