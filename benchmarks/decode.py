"""Claim: batch-1 greedy decoding with our KV cache is at least 2× faster than transformers `generate()`.

Both decode the same weights (ours from the checkpoint, transformers from its `export_hf` copy), from the
same prompt, for the same number of new tokens, on the same number of threads, in one process. Each side is
warmed up once, then timed three times in alternation; the median counts. Time covers prefill + decode, as a
user waiting for a reply sees it.

    python benchmarks/decode.py                      # random model of the `small` preset shape
    python benchmarks/decode.py --ckpt runs/demo --new-tokens 200 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from homegrown.config import get_preset
from homegrown.export.hf import export_hf
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer, train_tokenizer
from homegrown.train.checkpoint import load_model, resolve_checkpoint, save_checkpoint

PROMPT = "The history of the printing press begins in the fifteenth century, when movable type"
REPEATS = 3


def random_checkpoint(root: Path) -> Path:
    """A `small`-shaped model with random weights: speed depends on the shape, not on what was learned."""
    tokenizer_path = root / "tokenizer.json"
    train_tokenizer([PROMPT] * 50, 300, tokenizer_path)
    torch.manual_seed(0)
    model = Transformer(get_preset("small").model)
    return save_checkpoint(root / "ckpt", 0, model, tokenizer_path)


def timed(fn: Callable[[], list[int]], new_tokens: int) -> float:
    """Seconds for one call, checking it produced exactly `new_tokens` tokens (else tok/s would mislead)."""
    start = time.perf_counter()
    tokens = fn()
    seconds = time.perf_counter() - start
    if len(tokens) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {len(tokens)}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="run directory or checkpoint (default: random `small` model)")
    parser.add_argument("--new-tokens", type=int, default=200)
    # One thread by default: batch-1 decode of a small model is bound by memory and dispatch, not FLOPs, so more
    # threads barely help, and on a shared machine they make the numbers swing.
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (0 = torch default)")
    args = parser.parse_args(argv)

    # Imported here so that a missing optional dependency fails with its own message after argument parsing.
    from transformers import AutoModelForCausalLM

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = resolve_checkpoint(args.ckpt) if args.ckpt else random_checkpoint(Path(tmp))
        ours = load_model(ckpt).prepare_for_inference()
        hf = AutoModelForCausalLM.from_pretrained(export_hf(ckpt, Path(tmp) / "hf"), dtype=torch.float32).eval()
        cfg = ours.cfg
        prompt = load_tokenizer(ckpt).encode(PROMPT, add_special_tokens=False).ids
        prompt = prompt[: max(1, cfg.max_seq_len - args.new_tokens)]
        n = args.new_tokens

        params = SamplingParams(max_tokens=n, temperature=0)
        input_ids = torch.tensor([prompt])
        mask = torch.ones_like(input_ids)

        def run_ours() -> list[int]:
            return list(stream_tokens(ours, prompt, params))

        def run_hf() -> list[int]:
            out = hf.generate(input_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return out[0, len(prompt):].tolist()

        ours_tokens, hf_tokens = run_ours(), run_hf()  # warm-up, and the outputs to compare
        # Alternate the two so that a burst of load from other processes hits both sides alike.
        ours_times, hf_times = [], []
        for _ in range(REPEATS):
            ours_times.append(timed(run_ours, n))
            hf_times.append(timed(run_hf, n))
        ours_s, hf_s = statistics.median(ours_times), statistics.median(hf_times)

    same = sum(a == b for a, b in zip(ours_tokens, hf_tokens, strict=True))
    print(f"model: d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} "
          f"ffn={cfg.ffn_hidden} vocab={cfg.vocab_size} params={ours.num_params() / 1e6:.1f}M")
    print(f"prompt {len(prompt)} tokens + {n} new, batch 1, greedy, fp32, threads={torch.get_num_threads()}, "
          f"median of {REPEATS}")
    print(f"homegrown stream_tokens : {n / ours_s:8.1f} tok/s")
    print(f"transformers generate   : {n / hf_s:8.1f} tok/s")
    print(f"ratio                   : {hf_s / ours_s:8.2f}x")
    print(f"identical tokens        : {same}/{n} (min_new_tokens makes HF skip end-of-text; ours does not)")


if __name__ == "__main__":
    main()
