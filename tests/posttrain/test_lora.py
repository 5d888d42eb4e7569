"""LoRA adapters: peft's semantics on the exported model, same logits merged and unmerged, adapter-only checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from homegrown.config import LoRAConfig, ModelConfig, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.export.hf import export_hf
from homegrown.model import Transformer
from homegrown.posttrain import lora
from homegrown.posttrain.docqa import build_docqa
from homegrown.posttrain.sft import sft
from homegrown.train.checkpoint import consolidate, load_model, resolve_checkpoint

TINY = ["train.threads=1", "train.dtype=fp32"]


def _adapted(base_ckpt, cfg: LoRAConfig, seed: int = 0):
    """The base model with adapters whose B is random too (fresh adapters are exactly zero: nothing to check)."""
    model = load_model(base_ckpt)
    lora.attach(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def test_fresh_adapters_leave_the_model_unchanged_and_only_adapters_train(tiny_base):
    ckpt = resolve_checkpoint(tiny_base / "ckpt")
    plain, model = load_model(ckpt).eval(), load_model(ckpt)
    adapted = lora.attach(model, LoRAConfig(rank=4, targets="q_proj,v_proj,down_proj"))
    assert adapted == [f"layers.{i}.{m}" for i in range(2) for m in ("self_attn.qkv", "mlp.down_proj")]
    ids = torch.randint(0, plain.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.eval()(ids), plain(ids))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(lora.is_adapter_key(n) for n in trainable)
    assert {n.rsplit(".", 1)[1] for n in trainable} == {"q_proj", "v_proj", "down_proj"}


def test_merged_weights_give_the_adapted_logits(tiny_base):
    ckpt = resolve_checkpoint(tiny_base / "ckpt")
    cfg = LoRAConfig(rank=4, alpha=8)
    model = _adapted(ckpt, cfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    merged = load_model(ckpt)
    merged.load_state_dict(lora.merge_state(state, lora.adapter_state(state), model.cfg, cfg))
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), model(ids), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(load_model(ckpt).eval()(ids), model(ids), atol=1e-3)  # the adapters do something


def test_adapters_mean_what_peft_means_on_the_exported_model(tiny_base, tmp_path):
    """Our A and B copied into peft's LoRA modules of the transformers export give the same logits, so rank, alpha
    scaling and the split of our fused qkv / gate_up into q/k/v and gate/up are peft's."""
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    ckpt = resolve_checkpoint(tiny_base / "ckpt")
    cfg = LoRAConfig(rank=4, alpha=12, targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    model = _adapted(ckpt, cfg)
    hf = AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf"), dtype=torch.float32)
    peft_model = get_peft_model(hf, PeftConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                               target_modules=lora.parse_targets(cfg.targets)))
    theirs = dict(peft_model.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not lora.is_adapter_key(name):
                continue
            prefix, kind_part = name.split(".lora_")
            kind, part = kind_part.split(".")
            layer = prefix.split(".")[1]
            group = "self_attn" if part.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            theirs[f"base_model.model.model.layers.{layer}.{group}.{part}.lora_{kind}.default.weight"].copy_(p)
            copied += 1
    assert copied == 2 * 7 * model.cfg.n_layers
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), peft_model.eval()(ids).logits, rtol=1e-4, atol=1e-4)


