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
gathers the matrix, orthogonalises it and keeps its own rows (`_full`, `_like`). Redundant compute, one
all-gather per matrix: right for the small models trained on CPUs; at scale, assigning whole matrices to ranks
(as Dion / nanochat do) would spread the work instead.

Newton–Schulz runs batched: every logical matrix of one shape (once turned wide) is stacked into one iteration
(`Muon._apply`, in chunks of at most STACK_ELEMENTS), which keeps a step's kernel launches to a few dozen — as
modded-nanogpt batches it.
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
STACK_ELEMENTS = 2**27
"""Most matrix elements Muon gathers and stacks at once (512 MiB in fp32): whole-model stacks would hold a second
copy of every update, gathered whole on each FSDP2 rank — at 8B or 70B more than a GPU holds; at 124M one chunk
still takes every matrix, and at 1B about two layers' worth go per chunk."""


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS) -> torch.Tensor:
    """≈ U Vᵀ of `g` = U S Vᵀ (every singular value pushed towards 1), computed in `dtype`, returned in `dtype`.

    `g` is one matrix or a stack of equal-shaped ones (B, rows, cols), each orthogonalised on its own. Works on
    the wide orientation (rows ≤ cols) so the Gram matrix X Xᵀ is the small one.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    mm = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = mm(x, mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def _parts(rows: int, splits: Sequence[int]) -> list[int]:
    if not splits:
        return [rows]
    if sum(splits) != rows:
        raise ValueError(f"row_splits {list(splits)} do not add up to the matrix's {rows} rows")
    return list(splits)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights; a param group may carry `row_splits` (rows of each logical matrix in a fused one).

    `ns_dtype` is the Newton–Schulz precision: fp32 (cheap on any CPU) or bf16 (torch's choice, and a GPU's).
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
        """One update of every parameter. The Newton–Schulz work is batched: all logical matrices of one shape
        (a model's q/k/v/o, or its gate/up/down once turned wide) go through one stacked iteration, so a step
        costs a few dozen kernel launches instead of hundreds — per matrix, launches and Python dominated a GPU
        step at the 124M shape (benchmarks/gpu_check.py). Matrices are taken in chunks of at most
        STACK_ELEMENTS, so the gathered and stacked copies stay bounded whatever the model's size."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        chunk: list[tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]] = []
        elements = 0
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                full = _full(update)
                chunk.append((p, group, update, full))
                elements += full.numel()
                if elements >= STACK_ELEMENTS:
                    self._apply(chunk)
                    chunk, elements = [], 0
        self._apply(chunk)
        return loss

    def _apply(self, chunk: list[tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]]) -> None:
        """Orthogonalise the chunk's updates, one stacked Newton–Schulz per (shape once wide, steps), scale each
        logical matrix by sqrt(max(1, rows/cols)) and apply them with decoupled weight decay."""
        done: list[list[torch.Tensor | None]] = []
        stacks: dict[tuple[int, int, int], list[tuple[list, int, torch.Tensor, float, bool]]] = {}
        for _, group, _, full in chunk:
            splits = _parts(full.size(0), group["row_splits"])
            parts: list[torch.Tensor | None] = [None] * len(splits)
            done.append(parts)
            start = 0
            for i, rows in enumerate(splits):
                part = full[start:start + rows]
                start += rows
                tall = rows > part.size(1)
                wide = part.mT if tall else part
                stacks.setdefault((*wide.shape, group["ns_steps"]), []).append(
                    (parts, i, wide, math.sqrt(max(1.0, rows / part.size(1))), tall))
        for (_, _, steps), members in stacks.items():
            ortho = newton_schulz(torch.stack([m[2] for m in members]), steps, self.ns_dtype)
            for (parts, i, _, scale, tall), out in zip(members, ortho, strict=True):
                parts[i] = (out.mT if tall else out) * scale
        for (p, group, update, full), parts in zip(chunk, done, strict=True):
            ortho = torch.cat(parts) if len(parts) > 1 else parts[0]  # type: ignore[arg-type]
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(_like(ortho.to(full.dtype), update), alpha=-group["lr"])


def _full(update: torch.Tensor) -> torch.Tensor:
    """The whole matrix: under FSDP2 `update` is a DTensor of this rank's rows, gathered here (one all-gather)."""
    from torch.distributed.tensor import DTensor

    return update.full_tensor() if isinstance(update, DTensor) else update


def _like(ortho: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """`ortho` laid out as `update`: this rank's rows of it under FSDP2 (every rank computed the same whole
    matrix from the same inputs, so no second collective), else itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(update, DTensor):
        return distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
    return ortho
