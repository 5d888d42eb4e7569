"""A model shape for a wall-clock budget: a longer budget buys a bigger model, not only more steps of the same one.

The rule, fitted to the shape sweeps at 10 and 30 minutes (benchmarks/ablate.py, RESULTS "Shapes at a budget"):
on the bundled data the best shape sees about `TOKENS_PER_PARAM` training tokens per parameter in its budget —
the compute-optimal balance of the Chinchilla paper, with the constant fitted here instead of borrowed (at
these tiny sizes it is far below Chinchilla's ~20). A machine's speed decides how many tokens each shape gets,
so the rule times a few steps of each candidate on this machine (random tokens: a step's cost does not depend
on their values) and keeps the one whose tokens-per-parameter is nearest the target, on a log scale.

The candidates are a ladder of shapes with 64-wide heads, widening at 4 layers (where the sweeps found depth
did not pay at these budgets) and deepening beyond the swept range, which is extrapolation. The walk starts at
the rung nearest the preset's own shape and times only the rungs it needs (two or three).

The choice is saved in RUN/shape.json before training starts and read back on resume, so a killed run keeps
its shape whatever the machine's speed later; the seconds spent timing count against the budget.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from homegrown.config import ModelConfig, TrainConfig
from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic
from homegrown.model import Transformer, count_params
from homegrown.train.budget import MARGIN

HEAD_DIM = 64
LADDER: tuple[tuple[int, int], ...] = ((128, 4), (192, 4), (256, 4), (320, 4), (384, 6), (512, 8), (768, 12))
"""(d_model, n_layers) rungs in increasing size; the sweeps covered 128 to 320 at 4 layers."""
TOKENS_PER_PARAM = 3.3
"""Training tokens per parameter of the best shape at a budget: 2.88 at 10 and 3.75 at 30 minutes (parabola vertices
of the sweeps, `benchmarks/ablate.py --fit runs/shapes runs/shapes30`), geometric mean 3.28."""
TIMED_STEPS = 4
"""Steps timed per candidate after one untimed warm-up step (allocator, first-touch)."""


@dataclass(frozen=True)
class Candidate:
    """One timed rung: what the budget would buy it on this machine."""

    d_model: int
    n_layers: int
    params: int
    step_seconds: float
    tokens: float
    """Training tokens the budget buys at `step_seconds`."""

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


@dataclass(frozen=True)
class ShapeChoice:
    """The shape chosen for a budget and the timings it came from (RUN/shape.json)."""

    budget_minutes: float
    d_model: int
    n_layers: int
    target_tokens_per_param: float
    """The rule's target (`TOKENS_PER_PARAM` when chosen); each candidate's own figure is in `candidates`."""
    seconds: float
    """Wall-clock spent timing candidates; the budget's step plan counts it as already spent."""
    candidates: list[Candidate] = field(default_factory=list)

    def apply(self, base: ModelConfig) -> ModelConfig:
        return rung_config(base, self.d_model, self.n_layers)


def rung_config(base: ModelConfig, d_model: int, n_layers: int) -> ModelConfig:
    """`base` (vocabulary, context, QK-norm and every other switch) at this width and depth, 64-wide heads and
    the Llama rule's MLP width."""
    heads = max(1, d_model // HEAD_DIM)
    return replace(base, d_model=d_model, n_layers=n_layers, n_heads=heads, n_kv_heads=heads, ffn_hidden=0)


def budget_tokens(budget_seconds: float, step_seconds: float, tokens_per_step: int) -> float:
    return budget_seconds * (1 - MARGIN) / max(step_seconds, 1e-9) * tokens_per_step


def choose(base: ModelConfig, budget_minutes: float, tokens_per_step: int,
           step_seconds: Callable[[ModelConfig], float], target: float = TOKENS_PER_PARAM,
           ladder: tuple[tuple[int, int], ...] = LADDER) -> ShapeChoice:
    """Walk the ladder from the rung nearest `base` towards `target` tokens per parameter, timing each rung
    visited with `step_seconds`, and keep the visited rung nearest the target on a log scale.

    Tokens per parameter fall monotonically up the ladder (a bigger model has more parameters and slower steps),
    so the walk stops at the first rung past the target: the answer is it or the one before.
    """
    if budget_minutes <= 0:
        raise HomegrownError("a shape is chosen for a wall-clock budget: set train.budget_minutes")
    t0 = time.perf_counter()
    base_params = count_params(base)
    start = min(range(len(ladder)), key=lambda i: abs(math.log(count_params(rung_config(base, *ladder[i]))
                                                                 / base_params)))
    timed: dict[int, Candidate] = {}

    def visit(i: int) -> Candidate:
        if i not in timed:
            cfg = rung_config(base, *ladder[i])
            seconds = step_seconds(cfg)
            timed[i] = Candidate(cfg.d_model, cfg.n_layers, count_params(cfg), seconds,
                                 budget_tokens(budget_minutes * 60, seconds, tokens_per_step))
        return timed[i]

    i = start
    direction = 1 if visit(i).tokens_per_param > target else -1
    while 0 <= i + direction < len(ladder):
        i += direction
        if (visit(i).tokens_per_param > target) != (direction == 1):
            break
    best = min(timed.values(), key=lambda c: abs(math.log(c.tokens_per_param / target)))
    return ShapeChoice(budget_minutes, best.d_model, best.n_layers, target, time.perf_counter() - t0,
                       [timed[k] for k in sorted(timed)])


def measure_step_seconds(model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
                         amp: torch.dtype | None, steps: int = TIMED_STEPS) -> float:
    """Median seconds of a training step of a fresh `model_cfg` model with `cfg`'s optimizer, batch and autocast,
    after one untimed step: the step the training loop will take, on random tokens. Always eager, even when
    `cfg.compile` is on: compiling every rung timed would cost ~25 s apiece of the budget, and compile's gain
    (~1.15× at d192) is assumed to be a similar fraction at each rung, which the log-scale rule hardly notices."""
    from homegrown.train.loop import build_optimizer

    model = Transformer(model_cfg).to(device)
    optimizers = build_optimizer(model, cfg, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(cfg.seed)
    rows = cfg.batch_size * cfg.grad_accum
    tokens = torch.randint(model_cfg.vocab_size, (rows, cfg.seq_len + 1), generator=g).to(device)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        for micro in range(cfg.grad_accum):
            part = tokens[micro * cfg.batch_size:(micro + 1) * cfg.batch_size]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = model(part[:, :-1], part[:, 1:])
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def save(choice: ShapeChoice, path: Path) -> Path:
    return write_json_atomic(path, asdict(choice))


def load(path: Path, budget_minutes: float) -> ShapeChoice | None:
    """The shape a run chose for this budget, or None (none chosen yet, or chosen for another budget)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    choice = ShapeChoice(**{**data, "candidates": [Candidate(**c) for c in data["candidates"]]})
    return choice if choice.budget_minutes == budget_minutes else None
