import json

import pytest
import torch

from homegrown.config import DistillConfig, ModelConfig, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.model import Transformer, cross_entropy
from homegrown.posttrain.distill import distill, distill_loss, soft_kl
from homegrown.tokenizer import train_tokenizer
from homegrown.train.checkpoint import save_checkpoint

TINY = ["train.threads=1", "train.dtype=fp32"]


def _model(seed: int, d_model: int = 64) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=512, d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                                   max_seq_len=64))


def test_loss_mixes_soft_and_hard_terms_as_documented():
    student, teacher = _model(0), _model(1, d_model=128)
    x, y = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        s_logits, t_logits = student(x), teacher(x)
        hard = cross_entropy(s_logits, y)
        soft = soft_kl(s_logits, t_logits, 2.0)
        assert float(soft_kl(s_logits, s_logits, 2.0)) == pytest.approx(0.0, abs=1e-6) and soft > 0
        for alpha in (0.0, 0.3, 1.0):
            got = distill_loss(teacher, DistillConfig(alpha=alpha, temperature=2.0))(student, (x, y))
            torch.testing.assert_close(got, alpha * 4.0 * soft + (1 - alpha) * hard)
    with pytest.raises(HomegrownError, match="alpha"):
        distill_loss(teacher, DistillConfig(alpha=1.5))


def test_distill_trains_a_student_and_refuses_another_tokenizer(tiny_base, tmp_path):
    preset = apply_overrides(get_preset("tiny"), [*TINY, "train.max_steps=4", "train.eval_every=4"])
    run = tmp_path / "student"
    run.mkdir()
    for name in ("tokenizer.json", "shards"):
        (run / name).symlink_to(tiny_base / name)
    result = distill(run, tiny_base, preset, DistillConfig(), progress=False)
    assert result.final_checkpoint == run / "distill" / "ckpt" / "step_4"
    assert len((run / "metrics_distill.jsonl").read_text().splitlines()) == 4
    assert json.loads((run / "distill" / "teacher.json").read_text())["alpha"] == DistillConfig.alpha

    other_tok = train_tokenizer(["some other text entirely, with other merges " * 50], 512, tmp_path / "other.json")
    del other_tok
    stranger = save_checkpoint(tmp_path / "stranger", 1, _model(3), tmp_path / "other.json")
    with pytest.raises(HomegrownError, match="another tokenizer"):
        distill(run, stranger, preset, DistillConfig(), progress=False)


def test_distill_cli(cli, tiny_base, tmp_path):
    run = tmp_path / "student"
    run.mkdir()
    for name in ("tokenizer.json", "shards"):
        (run / name).symlink_to(tiny_base / name)
    done = cli("distill", str(run), "--teacher", str(tiny_base), "--preset", "tiny", "--alpha", "0.7",
               "--set", "train.max_steps=3", "--set", "train.eval_every=3", "--set", "train.threads=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "val loss" in done.stderr and (run / "distill" / "ckpt" / "step_3").is_dir()
    bad = cli("distill", str(run), "--teacher", str(tiny_base), "--preset", "tiny", "--temperature", "0")
    assert bad.returncode == 2 and "temperature" in bad.stderr
