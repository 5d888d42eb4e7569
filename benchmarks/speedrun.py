"""Time-to-quality: our pretraining vs a plain `transformers` LlamaForCausalLM, each on a wall-clock budget, in one run.

The peer is what a user would write instead: LlamaForCausalLM with the same shape (the config our HF export
writes), the same tokenizer and shards, the very same batches (each step's windows drawn from the generator our
loop seeds with (seed, step)), AdamW with the preset's lr (small: 5e-3), betas, weight decay on matrices only and
gradient clipping, linear warm-up then cosine to 10 % (our `lr_at`), fp32, in a plain PyTorch loop. Both get their
step count from the same rule (homegrown.train.budget): time the first warm-up steps, then fit the schedule to
the budget. Our side is `homegrown.train.loop.train` as `make run` calls it, budget and all.

Quality is bits/byte on the whole validation split (eval.perplexity.evaluate, as benchmarks/quality.py), measured
after training on snapshots taken every `--points`-th of the run (evaluation is not on anyone's clock). Prints a
table and the finals, and draws bits/byte against training wall-clock for every run on one PNG.

    python benchmarks/speedrun.py runs/small --minutes 10 --baseline-minutes 10 20 --out runs/speedrun
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from quality import unigram_bpb, whole_val_bpb  # benchmarks/quality.py: run as a script, this directory is on sys.path

from homegrown.config import ModelConfig, TrainConfig, apply_overrides, get_preset
from homegrown.data.pack import TokenShards
from homegrown.export.hf import hf_config
from homegrown.layout import RunLayout, list_checkpoints
from homegrown.train import budget
from homegrown.train.checkpoint import load_model
from homegrown.train.loop import lr_at, step_generator, train
from homegrown.train.precision import cpu_flags, reported_flags

Curve = list[tuple[float, float]]
"""(training seconds, whole-val bits/byte) points."""


class _Logits(torch.nn.Module):
    """model(x) -> logits, the call eval.perplexity makes, for a transformers model."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x).logits


def run_ours(run_dir: Path, preset_name: str, overrides: list[str], minutes: float, points: int,
             out: Path) -> Curve:
    """`train` on the budget, a checkpoint every ~1/points of it; each checkpoint scored afterwards."""
    preset = apply_overrides(get_preset(preset_name), [*overrides, f"train.budget_minutes={minutes}",
                                                       "train.dtype=fp32", "train.keep_checkpoints=0"])
    # Checkpoint spacing has to be fixed before the step count is known: guess it from the fixed-step preset.
    every = max(preset.train.warmup_steps, round(preset.train.max_steps * minutes / 10 / points))
    preset.train.ckpt_every = every
    ours = out / "homegrown"
    train(preset.model, preset.train, run_dir / "shards", ours, run_dir / "tokenizer.json", progress=False)
    elapsed = {json.loads(line)["step"]: json.loads(line)["elapsed_s"]
               for line in RunLayout(ours).metrics().read_text().splitlines() if line.strip()}
    curve = []
    for ckpt in list_checkpoints(RunLayout(ours).ckpt_root()):
        step = int(ckpt.name.removeprefix("step_"))
        curve.append((elapsed[step], whole_val_bpb(load_model(ckpt), run_dir, preset.train.seq_len)))
    return curve


def _adamw(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2))


