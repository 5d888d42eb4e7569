"""Eval fixtures: a run directory with a real (tiny, briefly trained) base model and a second-stage model in
sft/ckpt, and a cut-down copy of the shipped task suite so model tests stay fast on two cores."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from homegrown.bundle import ModelBundle
from homegrown.chat_template import our_chat_format
from homegrown.config import ModelConfig, get_preset
from homegrown.eval.tasks import TASKS_DIR, LocalModel
from homegrown.model import Transformer
from homegrown.train.loop import train


@pytest.fixture(autouse=True)
def _one_thread():
    """On a shared 2-core box, small forward passes with 2 OpenMP threads run up to 20× slower than with one when
    other processes hold the cores (measured: 78 s vs 3 s for one bits-per-byte pass); restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def eval_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run/ckpt/step_8 (pretrained 8 tiny steps) and run/sft/ckpt/step_12 (4 more steps, logged as `sft`)."""
    run = tmp_path_factory.mktemp("eval") / "evalrun"
    run.mkdir()
    shutil.copyfile(tiny_run / "tokenizer.json", run / "tokenizer.json")
    shutil.copytree(tiny_run / "corpus", run / "corpus")
    preset = get_preset("tiny")
    cfg = replace(preset.train, max_steps=8, eval_every=4, ckpt_every=8, log_every=2, eval_batches=1)
    base = train(preset.model, cfg, tiny_run / "shards", run, run / "tokenizer.json", progress=False)
    train(preset.model, replace(cfg, max_steps=4, ckpt_every=4), tiny_run / "shards", run, run / "tokenizer.json",
          init_from=base.final_checkpoint, stage="sft", progress=False)
    return run


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Each shipped task with its header, its dev items and only its first 12 test items."""
    out = tmp_path_factory.mktemp("tasks")
    paths = []
    for src in sorted(TASKS_DIR.glob("*.jsonl")):
        lines = src.read_text(encoding="utf-8").splitlines()
        tests = [ln for ln in lines[1:] if json.loads(ln)["split"] == "test"][:12]
        dev = [ln for ln in lines[1:] if json.loads(ln)["split"] == "dev"]
        dst = out / src.name
        dst.write_text("\n".join([lines[0], *dev, *tests]) + "\n", encoding="utf-8")
        paths.append(dst)
    return paths


def scripted_lm(tok: Tokenizer, transitions: dict[int, int]) -> LocalModel:
    """A model whose greedy next token is a fixed function of the current token: blocks that add nothing (zero
    output projections), each scripted token's embedding a basis vector, and an output head that maps basis
    vector k to its successor. Greedy decoding then follows `transitions` exactly, whatever the prompt."""
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=16, n_layers=1, n_heads=2,
                                    n_kv_heads=1, max_seq_len=48, tie_embeddings=False))
    with torch.no_grad():
        for p in (model.embed_tokens.weight, model.lm_head.weight, model.layers[0].self_attn.o_proj.weight,
                  model.layers[0].mlp.down_proj.weight):
            p.zero_()
        for k, (src, dst) in enumerate(transitions.items()):
            model.embed_tokens.weight[src, k] = 1.0
            model.lm_head.weight[dst, k] = 10.0
    return LocalModel(ModelBundle(model, model.cfg, tok, our_chat_format(tok), Path("scripted")), batch_size=2)
