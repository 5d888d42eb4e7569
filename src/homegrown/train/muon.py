"""Muon with its Newton–Schulz orthogonalisation in fp32, and per-matrix scaling of our fused weights.

torch.optim.Muon runs Newton–Schulz in bf16. On CPUs without native bf16 (AVX2 only) that is emulated at about
1 GFLOP/s and made Muon cost ~4× per step, so it stayed off; fp32 runs at the CPU's full matmul rate everywhere
and is also the more accurate of the two. Otherwise this is the same algorithm (Keller Jordan's Muon as PyTorch
implements it: Nesterov momentum 0.95, the quintic iteration's coefficients, decoupled weight decay, the update
scaled by sqrt(max(1, rows/cols))) — tests/train/test_muon.py checks it against torch.optim.Muon numerically.

One difference in what is orthogonalised: our model fuses q/k/v into one `qkv` matrix and gate/up into one
`gate_up` matrix for speed. Orthogonalising the fused matrix would couple the parts and scale the update by the
fused shape (√3 for qkv); Muon is meant for each linear map on its own, as modded-nanogpt applies it to separate
Q, K, V. `row_splits` cuts such a matrix into its parts along the output dimension, and each part is
orthogonalised and scaled as the matrix it stands for.

Under torchrun (FSDP2) each rank holds row shards of every matrix and Newton–Schulz needs whole ones: each rank
gathers the matrix, orthogonalises it and keeps its own rows (`Muon._orthogonalised`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic: steepest slope at zero, so 5 steps bring singular values into about [0.7, 1.2]
rather than exactly 1 — which does not hurt training (and is what torch.optim.Muon uses)."""
NS_STEPS = 5
EPS = 1e-7


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS) -> torch.Tensor:
    """≈ U Vᵀ of `g` = U S Vᵀ (every singular value pushed towards 1), computed in `dtype`, returned in `dtype`.

    Works on the wide orientation (rows ≤ cols) so the Gram matrix X Xᵀ is the small one.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _parts(rows: int, splits: Sequence[int]) -> list[int]:
    if not splits:
        return [rows]
    if sum(splits) != rows:
        raise ValueError(f"row_splits {list(splits)} do not add up to the matrix's {rows} rows")
    return list(splits)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights; a param group may carry `row_splits` (rows of each logical matrix in a fused one).

    `ns_dtype` is the Newton–Schulz precision: fp32 (the default, cheap on any CPU) or bf16 (torch's choice).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.02, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = NS_STEPS,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_steps": ns_steps, "row_splits": []}
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D weights only, not one of shape {tuple(p.shape)}")
                _parts(p.size(0), group["row_splits"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(self._orthogonalised(update, group), alpha=-lr)
        return loss

    def _orthogonalised(self, update: torch.Tensor, group: dict) -> torch.Tensor:
        """Each logical matrix of `update` orthogonalised and scaled by sqrt(max(1, rows/cols)).

        Under FSDP2 `update` is a DTensor holding this rank's rows: every rank gathers the whole matrix,
        orthogonalises it (the same inputs give the same result on every rank) and keeps its own rows — no
        second collective. Redundant compute, one all-gather per matrix: right for the small models trained on
        CPUs; at scale, assigning whole matrices to ranks (as Dion / nanochat do) would spread the work instead.
        """
        from torch.distributed.tensor import DTensor, distribute_tensor

        full = update.full_tensor() if isinstance(update, DTensor) else update
        parts, start = [], 0
        for rows in _parts(full.size(0), group["row_splits"]):
            scale = math.sqrt(max(1.0, rows / full.size(1)))
            parts.append(newton_schulz(full[start:start + rows], group["ns_steps"], self.ns_dtype).to(full.dtype)
                         * scale)
            start += rows
        ortho = torch.cat(parts) if len(parts) > 1 else parts[0]
        if isinstance(update, DTensor):
            return distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
        return ortho
