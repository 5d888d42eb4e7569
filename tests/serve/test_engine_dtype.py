"""The engine with bf16 weights and KV cache (what `ServeConfig.dtype="auto"` picks on CUDA), run on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from homegrown.bundle import Precision, load_bundle, resolve_precision
from homegrown.config import ServeConfig
from homegrown.errors import HomegrownError
from homegrown.serve.engine import Engine, GenerationParams

PROMPTS = ["The quick brown fox", "In the beginning", "def main():\n    return"]
MAX_TOKENS = 12
SAME_PREFIX = 8
"""Greedy tokens that must agree with fp32: the tiny model's top-1/top-2 margins (~0.6 nats) dwarf bf16's error."""


def test_resolve_precision() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ServeConfig().dtype == "auto"
    assert resolve_precision("auto", cpu) == Precision(torch.float32)
    assert resolve_precision("auto", cuda) == Precision(torch.bfloat16)
    assert resolve_precision("bf16", cpu) == Precision(torch.bfloat16)
    assert resolve_precision("fp32", cuda) == Precision(torch.float32)
    assert resolve_precision("int8", cpu) == Precision(None, "int8")
    assert resolve_precision("int4", cpu) == Precision(None, "int4")
    with pytest.raises(HomegrownError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(HomegrownError, match="int4 is a CPU path"):
        resolve_precision("int4", cuda)


def test_bf16_engine_matches_fp32_greedy(engine: Engine, serve_run) -> None:
    """`engine` (the shared fixture) is fp32; a bf16 one on the same checkpoint decodes the same greedy tokens,
    keeps its cache in bf16, and computes logprobs in fp32 from the bf16 logits."""
    bundle = load_bundle(serve_run, torch.device("cpu"), torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bundle.model.parameters())
    bf16 = Engine(bundle, ServeConfig(max_batch=4)).start()
    try:
        assert bf16.cache.k.dtype == bf16.cache.v.dtype == torch.bfloat16
        for prompt in PROMPTS:
            ids = engine.encode(prompt)

            def params() -> list[GenerationParams]:
                return [GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, top_logprobs=3)]

            _, ref_ids, ref_lps, _ = engine.generate(ids, params())[0]
            _, out_ids, lps, reason = bf16.generate(ids, params())[0]
            assert len(out_ids) == MAX_TOKENS if reason == "length" else reason == "stop"
            assert out_ids[:SAME_PREFIX] == ref_ids[:SAME_PREFIX]
            assert len(lps) == len(out_ids)
            for lp in lps:
                assert math.isfinite(lp.logprob) and lp.logprob <= 0
                assert lp.token_id == lp.top[0][0] and lp.logprob == lp.top[0][1]  # greedy = argmax
            assert abs(lps[0].logprob - ref_lps[0].logprob) < 0.05
            # log_softmax of bf16 logits done in bf16 would give bf16 numbers; done in fp32 it almost never does.
            values = [lp.logprob for lp in lps]
            assert any(torch.tensor(v).bfloat16().float().item() != v for v in values)
    finally:
        bf16.stop()
