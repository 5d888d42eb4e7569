"""AdamW vs Muon (torch.optim.Muon on the 2-D hidden matrices, AdamW elsewhere) at equal steps and data.

Both runs see exactly the same batches (the loop seeds each step's sampler from (seed, step)), so the
difference in validation bits-per-byte is the optimizer's. Needs a run directory with tokenizer + shards
(any `homegrown run` output).

    python benchmarks/optimizer.py runs/small --steps 150
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from homegrown.config import apply_overrides, get_preset
from homegrown.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory holding tokenizer.json and shards/")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    results = {}
    for name, extra in (("adamw", ["train.optimizer=adamw"]), ("muon", ["train.optimizer=muon"])):
        preset = apply_overrides(get_preset(args.preset), [*args.set, *extra, f"train.max_steps={args.steps}",
                                                           f"train.eval_every={args.steps}",
                                                           f"train.ckpt_every={args.steps}", "train.eval_batches=16"])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train(preset.model, preset.train, args.run_dir / "shards", Path(tmp),
                           args.run_dir / "tokenizer.json", progress=False)
            results[name] = (result.final_val_bpb, time.perf_counter() - t0)
        print(f"{name:6s} {args.steps} steps: val bits/byte {results[name][0]:.4f}  ({results[name][1]:.0f} s)",
              flush=True)
    print(f"muon/adamw val bpb: {results['muon'][0] / results['adamw'][0]:.3f} (lower is better for muon)")


if __name__ == "__main__":
    main()
