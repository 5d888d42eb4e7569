"""Evaluate one checkpoint on the whole card: held-out bits-per-byte plus every task, cached in eval/<name>.json.

A run directory holds several models — the pretrained base in `ckpt/`, a chat model in `sft/ckpt/`, maybe
`distill/ckpt/` — and `find_models` names each by its stage, so a report can put them side by side. Results
are cached by a fingerprint of the weights, the task files and the validation text: `homegrown run` re-run
after a crash, or a report over five models where one changed, only evaluates what is new.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from homegrown import layout
from homegrown.bundle import load_bundle
from homegrown.chat_template import CHAT_FILES
from homegrown.data.corpus import list_shards
from homegrown.errors import HomegrownError
from homegrown.eval.perplexity import evaluate_split
from homegrown.eval.tasks import LocalModel, Task, evaluate_task
from homegrown.io import write_json_atomic
from homegrown.progress import console
from homegrown.train import checkpoint as ck

EVAL_FORMAT = "2"
"""Bumped whenever scoring or the record's fields change, so older cached results are recomputed."""
CHAT_STAGES = (layout.SFT, layout.DPO)
"""Stages whose models are asked generation questions through the chat template (DPO tunes the SFT model)."""


@dataclass
class ModelSpec:
    """One checkpoint to evaluate and where it sits: `stage` is `base` for ckpt/, else the sub-directory name."""

    name: str
    checkpoint: Path
    stage: str
    run_dir: Path | None

    @property
    def chat(self) -> bool:
        return self.stage in CHAT_STAGES

    @property
    def metrics_file(self) -> Path | None:
        """The training log that `train/loop.py` wrote for this stage (metrics.jsonl or metrics_<stage>.jsonl)."""
        if self.run_dir is None:
            return None
        path = layout.RunLayout(self.run_dir).metrics(self.stage)
        return path if path.exists() else None


def _spec_for(ckpt: Path) -> ModelSpec:
    """Name a checkpoint by where it sits (homegrown.layout.locate): `run/base` for run/ckpt/step_N, `run/sft`
    for run/sft/ckpt/step_N …; a checkpoint outside a run is just a model directory."""
    ckpt = ckpt.resolve()
    place = layout.locate(ckpt)
    if place is None:
        return ModelSpec(ckpt.name, ckpt, "model", None)
    run, stage = place
    return ModelSpec(f"{run.root.name}/{stage}", ckpt, stage, run.root)


def find_models(path: Path) -> list[ModelSpec]:
    """Every model a path stands for: a checkpoint directory is one; a run directory is its base model plus
    each `<stage>/ckpt/` inside it (newest checkpoint of each)."""
    path = Path(path)
    if not path.exists():
        raise HomegrownError(f"{path} does not exist; pass a run directory or a checkpoint directory")
    if (path / ck.WEIGHTS).exists():
        return [_spec_for(path)]
    if path.name == layout.CKPT and (latest := layout.latest_checkpoint(path)) is not None:
        return [_spec_for(latest)]
    run = layout.RunLayout(path)
    specs = [_spec_for(ckpt) for stage in run.trained_stages() if (ckpt := run.latest(stage)) is not None]
    if not specs:
        raise HomegrownError(f"no checkpoints under {path}; train one with `homegrown run` or point at ckpt/step_N")
    return specs


def default_corpus(spec: ModelSpec) -> Path:
    """The run's own held-out split when it has one, else the bundled corpus's."""
    corpus = layout.RunLayout(spec.run_dir).corpus if spec.run_dir is not None else None
    if corpus is not None and all(shard["val"].exists() for shard in list_shards(corpus)):
        return corpus
    return layout.SAMPLE_DIR


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(spec: ModelSpec, tasks: list[Task], corpus: Path) -> dict[str, str]:
    return {"format": EVAL_FORMAT, "weights": _sha256(spec.checkpoint / ck.WEIGHTS),
            "corpus_val": ":".join(_sha256(shard["val"]) for shard in list_shards(corpus)), "chat": str(spec.chat),
            "chat_format": ":".join(_sha256(spec.checkpoint / f) for f in CHAT_FILES
                                    if (spec.checkpoint / f).is_file()),
            **{f"task:{t.name}": f"{_sha256(t.path)}:{len(t.items)}" for t in tasks}}


def tokens_trained(ckpt: Path) -> int | None:
    """Tokens this stage trained on: tokens per step × step, from the checkpoint's train_info.json."""
    info_path = ckpt / ck.TRAIN_INFO
    if not info_path.exists() or not ckpt.name.startswith("step_"):
        return None
    info = json.loads(info_path.read_text())
    per_step = info.get("tokens_per_step")
    return int(per_step) * int(ckpt.name.removeprefix("step_")) if per_step else None


def default_eval_dir(spec: ModelSpec) -> Path:
    return layout.RunLayout(spec.run_dir).eval_dir if spec.run_dir else spec.checkpoint / "eval"


def eval_file(spec: ModelSpec, eval_dir: Path | None = None) -> Path:
    label = spec.name.split("/")[-1]
    return (eval_dir or default_eval_dir(spec)) / f"{label}-{spec.checkpoint.name}.json"


def evaluate_model(spec: ModelSpec, tasks: list[Task], eval_dir: Path | None = None, corpus: Path | None = None,
                   batch_size: int = 32, reuse: bool = True) -> dict:
    """Bits per byte on the whole held-out split and every task's score for one checkpoint; written to
    `eval_dir/<stage>-step_N.json` and reused when weights, tasks and text are unchanged."""
    corpus = corpus or default_corpus(spec)
    out = eval_file(spec, eval_dir)
    stamp = fingerprint(spec, tasks, corpus)
    if reuse and out.exists():
        cached = json.loads(out.read_text())
        if cached.get("fingerprint") == stamp:
            console.print(f"eval: reusing {out}")
            return cached
    t0 = time.perf_counter()
    bundle = load_bundle(spec.checkpoint)
    model, tok = bundle.model, bundle.tokenizer
    console.print(f"eval: {spec.name} ({model.num_params():,} parameters) on {len(tasks)} tasks")
    val = evaluate_split(model, tok, corpus)
    console.print(f"  held-out bits/byte {val.bpb:.3f} over {val.bytes:,} bytes ({time.perf_counter() - t0:.0f} s)")
    lm = LocalModel(bundle, spec.name, batch_size=batch_size, chat=spec.chat)
    results = {}
    for task in tasks:
        t_task = time.perf_counter()
        r = evaluate_task(task, lm)
        results[task.name] = {**asdict(r), "seconds": time.perf_counter() - t_task}
        console.print(f"  {task.name:<18} {r.metric} {r.score:.3f}  (chance {r.chance:.3f}, n={r.n}, {r.mode}, "
                      f"{results[task.name]['seconds']:.0f} s)")
    record = {"name": spec.name, "stage": spec.stage, "checkpoint": str(spec.checkpoint),
              "params": model.num_params(), "tokens_trained": tokens_trained(spec.checkpoint),
              "context": model.cfg.max_seq_len, "vocab_size": model.cfg.vocab_size,
              "val": {"corpus": str(corpus), "bpb": val.bpb, "loss": val.loss, "tokens": val.tokens,
                      "bytes": val.bytes},
              "tasks": results, "metrics_file": str(spec.metrics_file) if spec.metrics_file else None,
              "seconds": time.perf_counter() - t0, "fingerprint": stamp}
    write_json_atomic(out, record)
    return record
