"""Muon with fp32 Newton–Schulz (homegrown.train.muon) against a reference SVD and against torch.optim.Muon."""

import json

import pytest
import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.train.loop import build_optimizer, train
from homegrown.train.muon import NS_COEFFICIENTS, NS_STEPS, Muon, newton_schulz

# The quintic p(x) = a·x + b·x³ + c·x⁵ peaks at p(0.5545) = 1.2025 and dips to p(1.0501) = 0.6817 on [0, 1.21]:
# once a singular value is in [0.6817, 1.2025] it stays there, which is all Muon asks (not exactly 1).
LOW, HIGH = 0.68, 1.21


def _matrix(rows, cols, seed):
    """A matrix with known singular vectors and values in [0.1, 1] (condition number 10)."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=torch.float64))
    return (u @ torch.diag(torch.linspace(0.1, 1, k, dtype=torch.float64)) @ v.T).float()


def _quintic(x):
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        x = a * x + b * x**3 + c * x**5
    return x


@pytest.mark.parametrize("shape", [(16, 32), (48, 16), (64, 64), (24, 96)])
def test_newton_schulz_orthogonalises_like_the_svd(shape):
    g = _matrix(*shape, seed=sum(shape))
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)  # the reference
    out = newton_schulz(g).double()
    assert out.dtype == torch.float64 and out.shape == g.shape
    core = u.T @ out @ vh.T  # = diag(p⁵(s/‖G‖_F)) exactly when the singular vectors are the SVD's
    assert torch.allclose(core, torch.diag(torch.diagonal(core)), atol=1e-5)
    assert torch.allclose(torch.diagonal(core), _quintic(s / g.double().norm()), atol=1e-4)
    values = torch.linalg.svdvals(out)
    assert float(values.min()) >= LOW and float(values.max()) <= HIGH
    polar = u @ vh
    assert float((out - polar).norm() / polar.norm()) < 0.25  # near U Vᵀ, not equal: the quintic trades that off


def _pair(ours_dtype):
    torch.manual_seed(0)
    weights = [torch.randn(48, 32), torch.randn(32, 80)]
    a = [torch.nn.Parameter(w.clone()) for w in weights]
    b = [torch.nn.Parameter(w.clone()) for w in weights]
    ours = Muon(a, lr=0.02, weight_decay=0.1, ns_dtype=ours_dtype)
    theirs = torch.optim.Muon(b, lr=0.02, weight_decay=0.1)
    for step in range(3):
        grads = [torch.randn(w.shape, generator=torch.Generator().manual_seed(step * 7 + i))
                 for i, w in enumerate(weights)]
        for p, q, grad in zip(a, b, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    return a, b


def test_bf16_mode_matches_torch_muon():
    """Same algorithm as PyTorch's (momentum, Nesterov, decay, sqrt(max(1, rows/cols)) scaling, bf16 NS). Ours
    stacks the matrices (a tall one transposed into a contiguous batch), so bf16 GEMMs may round differently:
    agreement to well inside bf16's rounding of the ~0.02-sized update (2⁻⁸ relative ≈ 1e-4)."""
    for p, q in zip(*_pair(torch.bfloat16), strict=True):
        assert torch.allclose(p, q, atol=5e-5)


def test_stacked_newton_schulz_is_each_matrix_on_its_own():
    """The batched iteration the optimizer runs equals the one-matrix iteration, matrix by matrix, in fp32 —
    also when the stacked matrices differ in scale by 1000× (each is normalised by its own norm)."""
    mats = [_matrix(24, 40, seed) * scale for seed, scale in ((1, 1.0), (2, 1e-3), (3, 30.0))]
    stacked = newton_schulz(torch.stack(mats))
    for m, out in zip(mats, stacked, strict=True):
        assert torch.allclose(out, newton_schulz(m), atol=1e-6)
    tall = newton_schulz(torch.stack([m.T for m in mats]))
    assert tall.shape == (3, 40, 24) and torch.allclose(tall, stacked.mT, atol=1e-6)


