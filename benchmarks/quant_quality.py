"""Claim: weight-only int8 / int4 (`serve --dtype int8|int4`) cost little quality: bits/byte on held-out text.

The imported SmolLM2-135M (or any run) is scored on the bundled val split's first pages (`--val-bytes`, whole
pages, the same prefix `finetune_smol.py` uses) with `eval.perplexity.evaluate_split`, once per precision, each
loaded as `homegrown serve --dtype D` loads it. fp32 is the reference; the table gives each one's bits/byte and
its difference. Windows of `--seq-len` tokens (the whole 8,192-token context costs minutes per precision on 2
cores for the same ranking).

    make smollm2 && PYTHONPATH=src .venv/bin/python benchmarks/quant_quality.py          # ~3-5 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/quant_quality.py --run runs/smol --val-bytes 100000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from finetune_smol import GGUF, held_out_pages

from homegrown.bundle import load_bundle, resolve_precision
from homegrown.eval.perplexity import evaluate_split
from homegrown.importer import import_model

DTYPES = ("fp32", "bf16", "int8", "int4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="an imported run directory (default: import the SmolLM2 GGUF)")
    ap.add_argument("--val-bytes", type=int, default=20_000, help="held-out text scored (whole pages)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per scored window")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="precisions to score; fp32 always runs")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    dtypes = list(dict.fromkeys(["fp32", *args.dtypes.split(",")]))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or import_model(GGUF, Path(tmp) / "run").run_dir
        corpus = held_out_pages(Path(tmp) / "heldout", args.val_bytes)
        scores = {}
        for dtype in dtypes:
            precision = resolve_precision(dtype, torch.device("cpu"))
            bundle = load_bundle(run, "cpu", precision.dtype, precision.quantize)
            with torch.inference_mode():
                scores[dtype] = evaluate_split(bundle.model, bundle.tokenizer, corpus, seq_len=args.seq_len)
            print(f"  {dtype}: {scores[dtype].bpb:.4f} bits/byte over {scores[dtype].tokens:,} tokens "
                  f"[t+{time.perf_counter() - started:.0f}s]", flush=True)
    ref = scores["fp32"].bpb
    print(f"\n{'weights':>8s} {'bits/byte':>10s} {'vs fp32':>9s}")
    for dtype, score in scores.items():
        print(f"{dtype:>8s} {score.bpb:10.4f} {score.bpb - ref:+9.4f} ({(score.bpb / ref - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
