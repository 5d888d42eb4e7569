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

from homegrown.model import KVCache, Transformer, apply_rope, linear, softcap

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]
"""One group of rows of one shape: (idx (B, T), starts (B,), last (B,), first cache slot); see forward_rows."""


def forward_rows(model: Transformer, cache: KVCache, idx: torch.Tensor, starts: torch.Tensor,
                 last: torch.Tensor, first_slot: int = 0, every_position: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, V) at position `last[b]` of each row of `idx` (B, T); with `every_position` (row indices),
    also those rows' logits at every position, (R, T, V), for prompt log-probabilities.

    Row b holds tokens for absolute positions starts[b] .. starts[b]+T-1 and lives in cache slot
    first_slot + b. Right padding (prefill of prompts of unequal length) is allowed: padded positions write
    cache entries that no real query can see and that the slot's next tokens overwrite. `cache.pos` is not used.
    """
    (x,) = _hidden(model, cache, [(idx, starts, last, first_slot)])
    logits = head_logits(model, x[torch.arange(x.shape[0], device=x.device), last])
    if every_position is None:
        return logits
    return logits, head_logits(model, x[every_position])


def forward_groups(model: Transformer, cache: KVCache, groups: list[Rows]) -> torch.Tensor:
    """`forward_rows` for several groups of rows in one pass: logits (ΣB, V), the groups' rows in order.

    The engine's step is a decode (B rows of one token) and, when requests join, a prefill (J rows of their
    prompts): as two passes, every layer's fixed cost — a hundred-odd PyTorch calls, most of a small model's
    decode step on a CPU — is paid twice. Here the linear layers, norms and RoPE run once over all the tokens,
    packed; only attention runs per group, each against its own slots.
    """
    return head_logits(model, hidden_last(model, cache, groups))


def hidden_last(model: Transformer, cache: KVCache, groups: list[Rows]) -> torch.Tensor:
    """`forward_groups` up to the head: the last block's output (ΣB, d) at each row's `last` position. The
    engine runs this and `head_logits` on different thread counts at batch 1."""
    xs = _hidden(model, cache, groups)
    return torch.cat([x[torch.arange(x.shape[0], device=x.device), last]
                      for x, (_, _, last, _) in zip(xs, groups, strict=True)])


def head_logits(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Logits (…, V) of hidden states (…, d): the final norm, then the head (soft-capped with `logit_softcap`)."""
    cfg = model.cfg
    return softcap(linear(F.rms_norm(x, (cfg.d_model,), model.norm.weight, cfg.norm_eps), model.lm_head),
                   cfg.logit_softcap)


def _hidden(model: Transformer, cache: KVCache, groups: list[Rows]) -> list[torch.Tensor]:
    """The last layer's output (B, T, d) of each group; every token's keys/values written to the cache."""
    cfg = model.cfg
    n_q, n_qk, n_kv, d, hd = cfg.n_heads, cfg.n_heads + cfg.n_kv_heads, cfg.n_kv_heads, cfg.d_model, cfg.head_dim
    device = groups[0][0].device
    shapes = [tuple(idx.shape) for idx, _, _, _ in groups]
    positions = [starts[:, None] + torch.arange(t, device=device) for (_, starts, _, _), (_, t) in zip(groups, shapes,
                                                                                                        strict=True)]
    spans = [int(p.max()) + 1 for p in positions]
    if max(spans) > cache.max_len:
        raise ValueError(f"sequence of {max(spans)} tokens exceeds the cache's {cache.max_len}")
    # Query (b, i) may see key j when j <= its own position; rows decoding in step (one token each, all at the
    # same length, batch 1 included) see every key up to span, so they need no mask.
    masks = [None if t == 1 and int(p.min()) == span - 1
             else (torch.arange(span, device=device) <= p[:, :, None]).unsqueeze(1)
             for p, span, (_, t) in zip(positions, spans, shapes, strict=True)]
    flat = torch.cat([p.reshape(-1) for p in positions]) if len(groups) > 1 else positions[0].reshape(-1)
    slots = torch.cat([torch.arange(first, first + b, device=device).repeat_interleave(t)
                       for (_, _, _, first), (b, t) in zip(groups, shapes, strict=True)])
    n = flat.shape[0]
    # Each new key/value row's index in a layer's cache viewed as (slots·n_kv·max_len, head_dim), in the
    # (head, token) order of qk[0, n_q:]: one index_copy_ per tensor and layer writes them all.
    writes = ((slots[None, :] * n_kv + torch.arange(n_kv, device=device)[:, None]) * cache.max_len
              + flat[None, :]).reshape(-1)
    cos, sin = model.rope_cos[flat][None, None], model.rope_sin[flat][None, None]  # (1, 1, N, hd)
    x = model.embed_tokens(torch.cat([idx.reshape(-1) for idx, _, _, _ in groups]))[None]  # (1, N, d): packed
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        h = F.rms_norm(x, (d,), layer.input_layernorm.weight, cfg.norm_eps)
        heads = linear(h, attn.qkv).view(1, n, n_qk + n_kv, hd).transpose(1, 2)
        qk = apply_rope(attn.norm_qk(heads[:, :n_qk]), cos, sin)
        layer_k, layer_v = cache.k[i], cache.v[i]
        layer_k.view(-1, hd).index_copy_(0, writes, qk[0, n_q:].reshape(-1, hd).to(layer_k.dtype))
        layer_v.view(-1, hd).index_copy_(0, writes, heads[0, n_qk:].reshape(-1, hd).to(layer_v.dtype))
        ys, at = [], 0
        for (_, _, _, first), (b, t), span, mask in zip(groups, shapes, spans, masks, strict=True):
            q = qk[0, :n_q, at: at + b * t].view(n_q, b, t, hd).transpose(0, 1)
            keys, values = layer_k[first:first + b, :, :span], layer_v[first:first + b, :, :span]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=n_q != n_kv)
            ys.append(y.transpose(1, 2).reshape(b * t, d))
            at += b * t
        x = x + linear((ys[0] if len(ys) == 1 else torch.cat(ys))[None], attn.o_proj)
        h = F.rms_norm(x, (d,), layer.post_attention_layernorm.weight, cfg.norm_eps)
        x = x + layer.mlp.infer(h)
    out, at = [], 0
    for b, t in shapes:
        out.append(x[0, at: at + b * t].view(b, t, d))
        at += b * t
    return out


def move_slot(cache: KVCache, src: int, dst: int, length: int) -> None:
    """Copy a sequence's first `length` cache entries from slot `src` to `dst`: keeps running slots contiguous
    so every decode step reads the cache as a slice (a view) rather than a gathered copy."""
    cache.k[:, dst, :, :length] = cache.k[:, src, :, :length]
    cache.v[:, dst, :, :length] = cache.v[:, src, :, :length]


def swap_slots(cache: KVCache, a: int, b: int, length: int) -> None:
    """Exchange the first `length` cache entries of slots `a` and `b` (a finished sequence's keys/values move out
    of the running slots without being lost)."""
    for t in (cache.k, cache.v):
        held = t[:, a, :, :length].clone()
        t[:, a, :, :length] = t[:, b, :, :length]
        t[:, b, :, :length] = held
