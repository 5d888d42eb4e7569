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

