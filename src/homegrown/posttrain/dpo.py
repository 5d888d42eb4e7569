"""Direct preference optimisation (Rafailov et al., 2023) through the same training loop as SFT.

The model learns to raise the log-probability of the chosen answer relative to a frozen reference (the starting
model) more than that of the rejected one: loss = −log σ(β·[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]).
The reference never changes, so its log-probabilities are computed once, before training, and stored with the run
(RUN/dpo/reference.safetensors): no second model sits in memory while training, as TRL's
`precompute_ref_log_probs`. The loss, its IPO and RPO variants and the logged metrics (`rewards/chosen`,
`rewards/rejected`, `rewards/margins`, `rewards/accuracies`) follow TRL's DPOTrainer, and
tests/posttrain/test_dpo_trl.py checks step by step that both train the same way.

An answer's log-probability is summed over its tokens as SFT's mask defines them, through the model's own chat
template: the reply and its end-of-turn token (TRL also counts what the template writes after the end of turn,
ChatML's newline; the check feeds TRL our tokenization for that reason).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from homegrown import layout
from homegrown.bundle import load_chat_format
from homegrown.chat_template import ChatFormat
from homegrown.config import DPOConfig, LoRAConfig, ModelConfig, TrainConfig
from homegrown.data.pack import token_byte_lengths
from homegrown.errors import HomegrownError
from homegrown.io import atomic_path, write_json_atomic
from homegrown.model import Transformer
from homegrown.posttrain.chat import encode_conversation, reserved_markers
from homegrown.posttrain.lora import parse_targets
from homegrown.posttrain.pairs import Pair, read_pairs
from homegrown.posttrain.sft import base_checkpoint, report_skipped, split_held_out
from homegrown.progress import console
from homegrown.train import checkpoint as ck
from homegrown.train import distributed
from homegrown.train.loop import Batch, LossFn, TrainResult, autocast_dtype, train
from homegrown.train.plots import plot_preference_metrics

LOSSES = ("sigmoid", "ipo")
REFERENCE = "reference.safetensors"
START = "start.json"


@dataclass
class EncodedPair:
    """Token ids of prompt + chosen and prompt + rejected, each with the mask of its answer's tokens."""

    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]


def _last_reply_only(mask: list[int]) -> list[int]:
    """Keep the final run of 1s: the answer being compared, not earlier assistant turns of the prompt."""
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [1 if start <= i < end else 0 for i in range(len(mask))]


def encode_pair(tok: Tokenizer, chat: ChatFormat, pair: Pair) -> EncodedPair:
    c = encode_conversation(tok, chat, pair.conversation(pair.chosen))
    r = encode_conversation(tok, chat, pair.conversation(pair.rejected))
    return EncodedPair(c.ids, _last_reply_only(c.mask), r.ids, _last_reply_only(r.mask))


