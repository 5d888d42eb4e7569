"""Write GGUF for llama.cpp and Ollama, through the `gguf` package that llama.cpp's own converter uses.

The tensors come from `export/hf.py`'s Llama state dict (fused q/k/v and gate/up already split), renamed to
llama.cpp's names. Our RoPE rotates halves (HF layout); llama.cpp's `llama` architecture rotates adjacent pairs,
so q and k rows are permuted within each head exactly as llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`)
does — k with the KV-head count. The byte-level BPE tokenizer goes in as llama.cpp's "gpt2" model under the
name of its pre-tokenizer: "gpt-2" for ours (the regex `tokenizers`' ByteLevel(use_regex=True) applies), the one
an imported model came with for it ("smollm" for SmolLM2), so `homegrown import` of the file gives the same ids.

A `qk_norm` model goes out as llama.cpp's `qwen3` architecture (attn_q_norm / attn_k_norm per block), whose RoPE is
NEOX-style — rotate-half, ours — so its q and k rows are written as they are, as convert_hf_to_gguf.py's Qwen3
converter does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models

from homegrown.chat_template import ChatFormat, read_chat_format
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.hf import architecture, check_exportable, to_hf_state
from homegrown.gguf_tokenizer import SUPPORTED_PRE, pre_tokenizer_for
from homegrown.io import atomic_path
from homegrown.layout import BASE, locate
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import CONFIG, TOKENIZER, WEIGHTS, resolve_checkpoint

OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The split `tokenizers`' ByteLevel(use_regex=True) applies; llama.cpp knows it as pre-tokenizer "gpt-2"."""
GPT2_PRE = ("gpt-2", "gpt2")

_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q or k projection from rotate-half order to llama.cpp's interleaved-pair order, per head.

    Same as `LlamaModel.permute` in llama.cpp's convert_hf_to_gguf.py: within each head, row j of the first half
    and row j of the second half become rows 2j and 2j+1.
    """
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `permute_rope`: llama.cpp's interleaved-pair rows back to rotate-half order (GGUF import)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """llama.cpp tensor name for an HF Llama tensor name (model.layers.3.mlp.up_proj.weight → blk.3.ffn_up.weight)."""
    stem = hf_name.removesuffix(".weight")
    if stem in _TOP_NAMES:
        return _TOP_NAMES[stem] + ".weight"
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}.weight"


def hf_name(gguf_tensor: str) -> str | None:
    """Inverse of `gguf_name` (blk.3.ffn_up.weight → model.layers.3.mlp.up_proj.weight); None for a tensor that is
    not part of a plain Llama (rope_freqs, biases, experts …)."""
    stem, dot, kind = gguf_tensor.rpartition(".")
    if kind != "weight" or not dot:
        return None
    top = {v: k for k, v in _TOP_NAMES.items()}
    if stem in top:
        return top[stem] + ".weight"
    layer_names = {v: k for k, v in _LAYER_NAMES.items()}
    blk, _, rest = stem.partition(".")
    layer, _, name = rest.partition(".")
    if blk != "blk" or not layer.isdigit() or name not in layer_names:
        return None
    return f"model.layers.{layer}.{layer_names[name]}.weight"


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our training-layout state dict → float32 arrays under llama.cpp names, q/k permuted for the `llama`
    architecture's interleaved RoPE (`qwen3` rotates halves, as we do)."""
    permute = architecture(cfg) == "llama"
    out: dict[str, np.ndarray] = {}
    for name, tensor in to_hf_state(state, cfg).items():
        arr = tensor.detach().to(torch.float32).cpu().numpy()
        if permute and name.endswith("self_attn.q_proj.weight"):
            arr = permute_rope(arr, cfg.n_heads)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            arr = permute_rope(arr, cfg.n_kv_heads)
        out[gguf_name(name)] = np.ascontiguousarray(arr)
    return out


