"""What bf16 autocast costs in quality (and buys in speed) on this CPU: fp32 vs bf16 pretraining, same batches.

`train.dtype=auto` picks bf16 only on CPUs where this measured a win (AMX; homegrown.train.precision): run it on
another CPU kind before the rule covers that kind. Both runs see the same
batches (the loop seeds each step's sampler from (seed, step)); `--steps` compares them at equal steps (the
quality question), `--minutes` at equal wall-clock budgets (what a user gets). Scored on the whole validation
split (eval.perplexity.evaluate, as benchmarks/quality.py). Needs a run directory with tokenizer + shards.

    python benchmarks/dtype_quality.py runs/small --steps 720
    python benchmarks/dtype_quality.py runs/small --minutes 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.data.pack import TokenShards, token_byte_lengths
from homegrown.eval.perplexity import evaluate
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import load_model
from homegrown.train.loop import train
from homegrown.train.precision import cpu_flags, reported_flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory holding tokenizer.json and shards/")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[])
    length = ap.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="equal steps for both")
    length.add_argument("--minutes", type=float, help="equal wall-clock budgets for both")
    args = ap.parse_args()
    schedule = [f"train.max_steps={args.steps}"] if args.steps else [f"train.budget_minutes={args.minutes}"]
    byte_lengths = torch.from_numpy(token_byte_lengths(load_tokenizer(args.run_dir / "tokenizer.json")))
    val = TokenShards(args.run_dir / "shards", "val")
    print(f"CPU flags: {reported_flags(cpu_flags())}, threads {torch.get_num_threads()}", flush=True)
    results = {}
    for dtype in ("fp32", "bf16"):
        preset = apply_overrides(get_preset(args.preset), [*args.set, *schedule, f"train.dtype={dtype}"])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train(preset.model, preset.train, args.run_dir / "shards", Path(tmp),
                           args.run_dir / "tokenizer.json", progress=False)
            seconds = time.perf_counter() - t0
            _, bpb = evaluate(load_model(result.final_checkpoint), val, byte_lengths, 16, preset.train.seq_len, None,
                              torch.device("cpu"), None)
        results[dtype] = (bpb, result.steps, seconds)
        print(f"{dtype}: {result.steps} steps in {seconds:.0f} s ({seconds / result.steps:.3f} s/step incl. evals), "
              f"whole-val bits/byte {bpb:.4f}", flush=True)
    (fp32, n32, s32), (bf16, n16, s16) = results["fp32"], results["bf16"]
    print(f"bf16 - fp32: {bf16 - fp32:+.4f} bits/byte; bf16 step time / fp32: {(s16 / n16) / (s32 / n32):.2f}x")


if __name__ == "__main__":
    main()
