"""Checkpoints in the DESIGN.md format, written so a crash can never leave a half checkpoint that looks whole.

`ckpt/step_N/` holds model.safetensors + config.json + tokenizer.json + the chat format as Hugging Face files
(tokenizer_config.json, generation_config.json) — everything needed to serve or export — and what only resume
needs: trainer_state.pt (step, RNG, world size) and `dcp/`, the model and optimizer state as a
`torch.distributed.checkpoint` — sharded per rank, and re-sharded on load, so a run saved by 2 ranks resumes on
1 or 8, or without torchrun at all. The directory is assembled under a temporary name and renamed into place,
which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from homegrown import layout
from homegrown.chat_template import copy_tokenizer_files
from homegrown.config import LoRAConfig, ModelConfig
from homegrown.errors import HomegrownError
from homegrown.io import atomic_path, finish_dir, start_dir, temp_dir_of
from homegrown.layout import latest_checkpoint, list_checkpoints
from homegrown.model import Transformer
from homegrown.posttrain import lora as lora_mod
from homegrown.train import distributed
from homegrown.train.distributed import DistEnv

# What a checkpoint directory holds; these names are the checkpoint's own, spelled only here.
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = layout.TOKENIZER
TRAIN_INFO = "train_info.json"
TRAINER_STATE = "trainer_state.pt"
SHARDED = "dcp"


def weights_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Model tensors for safetensors: contiguous CPU copies, the tied head stored once (as the embedding)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(ckpt_root: Path, step: int, model: Transformer, tokenizer_path: Path,
                    trainer_state: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    keep: int = 0) -> Path:
    """Write `ckpt_root/step_<step>` atomically; prune to the newest `keep` checkpoints when keep > 0."""
    final = layout.step_dir(ckpt_root, step)
    tmp = start_dir(final)
    save_file(weights_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt", "step": str(step)})
    _finish(tmp, final, model.cfg, tokenizer_path, trainer_state, extra, keep)
    return final


def _finish(tmp: Path, final: Path, cfg: ModelConfig, tokenizer_path: Path, trainer_state: dict[str, Any] | None,
            extra: dict[str, Any] | None, keep: int) -> None:
    """Add what serving and resume need beside the weights, then rename into place and prune old ones."""
    (tmp / CONFIG).write_text(json.dumps(asdict(cfg), indent=2))
    copy_tokenizer_files(tokenizer_path, tmp)
    if extra:
        (tmp / TRAIN_INFO).write_text(json.dumps(extra, indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    finish_dir(tmp, final)
    if keep > 0:
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns when used without a process group; a single-process run does that on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _full_weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights (only the trainable ones: adapters); a collective under FSDP (every rank calls it,
    rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=trainable_only))
    state = {k: v.contiguous() for k, v in state.items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _state_options(adapters: AdapterInfo | None) -> Any:
    """DCP state-dict options: an adapter run saves and restores only what trains (adapters + their optimizer);
    the frozen base weights it leaves out come from the base checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=adapters is not None, strict=adapters is None)


@dataclass
class AdapterInfo:
    """What an adapter (LoRA) run's checkpoints record: the settings and the base checkpoint they adapt."""

    lora: LoRAConfig
    base: Path


def save_training_checkpoint(ckpt_root: Path, step: int, model: torch.nn.Module,
                             optimizers: list[torch.optim.Optimizer], tokenizer_path: Path,
                             trainer_state: dict[str, Any], env: DistEnv, extra: dict[str, Any] | None = None,
                             keep: int = 0, full_weights: bool = True, adapters: AdapterInfo | None = None) -> Path:
    """A resumable checkpoint, called by every rank: DCP shards from each, the rest from rank 0.

    `full_weights=False` skips gathering model.safetensors — for models too large for one host's memory;
    `consolidate()` writes it later from the shards. With `adapters` only the adapters (and their optimizer
    state) are saved — adapter.safetensors, a few MB — and model.safetensors, when written, holds the merged
    weights, so the checkpoint serves and exports like any other.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = layout.step_dir(ckpt_root, step)
    tmp = start_dir(final) if env.is_main else temp_dir_of(final)
    distributed.barrier(env)
    model_state, optim_state = get_state_dict(model, optimizers, options=_state_options(adapters))
    with _single_process_ok():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / SHARDED,
                 no_dist=not env.distributed)
    adapter = _full_weights(model, trainable_only=True) if adapters is not None else None
    weights = _full_weights(model) if full_weights else None
    if env.is_main:
        if adapter is not None and adapters is not None:
            save_file(adapter, str(tmp / lora_mod.ADAPTER_WEIGHTS), metadata={"format": "pt", "step": str(step)})
            (tmp / lora_mod.ADAPTER_CONFIG).write_text(json.dumps(
                {**asdict(adapters.lora), "base": str(Path(adapters.base).resolve())}, indent=2))
            if weights is not None:
                weights = lora_mod.merge_state(weights, adapter, model.cfg, adapters.lora)
        if weights is not None:
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "step": str(step)})
        _finish(tmp, final, model.cfg, tokenizer_path, {**trainer_state, "world_size": env.world_size}, extra, keep)
    distributed.barrier(env)
    return final


def load_training_checkpoint(ckpt: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                             env: DistEnv, adapters: AdapterInfo | None = None) -> dict[str, Any]:
    """Restore model + optimizer from `dcp/` into however this run is sharded; returns the trainer state.
    An adapter run restores its adapters only: the base weights were loaded from the base checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (ckpt / SHARDED).is_dir():
        raise HomegrownError(f"{ckpt} has no {SHARDED}/ optimizer state; it can be served, exported or used as "
                             "init weights, but not resumed")
    if (adapters is None) != (not (ckpt / lora_mod.ADAPTER_CONFIG).exists()):
        raise HomegrownError(f"{ckpt} was trained {'with' if adapters is None else 'without'} LoRA adapters; resume "
                             "it with the same lora.rank, or use a new --out directory")
    state = load_trainer_state(ckpt)
    options = _state_options(adapters)
    model_state, optim_state = get_state_dict(model, optimizers, options=options)
    target = {"model": model_state, "optim": optim_state}
    with _single_process_ok():
        dcp.load(target, checkpoint_id=ckpt / SHARDED, no_dist=not env.distributed)
    set_state_dict(model, optimizers, model_state_dict=target["model"], optim_state_dict=target["optim"],
                   options=options)
    return state