class PairData:
    """Encoded pairs that fit the context, batched as (inputs, targets, masks, reference log-probs).

    Each tensor is (pairs, 2, L) — chosen then rejected — so a rank's slice of the batch keeps pairs whole; L is
    the longest sequence of the batch minus one (inputs and targets are the ids shifted by one).
    """

    def __init__(self, tok: Tokenizer, chat: ChatFormat, pairs: list[Pair], max_len: int) -> None:
        self.pad = chat.stop_ids[0] if chat.stop_ids else 0  # any id: padding is masked out of every sum
        self.pairs: list[Pair] = []
        self.items: list[EncodedPair] = []
        self.problems: list[str] = []
        for pair in pairs:
            enc = encode_pair(tok, chat, pair)
            longest = max(len(enc.chosen), len(enc.rejected))
            if longest > max_len + 1:
                self.problems.append(f"{pair.where}: prompt and answer take {longest} tokens, more than the "
                                     f"{max_len + 1} that fit the context")
                continue
            self.pairs.append(pair)
            self.items.append(enc)
        self.reference = torch.zeros(len(self.items), 2)

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """What the reference log-probs depend on besides the model: every pair's exact token ids and masks."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.chosen, it.chosen_mask, it.rejected, it.rejected_mask]).encode())
        return h.hexdigest()

    def batch(self, indices: list[int]) -> Batch:
        seqs = [(it.chosen, it.chosen_mask, it.rejected, it.rejected_mask) for it in (self.items[i] for i in indices)]
        width = max(len(s) for c, _, r, _ in seqs for s in (c, r)) - 1
        tokens = np.full((len(indices), 2, width + 1), self.pad, dtype=np.int64)
        mask = np.zeros_like(tokens)
        for row, (c, cm, r, rm) in enumerate(seqs):
            tokens[row, 0, :len(c)], mask[row, 0, :len(c)] = c, cm
            tokens[row, 1, :len(r)], mask[row, 1, :len(r)] = r, rm
        t = torch.from_numpy(tokens)
        return (t[..., :-1].contiguous(), t[..., 1:].contiguous(),
                torch.from_numpy(mask[..., 1:].astype(np.float32)), self.reference[indices])

    def sample(self, batch: int, seq_len: int, generator: torch.Generator) -> Batch:
        """Pairs drawn with the loop's per-step generator (so resume is exact); `seq_len` is the context bound
        the pairs were already fitted to."""
        return self.batch(self.sample_indices(batch, generator))

    def sample_indices(self, batch: int, generator: torch.Generator) -> list[int]:
        return torch.randint(len(self.items), (batch,), generator=generator).tolist()

    def sequential(self, batch: int, max_batches: int | None = None) -> Iterator[tuple[list[int], Batch]]:
        for n, start in enumerate(range(0, len(self.items), batch)):
            if max_batches is not None and n >= max_batches:
                return
            idx = list(range(start, min(start + batch, len(self.items))))
            yield idx, self.batch(idx)


def sequence_logps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of (…, L) inputs: the summed log-probability of the masked targets, and the per-token
    log-probabilities (…, L) themselves."""
    shape = x.shape
    logits = model(x.reshape(-1, shape[-1])).float()
    token_logps = -F.cross_entropy(logits.transpose(1, 2), y.reshape(-1, shape[-1]), reduction="none")
    token_logps = token_logps.view(shape) * mask
    return token_logps.sum(-1), token_logps


