"""Choosing the model's shape for a wall-clock budget (homegrown.train.shape, `train.auto_shape`): the rule's walk,
the shapes it builds, and that a run keeps the shape it saved. No test depends on how fast the machine is: the
rule is checked against a brute-force search under a given cost, and a real run's choice is read back from what
it saved, never predicted."""

import json
import math
import shutil

import pytest
import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.layout import RunLayout
from homegrown.model import count_params
from homegrown.pipeline import pretrain
from homegrown.posttrain.distill import distill
from homegrown.posttrain.dpo import dpo_train_config
from homegrown.posttrain.sft import sft_train_config
from homegrown.train import shape
from homegrown.train.checkpoint import resolve_checkpoint
from tests.conftest import _run_cli


def _cost(cfg):
    """A deterministic step cost that grows with the model, standing in for this machine's timing."""
    return 2e-7 * count_params(cfg)


@pytest.mark.parametrize("minutes", [0.01, 1, 10, 30, 300, 1e5])
def test_walk_keeps_the_rung_nearest_the_target_and_times_only_its_neighbours(minutes):
    base = get_preset("small").model
    timed = []
    choice = shape.choose(base, minutes, 4096, lambda cfg: timed.append(cfg) or _cost(cfg))

    def ratio(d, n):
        cfg = shape.rung_config(base, d, n)
        return shape.budget_tokens(minutes * 60, _cost(cfg), 4096) / count_params(cfg)

    best = min(shape.LADDER, key=lambda rung: abs(math.log(ratio(*rung) / shape.TOKENS_PER_PARAM)))
    assert (choice.d_model, choice.n_layers) == best
    distance = abs(shape.LADDER.index(best) - shape.LADDER.index((192, 4)))  # small's own rung starts the walk
    assert len(timed) == len(choice.candidates) <= distance + 2
    assert [(c.d_model, c.n_layers) for c in choice.candidates] == sorted({(c.d_model, c.n_layers) for c in timed})
    assert all(c.tokens_per_param == pytest.approx(ratio(c.d_model, c.n_layers)) for c in choice.candidates)


def test_a_longer_budget_buys_a_bigger_model():
    base = get_preset("small").model
    picks = [shape.choose(base, m, 4096, _cost) for m in (1, 10, 100, 1000)]
    sizes = [count_params(p.apply(base)) for p in picks]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_rungs_keep_every_other_switch_and_the_llama_mlp_width():
    base = get_preset("small").model
    cfg = shape.rung_config(base, 320, 4)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (5, 5, 64, 896)  # 8/3·320 → ×64
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.qk_norm) == (base.vocab_size, base.max_seq_len, True)


def test_a_step_is_timed_with_the_runs_own_optimizer():
    preset = apply_overrides(get_preset("tiny"), ["train.optimizer=muon", "train.threads=1"])
    assert shape.measure_step_seconds(preset.model, preset.train, torch.device("cpu"), None, steps=2) > 0


def test_auto_shape_is_refused_without_a_budget_or_beside_a_shape_of_ones_own(tmp_path):
    with pytest.raises(HomegrownError, match="budget_minutes"):
        apply_overrides(get_preset("tiny"), ["train.auto_shape=true"])
    with pytest.raises(HomegrownError, match=r"model\.d_model, model\.n_layers"):
        apply_overrides(get_preset("small"), ["train.auto_shape=true", "model.d_model=256", "model.n_layers=6"])
    result = _run_cli("run", "--budget", "30", "--set", "model.n_heads=4", "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert result.returncode == 2 and "model.n_heads" in result.stderr and "Traceback" not in result.stderr


def test_only_pretraining_chooses_a_shape(tmp_path):
    """Chat tuning and DPO train the model they are given (`--budget` turns auto_shape on for the whole run);
    distillation would have to choose its student's shape, and refuses rather than ignore the switch."""
    auto = apply_overrides(get_preset("small"), ["train.auto_shape=true"])
    for derived in (sft_train_config(auto.train, auto.sft, auto.model), dpo_train_config(auto.train, auto.dpo,
                                                                                         auto.model)):
        assert not derived.auto_shape
        derived.check()
    with pytest.raises(HomegrownError, match="auto_shape=false"):
        distill(tmp_path / "student", tmp_path / "teacher", auto, auto.distill)


def _auto(tiny_run, run_dir):
    for name in ("tokenizer.json", "shards"):
        if not (run_dir / name).exists():
            (shutil.copytree if name == "shards" else shutil.copy)(tiny_run / name, run_dir / name)
    preset = apply_overrides(get_preset("tiny"), ["train.threads=1", "train.dtype=fp32", "train.budget_minutes=0.03",
                                                  "train.auto_shape=true", "train.ckpt_every=1000"])
    return pretrain(preset, run_dir)


def test_a_run_trains_the_shape_it_chose_and_keeps_it_on_resume(tiny_run, tmp_path):
    run = tmp_path / "auto"
    run.mkdir()
    result = _auto(tiny_run, run)
    layout = RunLayout(run)
    saved = json.loads(layout.shape.read_text())
    assert saved["budget_minutes"] == 0.03 and saved["candidates"]
    assert (saved["d_model"], saved["n_layers"]) in shape.LADDER
    trained = json.loads((resolve_checkpoint(result.final_checkpoint) / "config.json").read_text())
    recorded = json.loads(layout.preset.read_text())["model"]
    for model in (trained, recorded):
        assert (model["d_model"], model["n_layers"]) == (saved["d_model"], saved["n_layers"])
        assert model["vocab_size"] == get_preset("tiny").model.vocab_size  # the rest of the preset's model stays

    # killed before its first checkpoint: the saved shape is trained again, not re-timed (here another rung,
    # written as an earlier choice would have been)
    other = next(rung for rung in shape.LADDER[:2] if rung != (saved["d_model"], saved["n_layers"]))
    shutil.rmtree(layout.ckpt_root())
    layout.budget().unlink()
    layout.shape.write_text(json.dumps({**saved, "d_model": other[0], "n_layers": other[1]}))
    again = _auto(tiny_run, run)
    trained = json.loads((resolve_checkpoint(again.final_checkpoint) / "config.json").read_text())
    assert (trained["d_model"], trained["n_layers"]) == other
    assert json.loads(layout.shape.read_text())["candidates"] == saved["candidates"]
