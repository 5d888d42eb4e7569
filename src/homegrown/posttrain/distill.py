"""Logit distillation: train a student on a larger teacher's softened next-token distributions.

A hard label says only which token came next; the teacher's distribution also says which others were
plausible and how much, which is more signal per token (Hinton et al., 2015). The loss mixes both:
α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE, T² keeping the soft term's gradient scale independent of T.
Both models must share one tokenizer, since the KL compares them id by id; the student's checkpoints carry the
teacher's tokenizer files, chat format included, because it learns to answer the way the teacher does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from homegrown import layout
from homegrown.bundle import load_bundle
from homegrown.config import DistillConfig, ModelConfig, Preset
from homegrown.errors import HomegrownError
from homegrown.io import write_json_atomic
from homegrown.model import Transformer, cross_entropy
from homegrown.posttrain.sft import base_checkpoint
from homegrown.progress import console
from homegrown.tokenizer import load_tokenizer
from homegrown.train import checkpoint as ck
from homegrown.train.loop import Batch, LossFn, TrainResult, train


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens (where `mask` is 1) of KL(softmax(teacher/T) ‖ softmax(student/T))."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    if mask is None:
        return per_token.mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def distill_loss(teacher: Transformer, cfg: DistillConfig) -> LossFn:
    """The loop's loss hook: student and (frozen) teacher on the same batch, soft and hard terms mixed."""
    if not 0.0 <= cfg.alpha <= 1.0:
        raise HomegrownError(f"distill alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        raise HomegrownError(f"distill temperature must be > 0, got {cfg.temperature}")

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch[0], batch[1]
        mask = batch[2] if len(batch) > 2 else None
        segments = batch[3] if len(batch) > 3 else None
        logits = model(x, segments=segments)
        with torch.no_grad():
            teacher_logits = teacher(x, segments=segments)
        hard = cross_entropy(logits, y, mask)
        soft = soft_kl(logits, teacher_logits, cfg.temperature, mask)
        return cfg.alpha * cfg.temperature**2 * soft + (1 - cfg.alpha) * hard

    return loss


def check_same_tokenizer(teacher_ckpt: Path, tokenizer_path: Path, student: ModelConfig, teacher: ModelConfig) -> None:
    """Refuse a teacher whose token ids mean something else: the KL would compare unrelated tokens."""
    theirs = load_tokenizer(teacher_ckpt).get_vocab()
    ours = load_tokenizer(tokenizer_path).get_vocab()
    if theirs != ours or teacher.vocab_size != student.vocab_size:
        raise HomegrownError(
            f"teacher {teacher_ckpt} uses another tokenizer ({len(theirs)} tokens, vocab_size {teacher.vocab_size}) "
            f"than the student run ({len(ours)} tokens, vocab_size {student.vocab_size}); distillation compares "
            "token ids, so train the student run with the teacher's tokenizer.json")


def prepare_student_run(run_dir: Path, teacher_ckpt: Path, preset: Preset) -> Preset:
    """Give a new student run what distillation reads: the teacher's tokenizer (and chat files) as the run's, a
    corpus (the bundled one unless `data.source` says otherwise) and shards packed with that tokenizer.

    A run that already has a tokenizer keeps it (check_same_tokenizer then refuses a mismatch); a student that
    adopts the teacher's tokenizer gets its vocabulary size, since the preset's described a BPE this run will never
    train. The preset is recorded, so later commands on the run (eval, chat, serve) read the same model back.
    """
    from homegrown.pipeline import adopt_tokenizer, prepare_corpus, prepare_shards, record_preset

    run = layout.RunLayout(run_dir)
    if not run.tokenizer_done():
        teacher_vocab = ModelConfig.load(teacher_ckpt / ck.CONFIG).vocab_size
        if preset.model.vocab_size != teacher_vocab:
            console.print(f"distill: the student takes the teacher's tokenizer, so model.vocab_size "
                          f"{preset.model.vocab_size} → {teacher_vocab}")
            preset.model = replace(preset.model, vocab_size=teacher_vocab)
        run.root.mkdir(parents=True, exist_ok=True)
        adopt_tokenizer(teacher_ckpt, run.root)
    if run.latest(layout.DISTILL) is None:
        record_preset(preset, run.root)
    corpus = prepare_corpus(preset.data, run.corpus, preset.ingest)
    prepare_shards(corpus, run.tokenizer, run.shards, preset.data.mixture, preset.data.mixture_max_repeat)
    return preset


def distill(run_dir: Path, teacher_path: Path, preset: Preset, cfg: DistillConfig,
            progress: bool = True) -> TrainResult:
    """Train `preset`'s model in `run_dir/distill/ckpt` on the run's shards, matching the teacher's logits.

    A run directory as `teacher_path` means its pretrained model (`ckpt/`), not its chat model. A run without
    shards is prepared first (`prepare_student_run`): the teacher's tokenizer, a corpus, shards.

    Resumes like any training run; metrics go to metrics_distill.jsonl, validation is plain held-out loss, so
    it compares directly with a student trained without the teacher.
    """
    if preset.train.auto_shape:
        raise HomegrownError("train.auto_shape chooses a pretraining run's shape; a distilled student keeps the "
                             "preset's (or --set model.*): set train.auto_shape=false")
    run = layout.RunLayout(run_dir)
    tokenizer_path = run.tokenizer
    teacher_ckpt = base_checkpoint(teacher_path)
    if not run.shards_done():
        preset = prepare_student_run(run_dir, teacher_ckpt, preset)
    teacher_cfg = ModelConfig.load(teacher_ckpt / ck.CONFIG)
    check_same_tokenizer(teacher_ckpt, tokenizer_path, preset.model, teacher_cfg)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    teacher = load_bundle(teacher_ckpt, device).model.requires_grad_(False)
    console.print(f"distill: teacher {teacher_ckpt} ({teacher.num_params():,} parameters), α={cfg.alpha}, "
                  f"T={cfg.temperature}")
    write_json_atomic(run.stage_dir(layout.DISTILL) / "teacher.json",
                      {"teacher": str(teacher_ckpt), "alpha": cfg.alpha, "temperature": cfg.temperature})
    return train(preset.model, preset.train, run.shards, run.root, tokenizer_path, stage=layout.DISTILL,
                 progress=progress, loss_fn=distill_loss(teacher, cfg))
