"""Training throughput: our step vs the `transformers` model with the identical config (Llama, or Qwen3 with QK-norm).

Prints tokens/s for both, the ratio, and MFU against the matmul peak measured here in the same run
(these machines are shared and noisy, so only same-run ratios mean anything). Both sides run the same dtype
(`--dtype`: plain fp32, or bf16 autocast for both), and the figure names it and the CPU's flags: bf16 is native
only with AVX-512 BF16 / AMX, so a bf16 figure from one machine says nothing about another.

    python benchmarks/train_throughput.py --preset small [--dtype fp32|bf16] [--compile] [--threads 2] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.export.hf import hf_config
from homegrown.model import Transformer
from homegrown.train.loop import build_optimizer
from homegrown.train.precision import cpu_flags, reported_flags


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 3072), reps: int = 6) -> float:
    """Best FLOP/s of large square matmuls over a few sizes and repeats: the ceiling a training step can approach.

    Best-of rather than mean, because a shared machine only ever makes a measurement slower.
    """
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def time_steps(step, steps: int, warmup: int) -> float:
    """Median seconds per step after warm-up (compile and allocator settle during warm-up)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hf_model(cfg):
    """The peer: the transformers model our HF export writes for `cfg`, built from that very config — a Llama, or a
    Qwen3 when `qk_norm` is on (a Llama would skip the q/k norms and run a cheaper step than ours)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = hf_config(cfg, torch.float32, 0, 0)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. train.batch_size=8")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model (compile time excluded)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="both models run in this dtype (bf16 = autocast, fp32 weights, on both sides)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # The peer runs AdamW: ours does too unless --set says otherwise (small pretrains with Muon; this measures the
    # model's step, and optimizer.py / ablate.py measure the optimizers).
    preset = apply_overrides(get_preset(args.preset), ["train.optimizer=adamw", *args.set])
    cfg, tc = preset.model, preset.train
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (tc.batch_size, tc.seq_len))
    y = torch.randint(0, cfg.vocab_size, (tc.batch_size, tc.seq_len))
    tokens = tc.batch_size * tc.seq_len

    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16, sizes=(512,), reps=2)
    ours = Transformer(cfg)
    opts = build_optimizer(ours, tc, fused=False)
    fwd = torch.compile(ours) if args.compile else ours

    def our_step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), tc.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    theirs = hf_model(cfg)
    their_opt = torch.optim.AdamW(theirs.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                                  weight_decay=tc.weight_decay)

    def their_step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = theirs(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), tc.grad_clip)
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)

    t_compile = time.perf_counter()
    our_step()
    t_compile = time.perf_counter() - t_compile
    # Interleave the two so a noisy neighbour hurts both alike; take each one's median.
    ours_s, theirs_s = [], []
    for _ in range(2):
        theirs_s.append(time_steps(their_step, args.steps // 2 or 1, args.warmup))
        ours_s.append(time_steps(our_step, args.steps // 2 or 1, args.warmup))
    ours_tps, theirs_tps = tokens / min(ours_s), tokens / min(theirs_s)
    flops_per_token = ours.flops_per_token(tc.seq_len)
    peak = peak16 if amp == torch.bfloat16 else peak32
    mfu = ours_tps * flops_per_token / peak
    print(f"preset {args.preset}: {ours.num_params():,} params, batch {tc.batch_size}x{tc.seq_len}, "
          f"threads {torch.get_num_threads()}, dtype {args.dtype} on both sides, compile {args.compile} "
          f"(first step {t_compile:.1f}s)")
    print(f"CPU flags: {reported_flags(cpu_flags())} (torch CPU capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"matmul peak here: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")
    print(f"homegrown     {ours_tps:8.0f} tokens/s   {ours_tps * flops_per_token / 1e9:6.1f} GFLOP/s   MFU {mfu:.1%}")
    print(f"transformers  {theirs_tps:8.0f} tokens/s   {theirs_tps * flops_per_token / 1e9:6.1f} GFLOP/s   "
          f"MFU {theirs_tps * flops_per_token / peak:.1%}")
    print(f"ratio homegrown/transformers ({args.dtype} both, {reported_flags(cpu_flags())}): "
          f"{ours_tps / theirs_tps:.2f}x")


if __name__ == "__main__":
    main()
