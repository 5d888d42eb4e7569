"""`homegrown import`: open weights (a GGUF file or a transformers Llama or Qwen3 directory) → an ordinary run
directory.

What comes out is what every other command already reads — `RUN/ckpt/step_0/` with fp32 `model.safetensors`,
`config.json` and `tokenizer.json` — plus the model's chat metadata as the Hugging Face files that carry it:
`tokenizer_config.json` (bos/eos tokens, add_bos_token, chat_template) and `generation_config.json` (the stop ids:
EOS plus the template's end-of-turn token). The same tokenizer files also sit at the run's top level, where
`pretrain`/`sft` on the run take their tokenizer from, so checkpoints trained from the import keep them.

GGUF tensors are dequantized by the `gguf` package's own `gguf.quants` (llama.cpp's reference code in numpy), and
q/k rows of a `llama` file are put back from llama.cpp's interleaved RoPE order into the rotate-half order our model
(and HF) use — the inverse of what `export/gguf.py` does; a `qwen3` file's are already in that order. Only what our
model implements is accepted; anything else (another architecture, scaled RoPE, experts, an unlisted tensor type)
fails naming what was found.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from homegrown.chat_template import GENERATION_CONFIG, TOKENIZER_CONFIG, ChatTemplate, turn_end_token
from homegrown.config import ModelConfig, Preset, get_preset, save_preset
from homegrown.errors import HomegrownError
from homegrown.export.gguf import hf_name, unpermute_rope
from homegrown.export.hf import SHARD_INDEX, _from_hf_state, architecture, load_hf
from homegrown.gguf_tokenizer import GGUFVocab, build_tokenizer
from homegrown.io import atomic_path, write_json_atomic
from homegrown.layout import TOKENIZER, RunLayout
from homegrown.model import Transformer
from homegrown.train.checkpoint import WEIGHTS, save_checkpoint

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K)
IMPORT_INFO = "import.json"
GGUF_ARCHITECTURES = ("llama", "qwen3")


@dataclass
class ImportResult:
    """What was imported and where it went; the CLI prints it."""

    run_dir: Path
    checkpoint: Path
    source_format: str
    """`gguf` or `hf`."""
    architecture: str
    params: int
    tensor_types: dict[str, int]
    """Tensor count per storage type in the source (Q4_1, F32, bfloat16 …)."""
    vocab_size: int
    chat_template: bool
    stop_tokens: dict[str, int]
    """generation_config.json's eos_token_id list, by token text."""
    config: ModelConfig


@dataclass
class _Loaded:
    """A source read into memory, before anything is written."""

    model: Transformer
    tokenizer: Tokenizer
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]
    architecture: str
    tensor_types: dict[str, int]
    pre_tokenizer: str | None = None
    """The GGUF's `tokenizer.ggml.pre` (llama.cpp's name for the split rule), recorded in import.json."""


def import_model(src: Path, out_run: Path) -> ImportResult:
    """Read `src` (a .gguf file or a transformers Llama directory) and write it as the run `out_run`."""
    src, out_run = Path(src), Path(out_run)
    if not src.exists():
        raise HomegrownError(f"{src} does not exist; pass a .gguf file or a transformers model directory")
    existing = RunLayout(out_run).latest()
    if existing is not None:
        raise HomegrownError(f"{out_run} already holds a model ({existing}); import into a new --out directory")
    if src.is_dir():
        loaded, fmt = _read_hf_dir(src), "hf"
    else:
        loaded, fmt = _read_gguf(src), "gguf"
    return _write_run(loaded, src, fmt, out_run)


# --- GGUF ---------------------------------------------------------------------------------------------------------


class _Metadata:
    """Key → value view of a GGUF header; `need` names the missing key instead of a KeyError."""

    def __init__(self, reader: gguf.GGUFReader, path: Path) -> None:
        self.fields, self.path = reader.fields, path

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str) -> Any:
        if key not in self.fields:
            raise HomegrownError(f"{self.path} has no {key} in its metadata; it is not a complete llama GGUF")
        return self.fields[key].contents()


