"""Claim: our serving engine decodes the imported SmolLM2-135M at least 2× faster than transformers at batch 1.

Both sides run the same fp32 weights, in one process, on the same number of threads:

* homegrown: the real serving engine (`serve.engine.Engine`, continuous batching, no HTTP) on the checkpoint
  that `homegrown import` makes from the GGUF file, loaded the way `homegrown serve` loads it;
* transformers: `generate()` on the same GGUF loaded by its own loader (`from_pretrained(dir, gguf_file=...)`,
  which dequantizes through `gguf` as our importer does), or on our `export --format hf` copy when only a run
  directory is given;
* with --bf16, our engine again on bf16 weights (a different precision, so a separate row: what lower-precision
  weights buy when decode is bound by reading the weights);
* llama.cpp (optional, only with --llama-site or when `llama_cpp` is importable): the GGUF as shipped, i.e. on
  its Q4_1 weights rather than fp32, batch 1 only (its Python binding decodes one sequence).

Every request is the same chat prompt (QUESTION through the model's template, which asks for a long reply) and
exactly --new-tokens greedy tokens: the engine gets ignore_eos, transformers min_new_tokens = max_new_tokens.
Batch 16 is 16 requests submitted at once to the engine (timed until the last finishes) and one
`generate()` call on 16 copies of the prompt (same length, so no padding). Time covers prefill + decode. Each
configuration is warmed up once, then ours and theirs are timed in alternation (--repeats times, median), so a
burst of load from other processes hits both alike. The batch-1 greedy tokens of ours and transformers are
compared token by token up to the model's end of turn (past it, transformers' min_new_tokens forbids the end
token that our ignore_eos lets through, so the two must part there).

    make smollm2 && PYTHONPATH=src .venv/bin/python benchmarks/decode_imported.py           # ~2-3 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/decode_imported.py --run runs/smol --new-tokens 128 --bf16
    PYTHONPATH=src .venv/bin/python benchmarks/decode_imported.py --llama-site /path/to/site-packages
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from homegrown.bundle import ModelBundle, load_bundle
from homegrown.config import ServeConfig
from homegrown.export.hf import export_hf
from homegrown.importer import import_model
from homegrown.serve.engine import Delta, Engine, GenerationParams

DEFAULT_GGUF = Path.home() / ".cache" / "homegrown" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "Write a short story about a robot who learns to paint."
WARMUP_TOKENS = 16

Runner = Callable[[int], tuple[float, list[list[int]]]]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_runner(engine: Engine, prompt: list[int], batch: int) -> Runner:
    """Submit `batch` requests for the prompt at once; seconds until the last finished, and their tokens."""

    def run(new_tokens: int) -> tuple[float, list[list[int]]]:
        tokens: list[list[int]] = [[] for _ in range(batch)]
        finish: list[tuple[str | None, int]] = [(None, 0)] * batch
        left = [batch]
        lock, done = threading.Lock(), threading.Event()

        def emit_for(request: int) -> Callable[[int, Delta], None]:
            def emit(_: int, delta: Delta) -> None:
                with lock:
                    tokens[request].extend(delta.token_ids)
                    if delta.finish_reason:
                        finish[request] = (delta.finish_reason, delta.completion_tokens)
                        left[0] -= 1
                        if not left[0]:
                            done.set()
            return emit

        start = time.perf_counter()
        for i in range(batch):
            params = GenerationParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
            engine.submit(prompt, [params], emit_for(i))
        if not done.wait(900):
            raise TimeoutError("the engine did not finish within 900 s")
        seconds = time.perf_counter() - start
        if any(f != ("length", new_tokens) or len(t) != new_tokens for f, t in zip(finish, tokens, strict=True)):
            raise RuntimeError(f"expected {new_tokens} tokens per request, got {finish[:3]}")
        return seconds, tokens

    return run


def hf_runner(model: torch.nn.Module, prompt: list[int], batch: int) -> Runner:
    ids = torch.tensor([prompt] * batch)
    mask = torch.ones_like(ids)

    def run(new_tokens: int) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=0)
        seconds = time.perf_counter() - start
        if out.shape[1] - ids.shape[1] != new_tokens:
            raise RuntimeError(f"expected {new_tokens} new tokens, got {out.shape[1] - ids.shape[1]}")
        return seconds, out[:, ids.shape[1]:].tolist()

    return run


def llama_cpp_runner(gguf: Path, prompt: list[int], threads: int, n_ctx: int) -> Runner:
    """llama.cpp's own decode loop through its Python binding: greedy, end-of-text not special-cased."""
    from llama_cpp import Llama  # an optional side install (--llama-site), never a dependency

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False)

    def run(new_tokens: int) -> tuple[float, list[list[int]]]:
        out: list[int] = []
        llm.reset()  # forget the last run's tokens, so that the prompt is computed again as on the other sides
        start = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                break
        return time.perf_counter() - start, [out]

    return run


def load_hf(args: argparse.Namespace, bundle: ModelBundle, tmp: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    if args.gguf is not None:
        source = {"pretrained_model_name_or_path": str(args.gguf.parent), "gguf_file": args.gguf.name}
    else:
        source = {"pretrained_model_name_or_path": str(export_hf(bundle.path, tmp / "hf"))}
    return AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32).eval()


