"""Continued pretraining + chat SFT of an imported SmolLM2-135M-Instruct on the bundled docs, within a stated budget.

The claim: an open model brought in with `homegrown import` can be trained further on your own corpus and tuned
on chat data cut from it, on a laptop's CPU, and the report card measures what that did. Every step is the
product's own stage function — `import_model`, `continue_pretraining` (what `homegrown pretrain --init-from`
runs), `prepare_sft` (docqa conversations from the run's corpus → `homegrown sft`), `evaluate_model` (what
`homegrown eval` runs) — so the figures are the ones a user gets.

Measured on text none of the stages trained on: bits/byte on the held-out val pages (the first `--val-bytes` of
them: a 135M model scores the whole 500 KB split in many minutes on two cores) and the task suite built from
those pages (`--max-items` each; doc_qa is token F1 of the generated answer), with standard errors. Columns:
the import as a base model (plain-text prompts) and as the chat model it is (its own ChatML template), the base
after continued pretraining, and the chat model after SFT on top of it. The import's two columns share its
bits/byte and multiple-choice scores: same weights, and log-likelihood scoring does not use the chat template.

The defaults are the budget that fits a 2-core machine shared with other jobs (12 CPT steps of 2×512 tokens at
peak lr 2e-4, 6 SFT steps of 2 rows at 1e-4, 20 items per task on 4 held-out pages); a quiet machine affords
e.g. `--cpt-steps 32 --batch 4 --sft-steps 16 --val-bytes 60000 --max-items 0` in about the same time.

    nice -n 5 python benchmarks/finetune_smol.py                         # the figure (defaults)
    python benchmarks/finetune_smol.py --cpt-steps 2 --sft-steps 2 --max-items 2 --val-bytes 2000   # smoke test
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

from homegrown.bundle import load_bundle
from homegrown.config import apply_overrides, get_preset
from homegrown.eval.suite import evaluate_model, find_models
from homegrown.eval.tasks import LocalModel, evaluate_task, load_tasks
from homegrown.importer import import_model
from homegrown.io import write_json_atomic
from homegrown.layout import SAMPLE_DIR
from homegrown.pipeline import continue_pretraining, prepare_sft

GGUF = Path(os.environ.get("HOMEGROWN_CACHE", Path.home() / ".cache/homegrown/models")) / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"


def held_out_pages(out: Path, max_bytes: int) -> Path:
    """A corpus directory holding the bundled val split's first pages, up to `max_bytes` of text (whole pages;
    at least one). Same pages, same order as the full split: a prefix of it, not a sample chosen by score."""
    out.mkdir(parents=True, exist_ok=True)
    kept, size = [], 0
    with gzip.open(SAMPLE_DIR / "val.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if kept and size >= max_bytes:
                break
            kept.append(line)
            size += len(json.loads(line)["text"].encode())
    with gzip.open(out / "val.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(kept)
    print(f"held-out text: {len(kept)} val pages, {size:,} bytes", flush=True)
    return out


def scores(record: dict) -> dict:
    return {"bpb": record["val"]["bpb"], "bytes": record["val"]["bytes"],
            **{name: {"metric": r["metric"], "score": r["score"], "stderr": r["stderr"], "n": r["n"],
                      "chance": r["chance"], "mode": r["mode"]} for name, r in record["tasks"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=GGUF, help="the model to import (`make smollm2` fetches it)")
    ap.add_argument("--work", type=Path, default=Path("runs/finetune_smol"), help="runs go here (the import is reused)")
    ap.add_argument("--preset", default="small", help="preset whose data/train/sft sections the overrides start from")
    ap.add_argument("--cpt-steps", type=int, default=12)
    ap.add_argument("--cpt-lr", type=float, default=2e-4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="sequences per step, CPT and SFT")
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--val-bytes", type=int, default=20_000, help="held-out text scored for bits/byte (whole pages)")
    ap.add_argument("--tasks", default="doc_qa,doc_continuation", help="suite tasks (data/tasks/NAME.jsonl)")
    ap.add_argument("--max-items", type=int, default=20, help="first N items of each task")
    ap.add_argument("--text-generation", action="store_true",
                    help="also ask the base models (import, after CPT) the generation tasks in plain text; by "
                         "default only the chat models are, the way each is used")
    ap.add_argument("--set", action="append", default=[], help="more overrides, e.g. train.dtype=fp32")
    ap.add_argument("--json", type=Path, help="default: WORK/finetune_smol.json")
    args = ap.parse_args()

    work = args.work
    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    src_run = work / "smol"
    if not (src_run / "ckpt").is_dir():
        import_model(args.gguf, src_run)
    walls["import"] = time.perf_counter() - t0
    corpus = held_out_pages(work / "heldout", args.val_bytes)
    tasks = load_tasks([t for t in args.tasks.split(",") if t], args.max_items)
    gen_tasks = [t for t in tasks if t.kind == "generation"]
    text_tasks = tasks if args.text_generation else [t for t in tasks if t.kind != "generation"]
    eval_dir = work / "eval"

    t0 = time.perf_counter()
    (spec,) = find_models(src_run)
    before = scores(evaluate_model(spec, text_tasks, eval_dir=eval_dir, corpus=corpus))
    walls["eval before (text)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = LocalModel(load_bundle(spec.checkpoint), "smol/chat", chat=True)
    before_chat = dict(before)  # bits/byte does not depend on the prompt format; generation tasks do
    for task in gen_tasks:
        r = evaluate_task(task, lm)
        before_chat[task.name] = {"metric": r.metric, "score": r.score, "stderr": r.stderr, "n": r.n,
                                  "chance": r.chance, "mode": r.mode}
    walls["eval before (chat)"] = time.perf_counter() - t0

    steps, warm = args.cpt_steps, max(1, args.cpt_steps // 10)
    preset = apply_overrides(get_preset(args.preset), [
        f"train.init_from={src_run}", f"train.max_steps={steps}", f"train.lr={args.cpt_lr}",
        f"train.warmup_steps={warm}", f"train.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
        "train.grad_accum=1", f"train.eval_every={steps}", f"train.ckpt_every={steps}", "train.eval_batches=4",
        "train.log_every=4", f"sft.max_steps={args.sft_steps}", f"sft.lr={args.sft_lr}",
        f"sft.warmup_steps={max(1, args.sft_steps // 10)}", f"sft.batch_size={args.batch}",
        f"sft.eval_every={args.sft_steps}", f"sft.ckpt_every={args.sft_steps}", "sft.eval_batches=4", *args.set])
    cpt_run = work / "cpt"
    t0 = time.perf_counter()
    cpt = continue_pretraining(preset, cpt_run, progress=False)
    walls["continued pretraining"] = time.perf_counter() - t0
    cpt_info = json.loads((cpt.final_checkpoint / "train_info.json").read_text())
    t0 = time.perf_counter()
    chat = prepare_sft(preset, cpt_run, cpt.final_checkpoint, progress=False)
    walls["sft (docqa data + training)"] = time.perf_counter() - t0
    if chat is None:
        raise SystemExit("no SFT happened (no docqa conversations fit); see the log above")

    after = {}
    for spec in find_models(cpt_run):
        t0 = time.perf_counter()
        after[spec.stage] = scores(evaluate_model(spec, tasks if spec.chat else text_tasks, eval_dir=eval_dir,
                                                  corpus=corpus))
        walls[f"eval after ({spec.stage})"] = time.perf_counter() - t0

    columns = {"import (text)": before, "import (chat)": before_chat, "after CPT (text)": after["base"],
               "after CPT+SFT (chat)": after["sft"]}
    cpt_tokens = cpt.steps * int(cpt_info["tokens_per_step"])
    print(f"\nSmolLM2-135M-Instruct: CPT {cpt.steps} steps × {args.batch}×{args.seq_len} tokens = {cpt_tokens:,} "
          f"tokens at peak lr {args.cpt_lr:g} (autocast {cpt_info.get('autocast')}); SFT {chat.steps} steps × "
          f"{args.batch} rows of ≤{args.seq_len} tokens at lr {args.sft_lr:g}")
    print("| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print(f"| held-out bits/byte ↓ ({before['bytes']:,} B) | "
          + " | ".join(f"{c['bpb']:.3f}" for c in columns.values()) + " |")
    for task in tasks:
        cells = [f"{c[task.name]['score']:.3f} ± {c[task.name]['stderr']:.3f}" if task.name in c else "—"
                 for c in columns.values()]
        first = next(c[task.name] for c in columns.values() if task.name in c)
        print(f"| {task.name} {first['metric']} (n={first['n']}, chance {first['chance']:.3f}) | "
              + " | ".join(cells) + " |")
    print(f"\nCPT held-out (training loop's val batches): loss {cpt.final_val_loss:.3f}, bits/byte "
          f"{cpt.final_val_bpb:.3f}, {cpt.tokens_per_second:.0f} tokens/s; SFT held-out answer loss "
          f"{chat.final_val_loss:.3f} nats/token, {chat.tokens_per_second:.0f} tokens/s")
    print("wall times (a 2-core machine shared with other jobs; these are inflated): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    out = args.json or work / "finetune_smol.json"
    write_json_atomic(out, {
        "settings": vars(args) | {"gguf": str(args.gguf), "work": str(work), "json": str(out)},
        "cpt": {"steps": cpt.steps, "tokens": cpt_tokens, "autocast": cpt_info.get("autocast"),
                "val_loss": cpt.final_val_loss, "val_bpb": cpt.final_val_bpb,
                "tokens_per_second": cpt.tokens_per_second, "checkpoint": str(cpt.final_checkpoint)},
        "sft": {"steps": chat.steps, "val_answer_loss": chat.final_val_loss,
                "tokens_per_second": chat.tokens_per_second, "checkpoint": str(chat.final_checkpoint)},
        "columns": columns, "wall_s": walls})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
