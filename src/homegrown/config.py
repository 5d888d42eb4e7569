"""Configs and named presets: the only place defaults live.

Every stage takes one of these dataclasses; the CLI only fills them. A preset names a complete model +
training setup so that `--preset small` on a laptop and `--preset llama-8b` on a cluster go through the
same code, and `--set section.field=value` overrides any single field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homegrown.errors import HomegrownError

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
"""Reserved from the first tokenizer on, so base and chat models share one vocabulary (DESIGN: chat template)."""


@dataclass
class ModelConfig:
    """Shape of a Llama-style decoder. Field names follow the paper/HF meaning so export is a rename."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_hidden: int = 0
    """0 means the Llama rule: 8/3·d rounded up to a multiple of `ffn_multiple_of`."""
    ffn_multiple_of: int = 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.ffn_hidden == 0:
            hidden = int(8 * self.d_model / 3)
            self.ffn_hidden = self.ffn_multiple_of * ((hidden + self.ffn_multiple_of - 1) // self.ffn_multiple_of)
        if self.d_model % self.n_heads:
            raise HomegrownError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise HomegrownError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HomegrownError(f"model config has unknown fields {sorted(unknown)}; is it a homegrown checkpoint?")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError as e:
            raise HomegrownError(f"no model config at {path}; point at a checkpoint directory") from e


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for one training run (pretraining and fine-tuning share it)."""

    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    """`adamw`, or `muon` (torch.optim.Muon on 2-D hidden weights, AdamW on embeddings, norms and head)."""
    muon_lr: float = 0.02
    dtype: str = "auto"
    """Autocast dtype: `bf16`, `fp32`, or `auto` (bf16 on GPUs, and on CPUs only where it measures faster).
    Weights and optimizer state stay fp32 either way."""
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 1337
    threads: int = 0
    """0 = let torch choose (all cores)."""


@dataclass
class DataConfig:
    """Where text comes from and how it is cut into tokens."""

    source: str = ""
    """Empty = the bundled corpus in data/sample; otherwise a directory or file of HTML/JSONL/text."""
    source_glob: str = "**/*.html"
    """Which files of a source directory to read (e.g. `**/*.jsonl.gz`, `**/*.txt`); files go by suffix."""
    source_licence: str = "unknown"
    tokenizer_sample_bytes: int = 200_000_000
    """Upper bound on text fed to BPE training; the bundled corpus is far below it."""


@dataclass
class Preset:
    name: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    description: str = ""
    trainable_on_cpu: bool = True


def _presets() -> dict[str, Preset]:
    return {
        "tiny": Preset(
            "tiny",
            ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
            TrainConfig(batch_size=8, seq_len=64, max_steps=40, lr=3e-3, warmup_steps=5, eval_every=20,
                        eval_batches=2, ckpt_every=20, log_every=5, dtype="fp32"),
            description="CI smoke test: seconds on one core, learns almost nothing.",
        ),
        "small": Preset(
            "small",
            # Shape, vocab and lr won benchmarks/sweep_small.py (see benchmarks/RESULTS.md): at a ~10-minute
            # CPU budget a narrow 4-layer model that sees more tokens beats wider/deeper ones.
            ModelConfig(vocab_size=4096, d_model=192, n_layers=4, n_heads=3, n_kv_heads=3, max_seq_len=256),
            TrainConfig(batch_size=16, seq_len=256, max_steps=720, lr=5e-3, warmup_steps=30, eval_every=120,
                        eval_batches=8, ckpt_every=120, log_every=10),
            description="Default demo: about 10 minutes of training on 2 CPU cores.",
        ),
        "gpt2-124m": Preset(
            "gpt2-124m",
            ModelConfig(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, max_seq_len=1024,
                        ffn_hidden=3072),
            TrainConfig(batch_size=32, seq_len=1024, grad_accum=16, max_steps=20000, lr=6e-4, warmup_steps=700,
                        eval_every=500, ckpt_every=1000),
            description="GPT-2 small shape with Llama blocks; one GPU for a day.",
            trainable_on_cpu=False,
        ),
        "llama-1b": Preset(
            "llama-1b",
            ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192,
                        max_seq_len=8192, rope_theta=500000.0),
            TrainConfig(batch_size=8, seq_len=8192, grad_accum=8, max_steps=100000, lr=3e-4, warmup_steps=2000,
                        eval_every=1000, ckpt_every=1000),
            description="Llama 3.2 1B shape; a GPU node.",
            trainable_on_cpu=False,
        ),
        "llama-8b": Preset(
            "llama-8b",
            ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=14336,
                        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=False),
            TrainConfig(batch_size=4, seq_len=8192, grad_accum=16, max_steps=500000, lr=3e-4, warmup_steps=2000,
                        eval_every=1000, ckpt_every=1000),
            description="Llama 3 8B shape; a multi-node GPU cluster with FSDP2.",
            trainable_on_cpu=False,
        ),
        "llama-70b": Preset(
            "llama-70b",
            ModelConfig(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_hidden=28672,
                        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=False),
            TrainConfig(batch_size=1, seq_len=8192, grad_accum=64, max_steps=1000000, lr=1.5e-4,
                        warmup_steps=2000, eval_every=1000, ckpt_every=500),
            description="Llama 3 70B shape; plan and cluster only.",
            trainable_on_cpu=False,
        ),
    }


PRESET_NAMES = tuple(_presets())


def get_preset(name: str) -> Preset:
    """A fresh copy of the named preset, so callers may mutate it freely."""
    presets = _presets()
    if name not in presets:
        raise HomegrownError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return presets[name]


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply `section.field=value` strings (e.g. `train.lr=1e-3`, `model.n_layers=4`) to a preset in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section_name, dot, field_name = key.strip().partition(".")
        if not sep or not dot or section_name not in ("model", "train", "data"):
            raise HomegrownError(
                f"override {item!r} must look like model.FIELD=VALUE, train.FIELD=VALUE or data.FIELD=VALUE")
        section = getattr(preset, section_name)
        if not hasattr(section, field_name):
            names = ", ".join(f.name for f in dataclasses.fields(section))
            raise HomegrownError(f"{section_name} has no field {field_name!r}; fields: {names}")
        try:
            setattr(section, field_name, _coerce(value.strip(), getattr(section, field_name)))
        except ValueError as e:
            raise HomegrownError(f"bad value in override {item!r}: {e}") from e
    if preset.model.max_seq_len < preset.train.seq_len:
        preset.model.max_seq_len = preset.train.seq_len
    if "model.ffn_hidden" not in " ".join(overrides) and any(o.startswith("model.d_model") for o in overrides):
        preset.model.ffn_hidden = 0
    preset.model.__post_init__()
    return preset
