"""Claim to measure: on one GPU our continuous-batching Engine decodes at least as fast as transformers `generate()`.

A random-weight model of the `gpt2-124m` shape (speed depends on the shape, not on what was learned) is saved
as a homegrown checkpoint and exported with `export_hf`, so both sides run the same weights, in one process:

* homegrown: `serve.engine.Engine` (no HTTP), loaded the way `homegrown serve` loads it, in bf16 and fp32;
  batch 1 (one request) and batch B (B requests submitted at once, timed until the last one finishes);
* transformers: `AutoModelForCausalLM.generate()` on the exported copy, same dtypes, batch 1 and batch B
  (B same-length prompts, so no padding).

Every request is a random prompt of --prompt-len token ids and exactly --new-tokens greedy tokens (random weights
emit end-of-text at random): our engine gets ignore_eos=True and HF gets min_new_tokens = max_new_tokens.
Each configuration is warmed up once, then timed --repeats times (median); time covers prefill + decode, with
torch.cuda.synchronize() on both ends. Peak memory is torch.cuda.max_memory_allocated since that model loaded.

    PYTHONPATH=src python3 benchmarks/gpu_serve.py --out gpu_serve.json     # CUDA, ~2 min on an H100/H200
    python benchmarks/gpu_serve.py --smoke                                 # CPU, tiny shape, end-to-end check
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from homegrown.bundle import load_bundle
from homegrown.config import ModelConfig, ServeConfig, get_preset
from homegrown.export.hf import export_hf
from homegrown.model import Transformer
from homegrown.serve.engine import Delta, Engine, GenerationParams
from homegrown.tokenizer import train_tokenizer
from homegrown.train.checkpoint import save_checkpoint

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SMOKE_MODEL = ModelConfig(vocab_size=50304, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=128,
                          max_seq_len=128)
TOKENIZER_TEXT = "The history of the printing press begins in the fifteenth century, when movable type"
WARMUP_TOKENS = 32


def random_checkpoint(root: Path, cfg: ModelConfig) -> Path:
    """Random weights of shape `cfg` with a tiny tokenizer (prompts are random ids; ids past it decode to '')."""
    tokenizer_path = root / "tokenizer.json"
    train_tokenizer([TOKENIZER_TEXT] * 50, 300, tokenizer_path)
    torch.manual_seed(0)
    return save_checkpoint(root / "ckpt", 0, Transformer(cfg), tokenizer_path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Collector:
    """Gathers the engine's deltas for a set of requests and signals when the last one has finished."""

    def __init__(self, n: int) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finish: list[tuple[str, int] | None] = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def emit_for(self, request: int) -> Callable[[int, Delta], None]:
        def emit(_: int, delta: Delta) -> None:
            with self.lock:
                self.tokens[request].extend(delta.token_ids)
                if delta.finish_reason:
                    self.finish[request] = (delta.finish_reason, delta.completion_tokens)
                    self.left -= 1
                    if not self.left:
                        self.done.set()
        return emit