def run_baseline(run_dir: Path, cfg: ModelConfig, tc: TrainConfig, minutes: float, points: int) -> Curve:
    """The plain loop a user would write around LlamaForCausalLM; snapshots in memory, scored afterwards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    t_start = time.perf_counter()
    tc = replace(tc, schedule="cosine")  # the plain loop's recipe, whatever schedule `--set` gives our side
    torch.manual_seed(tc.seed)
    model = LlamaForCausalLM(LlamaConfig(**hf_config(cfg, torch.float32, 0, 0), attn_implementation="sdpa"))
    opt = _adamw(model, tc)
    shards = TokenShards(run_dir / "shards", "train")
    probe = budget.probe_steps(tc.warmup_steps)
    schedule = replace(tc, max_steps=probe + 1)  # warm-up steps do not depend on max_steps (lr_at)
    times: list[float] = []
    snapshots: list[tuple[float, dict[str, torch.Tensor]]] = []
    every = 0
    step = 0
    model.train()
    while step < schedule.max_steps:
        t_step = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule, tc.lr)
        x, y = shards.sample(tc.batch_size, tc.seq_len, step_generator(tc.seed, step, 0))
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step <= probe:
            times.append(time.perf_counter() - t_step)
        if step == probe:
            plan = budget.plan_steps(minutes, times, 0.0, time.perf_counter() - t_start, tc.eval_every, probe + 1)
            schedule = replace(tc, max_steps=plan.max_steps)
            every = max(1, plan.max_steps // points)
        if every and (step % every == 0 or step == schedule.max_steps):
            snapshots.append((time.perf_counter() - t_start, copy.deepcopy(model.state_dict())))
        if not math.isfinite(float(loss.detach())):
            raise SystemExit(f"baseline loss became {float(loss.detach())} at step {step}")
    curve = []
    for seconds, state in snapshots:
        model.load_state_dict(state)
        curve.append((seconds, whole_val_bpb(_Logits(model), run_dir, tc.seq_len)))
    print(f"transformers {minutes:g} min: {schedule.max_steps} steps, "
          f"{schedule.max_steps * tc.batch_size * tc.seq_len:,} tokens", flush=True)
    return curve


def plot(curves: dict[str, Curve], unigram: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        ax.plot([s / 60 for s, _ in curve], [b for _, b in curve], marker="o", label=f"{name}: {curve[-1][1]:.3f}")
    ax.axhline(unigram, color="grey", linestyle=":", label=f"unigram {unigram:.3f}")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("bits/byte, whole val split")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory holding tokenizer.json and shards/ (make run's)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[],
                    help="override for both sides' shape and recipe; the baseline stays a plain loop (cosine, "
                         "one AdamW rate, no z-loss)")
    ap.add_argument("--minutes", type=float, default=10.0, help="our budget")
    ap.add_argument("--baseline-minutes", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--points", type=int, default=8, help="snapshots scored per run")
    ap.add_argument("--out", type=Path, default=Path("runs/speedrun"))
    ap.add_argument("--flush-denormal", action="store_true",
                    help="the peer's loop also sets torch.set_flush_denormal(True) (a plain loop would not; "
                         "transformers' Llama slows down ~1.4x as denormal activations appear, ours does not)")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; pass a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    preset = apply_overrides(get_preset(args.preset), [*args.set, "train.dtype=fp32"])
    flags = reported_flags(cpu_flags())
    print(f"preset {args.preset}, threads {torch.get_num_threads()}, fp32 both, CPU flags: {flags}", flush=True)

    curves = {f"homegrown {args.minutes:g} min": run_ours(args.run_dir, args.preset, args.set, args.minutes,
                                                           args.points, args.out)}
    torch.set_flush_denormal(args.flush_denormal)
    peer = "transformers (flush denormal)" if args.flush_denormal else "transformers"
    for minutes in args.baseline_minutes:
        curves[f"{peer} {minutes:g} min"] = run_baseline(args.run_dir, preset.model, preset.train, minutes,
                                                         args.points)
    unigram = unigram_bpb(args.run_dir, preset.train.seq_len)
    for name, curve in curves.items():
        print(f"{name:24s} " + "  ".join(f"{s / 60:.1f}m:{b:.3f}" for s, b in curve), flush=True)
    ours_name = next(iter(curves))
    ours_final = curves[ours_name][-1][1]
    for name, curve in list(curves.items())[1:]:
        print(f"final bits/byte: {ours_name} {ours_final:.3f} vs {name} {curve[-1][1]:.3f} "
              f"(ours/theirs {ours_final / curve[-1][1]:.3f}; lower is better)")
    png = args.out / "speedrun.png"
    plot(curves, unigram, png, f"{args.preset}: whole-val bits/byte vs training time (fp32, {flags})")
    (args.out / "speedrun.json").write_text(json.dumps({"cpu_flags": flags, "unigram": unigram, "curves": curves},
                                                       indent=2))
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
