"""Recipe ablations for `small`: one change at a time, each a real `homegrown pretrain`, scored on the whole val split.

Every variant trains from scratch on a base run's tokenizer and shards (`make run` builds them) with the preset's
recipe plus that variant's `--set` overrides, for a fixed number of steps — by default the step count the
10-minute budget bought on a quiet 2-core machine (1,154), so a variant is compared at the schedule a user gets.
Fixing steps (not wall-clock) makes the quality figure independent of load: variants can run side by side, one
thread each. Changes that alter the cost of a step are compared at the budget separately: `--probe` times a few
steps of each variant alone (2 threads, run it on a quiet machine) and the table converts the budget into
steps for it (`budget_steps`); rerun such a variant at that count with `--steps`.

Shapes (or anything else that changes a step's cost) are compared at a budget with `--minutes M`: first, on a
quiet machine, `--probe --minutes M` starts each variant as `make run` would (`train.budget_minutes=M`), lets the
product's own budget rule (homegrown.train.budget) time the first steps and choose the step count, and stops it
there (OUT/plan_M.json); then `--minutes M` trains every variant for its planned count — fixed steps again, so
that pass can run under load or side by side.

Results go to OUT/results.jsonl (one line per finished variant; a finished variant is skipped on rerun), and
the table prints Δ bits/byte against each row's reference variant (`--ref`, default `base`: changes can be
stacked, e.g. QK-norm measured on top of Muon) at the same seed and step count.

    python benchmarks/ablate.py runs/small --out runs/ablate --variant base: \\
        --variant muon:train.optimizer=muon --seeds 1337 --jobs 2
    python benchmarks/ablate.py runs/small --out runs/ablate --table
    python benchmarks/ablate.py runs/small --fit runs/shapes runs/shapes30   # the shape rule's constant
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from quality import whole_val_bpb  # benchmarks/quality.py: run as a script, this directory is on sys.path

from homegrown.train.checkpoint import load_model, resolve_checkpoint
from homegrown.train.precision import cpu_flags, reported_flags

BUDGET_STEPS = 1154
"""Steps the small preset's 10-minute budget fixed on a quiet run of this 2-core Xeon (RESULTS, issue 16)."""


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name, [s for s in sets.split(",") if s]


def prepare(base: Path, run: Path) -> None:
    """A fresh run directory sharing the base run's tokenizer and shards (copied: a run owns its directory)."""
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "tokenizer.json").exists():
        shutil.copy(base / "tokenizer.json", run / "tokenizer.json")
    if not (run / "shards").exists():
        shutil.copytree(base / "shards", run / "shards")


def final_bpb(run: Path) -> float:
    model = load_model(resolve_checkpoint(run / "ckpt"))
    return whole_val_bpb(model, run, model.cfg.max_seq_len)


def pretrain_cmd(run: Path, preset: str, settings: list[str]) -> list[str]:
    """`homegrown pretrain RUN --preset PRESET --set …` with the same interpreter and sources as this script."""
    return [sys.executable, "-m", "homegrown", "pretrain", str(run), "--preset", preset,
            *[arg for setting in settings for arg in ("--set", setting)]]


def run_variant(base: Path, out: Path, name: str, sets: list[str], seed: int, steps: int, threads: int,
                preset: str, ref: str) -> dict:
    run = out / f"{name}-s{seed}"
    prepare(base, run)
    cmd = pretrain_cmd(run, preset, [f"train.max_steps={steps}", f"train.seed={seed}", f"train.threads={threads}",
                                     f"train.ckpt_every={steps}", f"train.eval_every={steps}", *sets])
    t0 = time.perf_counter()
    with open(run / "train.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TERM": "dumb"})
    wall = time.perf_counter() - t0
    if threads:
        torch.set_num_threads(threads)
    return {"variant": name, "ref": ref, "sets": sets, "seed": seed, "steps": steps, "bpb": final_bpb(run),
            "wall_s": round(wall, 1), "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load": os.getloadavg()[0]}


