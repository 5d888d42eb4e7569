import pytest
import torch
import torch.nn.functional as F

from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.model import KVCache, Transformer, count_params, cross_entropy, linear


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
                                   ffn_hidden=64, **kw)).eval()


def test_param_count_matches_formula():
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                      tie_embeddings=False)
    hd = 32 // 4
    per_layer = 32 * (4 + 2 * 2) * hd + 4 * hd * 32 + 3 * 32 * 64 + 2 * 32
    assert count_params(cfg) == 97 * 32 * 2 + 2 * per_layer + 32
    cfg_tied = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64)
    assert count_params(cfg_tied) == count_params(cfg) - 97 * 32


def test_kv_cache_decode_equals_full_forward():
    model = _model()
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.cfg, 2)
        prefill = model(idx[:, :12], cache=cache)
        chunk = model(idx[:, 12:15], cache=cache)
        steps = [model(idx[:, i:i + 1], cache=cache) for i in range(15, 20)]
    got = torch.cat([prefill, chunk, *steps], dim=1)
    assert cache.pos == 20
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
    model = _model()
    a = torch.randint(0, 97, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 97
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :10], model(b)[:, :10])


def test_cross_entropy_matches_torch_and_masks():
    logits = (torch.randn(6, 11, 97, dtype=torch.float64) * 4).requires_grad_()
    ref_logits = logits.detach().clone().requires_grad_()
    targets = torch.randint(0, 97, (6, 11))
    mask = (torch.rand(6, 11) > 0.4).long()
    ours = cross_entropy(logits, targets, mask)
    ref = (F.cross_entropy(ref_logits.reshape(-1, 97), targets.reshape(-1), reduction="none")
           * mask.reshape(-1)).sum() / mask.sum()
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-5)


def test_cross_entropy_survives_underflowing_target_probability():
    logits = torch.zeros(2, 10)
    logits[0, 0] = 200.0  # target 1 has probability exp(-200) == 0 in float32
    loss = cross_entropy(logits, torch.tensor([1, 1]))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([1, 1])))


def test_untied_and_tied_heads_train_a_step():
    for tie in (True, False):
        model = _model(tie_embeddings=tie).train()
        idx = torch.randint(0, 97, (2, 17))
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        assert (model.lm_head.weight is model.embed_tokens.weight) == tie


def test_decode_path_matches_forward_with_cache():
    """`decode` is the generation fast path; it must compute exactly what `forward` computes."""
    model = _model()
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        model.prepare_for_inference()
        cache = KVCache.allocate(model.cfg, 2)
        got = [model.decode(idx[:, :12], cache)]
        got += [model.decode(idx[:, i:i + 1], cache) for i in range(12, 20)]
    torch.testing.assert_close(torch.stack(got, dim=1), full[:, 11:], atol=1e-5, rtol=1e-5)


