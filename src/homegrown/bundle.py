"""A model is one bundle — weights + config + tokenizer + chat format — loaded by one function.

Samplers, the server, eval, SFT and export all need the same four things together, and a chat model is only
usable with the template and stop tokens it was tuned with; loading them apart invites pairing a model with the
wrong format. `load_bundle` accepts what every command accepts: a run directory, a `ckpt/` directory, a
`ckpt/step_N` checkpoint, or a transformers Llama directory (an export, or a model from elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from homegrown.chat_template import ChatFormat, ChatTemplate, read_chat_format
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.hf import load_hf
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import CONFIG, load_model, resolve_checkpoint


@dataclass
class ModelBundle:
    """Everything that makes a checkpoint a usable model; `path` is the checkpoint directory it came from."""

    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer
    chat: ChatFormat
    path: Path

    @property
    def template(self) -> ChatTemplate | None:
        return self.chat.template

    @property
    def stop_ids(self) -> list[int]:
        """EOS plus the end-of-turn token: generation stops at any of them."""
        return list(self.chat.stop_ids)

    @property
    def bos_id(self) -> int | None:
        return self.chat.bos_id

    @property
    def add_bos(self) -> bool:
        return self.chat.add_bos

    def encode(self, text: str) -> list[int]:
        """Text → ids exactly as written (no BOS added): special-token text becomes the special token."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_prompt_ids(self, text: str) -> list[int]:
        """A plain-text prompt's ids: the model's text BOS first when it has one (`ChatFormat.text_bos_id`)."""
        bos = self.chat.text_bos_id
        return ([] if bos is None else [bos]) + self.encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        return self.chat.render(messages, add_generation_prompt, tools)

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]],
                        tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """The ids a chat reply is generated after: the rendered conversation plus the generation prompt.
        As in `apply_chat_template`, BOS is there only if the template writes it."""
        return self.encode(self.render_chat(messages, tools=tools))


def is_hf_directory(path: Path) -> bool:
    """A transformers model directory (its config.json names a `model_type`; ours never does)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except ValueError:
        return False


def load_bundle(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ModelBundle:
    """The model at `path` in its inference layout, with its tokenizer and chat format.

    Weights are read on the CPU and cast to `dtype` (None: as stored) while moving to `device`, so a bf16
    GPU copy never holds an fp32 one beside it.
    """
    path = Path(path)
    if not path.exists():
        raise HomegrownError(f"no checkpoint found at {path} (it does not exist); pass a run directory, ckpt/step_N "
                             "or a transformers model directory")
    hf = is_hf_directory(path)
    ckpt = path if hf else resolve_checkpoint(path)
    model = load_hf(ckpt) if hf else load_model(ckpt)
    model = model.to(device=device, dtype=dtype).prepare_for_inference()
    tok = load_tokenizer(ckpt)
    return ModelBundle(model, model.cfg, tok, read_chat_format(ckpt, tok), ckpt)


def load_chat_format(path: Path) -> tuple[Tokenizer, ChatFormat]:
    """Tokenizer and chat format of the model at `path`, without its weights (for SFT data and distillation)."""
    path = Path(path)
    ckpt = path if is_hf_directory(path) else resolve_checkpoint(path)
    tok = load_tokenizer(ckpt)
    return tok, read_chat_format(ckpt, tok)
