"""The run directory's layout: the one module that knows where each stage writes and how to tell it is done.

```
RUN/
  preset.json                 the full resolved preset (config.Preset); later commands on RUN read it back
  corpus/                     train/val.jsonl.gz + manifest (data.ingest); MANIFEST.json, written last = complete
  tokenizer.json              the run's BPE; copied into every checkpoint
  shards/                     packed tokens (data.pack); index.json, written last = complete
  ckpt/step_N/                the pretrained ("base") model; metrics.jsonl, loss_pretrain.png beside RUN
  budget.json                 the step count `train.budget_minutes` chose (train.budget), kept for resumes
  sft/data/                   chat data cut from the corpus (posttrain.docqa); MANIFEST.json last = complete
  sft/ckpt/step_N/            the chat model; metrics_sft.jsonl, loss_sft.png
  distill/ckpt/step_N/        a distilled student (distill/teacher.json says from what); metrics_distill.jsonl
  dpo/ckpt/step_N/            the preference-tuned chat model (dpo/start.json: from what; reference.safetensors:
                              the start model's log-probs of every pair); metrics_dpo.jsonl, rewards_dpo.png
  eval/                       cached per-model scores (eval.suite)
  report.md                   the report card (eval.report; .json and charts beside it)
  conversations.sqlite        the chat page's conversations (serve)
```

A stage's checkpoints are `step_N` directories, finished by one rename (homegrown.io), so a listing never sees
half of one. What is *inside* a checkpoint (weights, config, …) belongs to the checkpoint module. Paths given
on the command line (a run, a `ckpt/` directory, one `step_N`) are mapped back onto this layout by `locate`.
A leaf module: it imports nothing from homegrown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
"""The bundled corpus: copied into RUN/corpus when no source is given, and the held-out text of last resort."""

PRESET = "preset.json"
CORPUS = "corpus"
MANIFEST = "MANIFEST.json"
"""Written last into a corpus directory (and into chat data): its presence means the directory is complete."""
TOKENIZER = "tokenizer.json"
"""The run's tokenizer, and the same file name inside each checkpoint, so either loads with load_tokenizer(dir)."""
SHARDS = "shards"
SHARD_INDEX = "index.json"
CKPT = "ckpt"
STEP_DIR = re.compile(r"^step_(\d+)$")

BASE = "base"
"""The pretrained model's stage: its checkpoints are RUN/ckpt, every later stage's RUN/<stage>/ckpt."""
SFT = "sft"
DISTILL = "distill"
DPO = "dpo"
POSTTRAIN_STAGES = (SFT, DISTILL, DPO)
FINAL_STAGES = (DPO, SFT, BASE)
"""Where a run's final model is looked for, first found wins: the chat model is what chat/serve/export want (the
preference-tuned one when the run has it: DPO starts from the SFT model)."""


def step_dir(ckpt_root: Path, step: int) -> Path:
    return Path(ckpt_root) / f"step_{step}"


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary directories are ignored by name)."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1] if ckpts else None


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run directory; nothing is created by asking."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def preset(self) -> Path:
        return self.root / PRESET

    @property
    def corpus(self) -> Path:
        return self.root / CORPUS

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER

    @property
    def shards(self) -> Path:
        return self.root / SHARDS

    @property
    def shard_index(self) -> Path:
        return self.shards / SHARD_INDEX

    @property
    def sft_data(self) -> Path:
        return self.root / SFT / "data"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def conversations_db(self) -> Path:
        return self.root / "conversations.sqlite"

    @property
    def audit_png(self) -> Path:
        return self.root / "audit.png"

    def stage_dir(self, stage: str = BASE) -> Path:
        return self.root if stage == BASE else self.root / stage

    def ckpt_root(self, stage: str = BASE) -> Path:
        return self.stage_dir(stage) / CKPT

    def metrics(self, stage: str = BASE) -> Path:
        """The training log train/loop.py appends to (one JSON line per logged step)."""
        return self.root / ("metrics.jsonl" if stage == BASE else f"metrics_{stage}.jsonl")

    def loss_png(self, stage: str = BASE) -> Path:
        return self.root / ("loss_pretrain.png" if stage == BASE else f"loss_{stage}.png")

    def budget(self, stage: str = BASE) -> Path:
        """The step count a wall-clock budget chose (train/budget.py), written before the first checkpoint."""
        return self.root / ("budget.json" if stage == BASE else f"budget_{stage}.json")

    @property
    def shape(self) -> Path:
        """The model shape a budget chose (train/shape.py, `train.auto_shape`), written before training starts."""
        return self.root / "shape.json"

    def grads(self, step: int) -> Path:
        return self.root / "grads" / f"step_{step}.safetensors"

    # ---- is this stage done ----

    def corpus_done(self) -> bool:
        return (self.corpus / MANIFEST).exists()

    def tokenizer_done(self) -> bool:
        return self.tokenizer.is_file()

    def shards_done(self) -> bool:
        return self.shard_index.is_file()

    def sft_data_done(self) -> bool:
        return (self.sft_data / MANIFEST).exists()

    def latest(self, stage: str = BASE) -> Path | None:
        """The newest finished checkpoint of `stage`, None before its first one."""
        return latest_checkpoint(self.ckpt_root(stage))

    def trained_stages(self) -> list[str]:
        """Stages with at least one checkpoint: `base` first, then every `<stage>/ckpt` by name."""
        stages = [BASE] if self.latest(BASE) else []
        if self.root.is_dir():
            stages += [p.name for p in sorted(self.root.iterdir())
                       if p.is_dir() and p.name != CKPT and self.latest(p.name)]
        return stages

    def final_checkpoint(self) -> Path | None:
        """The run's final model: the newest chat checkpoint, else the newest pretrained one."""
        return next((ck for stage in FINAL_STAGES if (ck := self.latest(stage)) is not None), None)


def _looks_like_run(path: Path) -> bool:
    return (path / TOKENIZER).exists() or (path / CKPT).is_dir()


def locate(path: Path) -> tuple[RunLayout, str] | None:
    """The run and stage a checkpoint path belongs to, or None when it is not under a run's `ckpt/`.

    `RUN/ckpt/step_N` and `RUN/ckpt` are the run's base model; `RUN/<stage>/ckpt[/step_N]` a later stage (sft,
    distill …). A `<dir>/ckpt` whose `<dir>` is neither a known stage nor inside a run is a run of its own.
    """
    path = Path(path).resolve()
    if STEP_DIR.match(path.name) and path.parent.name == CKPT:
        path = path.parent
    if path.name != CKPT:
        return None
    owner = path.parent
    if owner.name in POSTTRAIN_STAGES or _looks_like_run(owner.parent):
        return RunLayout(owner.parent), owner.name
    return RunLayout(owner), BASE


def run_dir_of(path: Path) -> Path:
    """The run directory a path belongs to: the run of a checkpoint (of any stage) or `ckpt/` directory, else the
    path itself (a run directory, an exported model)."""
    place = locate(path)
    return place[0].root if place else Path(path).resolve()
