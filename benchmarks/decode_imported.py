"""Claim: our serving engine decodes the imported SmolLM2-135M ≥ 2× faster than transformers at batch 1, and with
int4 weights ≥ 0.5× llama.cpp on the same GGUF at batch 1 and ahead of it at 16 concurrent requests.

One process, the same number of threads for every side:

* homegrown: the real serving engine (`serve.engine.Engine`, continuous batching, no HTTP) on the checkpoint
  that `homegrown import` makes from the GGUF file, loaded the way `homegrown serve --dtype D` loads it, once per
  `--dtypes` entry: fp32 (the same precision as transformers), bf16 weights, and weight-only int8 / int4
  (`homegrown.quant`; bf16 activations);
* transformers: `generate()` on the same GGUF loaded by its own loader (`from_pretrained(dir, gguf_file=...)`,
  which dequantizes through `gguf` as our importer does) in fp32, or on our `export --format hf` copy when only a
  run directory is given;
* llama.cpp (only with --llama-site or when `llama_cpp` is importable): the GGUF as shipped (Q4_1 layers, Q8_0
  embedding), through llama-cpp-python's `Llama.generate`, which decodes one sequence: its batch-16 figure is 16
  requests served one after another, which is what that binding (and its server) does with them.

Every request is the same chat prompt (QUESTION through the model's template, which asks for a long reply) and
exactly --new-tokens greedy tokens (default 128, the issue's chat reply): the engine gets ignore_eos,
transformers min_new_tokens = max_new_tokens. Batch 16 is 16 requests submitted at once to the engine (timed
until the last finishes) and one `generate()` call on 16 copies of the prompt (same length, so no padding). Time
covers prefill + decode. Each configuration is warmed up once, then all are timed in alternation (--repeats
times, median), so a burst of load from other processes hits every side alike. Each dtype's batch-1 greedy
tokens are compared with transformers' up to the model's end of turn (past it, min_new_tokens forbids the end
token that our ignore_eos lets through). The first line says whether the CPU has AVX-512-BF16 / AMX: bf16
weights are only fast with them; int8/int4 are fast on any AVX2 CPU.

    make smollm2 && PYTHONPATH=src .venv/bin/python benchmarks/decode_imported.py             # ~5 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/decode_imported.py --dtypes fp32,bf16,int8,int4 \
        --llama-site /path/to/llama-venv/lib/python3.11/site-packages
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

from homegrown.bundle import ModelBundle, load_bundle, resolve_precision
from homegrown.config import ServeConfig
from homegrown.export.hf import export_hf
from homegrown.importer import import_model
from homegrown.serve.engine import Delta, Engine, GenerationParams
from homegrown.train.precision import cpu_flags

DTYPES = ("fp32", "bf16", "int8", "int4")
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


def cpu_features() -> str:
    """What decides bf16's speed here: native bf16 dot products (AVX-512-BF16) and AMX tiles, or neither."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return ", ".join(have) or "no AVX2"


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


