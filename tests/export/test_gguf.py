"""GGUF export: read the file back with `gguf.GGUFReader` and run it through a numpy forward pass written from
llama.cpp's `llama` semantics (interleaved-pair RoPE on the permuted q/k, RMSNorm eps from metadata, GQA,
SwiGLU) — or its `qwen3` ones for a `qk_norm` model (per-head q/k RMSNorm, then NEOX rotate-half RoPE); its logits
must be our model's. transformers' own GGUF loader reads the qwen3 file as a second, independent check."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from homegrown.chat_template import CHAT_TEMPLATE
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.gguf import GPT2_REGEX, export_gguf, permute_rope
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import save_checkpoint

SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _checkpoint(root: Path, tokenizer_path: Path, tied: bool, **shape: object) -> tuple[Transformer, Path]:
    """A small GQA model (head_dim 16, rows a multiple of q8_0's 32-wide blocks) with weights pushed off the init;
    `shape` overrides fields (architecture switches, head sizes)."""
    torch.manual_seed(0)
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    fields = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, **shape}
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=64, rope_theta=5000.0, norm_eps=1e-6, tie_embeddings=tied,
                      **fields)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, save_checkpoint(root / "ckpt", 1, model, tokenizer_path)


def _fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _weights(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor as float64 (q8_0 dequantized), in numpy's (rows, cols) order."""
    out = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        out[t.name] = data.astype(np.float64)
    return out


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_pairs(x: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (x[2i], x[2i+1]) by pos·base^(-2i/d). x: (T, H, D)."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def _rope_halves(x: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NEOX (qwen3): rotate (x[i], x[i + D/2]) by pos·base^(-2i/d). x: (T, H, D)."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """(T, vocab) logits for one sequence, using only the GGUF's metadata and tensors."""
    reader = gguf.GGUFReader(path)
    meta, w = _fields(reader), _weights(reader)
    arch = meta["general.architecture"]
    assert arch in ("llama", "qwen3")
    n_layers, n_heads = meta[f"{arch}.block_count"], meta[f"{arch}.attention.head_count"]
    n_kv, eps = meta[f"{arch}.attention.head_count_kv"], meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    base, d_rope = meta[f"{arch}.rope.freq_base"], meta[f"{arch}.rope.dimension_count"]
    x = w["token_embd.weight"][ids]
    t, d = x.shape
    head_dim = d // n_heads
    assert d_rope == head_dim
    causal = np.tril(np.ones((t, t), dtype=bool))
    for i in range(n_layers):
        def p(name: str, i: int = i) -> np.ndarray:
            return w[f"blk.{i}.{name}.weight"]
        h = _rms_norm(x, p("attn_norm"), eps)
        q = (h @ p("attn_q").T).reshape(t, n_heads, head_dim)
        k = (h @ p("attn_k").T).reshape(t, n_kv, head_dim)
        if arch == "qwen3":
            q = _rope_halves(_rms_norm(q, p("attn_q_norm"), eps), base)
            k = _rope_halves(_rms_norm(k, p("attn_k_norm"), eps), base)
        else:
            q, k = _rope_pairs(q, base), _rope_pairs(k, base)
        v = (h @ p("attn_v").T).reshape(t, n_kv, head_dim)
        group = n_heads // n_kv
        heads = []
        for hd in range(n_heads):
            scores = q[:, hd] @ k[:, hd // group].T / np.sqrt(head_dim)
            scores = np.where(causal, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((probs / probs.sum(-1, keepdims=True)) @ v[:, hd // group])
        x = x + np.concatenate(heads, axis=-1) @ p("attn_output").T
        h = _rms_norm(x, p("ffn_norm"), eps)
        gate, up = h @ p("ffn_gate").T, h @ p("ffn_up").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ p("ffn_down").T
    head = w.get("output.weight", w["token_embd.weight"])
    return _rms_norm(x, w["output_norm.weight"], eps) @ head.T


def _sequences(tokenizer_path: Path) -> list[list[int]]:
    tok = load_tokenizer(tokenizer_path)
    eot = tok.token_to_id("<|endoftext|>")
    texts = ["The quick brown fox jumps over the lazy dog.",
             "<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\nFour, of course.<|end|>",
             "Ünïcode café naïve — every byte round-trips, even 🦊 and tabs\tand newlines\n\n."]
    return [[eot, *tok.encode(text, add_special_tokens=False).ids] for text in texts]


@pytest.fixture(scope="module")
def tokenizer_path(tiny_run: Path) -> Path:
    return tiny_run / "tokenizer.json"


@pytest.mark.parametrize(("tied", "outtype", "qk_norm"), [
    (True, "f32", False), (False, "f32", False), (True, "f16", False), (False, "q8_0", False),
    (True, "f32", True), (False, "q8_0", True)])
def test_reference_forward_matches_model(tmp_path: Path, tokenizer_path: Path, tied: bool, outtype: str,
                                         qk_norm: bool) -> None:
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, tied, qk_norm=qk_norm)
    path = export_gguf(ckpt, tmp_path / "model.gguf", outtype)
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) is not tied
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_k.weight", "blk.0.ffn_gate.weight"} <= names
    assert ({"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names) is qk_norm
    assert _fields(reader)["general.architecture"] == ("qwen3" if qk_norm else "llama")
    agree = total = 0
    for ids in _sequences(tokenizer_path):
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].double().numpy()
        ref = reference_logits(path, ids)
        if outtype == "f32":
            np.testing.assert_allclose(ref, ours, atol=1e-4, rtol=0)
        elif outtype == "f16":
            np.testing.assert_allclose(ref, ours, atol=2e-2, rtol=0)
        agree += int((ref.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
    floor = {"f32": 1.0, "f16": 0.95, "q8_0": 0.85}[outtype]
    assert agree / total >= floor, f"greedy top-1 agrees on {agree}/{total}"


def test_transformers_gguf_loader_reads_the_qwen3_export(tmp_path: Path, tokenizer_path: Path) -> None:
    """transformers' GGUF reader (its own tensor-name map and Qwen3 modelling code) gives our logits. It takes the
    head size from Qwen3Config's default (128), not the file, so the model here has 128-wide heads."""
    transformers = pytest.importorskip("transformers")
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, True, qk_norm=True, d_model=256, n_heads=2, n_kv_heads=1,
                              ffn_hidden=128)
    path = export_gguf(ckpt, tmp_path / "model.gguf", "f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    ids = torch.tensor(_sequences(tokenizer_path)[:1])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("switch", "value"), [("logit_softcap", 30.0), ("mlp", "relu2")])
def test_options_no_standard_model_has_are_refused_by_name(tmp_path: Path, tokenizer_path: Path, switch: str,
                                                           value: object) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True, **{switch: value})
    with pytest.raises(HomegrownError, match=f"cannot export to GGUF: .*model.{switch}="):
        export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    assert not (tmp_path / "m.gguf").exists()


def test_quantized_types_and_sizes(tmp_path: Path, tokenizer_path: Path) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, False)
    sizes = {}
    for outtype, qtype, file_type in (("f32", "F32", 0), ("f16", "F16", 1), ("q8_0", "Q8_0", 7)):
        path = export_gguf(ckpt, tmp_path / f"{outtype}.gguf", outtype)
        reader = gguf.GGUFReader(path)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
        assert types["blk.0.attn_q.weight"] == qtype and types["token_embd.weight"] == qtype
        assert _fields(reader)["general.file_type"] == file_type
        sizes[outtype] = path.stat().st_size
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def test_metadata_and_tokenizer(tmp_path: Path, tokenizer_path: Path) -> None:
    model, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    meta = _fields(gguf.GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f32")))
    cfg = model.cfg
    assert meta["general.architecture"] == "llama" and meta["general.name"]
    assert meta["llama.context_length"] == cfg.max_seq_len and meta["llama.embedding_length"] == cfg.d_model
    assert meta["llama.block_count"] == cfg.n_layers and meta["llama.feed_forward_length"] == cfg.ffn_hidden
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["llama.rope.freq_base"] == 5000.0 and meta["llama.rope.dimension_count"] == cfg.head_dim
    assert meta["llama.vocab_size"] == cfg.vocab_size

    tok = load_tokenizer(tokenizer_path)
    vocab = tok.get_vocab(with_added_tokens=True)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = meta["tokenizer.ggml.token_type"]
    assert [types[vocab[s]] for s in SPECIAL] == [gguf.TokenType.CONTROL] * 5
    assert types.count(gguf.TokenType.CONTROL) == 5 and types[vocab["!"]] == gguf.TokenType.NORMAL
    merges = json.loads(tokenizer_path.read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert meta["tokenizer.ggml.bos_token_id"] == vocab["<|endoftext|>"]
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == vocab["<|end|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert meta["tokenizer.ggml.eos_token_ids"] == [vocab["<|end|>"], vocab["<|endoftext|>"]]
    assert meta["tokenizer.ggml.pretokenizer"] == GPT2_REGEX


def test_pretokenizer_regex_is_the_tokenizers_split(tokenizer_path: Path) -> None:
    """The regex written for Ollama splits text exactly where our tokenizer's ByteLevel pre-tokenizer does."""
    regex = pytest.importorskip("regex")
    pre = load_tokenizer(tokenizer_path).pre_tokenizer
    for text in ["Hello world's 123 tests!!  ok\n\n\tdone ", "Ünïcode café — 🦊 x=3.14;  y 'll'm", "  a\r\nb"]:
        spans = [m.span() for m in regex.finditer(GPT2_REGEX, text)]
        assert spans == [offsets for _, offsets in pre.pre_tokenize_str(text)], text


def test_permutation_turns_rotate_half_into_pairs() -> None:
    """One head, dim 4: rows (a0, a1, b0, b1) rotate as pairs (a0, b0), (a1, b1) in rotate-half RoPE."""
    w = np.arange(8.0).reshape(4, 2)
    assert permute_rope(w, 1).tolist() == [w[0].tolist(), w[2].tolist(), w[1].tolist(), w[3].tolist()]


def test_cli_export_gguf_and_errors(tmp_path: Path, tokenizer_path: Path, cli) -> None:
    _, ckpt = _checkpoint(tmp_path, tokenizer_path, True)
    out = tmp_path / "out" / "model.gguf"
    result = cli("export", str(tmp_path), "--format", "gguf", "--out", str(out), "--outtype", "q8_0")
    assert result.returncode == 0, result.stderr
    assert out.exists() and not any(p.name.endswith(".tmp") for p in out.parent.iterdir())
    bad = cli("export", str(ckpt), "--format", "gguf", "--out", str(out), "--outtype", "q4_k")
    assert bad.returncode == 2 and "q4_k" in bad.stdout + bad.stderr
    with pytest.raises(HomegrownError, match="directory"):
        export_gguf(ckpt, tmp_path, "f16")
