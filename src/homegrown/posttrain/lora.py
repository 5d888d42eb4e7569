"""Low-rank adapters (LoRA, Hu et al. 2021) for SFT and DPO, with peft's semantics.

Each targeted weight W (out × in) gets y = W·x + (alpha/r)·B·A·dropout(x), A (r × in) Kaiming-uniform, B
(out × r) zero, so training starts from the base model exactly; only A and B train. The targets are named as
transformers' Llama names its modules (q_proj … down_proj), so a peft config means the same thing here: our model
fuses q/k/v into one `qkv` and gate/up into one `gate_up` matrix, and each fused part gets its own A and B —
exactly the adapters peft would put on the separate modules of the exported model (tests/posttrain/test_lora.py
checks that against peft). Merging adds (alpha/r)·B·A into W, after which the model is an ordinary checkpoint
for `serve`, `export` and `eval`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from homegrown.config import LoRAConfig, ModelConfig
from homegrown.errors import HomegrownError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Our fused module → the Llama module names of its row blocks, in order.
FUSED = {"self_attn.qkv": ("q_proj", "k_proj", "v_proj"), "mlp.gate_up": ("gate_proj", "up_proj")}
SINGLE = {"self_attn.o_proj": "o_proj", "mlp.down_proj": "down_proj", "mlp.up_proj": "up_proj"}
"""Unfused modules; `mlp.up_proj` exists only in a `mlp=relu2` model (no gate, so nothing to fuse)."""
TARGET_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse_targets(targets: str) -> list[str]:
    """The Llama module names of `lora.targets`, refusing unknown ones by name."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGET_NAMES]
    if unknown or not names:
        raise HomegrownError(f"lora.targets {targets!r}: unknown module(s) {unknown}; choose from "
                             f"{', '.join(TARGET_NAMES)}")
    return names


def _row_blocks(cfg: ModelConfig, module: str) -> list[tuple[str, int, int]]:
    """(Llama name, first row, end row) of each part of one of our linear layers."""
    if module == "mlp.up_proj":
        return [("up_proj", 0, cfg.ffn_hidden)]
    if module in SINGLE:
        return [(SINGLE[module], 0, cfg.d_model)]
    if module == "self_attn.qkv":
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        return [("q_proj", 0, q), ("k_proj", q, q + kv), ("v_proj", q + kv, q + 2 * kv)]
    return [("gate_proj", 0, cfg.ffn_hidden), ("up_proj", cfg.ffn_hidden, 2 * cfg.ffn_hidden)]


class LoRALinear(nn.Linear):
    """An nn.Linear (same `weight`, frozen) plus one (A, B) pair per targeted row block.

    It keeps the wrapped layer's parameter names, so base weights load and save under their usual keys and the
    adapters add `lora_A.<part>` / `lora_B.<part>` beside them.
    """

    def __init__(self, base: nn.Linear, blocks: list[tuple[str, int, int]], rank: int, alpha: float,
                 dropout: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.blocks = blocks
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = base.weight.device
        self.lora_A = nn.ParameterDict({name: nn.Parameter(torch.empty(rank, self.in_features, device=device))
                                        for name, _, _ in blocks})
        self.lora_B = nn.ParameterDict({name: nn.Parameter(torch.zeros(end - start, rank, device=device))
                                        for name, start, end in blocks})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's (and nn.Linear's) init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if not self.blocks:
            return y
        h = self.dropout(x)
        parts, at = [], 0
        for name, start, end in self.blocks:
            if start > at:
                parts.append(y.new_zeros(*y.shape[:-1], start - at))
            parts.append(F.linear(F.linear(h, self.lora_A[name]), self.lora_B[name]) * self.scaling)
            at = end
        if at < self.out_features:
            parts.append(y.new_zeros(*y.shape[:-1], self.out_features - at))
        return y + torch.cat(parts, dim=-1)


def attach(model: nn.Module, lora: LoRAConfig) -> list[str]:
    """Freeze `model` and add adapters to the targeted layers of every block; returns the adapted module paths.

    Must run before the optimizer is built (it trains what requires grad) and before FSDP sharding.
    """
    if lora.rank <= 0:
        raise HomegrownError(f"lora.rank must be > 0 to attach adapters, got {lora.rank}")
    if not 0.0 <= lora.dropout < 1.0:
        raise HomegrownError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    wanted = set(parse_targets(lora.targets))
    relu2 = model.cfg.mlp == "relu2"
    if relu2 and "gate_proj" in wanted:
        raise HomegrownError(f"lora.targets {lora.targets!r} names gate_proj, but this model's MLP is relu2 "
                             "(model.mlp), which has no gate; leave gate_proj out of lora.targets")
    paths = [p for p in (*FUSED, *SINGLE) if p != ("mlp.gate_up" if relu2 else "mlp.up_proj")]
    model.requires_grad_(False)
    adapted = []
    for i, block in enumerate(model.layers):
        for path in paths:
            blocks = [b for b in _row_blocks(model.cfg, path) if b[0] in wanted]
            if not blocks:
                continue
            owner_name, attr = path.split(".")
            owner = getattr(block, owner_name)
            setattr(owner, attr, LoRALinear(getattr(owner, attr), blocks, lora.rank, lora.alpha, lora.dropout))
            adapted.append(f"layers.{i}.{path}")
    return adapted


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a full state dict (what an adapter checkpoint stores)."""
    return {k: v for k, v in state.items() if is_adapter_key(k)}


def merge_state(state: Mapping[str, torch.Tensor], adapters: Mapping[str, torch.Tensor], cfg: ModelConfig,
                lora: LoRAConfig) -> dict[str, torch.Tensor]:
    """Base weights (adapter keys dropped) with (alpha/r)·B·A added into each adapted row block: an ordinary
    state dict that loads into a plain Transformer and gives the adapted model's logits."""
    merged = {k: v.clone() for k, v in state.items() if not is_adapter_key(k)}
    scaling = lora.alpha / lora.rank
    for key, a in adapters.items():
        if ".lora_A." not in key:
            continue
        prefix, name = key.split(".lora_A.")
        b = adapters[f"{prefix}.lora_B.{name}"]
        module = prefix.split(".", 2)[2]  # layers.{i}.self_attn.qkv → self_attn.qkv
        _, start, end = next(blk for blk in _row_blocks(cfg, module) if blk[0] == name)
        weight = merged[f"{prefix}.weight"]
        weight[start:end] += (b.float() @ a.float() * scaling).to(weight.dtype)
    return merged


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) distinct parameters."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
