"""A wall-clock budget for pretraining: fix the step count at the start from this machine's measured step time.

A fixed `max_steps` is sized for the slowest machine: a faster one stops early and leaves budget unused, a
slower one overruns. With `train.budget_minutes` the loop instead times its first few steps, picks the step
count whose schedule (warmup + decay) ends when the budget does, and saves that count with the run.

The timed steps are real training steps, not discarded ones: they all lie inside the linear warm-up, where the
learning rate does not depend on the total step count (loop.lr_at), so they are exactly the steps a run told
`train.max_steps=N` would have taken. Only wall-clock time decides N; once saved (RUN/budget.json at once, and
every checkpoint's trainer state), a killed run resumes to the same N and so to the same losses — timing is
never measured twice for one run.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from homegrown.config import ModelConfig, TrainConfig
from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic

MARGIN = 0.03
"""Share of the budget kept back for what the estimate leaves out (checkpoint saves, loss-curve plots)."""
PROBE_STEPS = 8
"""Leading steps timed (fewer when the warm-up is shorter): a few seconds of a 10-minute budget."""
SKIP_FIRST = 1
"""Timed steps dropped before the median: the first one pays allocator warm-up (and compile, when on)."""


@dataclass(frozen=True)
class BudgetPlan:
    """The step count chosen for a budget and the measurements it came from (written to RUN/budget.json)."""

    budget_minutes: float
    max_steps: int
    step_seconds: float
    """Median seconds per training step over the timed steps (after the first)."""
    eval_seconds: float
    """Seconds of one periodic evaluation, measured once during the probe."""
    probe_steps: int
    """The first steps, timed to make this plan; real training steps inside the warm-up."""
    elapsed_seconds: float
    """Wall-clock already spent when the plan was made (model build, compile, the probe steps)."""
    fingerprint: str = ""
    """What the timing depends on (model shape, batch, threads …: `fingerprint`); a plan made for another
    setup in the same run directory is not reused."""


def probe_steps(warmup_steps: int, wanted: int = PROBE_STEPS) -> int:
    """How many leading steps to time: as many as wanted, but all inside the warm-up so that their learning
    rate does not depend on the step count they help choose."""
    if warmup_steps < SKIP_FIRST + 2:
        raise HomegrownError(f"train.budget_minutes needs train.warmup_steps >= {SKIP_FIRST + 2} (the first warm-up "
                             f"steps time this machine), not {warmup_steps}; raise it or set train.max_steps instead")
    return min(warmup_steps, max(wanted, SKIP_FIRST + 2))


def fingerprint(model: ModelConfig, train: TrainConfig, world_size: int) -> str:
    """A short hash of what a step time depends on; `max_steps` is left out (it is what gets chosen)."""
    data = [asdict(model), {k: v for k, v in asdict(train).items() if k != "max_steps"}, world_size]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_steps(budget_minutes: float, step_times: list[float], eval_seconds: float, elapsed_seconds: float,
               eval_every: int, min_steps: int, key: str = "") -> BudgetPlan:
    """The most steps whose estimated wall-clock (steps + periodic evals + what was already spent) fits the
    budget less a `MARGIN`; at least `min_steps` (the probe plus one), however slow the machine."""
    if budget_minutes <= 0:
        raise HomegrownError(f"train.budget_minutes must be positive, not {budget_minutes}")
    timed = step_times[SKIP_FIRST:] or step_times
    step_s = statistics.median(timed)
    per_step = step_s + eval_seconds / max(1, eval_every)
    left = budget_minutes * 60 * (1 - MARGIN) - elapsed_seconds
    done = len(step_times)
    steps = max(min_steps, done + math.floor(max(0.0, left) / max(per_step, 1e-9)))
    return BudgetPlan(budget_minutes, steps, step_s, eval_seconds, done, elapsed_seconds, key)


def save_plan(plan: BudgetPlan, path: Path) -> Path:
    return write_json_atomic(path, asdict(plan))


def load_plan(path: Path, budget_minutes: float, key: str) -> BudgetPlan | None:
    """The plan a killed run made for the same budget and setup, or None (no plan yet, or one for another)."""
    if not path.is_file():
        return None
    plan = BudgetPlan(**json.loads(path.read_text()))
    return plan if plan.budget_minutes == budget_minutes and plan.fingerprint == key else None


def plan_of_checkpoint(state: dict, budget_minutes: float, ckpt: Path) -> BudgetPlan | None:
    """The plan saved in a checkpoint's trainer state: a resumed run keeps its step count whatever the
    machine's speed now. None when the run was started with a fixed step count (it keeps that one); refused when
    it was planned for another budget."""
    saved = state.get("budget")
    if saved is None:
        return None
    plan = BudgetPlan(**saved)
    if plan.budget_minutes != budget_minutes:
        raise HomegrownError(f"{ckpt} was planned for train.budget_minutes={plan.budget_minutes:g} "
                             f"({plan.max_steps} steps); resume it with that budget, or start a new run directory")
    return plan