def _f32(x: float) -> float:
    """A float32 header value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _gguf_config(meta: _Metadata, tensor_names: set[str]) -> ModelConfig:
    """The model a `llama` or `qwen3` GGUF describes (Qwen3 is Llama with per-head q/k norms: `qk_norm`)."""
    arch = meta.need("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise HomegrownError(f"{meta.path} holds a {arch!r} model; only the {' and '.join(GGUF_ARCHITECTURES)} "
                             "architectures can be imported")
    d, n_heads = int(meta.need(f"{arch}.embedding_length")), int(meta.need(f"{arch}.attention.head_count"))
    head_dim = d // n_heads
    unsupported = []
    if int(meta.get(f"{arch}.expert_count", 0) or 0) > 0:
        unsupported.append(f"{meta.get(f'{arch}.expert_count')} experts (mixture of experts)")
    if int(meta.get(f"{arch}.attention.key_length", head_dim)) != head_dim or d % n_heads:
        unsupported.append(f"head size {meta.get(f'{arch}.attention.key_length')} with width {d} and {n_heads} heads")
    if int(meta.get(f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        unsupported.append(f"RoPE on {meta.get(f'{arch}.rope.dimension_count')} of {head_dim} head dimensions")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "") or "rope_freqs.weight" in tensor_names:
        unsupported.append(f"scaled RoPE ({scaling if scaling not in ('none', '') else 'rope_freqs'})")
    if unsupported:
        raise HomegrownError(f"{meta.path} uses {', '.join(unsupported)}, which homegrown's model does not implement")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        raise HomegrownError(f"{meta.path} states no vocabulary size and has no token list")
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=d,
        n_layers=int(meta.need(f"{arch}.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        ffn_hidden=int(meta.need(f"{arch}.feed_forward_length")),
        max_seq_len=int(meta.get(f"{arch}.context_length", 2048)),
        rope_theta=_f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=_f32(meta.need(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_names,
        qk_norm=arch == "qwen3",
    )


def _dequantize(tensor: gguf.ReaderTensor, path: Path) -> np.ndarray:
    """float32 values of one tensor in numpy (row-major) shape, through gguf.quants."""
    qtype = Q(tensor.tensor_type)
    if qtype not in SUPPORTED_TYPES:
        raise HomegrownError(f"{path}: tensor {tensor.name} is stored as {qtype.name}, which homegrown does not "
                             f"import (supported: {', '.join(t.name for t in SUPPORTED_TYPES)}); re-quantize it "
                             "to one of those with llama.cpp's llama-quantize")
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.array(gguf.quants.dequantize(tensor.data, qtype), dtype=np.float32).reshape(shape)


def _read_gguf(path: Path) -> _Loaded:
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, EOFError) as e:
        raise HomegrownError(f"{path} is not a readable GGUF file ({e})") from e
    meta = _Metadata(reader, path)
    names = {t.name for t in reader.tensors}
    cfg = _gguf_config(meta, names)
    arch = architecture(cfg)
    hf_state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None or (name.endswith("_norm.weight") and ".self_attn." in name and not cfg.qk_norm):
            raise HomegrownError(f"{path}: tensor {tensor.name} is not part of a {arch} model homegrown can run")
        arr = _dequantize(tensor, path)
        if arch == "llama" and name.endswith("q_proj.weight"):  # qwen3's RoPE rotates halves, as ours does
            arr = unpermute_rope(arr, cfg.n_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            arr = unpermute_rope(arr, cfg.n_kv_heads)
        hf_state[name] = torch.from_numpy(arr)
    model = _build(cfg, _from_hf_state(hf_state, cfg, path), path)
    tokenizer, tokenizer_config, generation_config = _gguf_tokenizer(meta, cfg)
    types = Counter(Q(t.tensor_type).name for t in reader.tensors)
    return _Loaded(model, tokenizer, tokenizer_config, generation_config, arch, dict(types.most_common()),
                   pre_tokenizer=meta.get("tokenizer.ggml.pre", "default"))


def _gguf_tokenizer(meta: _Metadata, cfg: ModelConfig) -> tuple[Tokenizer, dict[str, Any], dict[str, Any]]:
    """The tokenizer.json, tokenizer_config.json and generation_config.json a GGUF's metadata describes."""
    tokens = list(meta.need("tokenizer.ggml.tokens"))
    if len(tokens) != cfg.vocab_size:
        raise HomegrownError(f"{meta.path} lists {len(tokens)} tokens for a vocabulary of {cfg.vocab_size}")
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    vocab = GGUFVocab(model=meta.need("tokenizer.ggml.model"), pre=meta.get("tokenizer.ggml.pre", "default"),
                      tokens=tokens, token_types=list(meta.need("tokenizer.ggml.token_type")),
                      merges=list(meta.get("tokenizer.ggml.merges", [])), bos_id=bos, add_bos=add_bos)
    tokenizer = build_tokenizer(vocab)
    special = {"bos_token": bos, "eos_token": eos, "unk_token": meta.get("tokenizer.ggml.unknown_token_id"),
               "pad_token": meta.get("tokenizer.ggml.padding_token_id")}
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{name: tokens[i] for name, i in special.items() if i is not None},
        "add_bos_token": add_bos,
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_seq_len,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    ids = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": special["pad_token"]}
    return tokenizer, tokenizer_config, _generation_config(tokenizer, tokenizer_config, ids)