def test_fp32_mode_is_torch_muon_up_to_bf16_rounding():
    for p, q in zip(*_pair(torch.float32), strict=True):
        moved = (q.detach() - p.detach()).abs().max()
        assert 0 < moved < 2e-3  # differs (fp32 vs bf16 NS) by bf16's rounding of a ~0.02-sized update


def test_row_splits_orthogonalise_each_part_on_its_own():
    """A fused [q; k; v] matrix updates exactly as three separate matrices would (own NS, own scale)."""
    torch.manual_seed(1)
    parts = [torch.randn(32, 16), torch.randn(8, 16), torch.randn(40, 16)]
    grads = [torch.randn_like(w) for w in parts]
    fused = torch.nn.Parameter(torch.cat(parts))
    fused.grad = torch.cat(grads)
    Muon([{"params": [fused], "row_splits": [32, 8, 40]}], lr=0.02).step()
    separate = [torch.nn.Parameter(w.clone()) for w in parts]
    for p, grad in zip(separate, grads, strict=True):
        p.grad = grad
    Muon(separate, lr=0.02).step()
    assert torch.allclose(fused.detach(), torch.cat([p.detach() for p in separate]), atol=1e-6)
    with pytest.raises(ValueError, match="do not add up"):
        Muon([{"params": [fused], "row_splits": [32, 8]}])


def test_build_optimizer_splits_our_fused_weights():
    preset = apply_overrides(get_preset("tiny"), ["train.optimizer=muon"])
    _, muon = build_optimizer(Transformer(preset.model), preset.train, fused=False)
    cfg = preset.model
    splits = sorted(tuple(g["row_splits"]) for g in muon.param_groups)
    kv = cfg.n_kv_heads * cfg.head_dim
    assert splits == sorted([(), (cfg.ffn_hidden, cfg.ffn_hidden), (cfg.n_heads * cfg.head_dim, kv, kv)])
    assert muon.ns_dtype == torch.float32, "auto is fp32 on a CPU"
    bf16 = apply_overrides(preset, ["train.muon_ns_dtype=bf16"])
    assert build_optimizer(Transformer(bf16.model), bf16.train, fused=False)[1].ns_dtype == torch.bfloat16
    wrong = apply_overrides(preset, ["train.muon_ns_dtype=fp8"])
    with pytest.raises(HomegrownError, match="muon_ns_dtype must be auto, fp32 or bf16"):
        build_optimizer(Transformer(wrong.model), wrong.train, fused=False)


def test_muon_run_resumes_with_identical_losses(tiny_run, tmp_path):
    """The optimizer state (momentum per matrix, row_splits per group) round-trips through the checkpoint."""
    settings = ["train.threads=1", "train.dtype=fp32", "train.optimizer=muon", "train.ckpt_every=6",
                "train.eval_every=100", "train.keep_checkpoints=0"]
    losses = {}
    for name, steps in (("straight", 12), ("resumed", 6), ("resumed", 12)):
        preset = apply_overrides(get_preset("tiny"), [*settings, f"train.max_steps={steps}"])
        train(preset.model, preset.train, tiny_run / "shards", tmp_path / name, tiny_run / "tokenizer.json",
              progress=False)
        losses[name] = [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["resumed"]) == 12 and losses["resumed"] == losses["straight"]


def test_chunked_steps_equal_one_stack(monkeypatch):
    """Taking matrices in chunks (what bounds the step's memory on big models) changes no number: with a chunk
    limit of one element every matrix is its own chunk, and the update equals the one-stack step's."""
    from homegrown.train import muon as muon_module

    torch.manual_seed(3)
    shapes = [(48, 16), (16, 48), (48, 16), (80, 16)]
    weights = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(2)]

    def run():
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = Muon([{"params": params[:3]}, {"params": params[3:], "row_splits": [32, 8, 40]}], lr=0.02,
                   weight_decay=0.1)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        return params

    together = run()
    monkeypatch.setattr(muon_module, "STACK_ELEMENTS", 1)
    for a, b in zip(together, run(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