def resolve_dcp_checkpoint(path: Path) -> Path:
    """The newest checkpoint with DCP shards at `path` (itself, or under it / its ckpt/)."""
    path = Path(path)
    if (path / SHARDED).is_dir():
        return path
    for root in (path, layout.RunLayout(path).ckpt_root()):
        found = [p for p in list_checkpoints(root) if (p / SHARDED).is_dir()]
        if found:
            return found[-1]
    raise HomegrownError(f"no sharded checkpoint (a step_N with {SHARDED}/) at {path}")


def consolidate(ckpt: Path) -> Path:
    """Write model.safetensors from a checkpoint's `dcp/` shards, in one process, for export and serving."""
    import torch.distributed.checkpoint as dcp

    ckpt = Path(ckpt)
    if not (ckpt / SHARDED).is_dir():
        raise HomegrownError(f"{ckpt} has no {SHARDED}/ directory to consolidate")
    if (ckpt / lora_mod.ADAPTER_CONFIG).exists():
        return merge_adapter_checkpoint(ckpt)
    with torch.device("meta"):
        model = Transformer(ModelConfig.load(ckpt / CONFIG))
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=ckpt / SHARDED, no_dist=True)
    model.load_state_dict(state["model"])
    with atomic_path(ckpt / WEIGHTS) as tmp:
        save_file(weights_state_dict(model), str(tmp), metadata={"format": "pt"})
    return ckpt / WEIGHTS


def merge_adapter_checkpoint(ckpt: Path) -> Path:
    """Write an adapter checkpoint's model.safetensors: its base checkpoint's weights with the adapters merged."""
    settings = json.loads((ckpt / lora_mod.ADAPTER_CONFIG).read_text())
    base = Path(settings.pop("base"))
    if not (base / WEIGHTS).is_file():
        raise HomegrownError(f"{ckpt} adapts {base}, which has no {WEIGHTS} any more; the adapters cannot be merged")
    cfg = ModelConfig.load(ckpt / CONFIG)
    merged = lora_mod.merge_state(load_file(str(base / WEIGHTS)), load_file(str(ckpt / lora_mod.ADAPTER_WEIGHTS)),
                                  cfg, LoRAConfig(**settings))
    with atomic_path(ckpt / WEIGHTS) as tmp:
        save_file(merged, str(tmp), metadata={"format": "pt"})
    return ckpt / WEIGHTS


def resolve_checkpoint(path: Path) -> Path:
    """Accept a checkpoint dir, a `ckpt/` dir or a run dir, and return the newest checkpoint inside.

    A run dir's chat model (`sft/ckpt`, written after pretraining) wins over its base model (`ckpt`): the run's
    final model is what `chat`, `serve` and `export` of a run should get. Name `RUN/ckpt` for the base model.
    """
    path = Path(path)
    if (path / WEIGHTS).exists():
        return path
    latest = latest_checkpoint(path) or layout.RunLayout(path).final_checkpoint()
    if latest is not None:
        return latest
    raise HomegrownError(f"no checkpoint found at {path}; pass a run directory or a ckpt/step_N directory")


def load_model(path: Path, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from config.json and load the safetensors weights (no pickle involved)."""
    ckpt = resolve_checkpoint(path)
    cfg = ModelConfig.load(ckpt / CONFIG)
    model = Transformer(cfg)
    load_weights(model, ckpt / WEIGHTS)
    return model.to(device)


def load_weights(model: Transformer, weights_path: Path) -> None:
    """Load weights, refusing a file whose tensor names or shapes do not match this model's config."""
    state = load_file(str(weights_path))
    expected = weights_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {names[:4]}" for label, names in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names)
        raise HomegrownError(f"checkpoint {weights_path} does not fit this model config ({detail})")
    model.load_state_dict(state, strict=False)
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight


def check_same_config(ckpt: Path, cfg: ModelConfig) -> None:
    """Resuming into a run with a different shape would silently mix models; say so instead. The saved config is
    read through `ModelConfig`, so a field added since it was written compares as its default (what it meant)."""
    saved = asdict(ModelConfig.load(ckpt / CONFIG))
    current = asdict(cfg)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise HomegrownError(f"checkpoint {ckpt} was trained with another model config ({'; '.join(diffs)}); "
                             "use a new --out directory or the same preset")


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Our own trainer state, loaded with weights_only=True so even a tampered file cannot run code."""
    path = Path(ckpt) / TRAINER_STATE
    if not path.exists():
        raise HomegrownError(f"{ckpt} has no {TRAINER_STATE}; it can be served or exported but not resumed")
    return torch.load(path, map_location="cpu", weights_only=True)
