"""Weight-only int8/int4 (homegrown.quant): each layer computes x · Wᵀ of its dequantized weight, the weight is
within half a quantization step of the original, a quantized model decodes as its own forward does and
deterministically, and on the real SmolLM2-135M the logits stay close to fp32 (the bound is stated below)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from homegrown.bundle import load_bundle
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.model import KVCache, Transformer
from homegrown.quant import (
    INT4_GROUP,
    QUANT_KINDS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    check_quantizable,
    quantize_int4,
    quantize_int8,
    quantize_model,
)
from homegrown.serve.batched import forward_rows


def _layer(out_features: int = 48, in_features: int = 64) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=False)


def test_int8_weight_within_half_a_step_and_kernel_matches_dequantized() -> None:
    layer = _layer()
    q, scale = quantize_int8(layer.weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    error = (q.float() * scale[:, None] - layer.weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()
    quant = Int8Linear(q, scale)
    x = torch.randn(3, 5, 64)
    want = x.bfloat16().float() @ quant.dequantized().t()
    got = quant(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)  # bf16 output rounding


def test_int4_weight_within_half_a_step_and_kernel_matches_dequantized() -> None:
    layer = _layer()
    q, scale, zero = quantize_int4(layer.weight)
    assert q.min() >= 0 and q.max() <= 15 and scale.shape == (48, 64 // INT4_GROUP)
    deq = ((q.float().view(48, -1, INT4_GROUP) - 8) * scale[..., None] + zero[..., None]).view(48, 64)
    assert ((deq - layer.weight).abs() <= scale.repeat_interleave(INT4_GROUP, dim=1) / 2 + 1e-6).all()
    quant = Int4Linear(layer)
    # The layer keeps scale and zero in bf16 (the kernel's format), so compare with that dequantization.
    torch.testing.assert_close(quant.dequantized(), deq, atol=2e-3 + 1e-2 * deq.abs().max().item(), rtol=1e-2)
    x = torch.randn(7, 64)
    torch.testing.assert_close(quant(x).float(), x.bfloat16().float() @ quant.dequantized().t(), atol=2e-2,
                               rtol=1e-2)


def test_int8_embedding_rows_are_the_heads_rows() -> None:
    layer = _layer(out_features=40)
    q, scale = quantize_int8(layer.weight)
    table = Int8Embedding(q, scale)
    idx = torch.tensor([[3, 0, 39]])
    torch.testing.assert_close(table(idx).float(), Int8Linear(q, scale).dequantized()[idx], atol=1e-2, rtol=1e-2)


def _tiny(tie: bool = True, **switches) -> Transformer:
    torch.manual_seed(0)
    # d_model 64 / ffn 128: shapes int4 packs (out % 16, in % 32); the vocab of 100 does not, so it stays int8.
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
                      ffn_hidden=128, tie_embeddings=tie, **switches)
    return Transformer(cfg).eval()


@pytest.mark.parametrize(("kind", "tie"), [("int8", True), ("int4", True), ("int4", False)])
def test_quantized_model_decode_matches_its_forward_and_is_deterministic(kind: str, tie: bool) -> None:
    model = quantize_model(_tiny(tie), kind)
    layers = [m for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    assert len(layers) == 2 * 4 + 1
    assert all(isinstance(m, Int4Linear) for m in layers[:-1]) == (kind == "int4")
    assert isinstance(model.embed_tokens, Int8Embedding) and isinstance(model.lm_head, Int8Linear)
    assert (model.lm_head.qweight is model.embed_tokens.qweight) == tie
    assert not any(p.dtype == torch.float32 for p in model.parameters())
    idx = torch.randint(0, 100, (2, 20))
    with torch.inference_mode():
        full = model(idx).float()
        steps = []
        for _ in range(2):
            cache = KVCache.allocate(model.cfg, 2, dtype=torch.bfloat16)
            got = [model.decode(idx[:, :12], cache)]
            got += [model.decode(idx[:, i:i + 1], cache) for i in range(12, 20)]
            steps.append(torch.stack(got, dim=1).float())
    assert torch.equal(steps[0], steps[1])
    torch.testing.assert_close(steps[0], full[:, 11:], atol=3e-2, rtol=0)


SWITCHES = {"qk_norm": {"qk_norm": True}, "relu2": {"mlp": "relu2"}, "logit_softcap": {"logit_softcap": 0.5}}
"""Architecture switches with their own serving arithmetic (q/k norms, the relu² MLP's up_proj, the cap)."""


@pytest.mark.parametrize("kind", QUANT_KINDS)
@pytest.mark.parametrize("switch", SWITCHES)
def test_quantized_switch_models_serve_as_they_decode(kind: str, switch: str) -> None:
    """Only the matmuls are quantized (q/k norm weights stay fp32); decode, the engine's batched pass and forward
    agree."""
    model = _tiny(**SWITCHES[switch])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 2.0)  # norms off their init of ones, so a skipped one would show
    model = quantize_model(model, kind)
    layers = [m for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    assert len(layers) == 2 * 4 + 1  # qkv, o_proj, gate_up or up_proj, down_proj per block; the head
    norms = [p for name, p in model.named_parameters() if name.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(norms) == (4 if switch == "qk_norm" else 0) and all(p.dtype == torch.float32 for p in norms)
    idx = torch.randint(0, 100, (2, 20))
    with torch.inference_mode():
        full = model(idx).float()
        cache = KVCache.allocate(model.cfg, 2, dtype=torch.bfloat16)
        decoded = model.decode(idx, cache).float()
        rows = forward_rows(model, KVCache.allocate(model.cfg, 2, dtype=torch.bfloat16), idx,
                            torch.zeros(2, dtype=torch.long), torch.full((2,), 19)).float()
    torch.testing.assert_close(decoded, full[:, -1], atol=3e-2, rtol=0)
    torch.testing.assert_close(rows, full[:, -1], atol=3e-2, rtol=0)


def test_quantization_is_refused_where_there_is_no_kernel() -> None:
    with pytest.raises(HomegrownError, match="int8 is a CPU path"):
        check_quantizable("int8", torch.device("cuda"))
    with pytest.raises(HomegrownError, match="unknown quantization 'int2'"):
        check_quantizable("int2", torch.device("cpu"))


PROMPTS = ["The capital of France is Paris. It is known for", "def fibonacci(n):\n    if n < 2:\n        return n",
           "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n"]
MEAN_KL = {"int8": 0.05, "int4": 0.05}
"""Bound on KL(fp32 ‖ quantized) per position in nats, averaged. Measured on these prompts: int8 (per-row
scales) ≈0.01, int4 (group 32 — the GGUF's own Q4_1 grid, so nearly exact) ≈0.004; bf16 weights alone ≈0.002."""
CLEAR_MARGIN = 1.0
"""Where fp32's best token leads the second by this many nats, the quantized model must pick it too."""


def test_quantized_smollm2_logits_stay_close_to_fp32(smol_run: Path) -> None:
    ref = load_bundle(smol_run)
    with torch.inference_mode():
        ids = [torch.tensor([ref.encode(prompt)]) for prompt in PROMPTS]
        want = torch.cat([torch.log_softmax(ref.model(idx)[0].float(), dim=-1) for idx in ids])
        del ref
        top2 = want.topk(2, dim=-1)
        sure = top2.values[:, 0] - top2.values[:, 1] > CLEAR_MARGIN
        assert sure.sum() >= 10
        for kind, bound in MEAN_KL.items():
            quant = load_bundle(smol_run, quantize=kind)
            got = torch.cat([torch.log_softmax(quant.model(idx)[0].float(), dim=-1) for idx in ids])
            mean_kl = (want.exp() * (want - got)).sum(dim=-1).mean().item()
            assert mean_kl < bound, (kind, mean_kl)
            assert torch.equal(got.argmax(dim=-1)[sure], top2.indices[sure, 0]), kind
