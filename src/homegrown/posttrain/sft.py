"""Supervised fine-tuning on chat JSONL, through the same training loop as pretraining.

Conversations are packed several per row: a chat turn is ~100 tokens and a row 256+, so one per row would
spend most of each step on padding. Packing does not let conversations see each other — the model gets
segment ids, attends block-diagonally and restarts RoPE positions per conversation (model.segment_layout) —
so a packed conversation trains exactly as it would alone. The loss covers assistant replies only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from homegrown import layout
from homegrown.bundle import load_chat_format
from homegrown.chat_template import ChatFormat
from homegrown.config import LoRAConfig, ModelConfig, SFTConfig, TrainConfig
from homegrown.data.pack import token_byte_lengths
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.posttrain.chat import EncodedChat, encode_conversation, read_chat_jsonl, reserved_markers
from homegrown.progress import console
from homegrown.train import checkpoint as ck
from homegrown.train.loop import TrainResult, train

VAL_EVERY = 20
"""Without --val, one conversation in VAL_EVERY (chosen by content hash) is held out for validation."""

T = TypeVar("T")


@dataclass
class PackStats:
    conversations: int
    truncated: int
    dropped: int


class NoChatFits(HomegrownError):
    """Not one conversation keeps a whole assistant reply within the context: there is nothing to tune on."""


class PackedChats:
    """Tokenized conversations that pack into rows of `seq_len + 1` tokens with loss masks and segment ids."""

    def __init__(self, tok: Tokenizer, chat: ChatFormat, conversations: list[list[dict[str, str]]],
                 seq_len: int) -> None:
        self.row_len = seq_len + 1
        self.pad = chat.stop_ids[0] if chat.stop_ids else 0  # any id: padding is neither attended nor learned
        self.items: list[EncodedChat] = []
        truncated = dropped = 0
        for messages in conversations:
            enc, cut = self._fit(tok, chat, messages)
            if enc is None:
                dropped += 1
                continue
            truncated += cut
            self.items.append(enc)
        self.stats = PackStats(len(self.items), truncated, dropped)
        if not self.items:
            raise NoChatFits(f"no conversation has a whole assistant reply within {seq_len} tokens; "
                                 "use shorter conversations or a model with a longer context")

    def _fit(self, tok: Tokenizer, chat: ChatFormat,
             messages: list[dict[str, str]]) -> tuple[EncodedChat | None, bool]:
        """The conversation, or its longest prefix ending with an assistant turn, that fits in a row; and whether
        it was cut. Cutting inside a reply would teach answers that never reach the end of turn, so it never is.
        """
        for end in range(len(messages), 0, -1):
            if messages[end - 1]["role"] == "assistant":
                enc = encode_conversation(tok, chat, messages[:end])
                if len(enc.ids) <= self.row_len:
                    return enc, end < len(messages)
        return None, False

    def _rows(self, groups: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """(inputs, targets, loss_mask, segments), each (len(groups), seq_len), from groups of item indices."""
        tokens = np.full((len(groups), self.row_len), self.pad, dtype=np.int64)
        learn = np.zeros_like(tokens)
        seg = np.full_like(tokens, -1)
        for r, group in enumerate(groups):
            pos = 0
            for s, i in enumerate(group):
                item = self.items[i]
                n = len(item.ids)
                tokens[r, pos:pos + n], learn[r, pos:pos + n], seg[r, pos:pos + n] = item.ids, item.mask, s
                pos += n
        same = seg[:, 1:] == seg[:, :-1]  # never learn a target that belongs to the next conversation
        x, y = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:])
        mask = torch.from_numpy((learn[:, 1:] * same).astype(np.float32))
        return x, y, mask, torch.from_numpy(seg[:, :-1])

    def sample(self, batch: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Random conversations, drawn with the loop's per-step generator (so resume is exact), packed in order."""
        if seq_len + 1 != self.row_len:
            raise HomegrownError(f"packed for seq_len {self.row_len - 1}, asked for {seq_len}")
        groups: list[list[int]] = [[]]
        used = 0
        while True:
            i = int(torch.randint(len(self.items), (1,), generator=generator))
            n = len(self.items[i].ids)
            if used + n > self.row_len:
                if len(groups) == batch:
                    break
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += n
        return self._rows(groups)

    def sequential(self, batch: int, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """All conversations in file order, packed first-come: the same validation rows at every eval."""
        groups: list[list[int]] = [[]]
        used = 0
        produced = 0
        for i, item in enumerate(self.items):
            if used + len(item.ids) > self.row_len:
                groups.append([])
                used = 0
                if len(groups) > batch:
                    yield self._rows(groups[:batch])
                    produced += 1
                    if max_batches is not None and produced >= max_batches:
                        return
                    groups = groups[batch:]
            groups[-1].append(i)
            used += len(item.ids)
        yield self._rows(groups)


@torch.no_grad()
def assistant_loss(model: Transformer, data: PackedChats, byte_lengths: torch.Tensor, batch: int,
                   max_batches: int | None) -> tuple[float, float]:
    """Mean loss (nats/token) and bits per byte over the assistant tokens of held-out conversations."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll_sum, n_tokens, n_bytes = 0.0, 0.0, 0
    for x, y, mask, seg in data.sequential(batch, max_batches):
        x, y, mask, seg = x.to(device), y.to(device), mask.to(device), seg.to(device)
        logits = model(x, segments=seg).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        nll_sum += float((nll * mask.reshape(-1)).sum())
        n_tokens += float(mask.sum())
        n_bytes += int((byte_lengths[y.cpu()] * mask.cpu()).sum())
    model.train(was_training)
    return nll_sum / max(n_tokens, 1.0), nll_sum / math.log(2) / max(n_bytes, 1)


def split_held_out(items: list[T], hex_key: Callable[[T], str]) -> tuple[list[T], list[T]]:
    """(train, val) without a --val file: one item in VAL_EVERY by the first 8 hex digits of its content hash, so
    the split does not move when lines are added or reordered; at least one item is held out."""
    held = [int(hex_key(item)[:8], 16) % VAL_EVERY == 0 for item in items]
    train = [item for item, h in zip(items, held, strict=True) if not h]
    val = [item for item, h in zip(items, held, strict=True) if h]
    return train, val or items[:1]


def _messages_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


SFT_HINT = " (use --strict to stop at the first)"


def report_skipped(problems: list[str], what: str,
                   hint: str = " (use --strict to stop at the first malformed line)") -> None:
    """Print the lines a fine-tuning stage skipped (the first ten, then a count): SFT and DPO say the same way
    what they left out, so nothing is dropped silently."""
    if not problems:
        return
    console.print(f"skipped {len(problems)} {what}{hint}:")
    for p in problems[:10]:
        console.print(f"  {p}", highlight=False, markup=False)
    if len(problems) > 10:
        console.print(f"  … and {len(problems) - 10} more")


def sft_train_config(train_cfg: TrainConfig, sft_cfg: SFTConfig, model_cfg: ModelConfig) -> TrainConfig:
    """The preset's TrainConfig with the SFT schedule; rows no longer than the model's context."""
    return replace(train_cfg, max_steps=sft_cfg.max_steps, lr=sft_cfg.lr, optimizer=sft_cfg.optimizer,
                   warmup_steps=sft_cfg.warmup_steps,
                   batch_size=sft_cfg.batch_size, eval_every=sft_cfg.eval_every, eval_batches=sft_cfg.eval_batches,
                   ckpt_every=sft_cfg.ckpt_every, seq_len=min(train_cfg.seq_len, model_cfg.max_seq_len),
                   grad_accum=1, budget_minutes=0.0, auto_shape=False)


def base_checkpoint(path: Path) -> Path:
    """The checkpoint SFT starts from: a run dir means its pretrained model (`ckpt/`), not an earlier SFT."""
    path = Path(path)
    base_root = layout.RunLayout(path).ckpt_root()
    if not (path / ck.WEIGHTS).exists() and base_root.is_dir():
        return ck.resolve_checkpoint(base_root)
    return ck.resolve_checkpoint(path)


def default_run_dir(base: Path) -> Path:
    """Where SFT of `base` writes: the run dir itself, or the run dir holding `RUN/ckpt/step_N`."""
    base = Path(base)
    if (base / ck.WEIGHTS).exists():
        place = layout.locate(base)
        if place is not None:
            return place[0].root
        raise HomegrownError(f"{base} is a checkpoint outside a run directory; pass --out RUN_DIR for the SFT run")
    return base


def sft(base: Path, data: Path, run_dir: Path, sft_cfg: SFTConfig, train_cfg: TrainConfig,
        val: Path | None = None, strict: bool = False, progress: bool = True,
        lora: LoRAConfig | None = None) -> TrainResult:
    """Fine-tune the newest checkpoint at `base` on chat JSONL into `run_dir/sft/ckpt` (resuming if present);
    with `lora` (rank > 0) only low-rank adapters train (posttrain.lora).

    Writes metrics_sft.jsonl and loss_sft.png in `run_dir`. Validation is the assistant-token loss on `val`, or
    on 1 in 20 conversations of `data` (then not trained on) when no `val` file is given.
    """
    ckpt = base_checkpoint(base)
    model_cfg = ModelConfig.load(ckpt / ck.CONFIG)
    tok, chat = load_chat_format(ckpt)
    reserved = reserved_markers(tok)
    chats = read_chat_jsonl(data, strict, reserved)
    report_skipped(chats.problems, "malformed chat lines", SFT_HINT)
    if val is not None:
        val_file = read_chat_jsonl(val, strict, reserved)
        report_skipped(val_file.problems, "malformed chat lines", SFT_HINT)
        train_convs, val_convs = chats.conversations, val_file.conversations
    else:
        train_convs, val_convs = split_held_out(chats.conversations, _messages_hash)
        console.print(f"no --val file: holding out {len(val_convs)} of {len(chats.conversations)} conversations")
    cfg = sft_train_config(train_cfg, sft_cfg, model_cfg)
    train_data = PackedChats(tok, chat, train_convs, cfg.seq_len)
    val_data = PackedChats(tok, chat, val_convs, cfg.seq_len)
    s = train_data.stats
    console.print(f"sft: {s.conversations:,} training conversations ({s.truncated} cut to their first turns and "
                  f"{s.dropped} dropped to fit {cfg.seq_len} tokens), {val_data.stats.conversations:,} held out")
    byte_lengths = torch.from_numpy(token_byte_lengths(tok))

    def eval_fn(model: Transformer) -> tuple[float, float]:
        return assistant_loss(model, val_data, byte_lengths, cfg.batch_size, cfg.eval_batches)

    return train(model_cfg, cfg, None, run_dir, ckpt / ck.TOKENIZER, init_from=ckpt,
                 batch_source=train_data.sample, stage=layout.SFT, progress=progress,
                 eval_fn=eval_fn, lora=lora)
