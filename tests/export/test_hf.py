"""HF export: transformers must load our export as Llama and compute the same logits, tokens and chat text."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from homegrown.chat_template import CHAT_TEMPLATE
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.hf import SHARD_INDEX, export_hf, load_hf
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer, train_tokenizer
from homegrown.train.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")

TEXTS = [
    f"Document {i}: the quick brown fox jumps over the lazy dog, and {i * 7} birds sing in the morning. "
    "Ünïcode café naïve — tokenizers must round-trip every byte."
    for i in range(300)
]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(TEXTS, 384, path)
    return path


def _checkpoint(root: Path, tokenizer_path: Path, tied: bool, **switches: object) -> tuple[Transformer, Path]:
    """A small GQA model whose weights are pushed away from the init, so greedy decoding is not one token."""
    torch.manual_seed(0)
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      rope_theta=5000.0, tie_embeddings=tied, **switches)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, save_checkpoint(root / "ckpt", 1, model, tokenizer_path)


def _hf_model(path: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                             attn_implementation="eager").eval()


EXPORTS = {"tied": (True, {}, "LlamaForCausalLM"), "untied": (False, {}, "LlamaForCausalLM"),
           "qk_norm": (False, {"qk_norm": True}, "Qwen3ForCausalLM"),
           "zero_init_proj": (True, {"zero_init_proj": True}, "LlamaForCausalLM")}
"""Model options the HF export supports: (tied head, architecture switches, the class transformers loads)."""


@pytest.mark.parametrize("variant", EXPORTS)
def test_transformers_logits_match(tmp_path: Path, tokenizer_path: Path, variant: str) -> None:
    tied, switches, hf_class = EXPORTS[variant]
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, tied, **switches)
    out = export_hf(ckpt, tmp_path / "hf")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) is not tied
    assert "model.layers.1.self_attn.k_proj.weight" in names and "model.layers.0.mlp.gate_proj.weight" in names
    assert ("model.layers.1.self_attn.q_norm.weight" in names) is bool(switches.get("qk_norm"))
    hf = _hf_model(out)
    assert type(hf).__name__ == hf_class
    x = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_greedy_generation_matches_transformers(tmp_path: Path, tokenizer_path: Path, tied: bool) -> None:
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, tied)
    out = export_hf(ckpt, tmp_path / "hf")
    hf = _hf_model(out)
    hf.generation_config.eos_token_id = None  # compare all 20 steps, as our stream has no stop tokens here
    prompt = load_tokenizer(tokenizer_path).encode("the quick brown fox").ids
    ours = list(stream_tokens(model, prompt, SamplingParams(max_tokens=20, temperature=0)))
    generated = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            max_new_tokens=20, do_sample=False)
    assert ours == generated[0, len(prompt):].tolist()
    assert len(ours) == 20 and len(set(ours)) > 3, "the test model should decode a varied, full-length sequence"


@pytest.mark.parametrize(("switch", "value"), [("logit_softcap", 30.0), ("mlp", "relu2")])
def test_options_no_standard_model_has_are_refused_by_name(tmp_path: Path, tokenizer_path: Path, switch: str,
                                                           value: object) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True, **{switch: value})
    with pytest.raises(HomegrownError, match=f"cannot export to transformers: .*model.{switch}="):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_export_names_every_option_it_cannot_export(tmp_path: Path, tokenizer_path: Path, cli) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True, logit_softcap=30.0, mlp="relu2")
    done = cli("export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf"))
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "model.logit_softcap=30" in output and "model.mlp=relu2" in output
    assert "Traceback" not in output and not (tmp_path / "hf").exists()


def test_auto_tokenizer_and_chat_template(tmp_path: Path, tokenizer_path: Path) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(tokenizer_path)
    text = "Ünïcode café: the lazy dog<|end|>\n<|user|> 42 birds!"
    assert hf_tok(text).input_ids == ours.encode(text, add_special_tokens=False).ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.pad_token == "<|endoftext|>"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    expected = ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
                "<|user|>\nBye<|end|>\n<|assistant|>\n")
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    stop = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert stop == hf_tok.convert_tokens_to_ids(["<|endoftext|>", "<|end|>"]), "chat generation must stop at <|end|>"


@pytest.mark.parametrize("variant", EXPORTS)
def test_load_hf_round_trip(tmp_path: Path, tokenizer_path: Path, variant: str) -> None:
    tied, switches, _ = EXPORTS[variant]
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, tied, **switches)
    back = load_hf(export_hf(ckpt, tmp_path / "hf")).eval()
    assert back.cfg == replace(model.cfg, zero_init_proj=False)  # how it was initialised is not part of the model
    assert (back.lm_head.weight is back.embed_tokens.weight) is tied
    x = torch.randint(0, model.cfg.vocab_size, (2, 30))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_load_hf_sharded(tmp_path: Path, tokenizer_path: Path) -> None:
    """Large HF models come as several safetensors files plus an index; split ours the same way."""
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, False)
    out = export_hf(ckpt, tmp_path / "hf")
    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(out / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (out / SHARD_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    x = torch.randint(0, model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(load_hf(out).eval()(x), model(x))
    (out / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(HomegrownError, match="missing"):
        load_hf(out)


def test_load_hf_refuses_other_models(tmp_path: Path, tokenizer_path: Path) -> None:
    with pytest.raises(HomegrownError, match=r"no config\.json"):
        load_hf(tmp_path)
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    out = export_hf(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(HomegrownError, match="only Llama"):
        load_hf(out)
    scaled = {**config, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}
    (out / "config.json").write_text(json.dumps(scaled))
    with pytest.raises(HomegrownError, match="llama3"):
        load_hf(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").unlink()
    with pytest.raises(HomegrownError, match="safetensors"):
        load_hf(out)


def test_export_replaces_old_export_but_not_other_directories(tmp_path: Path, tokenizer_path: Path) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    out = export_hf(tmp_path, tmp_path / "hf")  # a run directory resolves to its newest checkpoint
    (out / "stale.txt").write_text("from an older export")
    export_hf(ckpt, out)
    assert not (out / "stale.txt").exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(HomegrownError, match="does not look like a model export"):
        export_hf(ckpt, other)
    assert (other / "keep.txt").exists()


def test_export_does_not_import_transformers(tmp_path: Path, tokenizer_path: Path) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    code = ("import sys; from homegrown.export.hf import export_hf; "
            f"export_hf({str(ckpt)!r}, {str(tmp_path / 'hf')!r}); "
            "assert 'transformers' not in sys.modules, 'export imported transformers'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "hf" / "config.json").exists()
