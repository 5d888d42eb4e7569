"""A GGUF file's tokenizer metadata → an HF `tokenizers` tokenizer.json, so an imported model keeps its own ids.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary, merges, token types and the *name* of its
pre-tokenizer (`tokenizer.ggml.pre`) and hard-codes what each name means. Only byte-level BPE (`tokenizer.ggml.model
= gpt2`) is rebuilt here, with the pre-tokenizers whose meaning we can state exactly:

- `gpt-2` / `gpt2`: the GPT-2 split regex, i.e. `tokenizers`' ByteLevel(use_regex=True) (what our own export writes);
- `smollm` (and `starcoder`, which llama.cpp treats the same): every digit on its own, then the GPT-2 regex —
  llama.cpp's regex list `\\p{N}`, `'s|'t|… ?\\p{N}+|…`, and the Digits(individual_digits) + ByteLevel pair of
  SmolLM2's own tokenizer.json.

Any other name fails loudly rather than tokenizing with the wrong split. CONTROL tokens become special added
tokens (matched whole, dropped by `decode`), USER_DEFINED ones plain added tokens (matched whole, kept in text),
as llama.cpp and transformers' GGUF converter treat them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from homegrown.errors import HomegrownError

CONTROL = 3
USER_DEFINED = 4
"""llama.cpp token types (gguf.TokenType), spelled here so this leaf module needs no `gguf` import."""

_GPT2 = ("gpt-2", "gpt2")
_DIGITS_THEN_GPT2 = ("smollm", "starcoder")
SUPPORTED_PRE = (*_GPT2, *_DIGITS_THEN_GPT2)


@dataclass
class GGUFVocab:
    """The tokenizer fields of a GGUF file (`tokenizer.ggml.*`), already read out."""

    model: str
    pre: str
    tokens: Sequence[str]
    token_types: Sequence[int]
    merges: Sequence[str]
    bos_id: int | None = None
    add_bos: bool = False


def pre_tokenizer_for(pre: str) -> pre_tokenizers.PreTokenizer:
    """The HF `tokenizers` pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name; the GGUF exporter also uses it
    to find the name a tokenizer.json's split rule goes by."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2:
        return byte_level
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise HomegrownError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(SUPPORTED_PRE)}); "
                         "its split rule is not known to homegrown, and guessing would change the token ids")


def build_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """Byte-level BPE with the file's vocabulary, merges, special tokens and pre-tokenizer.

    The post-processor prepends BOS only when the file says llama.cpp does (`tokenizer.ggml.add_bos_token`), as
    an HF tokenizer.json of such a model does; homegrown's own code encodes with add_special_tokens=False and
    reads that flag from tokenizer_config.json instead.
    """
    if vocab.model != "gpt2":
        raise HomegrownError(f"GGUF tokenizer model {vocab.model!r} is not supported; only byte-level BPE "
                             "(tokenizer.ggml.model = gpt2) can be rebuilt")
    pre = pre_tokenizer_for(vocab.pre)
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    if len(ids) != len(vocab.tokens):
        raise HomegrownError("the GGUF vocabulary lists a token twice; the file is damaged")
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, vocab.bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kinds = list(zip(vocab.tokens, vocab.token_types, strict=True))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in kinds if kind == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, kind in kinds if kind == USER_DEFINED])
    if tok.get_vocab_size() != len(vocab.tokens):
        raise HomegrownError(f"rebuilding the GGUF tokenizer gave {tok.get_vocab_size()} tokens instead of "
                             f"{len(vocab.tokens)}; its special tokens are not part of its vocabulary")
    return tok
