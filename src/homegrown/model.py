"""Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention through SDPA, and a KV cache.

Q/K/V and gate/up are each one fused matmul because on small widths (and on CPUs) the launch and memory
traffic of three thin matmuls costs more than the math; `export/hf.py` splits them back into Llama's names.
RoPE uses the "rotate half" layout so exported weights behave identically in `transformers`.

Issue 16's architecture switches (ModelConfig `qk_norm`, `zero_init_proj`, `logit_softcap`, `mlp="relu2"`) are
off by default, and then the model, its tensors and its init are exactly the plain Llama above. Each switch lives
in one place every forward path calls (`Attention.norm_qk`, `softcap`, the MLP module's `forward`/`infer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from homegrown.config import ModelConfig


def rope_tables(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (max_seq_len, head_dim), duplicated over the two halves as Llama does.

    The sin table's first half is negated, which folds rotate-half's `-x2` into the table (see `apply_rope`).
    """
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device)
                                        / cfg.head_dim))
    t = torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    half = cfg.head_dim // 2
    return emb.cos(), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin from `rope_tables`, (T, D) already sliced to the positions of x.

    rotate_half(x) * sin == roll(x, D/2) * sin_signed, so RoPE is three kernels instead of seven; at batch-1
    decode the per-op overhead, not the arithmetic, is what costs.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin).to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys/values for every layer: (n_layers, batch, n_kv_heads, max_len, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> KVCache:
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len or cfg.max_seq_len, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Weighted cross-entropy whose gradient is made in the forward pass from one softmax.

    PyTorch's CPU log_softmax forward+backward over a (tokens × vocab) matrix is ~3× slower than a single
    softmax, and the loss layer was a third of a small model's step; this keeps the numbers exact
    (rows whose target probability underflows fall back to logsumexp) and the memory the same.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        probs = torch.softmax(x, dim=-1)
        rows = torch.arange(x.shape[0], device=x.device)
        nll = -probs[rows, targets].log()
        underflow = torch.isinf(nll)
        if underflow.any():
            nll[underflow] = torch.logsumexp(x[underflow], dim=-1) - x[underflow, targets[underflow]]
        loss = (nll * weights).sum()
        probs[rows, targets] -= 1.0
        probs.mul_(weights[:, None])
        ctx.save_for_backward(probs)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.logits_dtype), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy over (…, V) logits, optionally only where `loss_mask` is 1."""
    flat = logits.reshape(-1, logits.shape[-1])
    if loss_mask is None:
        weights = torch.full((flat.shape[0],), 1.0 / flat.shape[0], device=flat.device)
    else:
        mask = loss_mask.reshape(-1).float()
        weights = mask / mask.sum().clamp(min=1)
    return _SoftmaxCrossEntropy.apply(flat, targets.reshape(-1), weights)


def segment_layout(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For (B, T) segment ids: RoPE positions restarting at each segment, and the (B, 1, T, T) boolean mask
    that is causal within a segment and blocks attention across segments (block-diagonal causal)."""
    t = segments.shape[1]
    idx = torch.arange(t, device=segments.device).expand_as(segments)
    first = torch.ones_like(segments, dtype=torch.bool)
    first[:, 1:] = segments[:, 1:] != segments[:, :-1]
    seg_start = torch.where(first, idx, torch.zeros_like(idx)).cummax(dim=1).values
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    return idx - seg_start, mask.unsqueeze(1)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's soft cap, cap·tanh(logits / cap): logits stay inside (-cap, cap), nearly unchanged well below it,
    so the model cannot win loss by inflating them. 0 = off (the logits as they are). Every path that makes logits
    (`Transformer.forward` and `decode`, the engine's `head_logits`) applies it."""
    if not cap:
        return logits
    return torch.tanh(logits / cap) * cap


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """x · Wᵀ for the generation paths (`Transformer.decode`, the serving engine's `forward_rows`).

    A single bf16 row on CPU goes through `torch.mv`, PyTorch's own bf16 GEMV (fp32 accumulation), which streams
    the weights at memory speed; `F.linear` sends it to oneDNN, whose one-row bf16 GEMM took ~1.4× as long for
    SmolLM2-135M's whole step on a 2-core Xeon. Batch-1 decode of a model too large for the caches is exactly
    that: every weight read once per token for one row. A quantized layer (`homegrown.quant`) runs its own
    kernel; everything else is `F.linear`.
    """
    if type(layer) is not nn.Linear:
        return layer.forward(x)
    weight = layer.weight
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and x.numel() == x.shape[-1]:
        return torch.mv(weight, x.reshape(-1)).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # The casts below are no-ops for fp32 but still cost three dispatches per call.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:  # absent otherwise, so a plain model's state dict keeps exactly Llama's tensors
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def norm_qk(self, qk: torch.Tensor) -> torch.Tensor:
        """The q and k heads (B, n_heads + n_kv_heads, T, head_dim) ready for RoPE: each head RMS-normalised over
        head_dim with the shared q or k weight when `qk_norm` is on (Qwen3's q_norm/k_norm), else as they are.
        Every forward path (training, `decode`, the serving engine's batched one) goes through here."""
        if not self.qk_norm:
            return qk
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
        return torch.cat([self.q_norm(q), self.k_norm(k)], dim=1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        heads = self.qkv(x).view(b, t, self.n_heads + 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        # q and k heads are adjacent in the fused output, so one RoPE call rotates both.
        q, k = apply_rope(self.norm_qk(heads[:, : self.n_heads + self.n_kv_heads]), cos, sin).split(
            [self.n_heads, self.n_kv_heads], dim=1)
        v = heads[:, self.n_heads + self.n_kv_heads:]
        gqa = self.n_heads != self.n_kv_heads
        if cache is None:
            causal = mask is None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        else:
            start = cache.pos
            cache.k[layer, :b, :, start:start + t] = k.to(cache.k.dtype)
            cache.v[layer, :b, :, start:start + t] = v.to(cache.v.dtype)
            keys = cache.k[layer, :b, :, :start + t].to(q.dtype)
            values = cache.v[layer, :b, :, :start + t].to(q.dtype)
            if t == 1:
                y = F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
            else:
                # Query i sits at absolute position start+i and may see keys 0..start+i.
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.ffn_hidden
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` for the generation paths (`Transformer.decode`, the engine's batched pass): through `linear`,
        in place where no gradient is kept."""
        gate, up = linear(x, self.gate_up).chunk(2, dim=-1)
        return linear(F.silu(gate).mul_(up), self.down_proj)


class ReLU2(nn.Module):
    """modded-nanogpt's MLP: up → relu(x)² → down, no gate (`mlp=relu2`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` for the generation paths, as `SwiGLU.infer`."""
        return linear(F.relu(linear(x, self.up_proj)).square_(), self.down_proj)


MLPS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "relu2": ReLU2}
"""The module of each `ModelConfig.mlp` kind (config.MLP_KINDS)."""


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLPS[cfg.mlp](cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        """Recompute each block's activations in backward (per-block checkpointing): memory for compute."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2/Llama init: N(0, 0.02), residual output projections shrunk by depth so the stream stays O(1) — or
        zero with `zero_init_proj`, so each block starts as the identity and learns its way in."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif self.cfg.zero_init_proj and name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, loss_mask: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V), or the mean cross-entropy when `targets` is given.

        With a cache, `idx` holds the tokens after `cache.pos`; the cache is advanced by T afterwards.
        `loss_mask` (B, T) of 0/1 restricts the loss to some positions (fine-tuning on assistant turns).
        `segments` (B, T) of ids packs several documents per row: a token attends only to earlier tokens of
        its own segment and its RoPE position restarts at 0 there, so each conversation is computed exactly
        as if it were alone in the row (see `segment_layout`).
        """
        t = idx.shape[1]
        start = cache.pos if cache is not None else 0
        if start + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        mask = None
        if segments is None:
            cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]
        else:
            if cache is not None:
                raise ValueError("segments (packed documents) are a training feature; decode one sequence per row")
            positions, mask = segment_layout(segments)
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        x = self.embed_tokens(idx)
        # Match the stream's dtype here rather than leave it to FSDP2's input cast, which activation
        # recomputation skips: bf16 tables in forward, fp32 in recompute would fail checkpoint's check.
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, cache, i, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.pos += t
        logits = softcap(self.lm_head(self.norm(x)), self.cfg.logit_softcap)
        if targets is None:
            return logits
        return cross_entropy(logits, targets, loss_mask)

    def decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) for the last of `idx`'s (B, T) tokens, fed after `cache.pos`: the generation path.

        The same arithmetic as `forward` with a cache, written against the weights with functional ops. At
        batch 1 on a CPU a small model's step is mostly dispatch: nn.Module calls and the cache's 5-D indexing
        cost about 0.8 ms of a 4.8 ms `small` step. Training keeps `forward`, whose Block modules FSDP2 hooks
        into. Only the last position reaches the head. The cache must have the model's dtype
        (`KVCache.allocate(..., dtype=)`), as `stream_tokens` allocates it.
        """
        cfg = self.cfg
        b, t = idx.shape
        start = cache.pos
        if start + t > cfg.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len={cfg.max_seq_len}")
        n_q, n_qk, d = cfg.n_heads, cfg.n_heads + cfg.n_kv_heads, cfg.d_model
        cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]
        mask = None
        if t > 1:
            mask = torch.ones(t, start + t, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        x = self.embed_tokens(idx)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = F.rms_norm(x, (d,), layer.input_layernorm.weight, cfg.norm_eps)
            heads = linear(h, attn.qkv).view(b, t, n_qk + cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
            qk = apply_rope(attn.norm_qk(heads[:, :n_qk]), cos, sin)
            keys, values = cache.k[i, :b], cache.v[i, :b]
            keys[:, :, start:start + t] = qk[:, n_q:]
            values[:, :, start:start + t] = heads[:, n_qk:]
            y = F.scaled_dot_product_attention(qk[:, :n_q], keys[:, :, :start + t], values[:, :, :start + t],
                                               attn_mask=mask, enable_gqa=n_q != cfg.n_kv_heads)
            x = x + linear(y.transpose(1, 2).reshape(b, t, d), attn.o_proj)
            h = F.rms_norm(x, (d,), layer.post_attention_layernorm.weight, cfg.norm_eps)
            x = x + layer.mlp.infer(h)
        cache.pos += t
        x = F.rms_norm(x[:, -1], (d,), self.norm.weight, cfg.norm_eps)
        return softcap(linear(x, self.lm_head), cfg.logit_softcap)

    def prepare_for_inference(self) -> Transformer:
        """Switch to eval mode and, on CPU, store every fp32 Linear weight column-major (same shape and values).

        Batch-1 decode is mostly x · Wᵀ matmuls, and MKL's fp32 GEMM runs them faster when W is column-major: the
        `small` model's 25 per-token matmuls take 2.8 ms row-major and 1.7 ms column-major on the 2-core AMD
        EPYC dev box (batches up to 256 are no slower). bf16 weights stay row-major: their matmuls go to oneDNN,
        which is slower on the transposed layout (SmolLM2-135M's batch-1 serving step took 1.12-1.17× as long
        column-major on a 2-core Xeon with AMX; at 16 sequences the two layouts were level). Only for inference:
        training would pay a transpose per gradient to keep the parameter's layout. `weights_state_dict` makes
        contiguous copies, so saving and export are unaffected.
        """
        self.eval()
        with torch.no_grad():
            for module in self.modules():
                weight = module.weight if isinstance(module, nn.Linear) else None
                if (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
                        and weight.is_contiguous()):
                    weight.data = weight.data.t().contiguous().t()
        return self

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Exact count of distinct parameters (a tied head is counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6·(matmul weights) + 12·layers·d·seq (attention).

        The embedding lookup is not a matmul; the head is, tied or not (PaLM appendix B convention).
        """
        cfg = self.cfg
        matmul_params = self.num_params(exclude_embedding=True)
        if cfg.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()
        return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.d_model * seq_len


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count without allocating memory (meta device), so 70B presets can be listed on a laptop."""
    with torch.device("meta"):
        return Transformer(cfg).num_params()
