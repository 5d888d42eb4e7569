"""Weight-only int8 / int4 quantization for CPU inference, on PyTorch's own CPU kernels.

Batch-1 decode of a model that does not fit in the caches reads every weight once per token, so its speed is
the bytes of the weights: SmolLM2-135M is 540 MB in fp32, 270 MB in bf16, ~150 MB in int8 and ~95 MB with int4
layers (the int8 tied embedding/head is 28M of the 135M parameters). The matmuls go to core PyTorch's
weight-only kernels, no extension: `aten._weight_int8pack_mm` (int8 weights, one scale per output channel) and
`aten._weight_int4pack_mm_for_cpu` (4-bit weights packed by `_convert_weight_to_int4pack_for_cpu`, an asymmetric
scale and zero per group of 32 inputs — the grid of the GGUF's Q4_1 blocks, so an imported Q4_1 file loses
little more when requantized). Both are fast only for bf16 activations (fp32 ones take a scalar path 4-20×
slower), which they convert to fp32 with plain AVX2/AVX-512 instructions, so a quantized model computes in bf16
on any x86 CPU: that needs no AVX-512-BF16 or AMX, unlike bf16 weights, whose matmuls are emulated there.

What is quantized: every Linear of the blocks (int8, or int4 where its shape packs: out % 16 and in % 32), and the
embedding and the head in int8 (per row), kept tied when the model ties them — the head is the layer the logits
are most sensitive to, and llama.cpp's Q4 files keep it at 8 bits too. Norm weights and the KV cache are bf16,
except the per-head q/k norms of a `qk_norm` model, which stay fp32 (head_dim values per layer; their scale
multiplies straight into the attention logits, and the norm computes in fp32 anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from homegrown.errors import HomegrownError

QUANT_KINDS = ("int8", "int4")
INT4_GROUP = 32
"""Inputs per int4 scale/zero pair: Q4_1's block size; 64 and 128 are smaller and coarser."""
COMPUTE_DTYPE = torch.bfloat16
"""Activations of a quantized model: the dtype the kernels have fast paths for."""


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 (N, K), scale fp32 (N,)) with weight ≈ q · scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp_(min=torch.finfo(torch.float32).tiny)
    q = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of `group` inputs: (q int32 (N, K) in 0..15, scale (N, K/g), zero (N, K/g)) with
    weight ≈ (q - 8) · scale + zero, the convention of `_weight_int4pack_mm_for_cpu`."""
    n, k = weight.shape
    blocks = weight.detach().float().reshape(n, k // group, group)
    low, high = torch.aminmax(blocks, dim=-1)
    scale = ((high - low) / 15).clamp_(min=torch.finfo(torch.float32).tiny)
    q = (blocks - low[..., None]).div_(scale[..., None]).round_().clamp_(0, 15).to(torch.int32).view(n, k)
    return q, scale, low + 8 * scale


def int4_packs(out_features: int, in_features: int, group: int = INT4_GROUP) -> bool:
    """Whether PyTorch's int4 CPU packing accepts this shape (N a multiple of 16, K of the group size)."""
    return out_features % 16 == 0 and in_features % group == 0


class Int8Linear(nn.Module):
    """x · Wᵀ with W stored int8 per output row; `qweight`/`scale` may be shared with an `Int8Embedding` (tied)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.to(COMPUTE_DTYPE))
        self.out_features, self.in_features = qweight.shape

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        return cls(*quantize_int8(layer.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(COMPUTE_DTYPE), self.qweight, self.scale)
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight this layer multiplies by (for checks against a reference)."""
        return self.qweight.float() * self.scale.float()[:, None]


class Int4Linear(nn.Module):
    """x · Wᵀ with W in 4 bits, a bf16 scale and zero per group of `group` inputs, packed for the CPU kernel."""

    def __init__(self, layer: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__()
        self.out_features, self.in_features = layer.weight.shape
        self.group = group
        q, scale, zero = quantize_int4(layer.weight, group)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # The kernel reads scales and zeros as one (K/g, N, 2) tensor in the activations' dtype.
        self.register_buffer("scale_zero", torch.stack([scale.t(), zero.t()], dim=-1).to(COMPUTE_DTYPE).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(COMPUTE_DTYPE), self.packed,
                                                       self.group, self.scale_zero)
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=COMPUTE_DTYPE)
        return self.forward(eye).float().t()


class Int8Embedding(nn.Module):
    """Rows of an int8 table times their scale: the embedding half of a tied int8 head."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.to(COMPUTE_DTYPE))
        self.embedding_dim = qweight.shape[1]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.qweight).to(COMPUTE_DTYPE).mul_(self.scale[idx].unsqueeze(-1))


def check_quantizable(kind: str, device: torch.device) -> None:
    """Refuse what the kernels cannot do, by name, before any weight is read."""
    if kind not in QUANT_KINDS:
        raise HomegrownError(f"unknown quantization {kind!r}; use one of {', '.join(QUANT_KINDS)}")
    if device.type != "cpu":
        raise HomegrownError(f"--dtype {kind} is a CPU path (PyTorch's weight-only CPU kernels); on {device.type} "
                             "serve bf16 instead")


@torch.no_grad()
def quantize_model(model: nn.Module, kind: str) -> nn.Module:
    """Replace `model`'s Linear layers and embedding (a `homegrown.model.Transformer`) by int8/int4 ones, in
    place, and cast what stays floating point (norms, RoPE tables) to bf16. Returns the model, in eval mode."""
    check_quantizable(kind, next(model.parameters()).device)
    model.eval()
    tied = model.lm_head.weight is model.embed_tokens.weight
    q, scale = quantize_int8(model.embed_tokens.weight)
    model.embed_tokens = Int8Embedding(q, scale)
    model.lm_head = Int8Linear(q, scale) if tied else Int8Linear.from_linear(model.lm_head)
    for block in model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    packs = kind == "int4" and int4_packs(*child.weight.shape)
                    setattr(parent, name, Int4Linear(child) if packs else Int8Linear.from_linear(child))
    model.to(COMPUTE_DTYPE)
    for block in model.layers:
        if block.self_attn.qk_norm:
            block.self_attn.q_norm.float()
            block.self_attn.k_norm.float()
    return model
