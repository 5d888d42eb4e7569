"""CUDA check for a machine with a GPU: the real `homegrown pretrain` in bf16, eager vs compiled, alone and as
a 1-rank FSDP2 job on NCCL, then a ~1B model — tokens/s and MFU against the card's measured bf16 matmul peak.
The `recipe` lines train with `small`'s recipe (QK-norm, Muon on the hidden matrices, warmup-stable-decay) at
the GPU shapes, with Muon's Newton–Schulz as `train.muon_ns_dtype=auto` picks it on a GPU (bf16, tensor cores)
or forced to fp32 (the CPU choice), beside an AdamW line of the same shape in the same run.

    python benchmarks/gpu_check.py --data DIR --out DIR        # DIR holds tokenizer.json + shards/
    python benchmarks/gpu_check.py --data DIR --out DIR --smoke   # the same plumbing on a CPU in a minute
    python benchmarks/gpu_check.py --data DIR --out DIR --exact "124M compile" --deadline 480

Every configuration is a separate process running the CLI (torchrun for FSDP2), so what is measured is what
a user runs. MFU = model FLOPs/s (6·N + attention per token, model.flops_per_token) / peak, where peak is an
8192³ bf16 matmul measured here in the same run — the best of repeated products, the peak
`homegrown plan --measure` uses — with the card's datasheet dense figure printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from homegrown.plan import GPUS, measure_matmul_tflops

RECIPE = ["model.qk_norm=true", "train.optimizer=muon", "train.schedule=wsd"]
"""`small`'s recipe beyond its shape (config.py's preset): QK-norm, Muon, warmup-stable-decay."""

CONFIGS = [
    # name, preset, launcher ranks (0 = plain process), extra overrides
    ("124M eager", "gpt2-124m", 0, []),
    ("124M compile", "gpt2-124m", 0, ["train.compile=true"]),
    ("124M FSDP2 1-rank eager", "gpt2-124m", 1, []),
    ("124M FSDP2 1-rank compile", "gpt2-124m", 1, ["train.compile=true"]),
    ("1B FSDP2 1-rank compile", "llama-1b", 1, ["train.compile=true"]),
    ("1B FSDP2 1-rank compile + act. ckpt", "llama-1b", 1, ["train.compile=true",
                                                            "train.activation_checkpointing=true"]),
    ("1B FSDP2 1-rank eager + act. ckpt", "llama-1b", 1, ["train.activation_checkpointing=true"]),
    ("124M recipe compile", "gpt2-124m", 0, [*RECIPE, "train.compile=true"]),
    ("124M recipe compile NS-fp32", "gpt2-124m", 0, [*RECIPE, "train.compile=true", "train.muon_ns_dtype=fp32"]),
    ("124M FSDP2 1-rank recipe compile", "gpt2-124m", 1, [*RECIPE, "train.compile=true"]),
    ("1B FSDP2 1-rank recipe compile", "llama-1b", 1, [*RECIPE, "train.compile=true"]),
    ("1B FSDP2 1-rank recipe compile NS-fp32", "llama-1b", 1, [*RECIPE, "train.compile=true",
                                                               "train.muon_ns_dtype=fp32"]),
]


def run_one(name: str, preset: str, ranks: int, extra: list[str], data: Path, out: Path, smoke: bool) -> dict:
    run = out / name.replace(" ", "_").replace(".", "").replace("+", "")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copyfile(data / "tokenizer.json", run / "tokenizer.json")
    (run / "shards").symlink_to((data / "shards").resolve())
    steps = 6 if smoke else (30 if preset == "llama-1b" else 60)
    sets = [f"train.max_steps={steps}", "train.log_every=5", "train.eval_every=100000", "train.eval_batches=2",
            f"train.ckpt_every={steps}", "train.keep_checkpoints=1", "train.warmup_steps=5", *extra]
    if preset == "llama-1b":  # the gathered 5 GB model.safetensors is skipped for time; DCP shards are written
        sets += ["train.batch_size=8", "train.seq_len=2048", "train.grad_accum=1", "train.save_full_weights=false"]
    else:
        sets += ["train.batch_size=16", "train.seq_len=1024", "train.grad_accum=1"]
    if smoke:
        preset = "tiny"
        sets = [s for s in sets if not s.startswith(("train.batch_size", "train.seq_len"))] + [
            "train.batch_size=4", "train.seq_len=64", "train.threads=1", "model.vocab_size=4096"]
    cli = [sys.executable, "-m", "homegrown", "pretrain", str(run), "--preset", preset,
           *(f"--set={s}" for s in sets)]
    if ranks:
        cli = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone",
               "-m", "homegrown", *cli[3:]]
    t0 = time.perf_counter()
    done = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    (run / "log.txt").write_text(done.stdout + done.stderr)
    result = {"name": name, "preset": preset, "ranks": ranks, "overrides": sets, "rc": done.returncode,
              "wall_s": round(wall, 1)}
    if done.returncode != 0:
        result["error"] = (done.stdout + done.stderr)[-2000:]
        return result
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rated = [r for r in records if "tokens_per_s" in r][1:]  # the first window holds compile/warm-up
    result.update(tokens_per_s=statistics.median(r["tokens_per_s"] for r in rated),
                  flops_per_s=statistics.median(r["flops_per_s"] for r in rated),
                  final_loss=records[-1]["loss"], max_memory_gib=max(r.get("max_memory_gib", 0) for r in records))
    ckpt = run / "ckpt" / f"step_{steps}"
    result["checkpoint_files"] = sorted(p.name for p in ckpt.iterdir()) if ckpt.exists() else []
    shutil.rmtree(run / "ckpt", ignore_errors=True)  # 1B checkpoints are large; the check is that they were written
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="directory with tokenizer.json and shards/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model, a few steps: checks the plumbing on a CPU")
    ap.add_argument("--only", nargs="*", help="run only configurations whose name contains one of these")
    ap.add_argument("--exact", nargs="*", help="run only these configurations, by whole name, in this order")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds after start past which no further configuration starts (0 = none)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    n = 512 if args.smoke else 8192
    peak = measure_matmul_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32, n) * 1e12
    sheet = next((g.peak_tflops * 1e12 for k, g in sorted(GPUS.items(), key=lambda kv: -len(kv[0]))
                  if k.split("-")[0] in card), None)
    report = {"card": card, "torch": torch.__version__, "measured_peak_flops": peak, "datasheet_bf16": sheet,
              "runs": []}
    print(f"{card}, torch {torch.__version__}: measured {n}³ matmul peak {peak / 1e12:.1f} TFLOP/s"
          + (f" (datasheet dense bf16 {sheet / 1e12:.0f})" if sheet else ""), flush=True)
    by_name = {c[0]: c for c in CONFIGS}
    unknown = [n for n in args.exact or [] if n not in by_name]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; known: {list(by_name)}")
    configs = ([by_name[n] for n in args.exact] if args.exact else
               [c for c in CONFIGS if not args.only or any(o in c[0] for o in args.only)])
    start = time.perf_counter()
    for name, preset, ranks, extra in configs:
        if args.deadline and time.perf_counter() - start > args.deadline:
            report["runs"].append({"name": name, "skipped": f"past the {args.deadline:.0f} s deadline"})
            print(f"{name:40s} skipped: past the deadline", flush=True)
            continue
        r = run_one(name, preset, ranks, extra, args.data, args.out, args.smoke)
        report["runs"].append(r)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))  # kept if a later line is cut off
        if r["rc"] != 0:
            print(f"{name:40s} FAILED rc={r['rc']}\n{r['error']}", flush=True)
            continue
        print(f"{name:40s} {r['tokens_per_s']:>12,.0f} tok/s  MFU {r['flops_per_s'] / peak:6.1%} of measured"
              + (f", {r['flops_per_s'] / sheet:6.1%} of datasheet" if sheet else "")
              + f"  mem {r['max_memory_gib']:.1f} GiB  loss {r['final_loss']:.3f}  wall {r['wall_s']:.0f}s",
              flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
