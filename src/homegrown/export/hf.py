"""Write and read the `transformers` Llama layout, so vLLM, TGI and the HF ecosystem serve our models as-is.

A model trained with `qk_norm` is a Qwen3 (Llama plus per-head q/k RMSNorm, nothing else changed) and goes out
as `Qwen3ForCausalLM`; an architecture switch no standard model has is refused by name (`check_exportable`).

Our model fuses q/k/v and gate/up into single matmuls (model.py explains why); Llama keeps them apart, so
export splits rows and import concatenates them. RoPE already uses the rotate-half layout HF applies to
`q_proj`/`k_proj`, so no head permutation is needed. Nothing here imports `transformers`: exporting must work
on a machine that only has homegrown's run-time dependencies. The tokenizer files carry the checkpoint's own chat
format (chat_template.py), whoever made the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from homegrown.chat_template import ChatFormat, read_chat_format, write_chat_format
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.io import atomic_dir
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import CONFIG, TOKENIZER, WEIGHTS, resolve_checkpoint

SHARD_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
"""transformers' file name (a fast tokenizer), which our checkpoints happen to share."""
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def check_exportable(cfg: ModelConfig, target: str) -> None:
    """Refuse, naming the option, an architecture switch that neither Llama nor Qwen3 has: the exported model would
    silently compute something else in transformers, vLLM or llama.cpp."""
    foreign = []
    if cfg.logit_softcap:
        foreign.append(f"model.logit_softcap={cfg.logit_softcap:g} (logit soft-capping)")
    if cfg.mlp != "swiglu":
        foreign.append(f"model.mlp={cfg.mlp} (their MLP is SwiGLU)")
    if foreign:
        raise HomegrownError(f"cannot export to {target}: this checkpoint uses {' and '.join(foreign)}, which no "
                             "Llama or Qwen3 model has; only models trained without it can be exported")


