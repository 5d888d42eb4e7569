"""`homegrown dpo` against TRL's DPOTrainer on the real SmolLM2-135M-Instruct: same pairs, batches and settings.

The claim: our preference tuning is DPO as TRL computes it, on a real model and its own ChatML template, not
only on the tiny CI model (tests/posttrain/test_dpo_trl.py). SmolLM2 is imported with `homegrown import` (the GGUF
`make smollm2` fetches), exported with `homegrown export --format hf`'s function, and both trainers start from
those same weights in fp32 on the CPU. Pairs come from the bundled docs: each held-out docqa question, its
answer as `chosen` and the next question's answer as `rejected` (plausible text, wrong for this question).
Printed: per-step loss and reward margin from both, the largest relative difference, each side's seconds (on
whatever else the machine is running — label the timings with the load), and our reward accuracy on held-out pairs
(questions never trained on) after the run — 0 before it, when every reward is 0.

    nice -n 5 python benchmarks/dpo_trl.py                  # the figure: 20 steps of 2 pairs, β 0.1, lr 1e-5
    python benchmarks/dpo_trl.py --steps 3 --pairs 8        # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

from homegrown.bundle import load_chat_format
from homegrown.config import apply_overrides, resolve_preset
from homegrown.export.hf import export_hf
from homegrown.importer import import_model
from homegrown.layout import SAMPLE_DIR, RunLayout
from homegrown.posttrain.docqa import build_docqa
from homegrown.posttrain.dpo import PairData, dpo, dpo_train_config
from homegrown.posttrain.pairs import read_pairs
from homegrown.posttrain.trl_reference import batch_order, run_trl_dpo
from homegrown.train.checkpoint import resolve_checkpoint

GGUF = Path(os.environ.get("HOMEGROWN_CACHE", Path.home() / ".cache/homegrown/models")) / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"


def import_once(gguf: Path, work: Path) -> tuple[Path, Path]:
    """The GGUF imported into WORK/import (once; later runs reuse it): the run directory and its checkpoint."""
    imported = work / "import"
    if RunLayout(imported).latest() is None:
        import_model(gguf, imported)
    return imported, resolve_checkpoint(imported / "ckpt")


def docqa_pairs(work: Path, n: int, held_out: int) -> tuple[Path, Path]:
    """`n` training and `held_out` evaluation pairs from the docqa conversations of the val pages: a question's
    own answer chosen, the next question's answer rejected. The two sets share no question."""
    chats = build_docqa(SAMPLE_DIR, work / "docqa", resolve_preset("small", None, [], "small").sft)
    convs = [json.loads(line)["messages"] for line in (chats / "val.jsonl").read_text().splitlines()]
    convs = [c for c in convs if len(c) <= 3]  # single-turn: system? + user + assistant
    rows = [{"prompt": a[:-1], "chosen": a[-1]["content"], "rejected": b[-1]["content"],
             "rule": "docqa val: own answer vs the next question's"} for a, b in itertools.pairwise(convs)]
    train, val = work / "pairs.jsonl", work / "pairs_val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n + 1:n + 1 + held_out]))
    return train, val


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=GGUF)
    ap.add_argument("--work", type=Path, default=Path("runs/dpo_trl"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2, help="pairs per step")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=16, help="pairs scored for reward accuracy, never trained on")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--loss", default="sigmoid", choices=["sigmoid", "ipo"])
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    imported, start = import_once(args.gguf, args.work)
    data, val = docqa_pairs(args.work, args.pairs, args.held_out)
    preset = apply_overrides(resolve_preset(None, RunLayout(imported).preset, [], "small"), [
        "train.dtype=fp32", "train.weight_decay=0", "train.min_lr_ratio=1.0", f"train.seq_len={args.seq_len}",
        f"dpo.max_steps={args.steps}", f"dpo.batch_size={args.batch}", f"dpo.lr={args.lr}", f"dpo.beta={args.beta}",
        f"dpo.loss={args.loss}", f"dpo.eval_every={args.steps}", f"dpo.ckpt_every={args.steps}",
        f"dpo.eval_batches={-(-args.held_out // args.batch)}",
        "dpo.warmup_steps=0"])
    run = args.work / f"ours-{args.loss}-{args.steps}"
    t0 = time.perf_counter()
    dpo(start, data, run, preset.dpo, preset.train, val=val, progress=False)
    ours_s = time.perf_counter() - t0
    ours = [json.loads(line) for line in (run / "metrics_dpo.jsonl").read_text().splitlines()][-args.steps:]

    tok, chat = load_chat_format(start)
    tcfg = dpo_train_config(preset.train, preset.dpo, preset.model)
    pairs = PairData(tok, chat, read_pairs(data).pairs, tcfg.seq_len)
    hf = args.work / "hf"
    if not (hf / "config.json").exists():
        export_hf(start, hf)
    t0 = time.perf_counter()
    theirs = run_trl_dpo(hf, pairs, batch_order(pairs, tcfg, args.steps), preset.dpo, tcfg, args.work / "trl")
    trl_s = time.perf_counter() - t0

    print(f"{'step':>4} {'loss ours':>11} {'loss TRL':>11} {'margin ours':>12} {'margin TRL':>12}")
    for o, t in zip(ours, theirs, strict=True):
        print(f"{o['step']:>4} {o['loss']:>11.6f} {t['loss']:>11.6f} {o['rewards/margins']:>12.6f} "
              f"{t['rewards/margins']:>12.6f}")
    keys = ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected")
    worst = {k: max(rel(o[k], t[k]) for o, t in zip(ours, theirs, strict=True) if abs(o[k]) + abs(t[k]) > 1e-5)
             for k in keys}
    worst_abs = {k: max(abs(o[k] - t[k]) for o, t in zip(ours, theirs, strict=True)) for k in keys}
    summary = {"model": str(args.gguf.name), "steps": args.steps, "pairs_per_step": args.batch, "lr": args.lr,
               "beta": args.beta, "loss": args.loss, "max_relative_difference": worst,
               "max_absolute_difference": worst_abs,
               "seconds_ours_incl_reference": round(ours_s, 1), "seconds_trl_incl_reference": round(trl_s, 1),
               "final_margin_ours": ours[-1]["rewards/margins"], "final_margin_trl": theirs[-1]["rewards/margins"],
               "held_out_pairs": args.held_out, "held_out_reward_accuracy": ours[-1].get("val_rewards/accuracies"),
               "held_out_reward_margin": ours[-1].get("val_rewards/margins")}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
