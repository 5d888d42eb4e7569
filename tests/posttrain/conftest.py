"""A briefly pretrained tiny base model, shared by the SFT and distillation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from homegrown.config import apply_overrides, get_preset
from homegrown.train.loop import train

TINY = ["train.threads=1", "train.dtype=fp32"]


@pytest.fixture(scope="session")
def tiny_base(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory (links to tiny_run's corpus, tokenizer, shards) with a 30-step pretrained ckpt/."""
    run = tmp_path_factory.mktemp("tiny_base")
    for name in ("corpus", "tokenizer.json", "shards"):
        (run / name).symlink_to(tiny_run / name)
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=30", "train.eval_every=30"])
    train(preset.model, preset.train, run / "shards", run, run / "tokenizer.json", progress=False)
    return run
