"""`homegrown import` against implementations we did not write: transformers loads the same SmolLM2 GGUF (and a
Llama directory it saved itself) and must give our logits and greedy tokens; `gguf.quants` is the reference for
every tensor type; our own GGUF export must import back to the same weights and token ids."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from homegrown.bundle import load_bundle
from homegrown.chat_template import CHAT_TEMPLATE
from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.export.gguf import export_gguf, permute_rope, unpermute_rope
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.importer import SUPPORTED_TYPES, end_of_turn_token, import_model
from homegrown.model import Transformer
from homegrown.tokenizer import load_tokenizer
from homegrown.train.checkpoint import load_model, save_checkpoint

Q = gguf.GGMLQuantizationType
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
    "Numbers: 3.14159, 2024 and 1,000,000 — emoji 🤗 too.",
]
CKPT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


@pytest.fixture(scope="session")
def smol(smol_import):
    """SmolLM2 as the session imported it (conftest.smol_import), loaded for inference."""
    result = smol_import
    bundle = load_bundle(result.run_dir)
    model, tok = bundle.model, bundle.tokenizer
    return result, model, tok


@pytest.fixture(scope="session")
def smol_reference(smollm2_gguf: Path):
    """transformers' own GGUF loader (dequantizing through gguf) on the same file, in fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32)
    return model.eval()


def test_smollm2_logits_match_transformers(smol, smol_reference) -> None:
    _, model, tok = smol
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
            ours, theirs = model(ids), smol_reference(ids).logits
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() < 1e-3, prompt


@pytest.fixture
def one_thread():
    """Batch-1 decode is dispatch-bound; on a shared 2-core machine two spinning torch threads made each step ~10×
    slower (1.3 s instead of 0.13 s here), one thread keeps the 128 steps at ~17 s there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_smollm2_greedy_tokens_match_transformers(smol, smol_reference) -> None:
    """64 greedy tokens from our decode path vs transformers' forward with its KV cache, argmax each step."""
    _, model, tok = smol
    ids = tok.encode(PROMPTS[2], add_special_tokens=False).ids
    ours = list(stream_tokens(model, ids, SamplingParams(max_tokens=64, temperature=0.0)))
    theirs: list[int] = []
    cache, x = None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(64):
            out = smol_reference(x, cache=cache, use_cache=True)
            cache = out.past_key_values
            theirs.append(int(out.logits[0, -1].argmax()))
            x = torch.tensor([[theirs[-1]]])
    assert ours == theirs, (tok.decode(ours), tok.decode(theirs))
    assert "Paris" in tok.decode(ours)


