"""Exports of an imported SmolLM2-135M-Instruct: transformers loads the HF directory with our logits, tokens and
chat text; the GGUF file imports back to the same weights, token ids and chat format (pre-tokenizer `smollm`)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file

from homegrown.bundle import load_bundle
from homegrown.export.gguf import export_gguf
from homegrown.export.hf import export_hf
from homegrown.importer import import_model

transformers = pytest.importorskip("transformers")

TEXTS = ["The capital of France is", "def add(a, b):\n    return a + b  # 2 + 3 = 5",
         "Ünïcode café 🤗 — numbers 3.14159 and 1,000,000\n\n\t  spaces", "<|im_start|>user\nHi<|im_end|>\n"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Italy?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a prime number."}],
]


@pytest.fixture(scope="module")
def smol(smol_run: Path):
    return load_bundle(smol_run)


def test_hf_export_loads_in_transformers_with_our_logits_tokens_and_chat(smol, smol_run: Path,
                                                                         tmp_path: Path) -> None:
    out = export_hf(smol_run, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        for text in TEXTS[:2]:
            ids = torch.tensor([smol.encode(text)])
            assert (smol.model(ids) - theirs(ids).logits).abs().max().item() < 1e-4, text
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == smol.text_prompt_ids(text), text
    for messages in CHATS:
        assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            smol.render_chat(messages)
        assert hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                          return_dict=False) == smol.chat_prompt_ids(messages)
    assert theirs.generation_config.eos_token_id in (smol.stop_ids, *smol.stop_ids)


def test_gguf_export_imports_back_to_the_same_model(smol, smol_run: Path, tmp_path: Path) -> None:
    path = export_gguf(smol_run, tmp_path / "smol.gguf", "f32")
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "tokenizer.ggml.pretokenizer" not in fields  # a two-stage split is no single Ollama regex
    back = import_model(path, tmp_path / "back")
    ours = load_file(str(smol.path / "model.safetensors"))
    theirs = load_file(str(back.checkpoint / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = load_bundle(back.run_dir)
    assert again.tokenizer.get_vocab() == smol.tokenizer.get_vocab()
    for text in TEXTS:
        assert again.encode(text) == smol.encode(text), text
    assert again.chat == smol.chat
    assert json.loads((back.checkpoint / "tokenizer_config.json").read_text()) == \
        json.loads((smol.path / "tokenizer_config.json").read_text())
