"""`homegrown pretrain RUN --init-from MODEL`: continued pretraining of an imported model on a corpus, with the
model's own tokenizer and chat files, resumable like any run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from homegrown.config import ModelConfig, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.export.gguf import export_gguf
from homegrown.importer import FINETUNE_LR, FINETUNE_SFT_LR, import_model
from homegrown.model import Transformer
from homegrown.pipeline import continue_pretraining
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import list_checkpoints, load_model, save_checkpoint
from tests.conftest import write_corpus

CHAT_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module")
def imported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model imported from GGUF (our export of it), so it comes with HF chat files like any import."""
    root = tmp_path_factory.mktemp("imported")
    tok_path = tiny_run / "tokenizer.json"
    torch.manual_seed(5)
    model = Transformer(ModelConfig(vocab_size=load_tokenizer(tok_path).get_vocab_size(), d_model=64, n_layers=2,
                                    n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=5000.0))
    ckpt = save_checkpoint(root / "ckpt", 1, model, tok_path)
    return import_model(export_gguf(ckpt, root / "m.gguf", "f32"), root / "run").run_dir


def _overrides(steps: int) -> list[str]:
    return [f"train.max_steps={steps}", "train.ckpt_every=2", "train.eval_every=2", "train.eval_batches=1",
            "train.batch_size=4", "train.seq_len=32", "train.lr=1e-9", "train.warmup_steps=0", "train.threads=1"]


def test_continued_pretraining_starts_from_the_model_and_resumes(imported: Path, tmp_path: Path, cli,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cpt"
    write_corpus(run / "corpus", train_docs=40, val_docs=6)
    done = cli("pretrain", str(run), "--init-from", str(imported), "-p", "tiny",
               *[a for o in _overrides(2) for a in ("--set", o)])
    assert done.returncode == 0, done.stderr[-3000:]
    start = load_model(imported).state_dict()
    after = load_model(run / "ckpt").state_dict()
    for name, tensor in start.items():  # lr 1e-9: still the imported weights, not a fresh random init
        assert torch.allclose(after[name], tensor, atol=1e-5), name
    for name in CHAT_FILES:
        assert (run / name).read_bytes() == (imported / name).read_bytes()
        assert (run / "ckpt" / "step_2" / name).read_bytes() == (imported / name).read_bytes()
    saved = json.loads((run / "preset.json").read_text())
    assert saved["train"]["init_from"] == str(imported)
    assert saved["model"] == json.loads((imported / "ckpt" / "step_0" / "config.json").read_text())

    preset = apply_overrides(get_preset("tiny"), _overrides(4))
    preset.train.init_from = str(imported)
    result = continue_pretraining(preset, run, progress=False)
    assert result.final_checkpoint == run / "ckpt" / "step_4"
    assert [p.name for p in list_checkpoints(run / "ckpt")] == ["step_2", "step_4"]
    assert f"resuming pretrain from {run / 'ckpt' / 'step_2'}" in " ".join(capfd.readouterr().err.split())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]


def test_continued_pretraining_refuses_the_imported_run_itself_and_a_foreign_tokenizer(
        imported: Path, tmp_path: Path, tiny_run: Path) -> None:
    preset = get_preset("tiny")
    preset.train.init_from = str(imported)
    with pytest.raises(HomegrownError, match="new run directory"):
        continue_pretraining(preset, imported, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text((tiny_run / "tokenizer.json").read_text().replace("<|end|>", "<|END|>"))
    with pytest.raises(HomegrownError, match="is not the tokenizer of"):
        continue_pretraining(preset, other, progress=False)


def test_an_import_fine_tunes_at_fine_tuning_rates_unless_told_otherwise(imported: Path, tmp_path: Path, cli) -> None:
    """The import's preset carries fine-tuning learning rates, and a new --init-from run without -p starts from
    it: `small`'s from-scratch 3e-3 would wreck a pretrained model within a few steps."""
    saved = json.loads((imported / "preset.json").read_text())
    assert (saved["train"]["lr"], saved["sft"]["lr"]) == (FINETUNE_LR, FINETUNE_SFT_LR)
    run = tmp_path / "cpt"
    write_corpus(run / "corpus", train_docs=40, val_docs=6)
    done = cli("pretrain", str(run), "--init-from", str(imported),
               *[a for o in _overrides(1) if not o.startswith("train.lr") for a in ("--set", o)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "preset.json").read_text())["train"]["lr"] == FINETUNE_LR