def probe(base: Path, out: Path, name: str, sets: list[str], preset: str, steps: int = 24) -> float:
    """Seconds per step of a variant alone on all cores (the first 4 steps, warm-up, are excluded)."""
    run = out / "probe" / name
    shutil.rmtree(run, ignore_errors=True)
    prepare(base, run)
    cmd = pretrain_cmd(run, preset, [f"train.max_steps={steps}", "train.log_every=1", f"train.ckpt_every={steps}",
                                     f"train.eval_every={steps}", *sets])
    subprocess.run(cmd, check=True, capture_output=True)
    times = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    stamps = [(r["step"], r["elapsed_s"]) for r in times if "elapsed_s" in r and "loss" in r]
    (s0, t0), (s1, t1) = stamps[3], stamps[-1]
    return (t1 - t0) / (s1 - s0)


def plan_budget(base: Path, out: Path, name: str, sets: list[str], preset: str, minutes: float) -> int:
    """The step count `homegrown pretrain` picks for this variant and budget on this machine (alone, all cores):
    started with `train.budget_minutes`, stopped as soon as its plan is saved (RUN/budget.json)."""
    run = out / "probe" / f"{name}-{minutes:g}min"
    shutil.rmtree(run, ignore_errors=True)
    prepare(base, run)
    # Output goes to a file, not a pipe: nobody reads a pipe while we wait, and a full one would stall the run.
    with open(run / "train.log", "w") as log:
        proc = subprocess.Popen(pretrain_cmd(run, preset, [f"train.budget_minutes={minutes}", *sets]), stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "TERM": "dumb"})
        try:
            while not (run / "budget.json").exists():
                if proc.poll() is not None:
                    raise SystemExit(f"{name}: pretrain ended before planning its budget; see {run / 'train.log'}")
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait()
    return json.loads((run / "budget.json").read_text())["max_steps"]


def table(out: Path) -> None:
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] \
        if (out / "results.jsonl").exists() else []
    probes = json.loads((out / "probe.json").read_text()) if (out / "probe.json").exists() else {}
    bpb = {(r["variant"], r["seed"], r["steps"]): r["bpb"] for r in rows}
    base_step = probes.get("base")
    print(f"{'variant':<22} {'vs':<12} {'seed':>5} {'steps':>6} {'bits/byte':>9} {'Δ':>8} {'s/step':>7} "
          f"{'budget_steps':>12}  sets")
    for r in sorted(rows, key=lambda r: (r["variant"] != "base", r["variant"], r["seed"], r["steps"])):
        ref = r.get("ref", "base")
        other, mark = bpb.get((ref, r["seed"], r["steps"])), ""
        if other is None:  # `--minutes` rows: each variant at the steps its budget bought (Δ marked *)
            alike = [v for (n, seed, _), v in bpb.items() if n == ref and seed == r["seed"]]
            other, mark = (alike[0], "*") if len(alike) == 1 else (None, "")
        delta = f"{r['bpb'] - other:+.4f}{mark}" if other is not None and ref != r["variant"] else "-"
        s = probes.get(r["variant"])
        budget = f"{round(BUDGET_STEPS * base_step / s)}" if s and base_step else "-"
        print(f"{r['variant']:<22} {ref:<12} {r['seed']:>5} {r['steps']:>6} {r['bpb']:>9.4f} {delta:>8} "
              f"{s or float('nan'):>7.3f} {budget:>12}  {' '.join(r['sets'])}")