def run_engine(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    """Submit every prompt as its own request, wait for all; seconds and each request's tokens."""
    col = Collector(len(prompts))
    sync(engine.device)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        params = GenerationParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        engine.submit(prompt, [params], col.emit_for(i))
    if not col.done.wait(600):
        raise TimeoutError("engine did not finish within 600 s")
    sync(engine.device)
    seconds = time.perf_counter() - start
    bad = [f for f, t in zip(col.finish, col.tokens, strict=True)
           if f != ("length", new_tokens) or len(t) != new_tokens]
    if bad:
        raise RuntimeError(f"expected {new_tokens} tokens per request, got {bad[:3]}")
    return seconds, col.tokens


def run_hf(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    mask = torch.ones_like(prompts)
    sync(prompts.device)
    start = time.perf_counter()
    out = model.generate(prompts, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False)
    sync(prompts.device)
    seconds = time.perf_counter() - start
    if out.shape[1] - prompts.shape[1] != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {out.shape[1] - prompts.shape[1]}")
    return seconds, out[:, prompts.shape[1]:].tolist()


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.rows: list[dict] = []
        self.first_tokens: dict[tuple[str, str], list[int]] = {}
        self.started = time.perf_counter()

    def measure(self, impl: str, dtype: str, batch: int, fn: Callable[[int], tuple[float, list[list[int]]]]) -> None:
        """Warm up (short), then time up to --repeats full runs (fewer once --max-seconds has passed)."""
        n = self.args.new_tokens
        fn(min(n, WARMUP_TOKENS))
        times = []
        for _ in range(self.args.repeats):
            seconds, tokens = fn(n)
            times.append(seconds)
            if time.perf_counter() - self.started > self.args.max_seconds:
                break
        if batch == 1:
            self.first_tokens[(impl, dtype)] = tokens[0]
        median = statistics.median(times)
        row = {"impl": impl, "dtype": dtype, "batch": batch, "new_tokens": n, "prompt_tokens": self.args.prompt_len,
               "tokens_per_s": batch * n / median, "seconds_median": median, "seconds": times,
               "ms_per_step": 1000 * median / n, "peak_mem_gib": peak_gib(self.device)}
        self.rows.append(row)
        mem = f"{row['peak_mem_gib']:.2f} GiB" if row["peak_mem_gib"] is not None else "-"
        print(f"  {impl:12s} {dtype:4s} batch {batch:3d}: {row['tokens_per_s']:10.1f} tok/s "
              f"({row['ms_per_step']:.2f} ms/step, runs {[round(t, 3) for t in times]}, peak {mem}) "
              f"[t+{time.perf_counter() - self.started:.0f}s]", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape and few tokens; runs on CPU")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated, of: bf16, fp32")
    parser.add_argument("--batch", type=int, help="concurrent requests (default 64; smoke 4)")
    parser.add_argument("--new-tokens", type=int, help="tokens per request (default 256; smoke 8)")
    parser.add_argument("--prompt-len", type=int, help="random prompt ids per request (default 32; smoke 8)")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration, median (default 3; smoke 1)")
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="after this long, each remaining configuration is timed once")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs only)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (4 if args.smoke else 64)
    args.new_tokens = args.new_tokens or (8 if args.smoke else 256)
    args.prompt_len = args.prompt_len or (8 if args.smoke else 32)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if unknown := [d for d in dtypes if d not in DTYPES]:
        parser.error(f"unknown dtypes {unknown}; use bf16, fp32")

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    else:
        sys.exit("no CUDA device; run with --smoke for a CPU check")
    cfg = SMOKE_MODEL if args.smoke else get_preset("gpt2-124m").model
    if args.prompt_len + args.new_tokens > cfg.max_seq_len:
        parser.error(f"prompt + new tokens exceed the model's {cfg.max_seq_len}")

    import transformers
    from transformers import AutoModelForCausalLM

    bench = Bench(args, device)
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len), generator=gen)
    prompts = prompt_ids.tolist()
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads() if device.type == "cpu" else None}
    print(f"{env['device']}: torch {env['torch']}, transformers {env['transformers']}; "
          f"d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} vocab={cfg.vocab_size}; "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens, greedy, batch 1 and {args.batch}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint(Path(tmp), cfg)
        hf_dir = None if args.no_hf else export_hf(ckpt, Path(tmp) / "hf")
        print(f"checkpoint and export ready [t+{time.perf_counter() - bench.started:.0f}s]", flush=True)
        for name in dtypes:
            dtype = DTYPES[name]
            reset_peak(device)
            engine = Engine(load_bundle(ckpt, device, dtype),
                            ServeConfig(max_batch=args.batch, max_waiting=2 * args.batch)).start()
            try:
                for batch in (1, args.batch):
                    bench.measure("homegrown", name, batch, partial(run_engine, engine, prompts[:batch]))
            finally:
                engine.stop(drain=False, timeout=60)
            del engine
            if hf_dir is None:
                continue
            reset_peak(device)
            try:
                hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
            except TypeError:  # transformers < 4.56 calls it torch_dtype
                hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=dtype)
            hf = hf.to(device=device, dtype=dtype).eval()
            ids = prompt_ids.to(device)
            for batch in (1, args.batch):
                bench.measure("transformers", name, batch, partial(run_hf, hf, ids[:batch]))
            del hf, ids

    rows = bench.rows
    by_key = {(r["impl"], r["dtype"], r["batch"]): r for r in rows}
    for r in rows:
        peer = by_key.get(("transformers", r["dtype"], r["batch"]))
        r["ratio_vs_transformers"] = r["tokens_per_s"] / peer["tokens_per_s"] if peer else None
    agreement = {}
    for name in dtypes:
        ours, theirs = bench.first_tokens.get(("homegrown", name)), bench.first_tokens.get(("transformers", name))
        if ours and theirs:
            agreement[name] = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), len(ours))

    print(f"\n{'config':32s} {'tokens/s':>12s} {'ms/step':>9s} {'peak GiB':>9s} {'ours/HF':>8s}")
    for r in rows:
        label = f"{r['impl']} {r['dtype']} batch {r['batch']}"
        mem = f"{r['peak_mem_gib']:9.2f}" if r["peak_mem_gib"] is not None else f"{'-':>9s}"
        ratio = f"{r['ratio_vs_transformers']:7.2f}x" if r["impl"] == "homegrown" and r["ratio_vs_transformers"] \
            else f"{'':8s}"
        print(f"{label:32s} {r['tokens_per_s']:12.1f} {r['ms_per_step']:9.2f} {mem} {ratio}")
    if agreement:
        print("greedy batch-1 tokens identical to transformers before the first difference: "
              + ", ".join(f"{k} {v}/{args.new_tokens}" for k, v in agreement.items())
              + " (random weights: near-tied logits, so kernels' rounding decides early)")
    total = time.perf_counter() - bench.started
    print(f"total {total:.0f} s")
    if args.out:
        result = {"env": env, "model": {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads",
                                                                        "n_kv_heads", "ffn_hidden", "max_seq_len")},
                  "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "rows": rows, "greedy_agreement_batch1": agreement, "total_seconds": total}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