def test_smollm2_checkpoint_holds_the_model_bundle(smol, smol_reference, smollm2_gguf: Path) -> None:
    result, _, tok = smol
    assert {p.name for p in result.checkpoint.iterdir()} == CKPT_FILES
    assert result.checkpoint == result.run_dir / "ckpt" / "step_0"
    ref = smol_reference.config
    cfg = ModelConfig.load(result.checkpoint / "config.json")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, cfg.vocab_size) == (
        ref.num_hidden_layers, ref.hidden_size, ref.num_attention_heads, ref.num_key_value_heads,
        ref.intermediate_size, ref.vocab_size)
    assert cfg.tie_embeddings and cfg.max_seq_len == ref.max_position_embeddings
    assert cfg.rope_theta == pytest.approx(ref.rope_parameters["rope_theta"])
    assert cfg.norm_eps == pytest.approx(ref.rms_norm_eps)

    fields = {k: f.contents() for k, f in gguf.GGUFReader(str(smollm2_gguf)).fields.items()
              if k.startswith("tokenizer.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                          "tokenizer.ggml.token_type")}
    tc = json.loads((result.checkpoint / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == fields["tokenizer.chat_template"]
    assert tok.token_to_id(tc["bos_token"]) == fields["tokenizer.ggml.bos_token_id"]
    assert tok.token_to_id(tc["eos_token"]) == fields["tokenizer.ggml.eos_token_id"]
    assert tc["add_bos_token"] is fields["tokenizer.ggml.add_bos_token"]
    gc = json.loads((result.checkpoint / "generation_config.json").read_text())
    assert gc["bos_token_id"] == fields["tokenizer.ggml.bos_token_id"]
    assert tok.token_to_id("<|im_end|>") in gc["eos_token_id"]
    assert fields["tokenizer.ggml.eos_token_id"] in gc["eos_token_id"]
    assert result.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert result.params == sum(p.numel() for p in smol_reference.parameters())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):  # the run's tokenizer too
        assert (result.run_dir / name).read_bytes() == (result.checkpoint / name).read_bytes()


@pytest.mark.parametrize(("template", "expected"), [
    (CHAT_TEMPLATE, "<|end|>"),
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}", "<|im_end|>"),
    ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
     "{{ m['content'] | trim }}<|eot_id|>{% endfor %}", "<|eot_id|>"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {{ eos_token }}{% endfor %}", "<|endoftext|>"),
    ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", None),
    ("{{ raise_exception('no') }}", None),
])
def test_end_of_turn_token_is_read_from_the_template(tiny_run: Path, template: str, expected: str | None) -> None:
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    assert end_of_turn_token(template, tok, config) == expected


# --- transformers directories -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard", [False, True])
def test_transformers_directory_imports_with_matching_logits(tmp_path: Path, tiny_run: Path, shard: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = load_tokenizer(tiny_run / "tokenizer.json")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 31337.0}, tie_word_embeddings=False,
                         bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=tok.token_to_id("<|endoftext|>"))
    torch.manual_seed(7)
    reference = LlamaForCausalLM(config).eval()
    src = tmp_path / "hf"
    reference.save_pretrained(src, max_shard_size="100KB" if shard else "1GB")
    assert (src / "model.safetensors.index.json").exists() == shard
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_run / "tokenizer.json"), bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(src)

    result = import_model(src, tmp_path / "run")
    assert result.source_format == "hf" and result.architecture == "LlamaForCausalLM"
    model = load_model(result.run_dir).eval()
    cfg = model.cfg
    assert (cfg.rope_theta, cfg.n_kv_heads, cfg.tie_embeddings, cfg.norm_eps) == (31337.0, 2, False, 1e-6)
    ids = torch.randint(0, config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(ids), reference(ids).logits, atol=1e-4)
    tc = json.loads((result.checkpoint / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHAT_TEMPLATE and tc["eos_token"] == "<|endoftext|>"
    gc = json.loads((result.checkpoint / "generation_config.json").read_text())
    assert gc["eos_token_id"] == [tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")]
    assert load_tokenizer(result.checkpoint).get_vocab() == tok.get_vocab()


def test_transformers_qwen3_directory_imports_as_qk_norm(tmp_path: Path, tiny_run: Path) -> None:
    """A Qwen3 made by transformers (heads of width / heads, full attention) is our model with `qk_norm`."""
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = load_tokenizer(tiny_run / "tokenizer.json")
    config = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 31337.0}, tie_word_embeddings=True,
                         eos_token_id=tok.token_to_id("<|endoftext|>"))
    torch.manual_seed(7)
    reference = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 2.0)  # off their init of ones, so a dropped or swapped norm would show
    src = tmp_path / "hf"
    reference.save_pretrained(src)
    PreTrainedTokenizerFast(tokenizer_file=str(tiny_run / "tokenizer.json"), eos_token="<|endoftext|>").save_pretrained(
        src)
    result = import_model(src, tmp_path / "run")
    assert result.architecture == "Qwen3ForCausalLM"
    model = load_model(result.run_dir).eval()
    assert model.cfg.qk_norm and model.cfg.tie_embeddings
    ids = torch.randint(0, config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids).logits, atol=1e-4, rtol=0)


def test_transformers_directory_without_safetensors_is_refused(tmp_path: Path, tiny_run: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "pytorch_model.bin").write_bytes(b"never unpickled")
    (src / "tokenizer.json").write_bytes((tiny_run / "tokenizer.json").read_bytes())
    (src / "tokenizer_config.json").write_text("{}")
    with pytest.raises(HomegrownError, match="only safetensors"):
        import_model(src, tmp_path / "run")


def test_transformers_directory_of_another_architecture_is_named(tmp_path: Path, tiny_run: Path) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    (src / "model.safetensors").write_bytes(b"")
    (src / "tokenizer.json").write_bytes((tiny_run / "tokenizer.json").read_bytes())
    (src / "tokenizer_config.json").write_text("{}")
    with pytest.raises(HomegrownError, match="'qwen2' model; only Llama- and Qwen3-architecture"):
        import_model(src, tmp_path / "run")


# --- GGUF files built here ----------------------------------------------------------------------------------------

BYTE_TOKENS = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [
    chr(c) for c in range(174, 256)] + [chr(256 + i) for i in range(68)]
"""GPT-2's byte-to-unicode alphabet (256 symbols), so every input encodes."""
TOKENS = [*BYTE_TOKENS, "he", "<|bos|>", "<|eot|>"]
BOS, EOT = len(TOKENS) - 2, len(TOKENS) - 1
TINY = ModelConfig(vocab_size=len(TOKENS), d_model=256, n_layers=1, n_heads=4, n_kv_heads=2,
                   ffn_hidden=256, max_seq_len=32, rope_theta=20000.0, norm_eps=1e-6, tie_embeddings=False)
