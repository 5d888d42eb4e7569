"""Quality of a finished run: validation bits-per-byte of the model next to a unigram baseline on the same split.

The unigram model predicts every token from its training-split frequency (add-one smoothed), i.e. what a
model that learned nothing about context would score. Both are measured on the whole validation split with
the same windows and the same bytes-per-token accounting, so the gap is what the transformer learned.

    python benchmarks/quality.py runs/small                 # the pretrained (base) model
    python benchmarks/quality.py runs/small --stage sft     # the chat-tuned one
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from homegrown.data.pack import TokenShards, token_byte_lengths
from homegrown.eval.perplexity import evaluate
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import load_model, resolve_checkpoint


def whole_val_bpb(model: torch.nn.Module, run_dir: Path, seq_len: int) -> float:
    """The model's bits/byte on the run's whole val split (fp32, 16 windows of `seq_len` a batch): the figure
    every issue-16 benchmark (speedrun, ablate) compares."""
    byte_lengths = torch.from_numpy(token_byte_lengths(load_tokenizer(run_dir / "tokenizer.json")))
    _, bpb = evaluate(model, TokenShards(run_dir / "shards", "val"), byte_lengths, 16, seq_len, None,
                      torch.device("cpu"), None)
    return bpb


def unigram_bpb(run_dir: Path, seq_len: int) -> float:
    tok = load_tokenizer(run_dir / "tokenizer.json")
    vocab = tok.get_vocab_size()
    counts = np.ones(vocab, dtype=np.float64)
    for arr in TokenShards(run_dir / "shards", "train").arrays:
        counts += np.bincount(np.asarray(arr), minlength=vocab)[:vocab]
    logp = torch.from_numpy(np.log(counts / counts.sum()))
    byte_lengths = torch.from_numpy(token_byte_lengths(tok))
    nll = 0.0
    nbytes = 0
    for _, y in TokenShards(run_dir / "shards", "val").sequential(16, seq_len):
        nll -= float(logp[y].sum())
        nbytes += int(byte_lengths[y].sum())
    return nll / math.log(2) / nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--stage", choices=["base", "sft"], default="base",
                    help="base: newest RUN/ckpt/step_N (pretraining); sft: newest RUN/sft/ckpt/step_N")
    args = ap.parse_args()
    ckpt = resolve_checkpoint(args.run_dir / ("ckpt" if args.stage == "base" else "sft/ckpt"))
    model = load_model(ckpt)
    seq_len = model.cfg.max_seq_len
    val = TokenShards(args.run_dir / "shards", "val")
    model_bpb = whole_val_bpb(model, args.run_dir, seq_len)
    base = unigram_bpb(args.run_dir, seq_len)
    print(f"checkpoint {ckpt} ({model.num_params():,} params), whole val split: {val.tokens:,} tokens, "
          f"{val.text_bytes:,} bytes")
    print(f"model   val bits/byte {model_bpb:.3f}")
    print(f"unigram val bits/byte {base:.3f}")
    print(f"model/unigram: {model_bpb / base:.2f}x the bits (lower is better)")


if __name__ == "__main__":
    main()