def preference_loss(logps: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, cfg: DPOConfig,
                    token_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL's DPO losses from (pairs, 2) policy and reference log-probs (chosen, rejected) and the (pairs, 2, L)
    answer masks; returns the mean loss and TRL's metrics for the batch."""
    ratios = logps - reference  # log π/π_ref, chosen and rejected
    delta = ratios[:, 0] - ratios[:, 1]
    if cfg.loss == "sigmoid":
        eps = cfg.label_smoothing
        per_pair = -(1 - eps) * F.logsigmoid(cfg.beta * delta) - eps * F.logsigmoid(-cfg.beta * delta)
    else:  # ipo: log-ratios averaged per answer token, as TRL computes it
        per_token = ratios / mask.sum(-1).clamp(min=1.0)
        per_pair = (per_token[:, 0] - per_token[:, 1] - 1 / (2 * cfg.beta)) ** 2
    loss = per_pair.mean()
    if cfg.rpo_alpha:
        if token_logps is None:
            raise HomegrownError("the RPO term needs the per-token log-probabilities")
        chosen_mask = mask[:, 0]
        loss = loss + cfg.rpo_alpha * -(token_logps[:, 0].sum() / chosen_mask.sum().clamp(min=1.0))
    rewards = cfg.beta * ratios.detach()
    metrics = {"rewards/chosen": rewards[:, 0].mean(), "rewards/rejected": rewards[:, 1].mean(),
               "rewards/margins": (rewards[:, 0] - rewards[:, 1]).mean(),
               "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).float().mean(),
               "logps/chosen": logps[:, 0].detach().mean(), "logps/rejected": logps[:, 1].detach().mean()}
    return loss, metrics


def check_config(cfg: DPOConfig) -> None:
    if cfg.loss not in LOSSES:
        raise HomegrownError(f"dpo.loss must be one of {', '.join(LOSSES)}, not {cfg.loss!r}")
    if cfg.beta <= 0:
        raise HomegrownError(f"dpo.beta must be > 0, got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise HomegrownError(f"dpo.label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.label_smoothing and cfg.loss != "sigmoid":
        raise HomegrownError("dpo.label_smoothing applies to the sigmoid loss only (conservative DPO)")
    if cfg.rpo_alpha < 0:
        raise HomegrownError(f"dpo.rpo_alpha must be >= 0, got {cfg.rpo_alpha}")


def dpo_loss(cfg: DPOConfig) -> LossFn:
    """The loop's loss hook: policy log-probs of both answers against the stored reference."""
    check_config(cfg)

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, mask, reference = batch
        logps, token_logps = sequence_logps(model, x, y, mask)
        return preference_loss(logps, reference, mask, cfg, token_logps)

    return loss


@torch.no_grad()
def compute_reference(model: Transformer, data: PairData, batch: int, device: torch.device,
                      amp: torch.dtype | None) -> torch.Tensor:
    """(pairs, 2) log-probs of each answer under `model`, in the autocast training will use."""
    model.eval()
    out = torch.zeros(len(data), 2)
    for idx, (x, y, mask, _) in data.sequential(batch):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logps, _ = sequence_logps(model, x.to(device), y.to(device), mask.to(device))
        out[idx] = logps.float().cpu()
    return out


def load_or_compute_reference(path: Path, start: Path, sets: dict[str, PairData], batch: int, device: torch.device,
                              amp: torch.dtype | None, write: bool) -> None:
    """Fill each set's `reference` from `path` when it was computed from the same start and tokens, else compute
    it with the start model (then freed) and store it (when `write`: rank 0)."""
    fingerprint = hashlib.sha256(json.dumps([str(start.resolve()), str(amp)] + [d.fingerprint() for d in
                                                                                sets.values()]).encode()).hexdigest()
    if path.is_file():
        stored = load_file(str(path))
        if all(name in stored for name in sets) and _stored_fingerprint(path) == fingerprint:
            for name, data in sets.items():
                data.reference = stored[name]
            console.print(f"dpo: reference log-probs from {path}")
            return
    model = ck.load_model(start, device)
    for data in sets.values():
        data.reference = compute_reference(model, data, batch, device, amp)
    del model
    if write:
        with atomic_path(path) as tmp:
            save_file({name: d.reference.contiguous() for name, d in sets.items()}, str(tmp),
                      metadata={"fingerprint": fingerprint, "start": str(start)})
    console.print(f"dpo: reference log-probs of {sum(len(d) for d in sets.values())} pairs computed once with {start}")


def _stored_fingerprint(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("fingerprint", "")


@torch.no_grad()
def evaluate_pairs(model: Transformer, data: PairData, cfg: DPOConfig, byte_lengths: torch.Tensor, batch: int,
                   max_batches: int | None) -> tuple[float, float, dict[str, float]]:
    """Held-out DPO loss, bits per byte of the chosen answers, and reward accuracy and margin."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = acc = margin = nll = 0.0
    n_pairs = n_bytes = 0
    for idx, batch_ in data.sequential(batch, max_batches):
        x, y, mask, reference = (t.to(device) for t in batch_)
        logps, token_logps = sequence_logps(model, x, y, mask)
        loss, metrics = preference_loss(logps, reference, mask, cfg, token_logps)
        loss_sum += float(loss) * len(idx)
        acc += float(metrics["rewards/accuracies"]) * len(idx)
        margin += float(metrics["rewards/margins"]) * len(idx)
        nll -= float(logps[:, 0].sum())
        n_bytes += int((byte_lengths[y[:, 0].cpu()] * mask[:, 0].cpu()).sum())
        n_pairs += len(idx)
    model.train(was_training)
    return (loss_sum / n_pairs, nll / math.log(2) / max(n_bytes, 1),
            {"val_rewards/accuracies": acc / n_pairs, "val_rewards/margins": margin / n_pairs})


def dpo_train_config(train_cfg: TrainConfig, cfg: DPOConfig, model_cfg: ModelConfig) -> TrainConfig:
    """The preset's TrainConfig with the DPO schedule; sequences no longer than the model's context."""
    return replace(train_cfg, max_steps=cfg.max_steps, lr=cfg.lr, optimizer=cfg.optimizer,
                   warmup_steps=cfg.warmup_steps,
                   batch_size=cfg.batch_size, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches,
                   ckpt_every=cfg.ckpt_every, seq_len=min(train_cfg.seq_len, model_cfg.max_seq_len), grad_accum=1,
                   budget_minutes=0.0, auto_shape=False, z_loss=0.0)  # z_loss: DPO has a loss of its own


def start_checkpoint(run_dir: Path, base: Path) -> Path:
    """The model DPO starts from (and that is the reference): the one recorded when this DPO run began, else
    `base` — a checkpoint, or a run directory's chat model (its SFT), else its pretrained model."""
    recorded = layout.RunLayout(run_dir).stage_dir(layout.DPO) / START
    if recorded.is_file():
        return Path(json.loads(recorded.read_text())["start"])
    base = Path(base)
    if (base / ck.WEIGHTS).exists():
        return base
    return layout.RunLayout(base).latest(layout.SFT) or base_checkpoint(base)


def dpo(base: Path, data: Path, run_dir: Path, cfg: DPOConfig, train_cfg: TrainConfig,
        lora: LoRAConfig | None = None, val: Path | None = None, strict: bool = False,
        progress: bool = True) -> TrainResult:
    """Tune the model at `base` (a run's chat model) on preference pairs into `run_dir/dpo/ckpt` (resuming).

    Writes metrics_dpo.jsonl (TRL's metric names), loss_dpo.png and rewards_dpo.png in `run_dir`. Validation is
    on `val`, or on 1 in 20 pairs of `data` (then not trained on).
    """
    check_config(cfg)
    if lora is not None and lora.rank > 0:
        parse_targets(lora.targets)  # before the reference pass, not after it
    run = layout.RunLayout(run_dir)
    start = start_checkpoint(run_dir, base)
    model_cfg = ModelConfig.load(start / ck.CONFIG)
    tok, chat = load_chat_format(start)
    reserved = reserved_markers(tok)
    read = read_pairs(data, strict, reserved)
    report_skipped(read.problems, "malformed preference lines")
    if val is not None:
        val_read = read_pairs(val, strict, reserved)
        report_skipped(val_read.problems, "malformed held-out preference lines")
        train_pairs, val_pairs = read.pairs, val_read.pairs
    else:
        train_pairs, val_pairs = split_held_out(read.pairs, Pair.key)
        console.print(f"no --val file: holding out {len(val_pairs)} of {len(read.pairs)} pairs")
    tcfg = dpo_train_config(train_cfg, cfg, model_cfg)
    train_data = PairData(tok, chat, train_pairs, tcfg.seq_len)
    val_data = PairData(tok, chat, val_pairs, tcfg.seq_len)
    report_skipped(train_data.problems + val_data.problems, "pairs that do not fit the context", hint="")
    if not len(train_data) or not len(val_data):
        which = "training" if not len(train_data) else "validation"
        raise HomegrownError(f"no preference pair for {which} fits {tcfg.seq_len} tokens; use shorter prompts and "
                             "answers or a model with a longer context")
    console.print(f"dpo: {len(train_data):,} training pairs, {len(val_data):,} held out; β={cfg.beta}, "
                  f"loss {cfg.loss}, start {start}")

    env = distributed.init_distributed()
    if env.is_main:
        stage = run.stage_dir(layout.DPO)
        stage.mkdir(parents=True, exist_ok=True)
        if not (stage / START).is_file():
            write_json_atomic(stage / START, {"start": str(start.resolve()), "data": str(Path(data).resolve())})
    amp = autocast_dtype(tcfg.dtype, env.device)
    load_or_compute_reference(run.stage_dir(layout.DPO) / REFERENCE, start, {"train": train_data, "val": val_data},
                              tcfg.batch_size, env.device, amp, write=env.is_main)
    byte_lengths = torch.from_numpy(token_byte_lengths(tok))

    def eval_fn(model: Transformer) -> tuple[float, float, dict[str, float]]:
        return evaluate_pairs(model, val_data, cfg, byte_lengths, tcfg.batch_size, tcfg.eval_batches)

    result = train(model_cfg, tcfg, None, run_dir, start / ck.TOKENIZER, init_from=start,
                   batch_source=train_data.sample, stage=layout.DPO, progress=progress, loss_fn=dpo_loss(cfg),
                   eval_fn=eval_fn, lora=lora)
    if env.is_main:
        plot_preference_metrics(run.metrics(layout.DPO), run.root / "rewards_dpo.png", title=f"dpo — {run.root.name}")
    return result
