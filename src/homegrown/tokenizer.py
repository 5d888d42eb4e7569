"""Byte-level BPE with HF `tokenizers`: trained per run, chat special tokens reserved from the start.

Byte-level means every input string round-trips (no unknown token), which matters for code-heavy docs;
the special tokens get the lowest ids so a chat model and its base model share one vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from homegrown.chat_template import CHAT_SPECIAL_TOKENS, EOT
from homegrown.errors import HomegrownError
from homegrown.io import atomic_path
from homegrown.layout import TOKENIZER


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: Path) -> Tokenizer:
    """Train byte-level BPE on `texts` and save it atomically to `out_path` (tokenizer.json)."""
    min_vocab = 256 + len(CHAT_SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise HomegrownError(f"vocab_size={vocab_size} is below the {min_vocab} needed for bytes + special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER
    if not path.exists():
        raise HomegrownError(f"no tokenizer at {path}; train one with `homegrown run` or pass a run/checkpoint dir")
    return Tokenizer.from_file(str(path))


def eot_id(tok: Tokenizer) -> int:
    tid = tok.token_to_id(EOT)
    if tid is None:
        raise HomegrownError("tokenizer has no <|endoftext|> token; it was not made by homegrown")
    return tid


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode many documents at once: `tokenizers` parallelises the batch in Rust."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def iter_batches(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch



class IncrementalDecoder:
    """The text of a growing list of token ids, decoding only the last few tokens per new one.

    Decoding the whole reply after every token costs O(n) per token, O(n²) per reply. Here each step decodes a
    short window twice — the tokens already shown since the last cut, with and without the new ones — and the
    new text is the difference, as vLLM's detokenizer does; the window keeps the tokens just before the new
    ones so that decoders which treat a leading token specially (SentencePiece's leading-space strip) see the
    same context as in a full decode. Text whose last character is not complete yet (a multi-byte UTF-8
    character split across byte-level tokens decodes to a trailing U+FFFD) is held back until it is.
    `text` always equals the full decode of `ids` up to the last complete character.

    Special tokens are left out of the text, as a full decode leaves them, except those in `keep`, which are
    written as their own text: a tool call that opens with a special token (`<tool_call>` in some models'
    vocabularies) must reach the parser that looks for it.
    """

    def __init__(self, tok: Tokenizer, keep: frozenset[int] = frozenset()) -> None:
        self.tok = tok
        self._drop: frozenset[int] | None = None  # the special tokens left out, when some are kept
        if keep:
            self._drop = special_ids(tok) - keep
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: the tokens before the last cut, kept as context
        self._read = 0  # tokens whose text is in `text`

    def add(self, token: int) -> str:
        """Append a token; returns the text it completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        shown = self.decode(self.ids[self._prefix:self._read])
        window = self.decode(self.ids[self._prefix:])
        if len(window) <= len(shown) or window.endswith("\ufffd"):
            return ""
        piece = window[len(shown):]
        self.text += piece
        self._prefix, self._read = self._read, len(self.ids)
        return piece

    def decode(self, ids: list[int]) -> str:
        """The whole text of `ids` as this decoder writes it (special tokens skipped but for the kept ones): the
        same as a full decode that removes the other special tokens first, which is what skipping them does."""
        if self._drop is None:
            return self.tok.decode(ids)
        return self.tok.decode([i for i in ids if i not in self._drop], skip_special_tokens=False)


def special_ids(tok: Tokenizer) -> frozenset[int]:
    """The ids of `tok`'s special tokens: those a decode skips."""
    return frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)


def special_token_id(tok: Tokenizer, text: str) -> int | None:
    """The id of `text` when it is exactly one special token of `tok`, else None."""
    token = tok.token_to_id(text) if text else None
    return token if token is not None and token in special_ids(tok) else None
