"""A model whose bundle carries a ChatML template is served through that template and stops at its own
end-of-turn token, <|im_end|> — not at our <|end|>, which its tokenizer does not even have."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from tokenizers import Tokenizer

from homegrown.bundle import load_bundle
from homegrown.config import ModelConfig
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.model import Transformer
from homegrown.train.checkpoint import save_checkpoint
from tests.conftest import CHATML_TEMPLATE
from tests.serve.conftest import Server, start_server

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def always_predicts(model: Transformer, token: int) -> Transformer:
    """Make `token` the greedy choice at every position, whatever the input: blocks add nothing (zero output
    projections), every embedding has +1 in dimension 0, and only `token`'s head row reads that dimension."""
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token, 0] = 1.0
    return model


@pytest.fixture(scope="module")
def chatml_run(chatml_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("chatml_run")
    tok = Tokenizer.from_file(str(chatml_dir / "tokenizer.json"))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=128, tie_embeddings=False)
    torch.manual_seed(0)
    model = always_predicts(Transformer(cfg), tok.token_to_id("<|im_end|>"))
    save_checkpoint(run / "ckpt", 1, model, chatml_dir / "tokenizer.json")
    return run


@pytest.fixture(scope="module")
def chatml_server(chatml_run: Path) -> Iterator[Server]:
    srv = start_server(chatml_run)
    yield srv
    srv.stop()


def test_bundle_carries_the_chatml_format(chatml_run: Path) -> None:
    bundle = load_bundle(chatml_run)
    im_end = bundle.tokenizer.token_to_id("<|im_end|>")
    assert bundle.template.source == CHATML_TEMPLATE and bundle.stop_ids == [im_end]
    assert bundle.chat.end_of_turn_id(bundle.tokenizer) == im_end
    assert bundle.render_chat(MESSAGES) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the "
                                            "capital of France?<|im_end|>\n<|im_start|>assistant\n")
    # Without stop ids the rigged model keeps producing <|im_end|>: only the bundle's stop ends a reply.
    ids = bundle.chat_prompt_ids(MESSAGES)
    assert list(stream_tokens(bundle.model, ids, SamplingParams(3, 0.0))) == [im_end] * 3
    assert list(stream_tokens(bundle.model, ids, SamplingParams(3, 0.0, stop_token_ids=bundle.stop_ids))) == []


def test_served_chat_renders_chatml_and_stops_at_im_end(chatml_run: Path, chatml_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{chatml_server.base_url}/v1", api_key=chatml_server.api_key, max_retries=0)
    reply = client.chat.completions.create(model=chatml_server.model, messages=MESSAGES, temperature=0,
                                           max_tokens=20)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == ""
    assert reply.usage.prompt_tokens == len(load_bundle(chatml_run).chat_prompt_ids(MESSAGES))
    completion = client.completions.create(model=chatml_server.model, prompt="Paris is", temperature=0,
                                           max_tokens=20)
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].text == ""