# --- transformers directories -------------------------------------------------------------------------------------


def _token_text(value: Any) -> Any:
    """tokenizer_config.json spells a token as a string or as a serialized AddedToken ({"content": …})."""
    return value.get("content") if isinstance(value, dict) else value


def _read_hf_dir(src: Path) -> _Loaded:
    for required in ("config.json", TOKENIZER, TOKENIZER_CONFIG):
        if not (src / required).is_file():
            raise HomegrownError(f"{src} has no {required}; a transformers model directory needs config.json, "
                                 f"safetensors weights, tokenizer.json and {TOKENIZER_CONFIG}")
    if not (src / WEIGHTS).is_file() and not (src / SHARD_INDEX).is_file():
        pickled = sorted(p.name for p in src.glob("*.bin"))
        raise HomegrownError(f"{src} has no {WEIGHTS} or {SHARD_INDEX}"
                             + (f" (only {', '.join(pickled)}, which would have to be unpickled)" if pickled else "")
                             + "; only safetensors weights can be imported")
    config = json.loads((src / "config.json").read_text())
    try:
        model = load_hf(src)
    except KeyError as e:
        raise HomegrownError(f"{src / 'config.json'} has no {e.args[0]}; it is not a complete Llama config") from e
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise HomegrownError(f"{src / 'tokenizer.json'} has {tokenizer.get_vocab_size()} tokens but the model only "
                             f"{model.cfg.vocab_size} embeddings; the tokenizer does not belong to this model")
    raw = json.loads((src / TOKENIZER_CONFIG).read_text())
    tokenizer_config = {k: _token_text(v) for k, v in raw.items() if k != "added_tokens_decoder"}
    template_file = src / "chat_template.jinja"  # transformers ≥ 4.43 saves the template beside, not inside
    if "chat_template" not in tokenizer_config and template_file.is_file():
        tokenizer_config["chat_template"] = template_file.read_text()
    generation = src / GENERATION_CONFIG
    ids = json.loads(generation.read_text()) if generation.is_file() else {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    arch = (config.get("architectures") or [config.get("model_type", "llama")])[0]
    return _Loaded(model, tokenizer, tokenizer_config, _generation_config(tokenizer, tokenizer_config, ids), arch,
                   _safetensors_dtypes(src))


def _safetensors_dtypes(src: Path) -> dict[str, int]:
    """Tensor count per dtype across the directory's safetensors files (headers only)."""
    index = src / SHARD_INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [WEIGHTS]
    types: Counter[str] = Counter()
    for name in files:
        with safe_open(str(src / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                types[str(f.get_slice(key).get_dtype())] += 1
    return dict(types.most_common())


# --- shared -------------------------------------------------------------------------------------------------------


def _build(cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path) -> Transformer:
    model = Transformer(cfg)
    wrong = sorted(k for k, v in model.state_dict().items() if state[k].shape != v.shape)
    if wrong:
        raise HomegrownError(f"{source}: tensors {wrong[:4]} do not have the shapes its metadata implies")
    model.load_state_dict(state, strict=True)
    return model


def end_of_turn_token(template: str, tokenizer: Tokenizer, tokenizer_config: dict[str, Any]) -> str | None:
    """The special token a chat template closes an assistant turn with (`<|im_end|>` for ChatML, `<|eot_id|>` for
    Llama 3, `<|end|>` for ours): the tokenizer's special tokens are the candidates, `turn_end_token` (the one rule
    `ChatFormat.end_of_turn_id` also uses) picks the one after the reply. None when the template does not render."""
    tokens = {k: tokenizer_config.get(k) or "" for k in ("bos_token", "eos_token")}
    specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
    try:
        return turn_end_token(ChatTemplate(template, tokens), specials)
    except HomegrownError:
        return None


def _generation_config(tokenizer: Tokenizer, tokenizer_config: dict[str, Any], ids: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json whose `eos_token_id` lists every id that ends a reply: EOS plus end-of-turn."""
    eos = ids.get("eos_token_id")
    stops = [int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    template = tokenizer_config.get("chat_template")
    end = end_of_turn_token(template, tokenizer, tokenizer_config) if isinstance(template, str) else None
    if end is not None:
        stops.append(tokenizer.token_to_id(end))
    out = {k: v for k, v in ids.items() if v is not None}
    out["eos_token_id"] = list(dict.fromkeys(stops))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


FINETUNE_LR = 1e-4
"""Peak LR for continued pretraining of imported weights: the `small` preset's 3e-3 is a from-scratch rate that
wrecks a pretrained model within a few steps; fine-tuning recipes for models of this size use 1e-5 to 3e-4."""
FINETUNE_SFT_LR = 3e-5


def finetune_preset(cfg: ModelConfig, src: Path) -> Preset:
    """The preset an imported run starts with: the imported shape, `small`'s data and eval settings, and
    fine-tuning learning rates (short warmup), so `pretrain --init-from` and `sft` on it do not start by
    forgetting what the model knows. `--set` overrides them like any field."""
    base = get_preset("small")
    return replace(base, model=cfg, train=replace(base.train, lr=FINETUNE_LR, warmup_steps=10),
                   sft=replace(base.sft, lr=FINETUNE_SFT_LR),
                   description=f"imported from {src}; small's data/eval settings, fine-tuning learning rates")


def _write_run(loaded: _Loaded, src: Path, fmt: str, out_run: Path) -> ImportResult:
    """Tokenizer files at the run's top level, preset.json and import.json, then the checkpoint (written last,
    atomically: a run with ckpt/step_0 is a finished import)."""
    paths = RunLayout(out_run)
    with atomic_path(paths.tokenizer) as tmp:
        loaded.tokenizer.save(str(tmp))
    write_json_atomic(paths.root / TOKENIZER_CONFIG, loaded.tokenizer_config)
    write_json_atomic(paths.root / GENERATION_CONFIG, loaded.generation_config)
    cfg = loaded.model.cfg
    save_preset(finetune_preset(cfg, src), paths.preset)
    info = {"source": str(src.resolve()), "format": fmt, "architecture": loaded.architecture,
            "tensor_types": loaded.tensor_types}
    if loaded.pre_tokenizer is not None:
        info["pre_tokenizer"] = loaded.pre_tokenizer
    if fmt == "gguf":
        info["sha256"] = _sha256(src)
    write_json_atomic(paths.root / IMPORT_INFO, info)
    ckpt = save_checkpoint(paths.ckpt_root(), 0, loaded.model, paths.tokenizer)
    return ImportResult(out_run, ckpt, fmt, loaded.architecture, loaded.model.num_params(), loaded.tensor_types,
                        loaded.tokenizer.get_vocab_size(), "chat_template" in loaded.tokenizer_config,
                        {loaded.tokenizer.id_to_token(i): i for i in loaded.generation_config["eos_token_id"]}, cfg)