def test_lora_sft_checkpoints_adapters_resumes_and_merges(tiny_base, tmp_path):
    data = build_docqa(tiny_base / "corpus", tmp_path / "chat", get_preset("tiny").sft)
    settings = [*TINY, "sft.eval_every=4", "sft.ckpt_every=4"]
    cfg = LoRAConfig(rank=4, alpha=8)
    out = tmp_path / "run"
    first = apply_overrides(get_preset("tiny"), [*settings, "sft.max_steps=4", "sft.lr=1e-2", "sft.ckpt_every=2"])
    sft(tiny_base, data / "train.jsonl", out, first.sft, first.train, val=data / "val.jsonl", progress=False,
        lora=cfg)
    step4 = out / "sft" / "ckpt" / "step_4"
    adapter = load_file(str(step4 / lora.ADAPTER_WEIGHTS))
    assert adapter and all(lora.is_adapter_key(k) for k in adapter)
    assert json.loads((step4 / lora.ADAPTER_CONFIG).read_text())["rank"] == 4
    assert not (out / "sft" / "ckpt" / "step_2" / "model.safetensors").exists()  # intermediate: adapters only
    assert (step4 / "model.safetensors").exists()  # the last one also holds the merged weights
    step2 = out / "sft" / "ckpt" / "step_2"
    consolidate(step2)  # base + adapters merged on demand, for serving an intermediate checkpoint
    assert not torch.equal(load_file(str(step2 / "model.safetensors"))["layers.1.mlp.down_proj.weight"],
                           load_file(str(step4 / "model.safetensors"))["layers.1.mlp.down_proj.weight"])

    more = apply_overrides(get_preset("tiny"), [*settings, "sft.max_steps=8", "sft.lr=1e-2"])
    result = sft(tiny_base, data / "train.jsonl", out, more.sft, more.train, val=data / "val.jsonl",
                 progress=False, lora=cfg)
    assert result.final_checkpoint.name == "step_8"
    lines = [json.loads(x) for x in (out / "metrics_sft.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 9))

    base = load_file(str(resolve_checkpoint(tiny_base / "ckpt") / "model.safetensors"))
    merged = load_file(str(result.final_checkpoint / "model.safetensors"))
    assert torch.equal(merged["embed_tokens.weight"], base["embed_tokens.weight"])  # frozen
    assert not torch.equal(merged["layers.0.self_attn.qkv.weight"], base["layers.0.self_attn.qkv.weight"])
    adapted = load_model(resolve_checkpoint(tiny_base / "ckpt"))
    lora.attach(adapted, cfg)
    adapted.load_state_dict(load_file(str(result.final_checkpoint / lora.ADAPTER_WEIGHTS)), strict=False)
    ids = torch.randint(0, adapted.cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(load_model(result.final_checkpoint).eval()(ids), adapted.eval()(ids),
                                   rtol=1e-5, atol=1e-5)


def test_unknown_targets_are_refused_by_name():
    with pytest.raises(HomegrownError, match="qkv"):
        lora.parse_targets("q_proj,qkv")


@pytest.mark.parametrize("command,line", [
    ("sft", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    ("dpo", {"prompt": "hi", "chosen": "hello", "rejected": "go away"}),
])
def test_lora_options_reach_both_training_commands(tiny_base, tmp_path, command: str, line: dict):
    """sft and dpo take the same --lora-* options (one definition in cli.py): a bad target given on either
    command line is refused by name, so the options reached its LoRA settings. In process (typer's runner): the
    console script itself is run by test_dpo_cli_with_lora."""
    from typer.testing import CliRunner

    from homegrown.cli import app

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(line) + "\n")
    done = CliRunner().invoke(app, [command, str(tiny_base), "--data", str(data), "--out", str(tmp_path / "run"),
                                    "--preset", "tiny", "--lora-rank", "2", "--lora-alpha", "4",
                                    "--lora-targets", "q_proj,qkv", *(f"--set={s}" for s in TINY)])
    assert isinstance(done.exception, HomegrownError) and "qkv" in str(done.exception), done.output


def test_relu2_mlp_takes_adapters_on_up_and_down_and_refuses_a_gate():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, mlp="relu2")
    with pytest.raises(HomegrownError, match=r"gate_proj.*relu2"):
        lora.attach(Transformer(cfg), LoRAConfig(rank=4))
    settings = LoRAConfig(rank=4, alpha=8, targets="q_proj,up_proj,down_proj")
    model = Transformer(cfg)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    assert lora.attach(model, settings) == [f"layers.{i}.{m}" for i in range(2)
                                            for m in ("self_attn.qkv", "mlp.down_proj", "mlp.up_proj")]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    merged = Transformer(cfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    merged.load_state_dict(lora.merge_state(state, lora.adapter_state(state), cfg, settings))
    assert not torch.equal(merged.state_dict()["layers.0.mlp.up_proj.weight"], base["layers.0.mlp.up_proj.weight"])
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids), model.eval()(ids), rtol=1e-5, atol=1e-5)
