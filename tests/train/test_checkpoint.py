"""Checkpoints and the architecture switches: a checkpoint keeps its switches, and one written before they existed
still loads (and resumes) as the plain model it is."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from homegrown.config import ModelConfig
from homegrown.model import Transformer
from homegrown.train.checkpoint import CONFIG, check_same_config, load_model, save_checkpoint

SHAPE = {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32}
SWITCHES = {"qk_norm": True, "zero_init_proj": True, "logit_softcap": 15.0, "mlp": "relu2"}
"""Every switch on at once, each away from its default."""


def test_a_checkpoint_loads_back_with_its_switches(tmp_path: Path, tiny_run: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SHAPE, **SWITCHES)).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", 3, model, tiny_run / "tokenizer.json")
    saved = json.loads((ckpt / CONFIG).read_text())
    assert {k: saved[k] for k in SWITCHES} == SWITCHES
    back = load_model(ckpt).eval()
    assert back.cfg == model.cfg
    check_same_config(ckpt, model.cfg)
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_a_config_written_before_the_switches_loads_with_them_off(tmp_path: Path, tiny_run: Path) -> None:
    model = Transformer(ModelConfig(**SHAPE)).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", 3, model, tiny_run / "tokenizer.json")
    old = {k: v for k, v in json.loads((ckpt / CONFIG).read_text()).items() if k not in SWITCHES}
    (ckpt / CONFIG).write_text(json.dumps(old))
    back = load_model(ckpt)
    assert back.cfg == model.cfg and asdict(back.cfg) == {**old, **{k: getattr(ModelConfig(), k) for k in SWITCHES}}
    check_same_config(ckpt, model.cfg)  # resuming an old run with today's defaults is the same model