def fit(sweeps: list[Path]) -> None:
    """The constant of `homegrown.train.shape`'s rule from shape sweeps at a budget (each an OUT of `--minutes`):
    per sweep, bits/byte of the ladder's shapes against ln(training tokens per parameter), a parabola through
    them, and its vertex — the tokens per parameter the best shape of that budget sees; then their geometric mean."""
    import math

    import numpy as np

    from homegrown.config import ModelConfig, TrainConfig
    from homegrown.model import count_params
    from homegrown.train.shape import LADDER

    vertices = []
    for out in sweeps:
        points = []
        for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()):
            preset = json.loads((out / f"{r['variant']}-s{r['seed']}" / "preset.json").read_text())
            model, train = ModelConfig(**preset["model"]), TrainConfig(**preset["train"])
            if (model.d_model, model.n_layers) not in LADDER:
                continue
            ratio = r["steps"] * train.batch_size * train.seq_len * train.grad_accum / count_params(model)
            points.append((math.log(ratio), r["bpb"]))
            print(f"{out}: {r['variant']:<10} {count_params(model):>10,} parameters  {r['steps']:>5} steps  "
                  f"{ratio:6.2f} tokens/parameter  {r['bpb']:.4f} bits/byte")
        a, b, _ = np.polyfit(*zip(*points, strict=True), 2)
        vertices.append(-b / (2 * a))
        print(f"{out}: best tokens/parameter {math.exp(vertices[-1]):.2f} (vertex of the parabola)")
    print(f"geometric mean over {len(vertices)} sweep(s): {math.exp(sum(vertices) / len(vertices)):.2f} "
          f"tokens/parameter (homegrown.train.shape.TOKENS_PER_PARAM)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="a run with tokenizer.json and shards/ (e.g. runs/small)")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate"))
    ap.add_argument("--variant", action="append", default=[], help="NAME:section.field=value,... (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--steps", type=int, default=BUDGET_STEPS)
    ap.add_argument("--jobs", type=int, default=1, help="variants trained side by side, one thread each if > 1")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--ref", default="base", help="variant each of these is compared against in the table")
    ap.add_argument("--probe", action="store_true", help="time each variant alone instead (quiet machine)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="train each variant for the steps the budget rule planned for it (with --probe: plan them)")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/results.jsonl and exit")
    ap.add_argument("--fit", type=Path, nargs="+", default=[],
                    help="shape sweeps (OUT dirs of --minutes runs): fit the shape rule's tokens per parameter")
    args = ap.parse_args()
    if args.fit:
        fit(args.fit)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant]
    if args.table:
        table(args.out)
        return
    plan_path = args.out / f"plan_{args.minutes:g}min.json"
    plans = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    if args.probe and args.minutes:
        for name, sets in variants:
            plans[name] = plan_budget(args.base, args.out, name, sets, args.preset, args.minutes)
            print(f"{name}: {plans[name]} steps for {args.minutes:g} minutes (load {os.getloadavg()[0]:.1f}; "
                  f"flags {reported_flags(cpu_flags())})", flush=True)
            plan_path.write_text(json.dumps(plans, indent=1))
        return
    if args.minutes and (missing := [n for n, _ in variants if n not in plans]):
        raise SystemExit(f"no {args.minutes:g}-minute plan for {', '.join(missing)}: run --probe --minutes first")
    if args.probe:
        path = args.out / "probe.json"
        probes = json.loads(path.read_text()) if path.exists() else {}
        for name, sets in variants:
            probes[name] = probe(args.base, args.out, name, sets, args.preset)
            print(f"{name}: {probes[name]:.3f} s/step (load {os.getloadavg()[0]:.1f}; "
                  f"flags {reported_flags(cpu_flags())})", flush=True)
            path.write_text(json.dumps(probes, indent=1))
        return
    done = set()
    results = args.out / "results.jsonl"
    if results.exists():
        done = {(r["variant"], r["seed"], r["steps"]) for r in map(json.loads, results.read_text().splitlines())}
    steps = {n: plans[n] if args.minutes else args.steps for n, _ in variants}
    todo = [(n, s, seed) for n, s in variants for seed in args.seeds if (n, seed, steps[n]) not in done]
    threads = 1 if args.jobs > 1 else 0

    def one(job: tuple[str, list[str], int]) -> None:
        name, sets, seed = job
        rec = run_variant(args.base, args.out, name, sets, seed, steps[name], threads, args.preset,
                          args.ref)
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name} seed {seed}: {rec['bpb']:.4f} bits/byte ({rec['wall_s']} s)", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    table(args.out)


if __name__ == "__main__":
    main()