def test_bf16_decode_one_row_through_gemv_matches_forward():
    """A one-row bf16 step takes `linear`'s torch.mv route; it must agree with forward's F.linear (bf16 rounding)."""
    model = _model().to(torch.bfloat16)
    idx = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        full = model(idx).float()
        model.prepare_for_inference()
        assert model.layers[0].mlp.gate_up.weight.is_contiguous()  # bf16 stays row-major
        cache = KVCache.allocate(model.cfg, 1, dtype=torch.bfloat16)
        got = [model.decode(idx[:, :12], cache)]
        got += [model.decode(idx[:, i:i + 1], cache) for i in range(12, 20)]
        x, layer = torch.randn(1, 1, 64, dtype=torch.bfloat16), model.layers[0].mlp.down_proj
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(torch.stack(got, dim=1).float(), full[:, 11:], atol=1e-2, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing blocks in backward must change memory, not the gradient."""
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    plain = Transformer(cfg)
    recomputed = Transformer(cfg)
    recomputed.load_state_dict(plain.state_dict())
    recomputed.activation_checkpointing = True
    x = torch.randint(0, 97, (2, 16))
    for model in (plain, recomputed):
        model(x, x).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


SWITCHES = {"qk_norm": {"qk_norm": True}, "zero_init_proj": {"zero_init_proj": True},
            "logit_softcap": {"logit_softcap": 0.5}, "relu2": {"mlp": "relu2"}}
"""Each architecture switch of issue 16 (ModelConfig fields, off by default) on its own."""
NEW_WEIGHTS = {"qk_norm": ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
               "zero_init_proj": ("self_attn.o_proj.weight", "mlp.down_proj.weight"),
               "relu2": ("mlp.up_proj.weight", "mlp.down_proj.weight")}
"""Parameters a switch adds to (or initialises differently in) every block: their gradients must not be zero."""


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_trains_a_step_and_its_weights_get_gradients(switch: str) -> None:
    model = _model(**SWITCHES[switch]).train()
    idx = torch.randint(0, 97, (2, 17))
    loss = model(idx[:, :-1], idx[:, 1:])
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for suffix in NEW_WEIGHTS.get(switch, ()):
        grads = [p.grad for name, p in model.named_parameters() if name.endswith(suffix)]
        assert len(grads) == model.cfg.n_layers and all(g.abs().sum() > 0 for g in grads), suffix


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_decode_and_cached_forward_equal_the_full_forward(switch: str) -> None:
    model = _model(**SWITCHES[switch])
    with torch.no_grad():
        for p in model.parameters():  # norm weights off their init of ones, so a skipped norm would show
            p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.cfg, 2)
        cached = torch.cat([model(idx[:, :12], cache=cache)] + [model(idx[:, i:i + 1], cache=cache)
                                                                for i in range(12, 20)], dim=1)
        model.prepare_for_inference()
        cache = KVCache.allocate(model.cfg, 2)
        got = [model.decode(idx[:, :12], cache)]
        got += [model.decode(idx[:, i:i + 1], cache) for i in range(12, 20)]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(got, dim=1), full[:, 11:], atol=1e-5, rtol=1e-5)


def test_qk_norm_normalises_each_head_before_rope() -> None:
    """q and k heads leave `norm_qk` with RMS 1 times their weight, per head: Qwen3's q_norm / k_norm."""
    attn = _model(qk_norm=True).layers[0].self_attn
    with torch.no_grad():
        attn.q_norm.weight.fill_(2.0)
        out = attn.norm_qk(torch.randn(3, 4 + 2, 5, 8) * 7)
    rms = out.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms[:, :4], torch.full_like(rms[:, :4], 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(rms[:, 4:], torch.ones_like(rms[:, 4:]), atol=1e-4, rtol=0)
    assert set(_model().state_dict()) < set(_model(qk_norm=True).state_dict())


def test_zero_init_proj_starts_every_block_as_the_identity() -> None:
    model = _model(zero_init_proj=True)
    zeroed = [p for name, p in model.named_parameters() if name.endswith(("o_proj.weight", "down_proj.weight"))]
    assert len(zeroed) == 2 * model.cfg.n_layers and all(not p.any() for p in zeroed)
    assert all(p.std() > 0 for name, p in model.named_parameters() if name.endswith(("qkv.weight", "gate_up.weight")))
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model.lm_head(model.norm(model.embed_tokens(idx))))


def test_logit_softcap_bounds_the_logits_the_loss_sees() -> None:
    """c·tanh(logits / c) of the uncapped model's logits, in forward and in the loss; a negative cap is refused."""
    plain, capped = _model(), _model(logit_softcap=0.5)
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        raw, got = plain(idx), capped(idx)
        loss = capped(idx[:, :-1], idx[:, 1:])
    assert raw.abs().max() > 0.5 and got.abs().max() < 0.5
    torch.testing.assert_close(got, 0.5 * torch.tanh(raw / 0.5))
    torch.testing.assert_close(loss, F.cross_entropy(got[:, :-1].reshape(-1, 97), idx[:, 1:].reshape(-1)))
    with pytest.raises(HomegrownError, match="logit_softcap"):
        ModelConfig(logit_softcap=-1.0)


def test_relu2_mlp_has_swiglus_parameter_count_and_computes_relu_squared() -> None:
    swiglu, relu2 = ModelConfig(d_model=192, n_heads=3, n_kv_heads=3), ModelConfig(d_model=192, n_heads=3,
                                                                                    n_kv_heads=3, mlp="relu2")
    assert (swiglu.ffn_hidden, relu2.ffn_hidden) == (512, 768)
    assert count_params(relu2) == count_params(swiglu)
    model = _model(mlp="relu2")
    mlp = model.layers[0].mlp
    assert not hasattr(mlp, "gate_up")
    x = torch.randn(3, 32)
    with torch.no_grad():
        expected = F.relu(x @ mlp.up_proj.weight.T).pow(2) @ mlp.down_proj.weight.T
        torch.testing.assert_close(mlp(x), expected)
    with pytest.raises(HomegrownError, match=r"unknown model\.mlp 'geglu'; choose one of: swiglu, relu2"):
        ModelConfig(mlp="geglu")
