"""The wall-clock budget (homegrown.train.budget): the step-count rule, and that a budgeted run is exactly the run
with the step count it saved — uninterrupted or resumed. No test here depends on how fast the machine is: the
count a run chooses is read back from what it saved, never predicted."""

import json
import shutil

import pytest
import torch

from homegrown.config import apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.layout import RunLayout, list_checkpoints
from homegrown.posttrain.dpo import dpo_train_config
from homegrown.posttrain.sft import sft_train_config
from homegrown.train import budget
from homegrown.train.loop import train

TINY = ["train.threads=1", "train.dtype=fp32", "train.eval_every=20"]


def test_plan_fills_the_budget_after_the_probe():
    # first step dropped (allocator warm-up); median 1.0 s/step; one eval (2 s) every 10 steps = 0.2 s/step
    plan = budget.plan_steps(1.0, [5.0, 1.0, 1.0, 1.2], eval_seconds=2.0, elapsed_seconds=10.0, eval_every=10,
                             min_steps=5, key="k")
    assert plan.step_seconds == 1.0 and plan.probe_steps == 4
    assert plan.max_steps == 4 + int((60 * (1 - budget.MARGIN) - 10.0) // 1.2)
    slow = budget.plan_steps(0.1, [30.0, 30.0, 30.0], eval_seconds=0.0, elapsed_seconds=90.0, eval_every=10,
                             min_steps=4)
    assert slow.max_steps == 4  # past the budget already: the schedule still gets one step beyond the probe
    with pytest.raises(HomegrownError, match="positive"):
        budget.plan_steps(0, [1.0, 1.0, 1.0], 0.0, 0.0, 10, 4)


def test_probe_stays_inside_the_warmup():
    assert budget.probe_steps(30) == budget.PROBE_STEPS
    assert budget.probe_steps(5) == 5
    with pytest.raises(HomegrownError, match="warmup_steps"):
        budget.probe_steps(2)


def test_saved_plan_is_reused_only_for_the_same_budget_and_setup(tmp_path):
    preset = get_preset("tiny")
    key = budget.fingerprint(preset.model, preset.train, 1)
    plan = budget.plan_steps(1.0, [1.0, 1.0, 1.0], 0.0, 0.0, 10, 4, key)
    budget.save_plan(plan, tmp_path / "budget.json")
    assert budget.load_plan(tmp_path / "budget.json", 1.0, key) == plan
    assert budget.load_plan(tmp_path / "budget.json", 2.0, key) is None
    preset.train.batch_size *= 2
    assert budget.load_plan(tmp_path / "budget.json", 1.0, budget.fingerprint(preset.model, preset.train, 1)) is None
    preset.train.batch_size //= 2
    preset.train.max_steps += 1  # what the plan chooses is not part of what it depends on
    assert budget.fingerprint(preset.model, preset.train, 1) == key


def test_small_has_a_ten_minute_budget_that_an_explicit_step_count_turns_off():
    assert get_preset("small").train.budget_minutes == 10.0
    assert apply_overrides(get_preset("small"), ["train.max_steps=50"]).train.budget_minutes == 0.0
    both = apply_overrides(get_preset("small"), ["train.max_steps=50", "train.budget_minutes=3"])
    assert both.train.budget_minutes == 3.0
    with pytest.raises(HomegrownError, match="budget_minutes must be"):
        apply_overrides(get_preset("tiny"), ["train.budget_minutes=-1"])
    small = get_preset("small")  # chat tuning keeps its own step count
    assert sft_train_config(small.train, small.sft, small.model).budget_minutes == 0.0
    assert dpo_train_config(small.train, small.dpo, small.model).budget_minutes == 0.0


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tiny_run, run_dir, settings):
    preset = apply_overrides(get_preset("tiny"), [*TINY, *settings])
    return train(preset.model, preset.train, tiny_run / "shards", run_dir, tiny_run / "tokenizer.json",
                 progress=False)


def test_budgeted_run_is_the_run_with_its_saved_step_count_killed_or_not(tiny_run, tmp_path):
    budgeted = ["train.budget_minutes=0.02", "train.ckpt_every=5", "train.keep_checkpoints=0"]
    run = tmp_path / "budgeted"
    result = _train(tiny_run, run, budgeted)
    plan = json.loads(RunLayout(run).budget().read_text())
    steps = plan["max_steps"]
    assert result.steps == steps > plan["probe_steps"] == 5  # tiny's warm-up is 5 steps: all of them timed
    state = torch.load(result.final_checkpoint / "trainer_state.pt", weights_only=True)
    assert state["budget"]["max_steps"] == steps
    info = json.loads((result.final_checkpoint / "train_info.json").read_text())
    assert info["train"]["max_steps"] == steps and info["budget"]["max_steps"] == steps
    assert info["dtype_reason"] == "train.dtype=fp32" and "cpu_flags" in info  # which dtype, and why

    reference = tmp_path / "reference"
    assert _train(tiny_run, reference, [f"train.max_steps={steps}", "train.ckpt_every=5"]).steps == steps
    assert _losses(run) == _losses(reference)  # the timed steps were real steps of the same schedule

    # killed after its first checkpoint: resumes from it to the saved count, however fast the machine is now
    for ckpt in list_checkpoints(run / "ckpt")[1:]:
        shutil.rmtree(ckpt)
    assert _train(tiny_run, run, budgeted).steps == steps
    assert _losses(run) == _losses(reference)

    # killed before any checkpoint: budget.json alone keeps the count
    shutil.rmtree(run / "ckpt")
    assert _train(tiny_run, run, budgeted).steps == steps
    assert _losses(run) == _losses(reference)

    with pytest.raises(HomegrownError, match=r"budget_minutes=0\.02"):
        _train(tiny_run, run, ["train.budget_minutes=0.5"])
    # a run started with a fixed step count (or before budgets existed) keeps it when resumed with a budget
    assert _train(tiny_run, reference, ["train.budget_minutes=0.02"]).steps == steps
    assert _losses(reference) == _losses(run)


def test_wsd_schedule_ends_with_the_budget(tiny_run, tmp_path):
    """The count the budget fixes is the wsd schedule's own: with every step after the warm-up in the decay, each
    logged rate follows from that count alone, and the run is the fixed-step run of that count."""
    wsd = ["train.schedule=wsd", "train.decay_frac=1.0", "train.ckpt_every=1000"]
    run = tmp_path / "budgeted"
    steps = _train(tiny_run, run, [*wsd, "train.budget_minutes=0.02"]).steps
    tiny = get_preset("tiny").train
    lr, floor, warm = tiny.lr, tiny.min_lr_ratio, tiny.warmup_steps
    assert steps > warm  # the budget always buys at least one step past the timed warm-up
    logged = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [lr * (s + 1) / warm if s < warm else lr * (floor + (1 - floor) * (steps - s) / (steps - warm))
                for s in range(steps)]
    assert logged == pytest.approx(expected)
    assert logged[-1] == pytest.approx(lr * (floor + (1 - floor) / (steps - warm)))  # one step before the floor
    reference = tmp_path / "reference"
    _train(tiny_run, reference, [*wsd, f"train.max_steps={steps}"])
    assert _losses(run) == _losses(reference)
