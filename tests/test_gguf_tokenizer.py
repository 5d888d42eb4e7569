"""The tokenizer rebuilt from a GGUF's metadata must give the ids transformers' own GGUF converter gives."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import regex

from homegrown.errors import HomegrownError
from homegrown.export.gguf import GPT2_REGEX
from homegrown.gguf_tokenizer import CONTROL, USER_DEFINED, GGUFVocab, build_tokenizer

TEXTS = [
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n-1) + fibonacci(n-2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }  // C",
    "Café naïve façade — “quotes”, 日本語のテキスト, Ελληνικά, русский текст, עברית",
    "emoji 🤗🚀 👩‍💻 family 👨‍👩‍👧 flags 🇫🇷",
    "numbers 2024, 3.14159, 1,000,000, -42, 007, 1e-5 and 0x1F",
    "tabs\t\tand   runs of spaces\n\n\n   trailing   \n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    " leading space, don't, I'll, we've, they're",
]


def _vocab(path: Path) -> GGUFVocab:
    fields = gguf.GGUFReader(str(path)).fields

    def get(key: str):
        return fields[key].contents()

    return GGUFVocab(model=get("tokenizer.ggml.model"), pre=get("tokenizer.ggml.pre"),
                     tokens=get("tokenizer.ggml.tokens"), token_types=get("tokenizer.ggml.token_type"),
                     merges=get("tokenizer.ggml.merges"), bos_id=get("tokenizer.ggml.bos_token_id"),
                     add_bos=get("tokenizer.ggml.add_bos_token"))


def test_smollm2_tokenizer_matches_transformers(smollm2_gguf: Path) -> None:
    from transformers import AutoTokenizer

    vocab = _vocab(smollm2_gguf)
    assert vocab.pre == "smollm"
    ours = build_tokenizer(vocab)
    theirs = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    assert ours.get_vocab() == theirs.get_vocab()
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def _llama_cpp_smollm_split(text: str) -> list[str]:
    """llama.cpp's pre-tokenizer for `smollm` (llama-vocab.cpp): each \\p{N} alone, then the GPT-2 regex."""
    pieces = [p for p in regex.split(r"(\p{N})", text) if p]
    return [w for p in pieces for w in (regex.findall(GPT2_REGEX, p) if not regex.fullmatch(r"\p{N}", p) else [p])]


def test_smollm_pre_tokenizer_is_llama_cpps(smollm2_gguf: Path) -> None:
    """transformers' GGUF converter knows no `smollm` and skips the \\p{N} split; that only shows where a merge
    joins a space to a numeric non-digit (" ²" is one token). There we follow llama.cpp (and SmolLM2's own
    tokenizer.json, Digits(individual_digits) + ByteLevel)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    unbyte = {c: b for b, c in bytes_to_unicode().items()}
    pre = build_tokenizer(_vocab(smollm2_gguf)).pre_tokenizer
    for text in [*TEXTS, "powers x² and y³, ½ cup, Ⅻ, ²³ and ٣٤"]:
        pieces = [bytes(unbyte[c] for c in piece).decode() for piece, _ in pre.pre_tokenize_str(text)]
        assert pieces == _llama_cpp_smollm_split(text), text


def _byte_vocab(pre: str, extra: list[tuple[str, int]]) -> GGUFVocab:
    byte_tokens = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + [
        chr(c) for c in range(174, 256)] + [chr(256 + i) for i in range(68)]
    tokens = [*byte_tokens, *(t for t, _ in extra)]
    return GGUFVocab(model="gpt2", pre=pre, tokens=tokens, token_types=[1] * 256 + [k for _, k in extra], merges=[])


def test_digits_split_and_added_tokens() -> None:
    vocab = _byte_vocab("smollm", [("12", 1), ("<ctl>", CONTROL), ("<think>", USER_DEFINED)])
    vocab.merges = ["1 2"]
    tok = build_tokenizer(vocab)
    assert tok.encode("12", add_special_tokens=False).tokens == ["1", "2"]  # smollm: every digit alone
    vocab.pre = "gpt-2"
    assert build_tokenizer(vocab).encode("12", add_special_tokens=False).tokens == ["12"]
    ids = tok.encode("a<ctl>b<think>", add_special_tokens=False).ids
    assert tok.encode("a<ctl>b<think>", add_special_tokens=False).tokens == ["a", "<ctl>", "b", "<think>"]
    assert tok.decode(ids) == "ab<think>"  # control tokens are special (dropped), user-defined ones are text


def test_unsupported_tokenizers_are_named() -> None:
    with pytest.raises(HomegrownError, match="pre-tokenizer 'qwen2' is not supported"):
        build_tokenizer(_byte_vocab("qwen2", []))
    spm = _byte_vocab("default", [])
    spm.model = "llama"
    with pytest.raises(HomegrownError, match="tokenizer model 'llama' is not supported"):
        build_tokenizer(spm)