def architecture(cfg: ModelConfig) -> str:
    """transformers' model_type for `cfg`: `qwen3` with q/k norms, else `llama`."""
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg: ModelConfig, dtype: torch.dtype, bos_id: int, eos_id: int) -> dict[str, Any]:
    """LlamaConfig (or Qwen3Config) fields for `cfg`. `rope_theta` is written twice: transformers 5 reads
    `rope_parameters`, transformers 4 and most other readers (vLLM, llama.cpp converters) read the top-level key."""
    dtype_name = _DTYPE_NAMES.get(dtype, "float32")
    qwen3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "use_sliding_window": False,
             "sliding_window": None, "max_window_layers": cfg.n_layers}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": dtype_name,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_cache": True,
        **(qwen3 if architecture(cfg) == "qwen3" else {}),
    }


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our tensors to Llama's and split the fused projections.

    Slices are cloned because safetensors refuses to write tensors that share storage.
    """
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": state["embed_tokens.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "self_attn.qkv.weight"].split([q_rows, kv_rows, kv_rows], dim=0)
        gate, up = state[src + "mlp.gate_up.weight"].split(cfg.ffn_hidden, dim=0)
        out.update({
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "self_attn.q_proj.weight": q.clone(),
            dst + "self_attn.k_proj.weight": k.clone(),
            dst + "self_attn.v_proj.weight": v.clone(),
            dst + "self_attn.o_proj.weight": state[src + "self_attn.o_proj.weight"],
            dst + "post_attention_layernorm.weight": state[src + "post_attention_layernorm.weight"],
            dst + "mlp.gate_proj.weight": gate.clone(),
            dst + "mlp.up_proj.weight": up.clone(),
            dst + "mlp.down_proj.weight": state[src + "mlp.down_proj.weight"],
        })
        if cfg.qk_norm:
            for norm in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                out[dst + norm] = state[src + norm]
    return out


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a non-empty directory that is not an export (the export replaces `out_dir` whole)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CONFIG).exists():
        raise HomegrownError(f"{out_dir} exists and does not look like a model export; choose an empty or new "
                             "directory")


def export_hf(ckpt: Path, out_dir: Path) -> Path:
    """Write checkpoint (or run dir) `ckpt` as a transformers Llama (Qwen3 with `qk_norm`) directory at
    `out_dir`, atomically.

    The result loads with `AutoModelForCausalLM` / `AutoTokenizer` and serves with vLLM; the model's own chat
    template and a generation config that stops at its stop tokens (EOS and end of turn) travel with it, so chat
    works without extra flags.
    """
    ckpt = resolve_checkpoint(Path(ckpt))
    out_dir = Path(out_dir)
    tokenizer_path = ckpt / TOKENIZER
    if not tokenizer_path.exists():
        raise HomegrownError(f"{ckpt} has no {TOKENIZER}; export a checkpoint written by homegrown training")
    cfg = ModelConfig.load(ckpt / CONFIG)
    check_exportable(cfg, "transformers")
    state = load_file(str(ckpt / WEIGHTS))
    tok = load_tokenizer(tokenizer_path)
    chat = read_chat_format(ckpt, tok)
    eos_id = tok.token_to_id(chat.eos_token) if chat.eos_token else None
    eos_id = eos_id if eos_id is not None else (chat.stop_ids[0] if chat.stop_ids else None)
    pad = chat.template.special_tokens.get("pad_token") if chat.template else None
    pad = pad or chat.eos_token

    _check_out_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        _write_hf(tmp, cfg, state, tokenizer_path, chat, eos_id, pad)
    return out_dir


def _write_hf(tmp: Path, cfg: ModelConfig, state: dict[str, torch.Tensor], tokenizer_path: Path,
              chat: ChatFormat, eos_id: int | None, pad: str | None) -> None:
    """The files of a transformers Llama directory, into the (temporary) directory `tmp`."""
    hf_state = to_hf_state(state, cfg)
    save_file(hf_state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    config = hf_config(cfg, state["embed_tokens.weight"].dtype, bos_id=chat.bos_id, eos_id=eos_id)
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    shutil.copyfile(tokenizer_path, tmp / HF_TOKENIZER)
    # PreTrainedTokenizerFast (not LlamaTokenizerFast), so BOS is prepended only if the model's add_bos_token says.
    write_chat_format(tmp, chat,
                      tokenizer_extra={"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad,
                                       "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_seq_len},
                      generation_extra={"pad_token_id": eos_id})
    special_map = {"bos_token": chat.bos_token, "eos_token": chat.eos_token, "pad_token": pad}
    (tmp / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def _rope_theta(config: dict[str, Any]) -> float:
    """Base frequency from either config generation; scaled RoPE variants would silently change the model."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise HomegrownError(f"RoPE type {rope_type!r} is not supported by homegrown's model; only default RoPE is")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _model_config(config: dict[str, Any], source: Path) -> ModelConfig:
    """Map LlamaConfig (or Qwen3Config) fields to ModelConfig, refusing features our model does not have."""
    if config.get("model_type") not in ("llama", "qwen3"):
        found = config.get("model_type") or config.get("architectures")
        raise HomegrownError(f"{source} holds a {found!r} model; only Llama- and Qwen3-architecture models can be "
                             "imported")
    unsupported = [key for key in ("attention_bias", "mlp_bias", "use_sliding_window") if config.get(key)]
    if config.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={config['hidden_act']}")
    n_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    if head_dim * n_heads != config["hidden_size"]:
        unsupported.append(f"head_dim={head_dim} with hidden_size={config['hidden_size']}, heads={n_heads}")
    if unsupported:
        raise HomegrownError(f"{source} uses {', '.join(unsupported)}, which homegrown's model does not implement")
    return ModelConfig(
        vocab_size=config["vocab_size"],
        d_model=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        ffn_hidden=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        rope_theta=_rope_theta(config),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_std=config.get("initializer_range", 0.02),
        qk_norm=config["model_type"] == "qwen3",
    )


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded (index.json) safetensors export; pickled .bin files are refused."""
    single, index = hf_dir / WEIGHTS, hf_dir / SHARD_INDEX
    if single.exists():
        return load_file(str(single))
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = hf_dir / shard
            if not path.exists():
                raise HomegrownError(f"{index} lists shard {shard}, which is missing; re-download the model")
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    state[name] = f.get_tensor(name)
        return state
    raise HomegrownError(f"{hf_dir} has no {WEIGHTS} or {SHARD_INDEX}; only safetensors weights can be imported")


def _from_hf_state(hf: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """Our state dict from Llama (or Qwen3) tensors, fusing q/k/v and gate/up in the row order model.py splits
    them."""
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise HomegrownError(f"{source} is missing tensor {name}; the export is incomplete or not a Llama model")
        return hf[name]

    state = {"embed_tokens.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    state["lm_head.weight"] = state["embed_tokens.weight"] if cfg.tie_embeddings else take("lm_head.weight")
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        attn = [take(src + f"self_attn.{p}_proj.weight") for p in "qkv"]
        mlp = [take(src + f"mlp.{p}_proj.weight") for p in ("gate", "up")]
        state.update({
            dst + "input_layernorm.weight": take(src + "input_layernorm.weight"),
            dst + "self_attn.qkv.weight": torch.cat(attn, dim=0),
            dst + "self_attn.o_proj.weight": take(src + "self_attn.o_proj.weight"),
            dst + "post_attention_layernorm.weight": take(src + "post_attention_layernorm.weight"),
            dst + "mlp.gate_up.weight": torch.cat(mlp, dim=0),
            dst + "mlp.down_proj.weight": take(src + "mlp.down_proj.weight"),
        })
        if cfg.qk_norm:
            for norm in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                state[dst + norm] = take(src + norm)
    return state


def load_hf(hf_dir: Path) -> Transformer:
    """Read a transformers Llama or Qwen3 directory into our (fp32) Transformer, so exported models round-trip and
    models of those architectures from elsewhere can be served or fine-tuned with homegrown."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / CONFIG
    if not config_path.exists():
        raise HomegrownError(f"no {CONFIG} in {hf_dir}; point at a transformers model directory")
    cfg = _model_config(json.loads(config_path.read_text()), hf_dir)
    state = _from_hf_state(_read_hf_weights(hf_dir), cfg, hf_dir)
    model = Transformer(cfg)
    expected = model.state_dict()
    wrong = sorted(k for k in expected if state[k].shape != expected[k].shape)
    if wrong:
        raise HomegrownError(f"{hf_dir}: tensors {wrong[:4]} do not match the shapes in its {CONFIG}")
    model.load_state_dict(state, strict=True)
    return model
