"""Process-group setup and FSDP2 sharding, so one training loop runs alone or under `torchrun`.

Under `torchrun` (RANK/WORLD_SIZE in the environment) the loop gets a process group — NCCL on CUDA, gloo on
CPU — and the model is sharded with FSDP2 (`fully_shard`), one unit per transformer block and then the root,
the layout torchtitan uses so each block's all-gather overlaps the previous block's compute. Without
`torchrun` nothing here creates a process group: a laptop run stays a plain single process.

The global batch is the same whatever the world size: every rank draws the full global micro-batch from
the shared (seed, step, micro) generator and keeps its own contiguous slice. FSDP2 averages gradients
over ranks, so the gradient equals the single-process one — which is what lets a run saved with two ranks
resume with one (tests/train/test_distributed.py compares gradients, not only losses).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from homegrown.errors import HomegrownError

MIN_TORCH = (2, 9)
"""FSDP2 on gloo before 2.9 summed gradients instead of averaging them (pytorch/pytorch#162338)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, writes metrics and draws progress; every rank computes."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def init_distributed() -> DistEnv:
    """The process group when launched by torchrun (created once), else a single-process environment."""
    if not launched_by_torchrun():
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistEnv(0, 1, 0, device, distributed=False)
    if _torch_version() < MIN_TORCH:
        raise HomegrownError(f"distributed training needs torch >= {'.'.join(map(str, MIN_TORCH))} "
                             f"(FSDP2 on gloo averages gradients correctly from there); found {torch.__version__}")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistEnv(rank, world, local, device, distributed=True)


def shard_model(model: torch.nn.Module, device: torch.device, mixed_precision: bool) -> torch.nn.Module:
    """FSDP2: each block is its own unit, then the root (embeddings, final norm, head).

    `mixed_precision` (used on CUDA) computes and all-gathers in bf16 but reduces gradients in fp32, the
    policy that keeps large-world gradient sums accurate; the fp32 master weights stay sharded.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def require_compiler(device: torch.device) -> None:
    """Fail at once, with the way out, when `train.compile` cannot work here: on a CPU, Inductor builds C++ for
    every graph, and without a compiler the run would die inside its first step with Inductor's own traceback
    (`small` compiles by default, so a machine without g++ meets this on `make run`)."""
    if device.type != "cpu":
        return
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        cpp_builder.get_cpp_compiler()
    except InvalidCxxCompiler as exc:
        raise HomegrownError("train.compile=true needs a C++ compiler for Inductor's CPU code and none was found "
                             f"({exc}); install one (Debian: apt install g++) or set CXX, or run with --set "
                             "train.compile=false") from None


def compile_blocks(model: torch.nn.Module) -> None:
    """`train.compile` under FSDP2: compile each block's `forward` in place, not the whole sharded model.

    Compiling the FSDP-wrapped root breaks its graph at every block's all-gather/reshard hook (an H200 ran
    gpt2-124m at 233K tok/s with 1 rank vs 341K compiled without FSDP), so the compiled region is the block's
    `forward` alone: FSDP2's pre/post-forward hooks, run by `Module.__call__`, stay outside it — as does
    `checkpoint()` when activation checkpointing wraps the call. Replacing `forward` (not the module, as
    `torch.compile(block)` would) leaves state_dict keys free of `_orig_mod.`, so checkpoints, DCP resume and
    safetensors export see the same names. Every block runs the same `Block.forward` code with parameters as
    graph inputs, so dynamo builds one graph for all of them rather than one per block, which would hit its
    recompile limit (8) and fall back to eager: a 4-layer tiny model (torch 2.13, CPU, with and without
    activation checkpointing) compiles once for all layers with no recompiles; tests/train/test_compile.py
    asserts that. Apply before `shard_model`.
    """
    for block in model.layers:
        block.forward = torch.compile(block.forward)


def rank_slice(batch: tuple[torch.Tensor, ...], env: DistEnv) -> tuple[torch.Tensor, ...]:
    """This rank's rows of a global micro-batch (every tensor in the batch is cut the same way)."""
    if not env.distributed:
        return batch
    rows = batch[0].shape[0]
    if rows % env.world_size:
        raise HomegrownError(f"train.batch_size={rows} is the global micro-batch and must divide evenly over "
                             f"{env.world_size} ranks; pick a multiple of {env.world_size}")
    per = rows // env.world_size
    return tuple(t[env.rank * per:(env.rank + 1) * per] for t in batch)


def mean_over_ranks(value: float, env: DistEnv) -> float:
    """A scalar averaged over ranks, for logging the global loss."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-step of gradient accumulation."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to its full value (a no-op for plain tensors)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
