"""Claim: structured output costs little per token — the grammar's mask is a small fraction of a decode step.

Two measurements per model, in one process, on the same weights:

* mask cost in isolation: a `serve.constrain.Matcher` walked through a structured schema (objects, integers,
  enums, booleans, strings) by sampling among the allowed tokens from random logits — per token, milliseconds
  to compute llguidance's mask and apply it to the logits (`Matcher.mask`, what the engine calls per
  constrained row), and to advance the matcher;
* decode tokens/s of the real serving engine (`serve.engine.Engine`, no HTTP), constrained vs free, timed in
  alternation (--repeats, median) at batch 1 and --batch: every request generates exactly --new-tokens tokens —
  the free ones with ignore_eos, the constrained ones under a schema that cannot be complete that soon (an
  array with minItems 1000 of small objects, so the mask keeps switching between keys, numbers, enums) —
  so both sides do the same number of forward passes and the ratio is the mask's cost.

Models: the `small` run (`make run`, vocabulary 4,096) and SmolLM2-135M-Instruct (vocabulary 49,152, imported
from the cached GGUF when --smol is not a run directory). The mask's cost grows with the vocabulary; the
forward pass's with the model, so the two make the range.

    PYTHONPATH=src .venv/bin/python benchmarks/constrained_decode.py                 # ~2 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/constrained_decode.py --run runs/small --smol runs/smol --new-tokens 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from homegrown.bundle import ModelBundle, load_bundle
from homegrown.config import ServeConfig
from homegrown.importer import import_model
from homegrown.serve.constrain import ConstraintSpec
from homegrown.serve.engine import Delta, Engine, GenerationParams

DEFAULT_GGUF = Path.home() / ".cache" / "homegrown" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [{"role": "user", "content": "List the items in the warehouse as JSON."}]
ITEM = {"type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 100000},
                       "color": {"enum": ["red", "green", "blue", "yellow"]},
                       "in_stock": {"type": "boolean"},
                       "label": {"type": "string", "maxLength": 12}},
        "required": ["id", "color", "in_stock", "label"], "additionalProperties": False}
LONG = {"type": "array", "items": ITEM, "minItems": 1000}
"""Never complete within a benchmark's token budget: constrained requests run to max_tokens like free ones."""


def mask_cost(engine: Engine, tokens: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per token (median, and p95) to compute the grammar's mask and apply it to (1, V) logits —
    what the engine does per constrained row per step — and to advance the matcher; random logits."""
    generator = torch.Generator().manual_seed(seed)
    vocab = engine.model.cfg.vocab_size
    matcher = engine.grammars.matcher(ConstraintSpec.json_schema(LONG))
    mask_s, advance_s = [], []
    for _ in range(tokens):
        logits = torch.randn(1, vocab, generator=generator)
        t0 = time.perf_counter()
        masked = matcher.mask(logits)
        t1 = time.perf_counter()
        token = int(torch.multinomial(torch.softmax(masked, -1), 1, generator=generator))
        t2 = time.perf_counter()
        matcher.advance(token)
        t3 = time.perf_counter()
        mask_s.append(t1 - t0)
        advance_s.append(t3 - t2)
    ms = 1e3
    return {"mask": statistics.median(mask_s) * ms, "mask_p95": sorted(mask_s)[int(0.95 * len(mask_s))] * ms,
            "advance": statistics.median(advance_s) * ms}


def timed_batch(engine: Engine, prompt: list[int], params: list[GenerationParams]) -> tuple[float, int]:
    """Seconds until every request finished, and the tokens they generated (each request its own submit)."""
    left, count, reasons = [len(params)], [0], set()
    lock, done = threading.Lock(), threading.Event()

    def emit(_: int, delta: Delta) -> None:
        with lock:
            if delta.finish_reason:
                reasons.add(delta.finish_reason)
                count[0] += delta.completion_tokens
                left[0] -= 1
                if not left[0]:
                    done.set()

    start = time.perf_counter()
    for p in params:
        engine.submit(prompt, [p], emit)
    if not done.wait(600):
        raise TimeoutError("the batch did not finish in 10 minutes")
    seconds = time.perf_counter() - start
    if reasons != {"length"}:
        raise RuntimeError(f"requests ended with {sorted(reasons)}, not all at max_tokens")
    return seconds, count[0]


def decode_rates(engine: Engine, bundle: ModelBundle, batch: int, new_tokens: int, repeats: int
                 ) -> tuple[float, float]:
    """Median tokens/s, free and constrained, timed in alternation."""
    prompt = bundle.chat_prompt_ids(PROMPT)
    spec = ConstraintSpec.json_schema(LONG)

    def params(constrained: bool) -> list[GenerationParams]:
        return [GenerationParams(max_tokens=new_tokens, temperature=0.7, seed=i, ignore_eos=not constrained,
                                 constraint=spec if constrained else None) for i in range(batch)]

    for constrained in (False, True):  # warm-up (and the grammar compiled once, as a server would)
        timed_batch(engine, prompt, params(constrained)[:1])
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for constrained in (False, True):
            seconds, tokens = timed_batch(engine, prompt, params(constrained))
            rates[constrained].append(tokens / seconds)
    return statistics.median(rates[False]), statistics.median(rates[True])


def bench(name: str, bundle: ModelBundle, args: argparse.Namespace) -> None:
    max_len = min(args.max_model_len, bundle.model.cfg.max_seq_len)
    engine = Engine(bundle, ServeConfig(max_batch=max(args.batch, 1), max_model_len=max_len)).start()
    try:
        t0 = time.perf_counter()
        engine.grammars.check(ConstraintSpec.json_schema(LONG))
        setup = time.perf_counter() - t0
        cost = mask_cost(engine, args.mask_tokens)
        print(f"{name}: vocab {bundle.model.cfg.vocab_size:,}; tokenizer index + first compile {setup * 1e3:.0f} ms; "
              f"per token: mask computed + applied {cost['mask']:.3f} ms (p95 {cost['mask_p95']:.3f}), "
              f"advance {cost['advance']:.3f} ms", flush=True)
        for batch in sorted({1, args.batch}):
            free, constrained = decode_rates(engine, bundle, batch, args.new_tokens, args.repeats)
            # Every token of the batch is constrained, so the extra time per token is the difference of 1/rate.
            per_token = (1 / constrained - 1 / free) * 1e3
            print(f"{name}: batch {batch}: free {free:.1f} tok/s, constrained {constrained:.1f} tok/s, "
                  f"ratio {constrained / free:.3f} ({per_token:+.3f} ms per constrained token)", flush=True)
    finally:
        engine.stop(drain=False, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/small"), help="our model (a run directory)")
    parser.add_argument("--smol", type=Path, default=Path("runs/smol"),
                        help="SmolLM2 run directory; imported from --gguf into a temporary one if absent")
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mask-tokens", type=int, default=400)
    parser.add_argument("--max-model-len", type=int, default=512, help="KV cache per slot (at most the context)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.new_tokens} new tokens, "
          f"median of {args.repeats}", flush=True)
    if args.run.exists():
        bench(args.run.name, load_bundle(args.run), args)
    else:
        print(f"skipping our model: {args.run} does not exist (make run)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        smol = args.smol
        if not smol.exists():
            smol = import_model(args.gguf, Path(tmp) / "smol").run_dir
        bench("smollm2", load_bundle(smol), args)


if __name__ == "__main__":
    main()