def measure(label: str, runners: dict[str, Runner], batch: int, args: argparse.Namespace
            ) -> dict[str, tuple[float, list[list[int]]]]:
    """Warm every runner up, then time them in alternation; per runner, the median tokens/s and its tokens."""
    for run in runners.values():
        run(WARMUP_TOKENS)
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            seconds, tokens[name] = run(args.new_tokens)
            times[name].append(seconds)
    result = {}
    for name, runs in times.items():
        rate = batch * args.new_tokens / statistics.median(runs)
        result[name] = (rate, tokens[name])
        print(f"  {label} batch {batch:2d} {name:12s} {rate:8.1f} tok/s  (runs {[round(t, 2) for t in runs]} s)",
              flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None,
                        help=f"the GGUF file to import and to give transformers/llama.cpp (default {DEFAULT_GGUF})")
    parser.add_argument("--run", type=Path, help="an already imported run directory (skips the import)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per request")
    parser.add_argument("--batch", type=int, default=16, help="concurrent requests for the second measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch / llama.cpp threads (0 = the usable cores)")
    parser.add_argument("--llama-site", type=Path, help="a site-packages holding llama_cpp (an optional side install)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time our engine with bf16 weights (not the same precision as the others)")
    args = parser.parse_args(argv)
    if args.run is None and args.gguf is None:
        args.gguf = DEFAULT_GGUF
    if args.gguf is not None and not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found; `make smollm2` fetches it")
    if args.llama_site is not None:
        sys.path.insert(0, str(args.llama_site))
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    import transformers

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or import_model(args.gguf, Path(tmp) / "run").run_dir
        bundle = load_bundle(run_dir, torch.device("cpu"), torch.float32)
        hf = load_hf(args, bundle, Path(tmp))
        cfg = bundle.model.cfg
        prompt = bundle.chat_prompt_ids([{"role": "user", "content": QUESTION}])
        print(f"CPU {cpu_name()}; {threads} threads ({os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}); torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"model {run_dir}: {bundle.model.num_params() / 1e6:.0f}M params, {cfg.n_layers} layers, "
              f"d_model {cfg.d_model}, vocab {cfg.vocab_size}; fp32; prompt {len(prompt)} tokens + "
              f"{args.new_tokens} greedy tokens; median of {args.repeats} "
              f"[loaded at t+{time.perf_counter() - started:.0f}s]", flush=True)

        llama = None
        if args.gguf is None:
            print("llama.cpp: skipped (it needs the GGUF file: pass --gguf)")
        else:
            try:
                llama = llama_cpp_runner(args.gguf, prompt, threads, len(prompt) + args.new_tokens + 8)
            except ImportError as e:
                if args.llama_site is not None:
                    sys.exit(f"llama_cpp is not importable from {args.llama_site}: {e}")
                print("llama.cpp: skipped (llama_cpp is not importable; pass --llama-site)")

        # The KV cache for what the run needs (`serve --max-model-len`), not 16 × the model's 8,192 tokens.
        serve_cfg = ServeConfig(max_batch=args.batch, max_waiting=2 * args.batch,
                                max_model_len=len(prompt) + args.new_tokens)
        engines = {"homegrown": Engine(bundle, serve_cfg).start()}
        if args.bf16:
            engines["homegrown bf16"] = Engine(load_bundle(run_dir, torch.device("cpu"), torch.bfloat16),
                                               serve_cfg).start()
        try:
            one = measure("decode", {**{name: engine_runner(e, prompt, 1) for name, e in engines.items()},
                                     "transformers": hf_runner(hf, prompt, 1),
                                     **({"llama.cpp": llama} if llama else {})}, 1, args)
            many = measure("decode", {**{name: engine_runner(e, prompt, args.batch) for name, e in engines.items()},
                                      "transformers": hf_runner(hf, prompt, args.batch)}, args.batch, args)
        finally:
            for e in engines.values():
                e.stop(drain=False, timeout=60)

    ours, theirs = one["homegrown"][1][0], one["transformers"][1][0]
    reply = next((i for i, t in enumerate(ours) if t in bundle.stop_ids), len(ours))
    same = next((i for i, (a, b) in enumerate(zip(ours[:reply], theirs, strict=False)) if a != b), reply)
    print(f"\n{'batch':>5s} {'homegrown':>10s} {'transformers':>13s} {'ours/HF':>8s}   tokens/s")
    for batch, rows in ((1, one), (args.batch, many)):
        ratio = rows["homegrown"][0] / rows["transformers"][0]
        print(f"{batch:5d} {rows['homegrown'][0]:10.1f} {rows['transformers'][0]:13.1f} {ratio:7.2f}x")
    if args.bf16:
        for batch, rows in ((1, one), (args.batch, many)):
            print(f"homegrown bf16 weights batch {batch}: {rows['homegrown bf16'][0]:.1f} tok/s, "
                  f"{rows['homegrown bf16'][0] / rows['transformers'][0]:.2f}x transformers fp32")
        low = one["homegrown bf16"][1][0]
        agree = next((i for i, (a, b) in enumerate(zip(low[:reply], ours, strict=False)) if a != b), reply)
        print(f"greedy batch-1 tokens of bf16 identical to fp32: {agree}/{reply}")
    if "llama.cpp" in one:
        print(f"llama.cpp (Q4_1 weights as shipped) batch 1: {one['llama.cpp'][0]:.1f} tok/s; "
              f"homegrown/llama.cpp {one['homegrown'][0] / one['llama.cpp'][0]:.2f}x")
    print(f"greedy batch-1 tokens identical to transformers: {same}/{reply} (the reply up to its end of turn, "
          f"of {len(ours)} generated)")
    print(f"reply: {bundle.tokenizer.decode(ours[:reply])!r}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
