"""One function loads a model as a bundle — weights, config, tokenizer, chat format — from a run, a checkpoint or a
transformers directory; the chat format travels through checkpoints and exports unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from homegrown.bundle import load_bundle, load_chat_format
from homegrown.chat_template import CHAT_FILES, CHAT_TEMPLATE, GENERATION_CONFIG, TOKENIZER_CONFIG
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.gguf import export_gguf
from homegrown.export.hf import export_hf
from homegrown.model import Transformer
from homegrown.train.checkpoint import save_checkpoint
from tests.conftest import CHATML_TEMPLATE

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def _checkpoint(root: Path, tokenizer_json: Path, vocab: int) -> Path:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    max_seq_len=64))
    return save_checkpoint(root / "ckpt", 3, model, tokenizer_json)


def test_our_checkpoint_writes_and_loads_our_chat_format(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, tiny_run / "tokenizer.json", 512)
    assert (ckpt / TOKENIZER_CONFIG).is_file() and (ckpt / GENERATION_CONFIG).is_file()
    bundle = load_bundle(tmp_path)  # a run directory resolves to its newest checkpoint
    tok = bundle.tokenizer
    assert bundle.path == ckpt and bundle.config.d_model == 32 and not bundle.model.training
    assert bundle.template.source == CHAT_TEMPLATE and not bundle.add_bos
    assert bundle.stop_ids == [tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")]
    assert bundle.chat_prompt_ids(MESSAGES[:2]) == tok.encode("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n"
                                                              "<|assistant|>\n", add_special_tokens=False).ids
    for name in CHAT_FILES:  # a checkpoint from before chat files existed gets our format
        (ckpt / name).unlink(missing_ok=True)
    old = load_bundle(ckpt)
    assert old.chat == bundle.chat


def test_chatml_format_travels_through_checkpoint_and_exports(chatml_dir: Path, tmp_path: Path) -> None:
    """A ChatML model's checkpoint keeps its template and stop token; the HF export renders it as transformers
    does and stops at <|im_end|>; the GGUF export carries the same template and end-of-turn id."""
    transformers = pytest.importorskip("transformers")
    tok_json = chatml_dir / "tokenizer.json"
    ckpt = _checkpoint(tmp_path, tok_json, 514)
    bundle = load_bundle(ckpt)
    im_end = bundle.tokenizer.token_to_id("<|im_end|>")
    assert bundle.template.source == CHATML_TEMPLATE and bundle.stop_ids == [im_end]
    assert load_chat_format(ckpt)[1] == bundle.chat

    hf = export_hf(ckpt, tmp_path / "hf")
    assert load_bundle(hf).chat == bundle.chat
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf)
    assert hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == \
        bundle.render_chat(MESSAGES)
    assert json.loads((hf / GENERATION_CONFIG).read_text())["eos_token_id"] == [im_end]
    assert json.loads((hf / "config.json").read_text())["eos_token_id"] == im_end

    fields = GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f32")).fields
    assert fields["tokenizer.chat_template"].contents() == CHATML_TEMPLATE
    assert fields["tokenizer.ggml.eos_token_id"].contents() == fields["tokenizer.ggml.eot_token_id"].contents() \
        == im_end
    assert fields["tokenizer.ggml.bos_token_id"].contents() == bundle.bos_id
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HomegrownError, match="no checkpoint found"):
        load_bundle(tmp_path / "nothing")
