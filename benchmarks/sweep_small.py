"""How the `small` preset was chosen: a few shapes / vocabularies / learning rates, each trained for the same
wall-clock budget on this machine, compared by validation bits-per-byte (tokenizer-independent).

Each candidate's step time is measured first, then max_steps is set so the whole cosine schedule fits the
budget — a fair "what is best in N minutes" comparison rather than "what is best in N steps".

    python benchmarks/sweep_small.py --minutes 3 --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.model import Transformer
from homegrown.pipeline import run
from homegrown.train.loop import build_optimizer

CANDIDATES: dict[str, list[str]] = {
    "d256-L6-v8k-lr3e-3": ["model.vocab_size=8192", "train.lr=3e-3"],
    "d256-L6-v4k-lr3e-3": ["model.vocab_size=4096", "train.lr=3e-3"],
    "d256-L6-v8k-lr6e-3": ["model.vocab_size=8192", "train.lr=6e-3"],
    "d192-L4-v4k-lr5e-3": ["model.vocab_size=4096", "model.d_model=192", "model.n_layers=4", "model.n_heads=3",
                           "model.n_kv_heads=3", "train.lr=5e-3"],
    "d256-L4-v4k-lr4e-3": ["model.vocab_size=4096", "model.n_layers=4", "train.lr=4e-3"],
    "d320-L6-v8k-lr2e-3": ["model.vocab_size=8192", "model.d_model=320", "model.n_heads=5", "model.n_kv_heads=5",
                           "train.lr=2e-3"],
}


def seconds_per_step(overrides: list[str], probe_steps: int = 5) -> float:
    preset = apply_overrides(get_preset("small"), overrides)
    cfg, tc = preset.model, preset.train
    model = Transformer(cfg)
    opts = build_optimizer(model, tc, fused=False)
    x = torch.randint(0, cfg.vocab_size, (tc.batch_size, tc.seq_len))
    times = []
    for _ in range(probe_steps + 2):
        t0 = time.perf_counter()
        model(x, x).backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return min(times[2:]) * 1.1  # fastest after warm-up (contention only slows); evals and checkpoints ~10%


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    results = {}
    for name, overrides in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        steps = int(args.minutes * 60 / seconds_per_step(overrides))
        preset = apply_overrides(get_preset("small"), [*overrides, f"train.max_steps={steps}",
                                                       f"train.eval_every={max(steps // 4, 1)}",
                                                       f"train.ckpt_every={steps}", "train.eval_batches=16"])
        shutil.rmtree(args.out / name, ignore_errors=True)  # a stale run would resume with another schedule
        t0 = time.perf_counter()
        summary = run(preset, args.out / name, samples=0, progress=False)
        results[name] = {"steps": steps, "val_bpb": summary.val_bpb, "tokens_per_s": summary.tokens_per_second,
                         "train_minutes": (time.perf_counter() - t0) / 60}
        print(f"{name:24s} steps {steps:5d}  val_bpb {summary.val_bpb:.4f}  "
              f"{summary.tokens_per_second:,.0f} tok/s  {results[name]['train_minutes']:.1f} min", flush=True)
    best = min(results, key=lambda k: results[k]["val_bpb"])
    print(f"best within {args.minutes} min: {best}")
    (args.out / "sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