def llama_cpp_runner(gguf: Path, prompt: list[int], threads: int, n_ctx: int, extra_bufts: bool) -> Runner:
    """llama.cpp's own decode loop through its Python binding: greedy, end-of-text not special-cased.

    Without `extra_bufts` the weights stay in llama.cpp's plain CPU buffers: its AMX repack (an "extra buffer
    type") segfaults in ggml_backend_amx_mul_mat on the AMX Xeon these figures come from (llama-cpp-python
    0.3.36), so by default llama.cpp runs its AVX-512 kernels on the Q4_1 file."""
    import llama_cpp  # an optional side install (--llama-site), never a dependency

    defaults = llama_cpp.llama_model_default_params

    def model_params() -> llama_cpp.llama_model_params:
        params = defaults()
        params.use_extra_bufts = extra_bufts
        return params

    llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = model_params
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False)

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
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per request")
    parser.add_argument("--batch", type=int, default=16, help="concurrent requests for the second measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch / llama.cpp threads (0 = the usable cores)")
    parser.add_argument("--llama-site", type=Path, help="a site-packages holding llama_cpp (an optional side install)")
    parser.add_argument("--llama-extra-bufts", action="store_true",
                        help="let llama.cpp repack weights into its extra (AMX) buffers; it crashed here")
    parser.add_argument("--dtypes", default="fp32,int8,int4",
                        help=f"our engine's weights, comma-separated, among {','.join(DTYPES)} (fp32 always runs)")
    args = parser.parse_args(argv)
    dtypes = list(dict.fromkeys(["fp32", *args.dtypes.split(",")]))
    if any(d not in DTYPES for d in dtypes):
        sys.exit(f"--dtypes: each of {','.join(DTYPES)}, got {args.dtypes}")
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
        print(f"CPU {cpu_name()} ({cpu_features()}); {threads} threads ({os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}); torch {torch.__version__}, transformers {transformers.__version__}")
        print(f"model {run_dir}: {bundle.model.num_params() / 1e6:.0f}M params, {cfg.n_layers} layers, "
              f"d_model {cfg.d_model}, vocab {cfg.vocab_size}; ours {','.join(dtypes)}, transformers fp32; "
              f"prompt {len(prompt)} tokens + "
              f"{args.new_tokens} greedy tokens; median of {args.repeats} "
              f"[loaded at t+{time.perf_counter() - started:.0f}s]", flush=True)

        llama = None
        if args.gguf is None:
            print("llama.cpp: skipped (it needs the GGUF file: pass --gguf)")
        else:
            try:
                llama = llama_cpp_runner(args.gguf, prompt, threads, len(prompt) + args.new_tokens + 8,
                                         args.llama_extra_bufts)
            except ImportError as e:
                if args.llama_site is not None:
                    sys.exit(f"llama_cpp is not importable from {args.llama_site}: {e}")
                print("llama.cpp: skipped (llama_cpp is not importable; pass --llama-site)")

        # The KV cache for what the run needs (`serve --max-model-len`), not 16 × the model's 8,192 tokens.
        serve_cfg = ServeConfig(max_batch=args.batch, max_waiting=2 * args.batch,
                                max_model_len=len(prompt) + args.new_tokens)
        engines = {}
        for dtype in dtypes:
            precision = resolve_precision(dtype, torch.device("cpu"))
            loaded = bundle if dtype == "fp32" else load_bundle(run_dir, "cpu", precision.dtype, precision.quantize)
            engines[dtype] = Engine(loaded, serve_cfg).start()
        try:
            one = measure("decode", {**{name: engine_runner(e, prompt, 1) for name, e in engines.items()},
                                     "transformers": hf_runner(hf, prompt, 1),
                                     **({"llama.cpp": llama} if llama else {})}, 1, args)
            many = measure("decode", {**{name: engine_runner(e, prompt, args.batch) for name, e in engines.items()},
                                      "transformers": hf_runner(hf, prompt, args.batch)}, args.batch, args)
        finally:
            for e in engines.values():
                e.stop(drain=False, timeout=60)

    theirs = one["transformers"][1][0]
    reply = next((i for i, t in enumerate(one["fp32"][1][0]) if t in bundle.stop_ids), args.new_tokens)
    llama_rate = one["llama.cpp"][0] if "llama.cpp" in one else None
    print(f"\ntokens/s; ratios against transformers fp32 generate() and llama.cpp (Q4_1 as shipped; one sequence "
          f"at a time, so its {args.batch}-request figure is its batch-1 rate)")
    print(f"{'ours':>6s} {'batch 1':>9s} {'×HF':>6s} {'×llama':>7s} {f'batch {args.batch}':>9s} {'×HF':>6s} "
          f"{'×llama':>7s}  greedy tokens = transformers'")
    print(f"{'HF':>6s} {one['transformers'][0]:9.1f} {'':>6s} {'':>7s} {many['transformers'][0]:9.1f}")
    if llama_rate:
        print(f"{'llama':>6s} {llama_rate:9.1f} {'':>6s} {'':>7s} {llama_rate:9.1f}")
    for dtype in dtypes:
        a, b = one[dtype][0], many[dtype][0]
        ours = one[dtype][1][0]
        same = next((i for i, (x, y) in enumerate(zip(ours[:reply], theirs, strict=False)) if x != y), reply)
        vs_llama = (f"{a / llama_rate:6.2f}x", f"{b / llama_rate:6.2f}x") if llama_rate else ("-", "-")
        print(f"{dtype:>6s} {a:9.1f} {a / one['transformers'][0]:5.2f}x {vs_llama[0]:>7s} {b:9.1f} "
              f"{b / many['transformers'][0]:5.2f}x {vs_llama[1]:>7s}  {same}/{reply}")
    print(f"reply (fp32): {bundle.tokenizer.decode(one['fp32'][1][0][:reply])!r}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
