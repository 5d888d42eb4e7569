"""The same DPO steps on SmolLM2-135M-Instruct with full weights and with LoRA: memory, parameters, checkpoint, time.

Each mode is one `homegrown dpo` process (what a user runs) on the same docqa pairs (benchmarks/dpo_trl.py's: a
question's own answer chosen, the next question's rejected), same steps, batch and sequence length, fp32 on the
CPU. Printed per mode:

- peak RSS of that process (os.wait4's ru_maxrss: the whole run, reference pass included — independent of load);
- trainable and total parameters;
- checkpoint size on disk, split into what the run keeps to resume (adapter or weights + optimizer state) and the
  merged model.safetensors a LoRA checkpoint also writes for `serve` / `export`;
- seconds per training step (median over steps 2…N, from metrics_dpo.jsonl's tokens_per_s at log_every 1):
  meaningful only on an otherwise idle machine — run it quiet.

    python benchmarks/lora_vs_full.py                       # 4 steps of 2 pairs, seq 256, LoRA r32 α32
    python benchmarks/lora_vs_full.py --steps 2 --pairs 4   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from dpo_trl import GGUF, docqa_pairs, import_once

from homegrown.config import LoRAConfig, ModelConfig
from homegrown.model import Transformer
from homegrown.posttrain.lora import attach, count_trainable
from homegrown.train.checkpoint import resolve_checkpoint


def parameters(start: Path, rank: int, alpha: float) -> tuple[int, int]:
    """(trainable, total) of the model at `start`, with adapters of `rank` attached when rank > 0 (on the meta
    device: counts only, no memory)."""
    cfg = ModelConfig.load(start / "config.json")
    with torch.device("meta"):
        model = Transformer(cfg)
    if rank:
        attach(model, LoRAConfig(rank=rank, alpha=alpha))
    return count_trainable(model)


def sizes(ckpt: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in ckpt.rglob("*"):
        if f.is_file():
            top = f.relative_to(ckpt).parts[0]
            out[top] = out.get(top, 0) + f.stat().st_size
    return out


def run_mode(name: str, start: Path, data: Path, val: Path, work: Path, args: argparse.Namespace,
             rank: int) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "homegrown", "dpo", str(start), "--data", str(data), "--val", str(val),
           "--out", str(out), "--lora-rank", str(rank), "--lora-alpha", str(args.lora_alpha),
           "--set", "train.dtype=fp32", "--set", f"train.seq_len={args.seq_len}", "--set", "train.log_every=1",
           "--set", f"dpo.max_steps={args.steps}", "--set", f"dpo.batch_size={args.batch}",
           "--set", f"dpo.lr={args.lr}", "--set", f"dpo.eval_every={args.steps}",
           "--set", f"dpo.ckpt_every={args.steps}", "--set", "dpo.eval_batches=1", "--set", "dpo.warmup_steps=0"]
    print("$ homegrown " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: homegrown dpo failed")
    metrics = [json.loads(line) for line in (out / "metrics_dpo.jsonl").read_text().splitlines()]
    step_s = [args.batch * args.seq_len / m["tokens_per_s"] for m in metrics[1:] if m.get("tokens_per_s")]
    trainable, total = parameters(start, rank, args.lora_alpha)
    files = sizes(resolve_checkpoint(out / "dpo" / "ckpt"))
    merged = files.get("model.safetensors", 0) if rank else 0
    return {"mode": name, "peak_rss_mib": round(usage.ru_maxrss / 1024), "trainable_params": trainable,
            "total_params": total, "checkpoint_mib": round(sum(files.values()) / 2**20, 1),
            "checkpoint_to_resume_mib": round((sum(files.values()) - merged) / 2**20, 1),
            "checkpoint_files_mib": {k: round(v / 2**20, 1) for k, v in sorted(files.items())},
            "seconds_per_step_median": round(statistics.median(step_s), 2) if step_s else None,
            "final_loss": metrics[-1]["loss"], "final_margin": metrics[-1]["rewards/margins"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=GGUF)
    ap.add_argument("--work", type=Path, default=Path("runs/lora_vs_full"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2, help="pairs per step")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--lora-alpha", type=float, default=32)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    _, start = import_once(args.gguf, args.work)
    data, val = docqa_pairs(args.work, args.pairs, 2)
    rows = [run_mode("full", start, data, val, args.work, args, 0),
            run_mode(f"lora_r{args.lora_rank}", start, data, val, args.work, args, args.lora_rank)]
    summary = {"model": args.gguf.name, "steps": args.steps, "pairs_per_step": args.batch, "seq_len": args.seq_len,
               "lr": args.lr, "lora_alpha": args.lora_alpha, "modes": rows}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