def _encode(arr: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Array in `qtype`, as convert_hf_to_gguf.py does: 1-D tensors (norms) stay f32, and a matrix whose rows do
    not split into whole quantization blocks falls back to f16."""
    if arr.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return arr.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
        return arr.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(arr, qtype), qtype
    except gguf.QuantError:
        return arr.astype(np.float16), gguf.GGMLQuantizationType.F16


def _pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """llama.cpp's name (`tokenizer.ggml.pre`) for a tokenizer.json pre-tokenizer: the first name whose split the
    GGUF importer rebuilds as exactly this one (gguf_tokenizer), so an imported model goes back out under the name
    it came with (SmolLM2: smollm) and ours as gpt-2. None for a split llama.cpp would not reproduce."""
    for name in SUPPORTED_PRE:
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = pre_tokenizer_for(name)
        if json.loads(probe.to_str())["pre_tokenizer"] == pre_tokenizer:
            return name
    return None


def _tokenizer_fields(tokenizer_path: Path, vocab_size: int) -> dict[str, Any]:
    """Tokens in id order, their types, merges and llama.cpp's pre-tokenizer name from tokenizer.json.

    Special added tokens are CONTROL (matched whole, not printed) and other added tokens USER_DEFINED (matched
    whole, printed), as the GGUF importer and llama.cpp read them."""
    data = json.loads(tokenizer_path.read_text())
    model = data.get("model", {})
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None:
        raise HomegrownError(f"{tokenizer_path} is not a byte-level BPE tokenizer with a pre-tokenizer llama.cpp "
                             f"knows ({', '.join(SUPPORTED_PRE)}); GGUF export supports only those")
    added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    special = {t["content"] for t in data.get("added_tokens", []) if t.get("special", True)}
    by_id = {i: tok for tok, i in model["vocab"].items()} | {i: tok for tok, i in added.items()}
    if max(by_id) >= vocab_size:
        raise HomegrownError(f"{tokenizer_path} has token id {max(by_id)}, beyond the model's vocab_size "
                             f"{vocab_size}; the tokenizer does not belong to this checkpoint")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the model may have spare rows the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if by_id[i] not in added else
                         gguf.TokenType.CONTROL if by_id[i] in special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def _special_ids(chat: ChatFormat, ckpt: Path) -> dict[str, Any]:
    """llama.cpp's BOS / EOS / EOT / pad ids and whether it prepends BOS, from the checkpoint's chat format.

    EOS and EOT are the end-of-turn token, where a chat reply stops; every stop id is listed in eos_token_ids.
    BOS is prepended when the model's plain text starts with it (`ChatFormat.text_bos_id`): an imported model
    says so (add_bos_token); ours start text after <|endoftext|>, their BOS, as every training document does and
    as our completions endpoint and eval prompt them. Pad and unknown are the model's own when it names them.
    """
    tok = load_tokenizer(ckpt)
    turn = chat.end_of_turn_id(tok)
    if turn is None and not chat.stop_ids:
        raise HomegrownError(f"{ckpt} names no stop token (generation_config.json eos_token_id); GGUF needs an EOS")
    turn = turn if turn is not None else chat.stop_ids[0]
    bos = chat.bos_id if chat.bos_id is not None else turn
    named = chat.template.special_tokens if chat.template is not None else {}
    pad, unk = (tok.token_to_id(named[key]) if key in named else None for key in ("pad_token", "unk_token"))
    return {"bos": bos, "eos": turn, "pad": bos if pad is None else pad, "unk": unk,
            "eos_ids": list(dict.fromkeys([turn, *chat.stop_ids])), "add_bos": chat.text_bos_id is not None}


def _model_name(ckpt: Path) -> str:
    """general.name: runs/small/sft/ckpt/step_120 → homegrown-small-sft-step_120 (runs/small/ckpt/step_120 →
    homegrown-small-step_120); a checkpoint outside a run is named by its directory and parent."""
    place = locate(ckpt)
    if place is None:
        return "-".join(["homegrown", ckpt.parent.name, ckpt.name] if ckpt.parent.name else ["homegrown", ckpt.name])
    run, stage = place
    return "-".join(["homegrown", run.root.name, *([] if stage == BASE else [stage]), ckpt.name])


def export_gguf(ckpt: Path, out_file: Path, outtype: str = "f16") -> Path:
    """Write checkpoint (or run dir) `ckpt` as one GGUF file at `out_file`, atomically.

    Token ids and the chat template come from the checkpoint's chat format (`_special_ids`); for our models BOS
    is <|endoftext|> and is prepended, EOS and EOT are the end-of-turn token, and llama.cpp also ends generation
    at <|endoftext|>, which it recognises by name.
    """
    if outtype not in OUTTYPES:
        raise HomegrownError(f"unknown GGUF outtype {outtype!r}; choose one of: {', '.join(OUTTYPES)}")
    ckpt = resolve_checkpoint(Path(ckpt))
    out_file = Path(out_file)
    if out_file.is_dir():
        raise HomegrownError(f"{out_file} is a directory; GGUF export writes one file, e.g. {out_file}/model.gguf")
    tokenizer_path = ckpt / TOKENIZER
    if not tokenizer_path.exists():
        raise HomegrownError(f"{ckpt} has no {TOKENIZER}; export a checkpoint written by homegrown training")
    cfg = ModelConfig.load(ckpt / CONFIG)
    check_exportable(cfg, "GGUF")
    tok = _tokenizer_fields(tokenizer_path, cfg.vocab_size)
    chat = read_chat_format(ckpt, load_tokenizer(ckpt))
    ids = _special_ids(chat, ckpt)
    tensors = gguf_tensors(load_file(str(ckpt / WEIGHTS)), cfg)
    qtype, file_type = OUTTYPES[outtype]

    with atomic_path(out_file) as tmp:
        _write_gguf(gguf.GGUFWriter(str(tmp), architecture(cfg)), ckpt, cfg, tok, chat, ids, tensors, qtype, file_type)
    return out_file


def _write_gguf(writer: gguf.GGUFWriter, ckpt: Path, cfg: ModelConfig, tok: dict[str, Any], chat: ChatFormat,
                ids: dict[str, Any], tensors: dict[str, np.ndarray], qtype: gguf.GGMLQuantizationType,
                file_type: gguf.LlamaFileType) -> None:
    """Metadata, tokenizer and tensors of one GGUF file; the writer is closed even when a step fails."""
    try:
        writer.add_name(_model_name(ckpt))
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.ffn_hidden)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.n_kv_heads)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.head_dim)
        if cfg.qk_norm:  # Qwen3's converter states the head size (its models' need not be width / heads)
            writer.add_key_length(cfg.head_dim)
            writer.add_value_length(cfg.head_dim)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type(file_type)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(tok["pre"])
        writer.add_token_list(tok["tokens"])
        writer.add_token_types(tok["types"])
        writer.add_token_merges(tok["merges"])
        writer.add_bos_token_id(ids["bos"])
        writer.add_eos_token_id(ids["eos"])
        writer.add_eot_token_id(ids["eos"])
        writer.add_pad_token_id(ids["pad"])
        if ids["unk"] is not None:
            writer.add_unk_token_id(ids["unk"])
        # Ollama's own (Go) llama runner ignores tokenizer.ggml.pre: it reads the split regex itself (default:
        # Llama 3's) and its stop ids from eos_token_id plus eos_token_ids. llama.cpp ignores both keys. A split
        # in two stages (smollm: digits first) is no single regex, so only GPT-2's is written.
        if tok["pre"] in GPT2_PRE:
            writer.add_string("tokenizer.ggml.pretokenizer", GPT2_REGEX)
        writer.add_array("tokenizer.ggml.eos_token_ids", ids["eos_ids"])
        writer.add_add_bos_token(ids["add_bos"])
        writer.add_add_eos_token(False)
        if chat.template is not None:
            writer.add_chat_template(chat.template.source)

        for name, arr in tensors.items():
            data, dtype = _encode(arr, qtype)
            quantized = dtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(name, data, raw_dtype=dtype if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