"""Rows of 256: one block of every K-quant."""


def _tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c, kv = TINY, TINY.n_kv_heads * TINY.head_dim
    shapes = {"token_embd.weight": (c.vocab_size, c.d_model), "output.weight": (c.vocab_size, c.d_model),
              "output_norm.weight": (c.d_model,), "blk.0.attn_norm.weight": (c.d_model,),
              "blk.0.ffn_norm.weight": (c.d_model,), "blk.0.attn_q.weight": (c.d_model, c.d_model),
              "blk.0.attn_k.weight": (kv, c.d_model), "blk.0.attn_v.weight": (kv, c.d_model),
              "blk.0.attn_output.weight": (c.d_model, c.d_model), "blk.0.ffn_gate.weight": (c.ffn_hidden, c.d_model),
              "blk.0.ffn_up.weight": (c.ffn_hidden, c.d_model), "blk.0.ffn_down.weight": (c.d_model, c.ffn_hidden)}
    return {name: (rng.standard_normal(shape) * 0.05).astype(np.float32) for name, shape in shapes.items()}


def _encode(arr: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """`gguf.quants.quantize` where it implements the type; otherwise random blocks with sane f16 scales (the
    numpy reference only dequantizes K-quants)."""
    try:
        return gguf.quants.quantize(arr, qtype)
    except NotImplementedError:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (arr.shape[0], arr.shape[1] // block, size), dtype=np.uint8)
        scales = {Q.Q4_K: [0, 2], Q.Q6_K: [size - 2]}[qtype]  # ggml_half d (and dmin) within each block
        for at in scales:
            blocks[..., at:at + 2] = np.full(blocks.shape[:2], 0.003, np.float16).view(np.uint8).reshape(
                *blocks.shape[:2], 2)
        return blocks.reshape(arr.shape[0], -1)


def write_gguf(path: Path, qtype: Q = Q.F32, arch: str = "llama", pre: str = "gpt-2",
               tensors: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A one-layer llama GGUF whose matrices are stored as `qtype`; returns what each tensor holds as float32
    (through gguf.quants.dequantize), in the file's llama.cpp layout."""
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(str(path), arch)
    c = TINY
    for key, value in (("context_length", c.max_seq_len), ("embedding_length", c.d_model),
                       ("block_count", c.n_layers), ("feed_forward_length", c.ffn_hidden),
                       ("attention.head_count", c.n_heads), ("attention.head_count_kv", c.n_kv_heads)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.norm_eps)
    writer.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(TOKENS) - 2) + [gguf.TokenType.CONTROL] * 2)
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOT)
    writer.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot|>\n{% endfor %}")
    held = {}
    for name, arr in (tensors or _tiny_tensors()).items():
        if arr.ndim == 1 or qtype == Q.F32:
            data, raw = arr, None
        elif qtype == Q.F16:
            data, raw = arr.astype(np.float16), None
        else:
            data, raw = _encode(arr, qtype, rng), qtype
        writer.add_tensor(name, data, raw_dtype=raw)
        stored = raw or (Q.F16 if data.dtype == np.float16 else Q.F32)
        held[name] = gguf.quants.dequantize(data, stored).reshape(arr.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_every_supported_tensor_type_imports_as_gguf_dequantizes_it(tmp_path: Path, qtype: Q) -> None:
    held = write_gguf(tmp_path / "m.gguf", qtype)
    result = import_model(tmp_path / "m.gguf", tmp_path / "run")
    assert result.tensor_types[qtype.name if qtype != Q.F32 else "F32"] >= 7
    state = {k: v.numpy() for k, v in load_model(result.run_dir).state_dict().items()}
    q, k, v = np.split(state["layers.0.self_attn.qkv.weight"], [TINY.d_model, TINY.d_model + 128])
    np.testing.assert_array_equal(q, unpermute_rope(held["blk.0.attn_q.weight"], TINY.n_heads))
    np.testing.assert_array_equal(k, unpermute_rope(held["blk.0.attn_k.weight"], TINY.n_kv_heads))
    np.testing.assert_array_equal(v, held["blk.0.attn_v.weight"])
    gate, up = np.split(state["layers.0.mlp.gate_up.weight"], 2)
    np.testing.assert_array_equal(gate, held["blk.0.ffn_gate.weight"])
    np.testing.assert_array_equal(up, held["blk.0.ffn_up.weight"])
    for ours, theirs in (("embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight"),
                         ("layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"), ("norm.weight",
                         "output_norm.weight"), ("layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight")):
        np.testing.assert_array_equal(state[ours], held[theirs])
    assert np.isfinite(state["layers.0.self_attn.qkv.weight"]).all()


def test_tiny_gguf_metadata_and_chat_files(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    result = import_model(tmp_path / "m.gguf", tmp_path / "run")
    assert result.config == TINY
    gc = json.loads((result.checkpoint / "generation_config.json").read_text())
    assert gc == {"bos_token_id": BOS, "eos_token_id": [EOT]}
    tok = load_tokenizer(result.checkpoint)
    assert tok.encode("the<|eot|>", add_special_tokens=False).tokens == ["t", "he", "<|eot|>"]


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_our_gguf_export_imports_back_exactly(tmp_path: Path, tiny_run: Path, qk_norm: bool) -> None:
    """export/gguf.py permutes q/k for llama.cpp (not for qwen3) and writes the tokenizer as gpt-2; import must undo
    both."""
    tok_path = tiny_run / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    torch.manual_seed(3)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=64, rope_theta=5000.0, norm_eps=1e-6, qk_norm=qk_norm)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 2.0)  # norms off their init of ones, so a swapped q/k norm would show
    ckpt = save_checkpoint(tmp_path / "ckpt", 1, model, tok_path)
    result = import_model(export_gguf(ckpt, tmp_path / "m.gguf", "f32"), tmp_path / "run")
    assert result.architecture == ("qwen3" if qk_norm else "llama")
    back = load_model(result.run_dir)
    assert back.cfg == model.cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    imported = load_tokenizer(result.checkpoint)
    for text in ["The quick brown fox.", "<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n", "café 🦊\t\n  x"]:
        assert imported.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False).ids
    gc = json.loads((result.checkpoint / "generation_config.json").read_text())
    assert gc["eos_token_id"] == [tok.token_to_id("<|end|>")]


