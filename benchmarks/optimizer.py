"""AdamW vs Muon (homegrown.train.muon on the 2-D hidden matrices, AdamW elsewhere) at equal steps and data.

Both runs see exactly the same batches (the loop seeds each step's sampler from (seed, step)), so the
difference in validation bits-per-byte is the optimizer's. Needs a run directory with tokenizer + shards
(any `homegrown run` output). Muon's Newton–Schulz runs in fp32 (our default); `--bf16-ns` adds a third run with
it in bf16 as torch.optim.Muon does, to show what that precision costs per step on this CPU (emulated without
AVX-512 BF16 / AMX) and in quality. Seconds per step are printed so the cost of Muon is visible too.

    python benchmarks/optimizer.py runs/small --steps 150 [--bf16-ns]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from homegrown.config import apply_overrides, get_preset
from homegrown.train.loop import train
from homegrown.train.precision import cpu_flags, reported_flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory holding tokenizer.json and shards/")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--bf16-ns", action="store_true", help="also Muon with bf16 Newton–Schulz (torch's precision)")
    args = ap.parse_args()
    results = {}
    variants = [("adamw", ["train.optimizer=adamw"]), ("muon", ["train.optimizer=muon"])]
    if args.bf16_ns:
        variants.append(("muon-bf16ns", ["train.optimizer=muon", "train.muon_ns_dtype=bf16"]))
    print(f"CPU flags: {reported_flags(cpu_flags())}", flush=True)
    for name, extra in variants:
        preset = apply_overrides(get_preset(args.preset), [*args.set, *extra, f"train.max_steps={args.steps}",
                                                           f"train.eval_every={args.steps}",
                                                           f"train.ckpt_every={args.steps}", "train.eval_batches=16"])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train(preset.model, preset.train, args.run_dir / "shards", Path(tmp),
                           args.run_dir / "tokenizer.json", progress=False)
            results[name] = (result.final_val_bpb, time.perf_counter() - t0)
        print(f"{name:11s} {args.steps} steps: val bits/byte {results[name][0]:.4f}  ({results[name][1]:.0f} s, "
              f"{results[name][1] / args.steps:.3f} s/step incl. evals)", flush=True)
    print(f"muon/adamw val bpb: {results['muon'][0] / results['adamw'][0]:.3f} (lower is better for muon); "
          f"time {results['muon'][1] / results['adamw'][1]:.2f}x")
    if args.bf16_ns:
        print(f"muon time, bf16 NS / fp32 NS: {results['muon-bf16ns'][1] / results['muon'][1]:.2f}x")


if __name__ == "__main__":
    main()