def test_unpermute_inverts_the_export_permutation() -> None:
    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64, 3)
    np.testing.assert_array_equal(unpermute_rope(permute_rope(w, 8), 8), w)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", arch="gemma")
    with pytest.raises(HomegrownError, match="'gemma' model; only the llama and qwen3 architectures"):
        import_model(tmp_path / "m.gguf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unsupported_tensor_type_names_type_and_tensor(tmp_path: Path) -> None:
    tensors = _tiny_tensors()
    write_gguf(tmp_path / "m.gguf", Q.Q5_0, tensors=tensors)
    with pytest.raises(HomegrownError, match=r"tensor token_embd\.weight is stored as Q5_0"):
        import_model(tmp_path / "m.gguf", tmp_path / "run")


def test_extra_tensor_and_unknown_pre_tokenizer_are_refused(tmp_path: Path) -> None:
    tensors = {**_tiny_tensors(), "rope_freqs.weight": np.ones(32, np.float32)}
    write_gguf(tmp_path / "rope.gguf", tensors=tensors)
    with pytest.raises(HomegrownError, match="scaled RoPE"):
        import_model(tmp_path / "rope.gguf", tmp_path / "run")
    tensors = {**_tiny_tensors(), "blk.0.attn_q_norm.weight": np.ones(TINY.head_dim, np.float32)}
    write_gguf(tmp_path / "qnorm.gguf", tensors=tensors)
    with pytest.raises(HomegrownError, match=r"tensor blk\.0\.attn_q_norm\.weight is not part of a llama model"):
        import_model(tmp_path / "qnorm.gguf", tmp_path / "run")
    write_gguf(tmp_path / "pre.gguf", pre="llama-bpe")
    with pytest.raises(HomegrownError, match="pre-tokenizer 'llama-bpe' is not supported"):
        import_model(tmp_path / "pre.gguf", tmp_path / "run")


def test_cli_import(tmp_path: Path, cli) -> None:
    write_gguf(tmp_path / "m.gguf", Q.Q8_0)
    done = cli("import", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = " ".join(done.stderr.split())  # console output goes to stderr, like every command's
    assert "imported gguf llama" in out
    assert f"parameters {sum(a.size for a in _tiny_tensors().values()):,}" in out
    assert "tensor types Q8_0 9, F32 3" in out
    assert "chat template yes; stops at <|eot|>" in out
    again = cli("import", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "already holds a model" in again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    refused = cli("import", str(bad), "--out", str(tmp_path / "run2"))
    assert refused.returncode == 2 and "not a readable GGUF" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
