import json

import numpy as np
import pytest
import torch

from homegrown.data.pack import INDEX_NAME, TokenShards, pack, token_byte_lengths, token_dtype
from homegrown.errors import HomegrownError
from homegrown.tokenizer import eot_id, train_tokenizer

DOCS = [f"Document number {i}: the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(60)]


@pytest.fixture
def tok(tmp_path):
    return train_tokenizer(DOCS, 300, tmp_path / "tokenizer.json")


def test_pack_round_trips_documents_separated_by_eot(tmp_path, tok):
    stats = pack({"train": DOCS[:50], "val": DOCS[50:]}, tok, tmp_path / "shards", shard_tokens=500)
    index = json.loads((tmp_path / "shards" / INDEX_NAME).read_text())
    assert len(index["splits"]["train"]["shards"]) > 1  # small shard size forces several files
    train = TokenShards(tmp_path / "shards", "train")
    assert train.tokens == stats.tokens["train"]
    flat = np.concatenate([np.asarray(a) for a in train.arrays]).tolist()
    eot = eot_id(tok)
    docs, current = [], []
    for t in flat:
        if t == eot:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(t)
    assert docs == DOCS[:50]
    assert stats.text_bytes["train"] == sum(len(d.encode()) for d in DOCS[:50])


def test_windows_are_shifted_by_one_and_deterministic(tmp_path, tok):
    pack({"train": DOCS[:50], "val": DOCS[50:]}, tok, tmp_path / "shards", shard_tokens=400)
    shards = TokenShards(tmp_path / "shards", "train")
    x1, y1 = shards.sample(4, 32, torch.Generator().manual_seed(7))
    x2, y2 = shards.sample(4, 32, torch.Generator().manual_seed(7))
    assert x1.shape == (4, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    first = [torch.cat(b) for b in TokenShards(tmp_path / "shards", "val").sequential(2, 16)]
    again = [torch.cat(b) for b in TokenShards(tmp_path / "shards", "val").sequential(2, 16)]
    assert len(first) > 1 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_byte_lengths_cover_the_text(tmp_path, tok):
    lengths = token_byte_lengths(tok)
    ids = tok.encode(DOCS[3], add_special_tokens=False).ids
    assert int(lengths[ids].sum()) == len(DOCS[3].encode())
    assert lengths[eot_id(tok)] == 0


def test_dtype_choice():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_unfinished_shards_are_refused(tmp_path, tok):
    pack({"train": DOCS[:50], "val": DOCS[50:]}, tok, tmp_path / "shards")
    (tmp_path / "shards" / INDEX_NAME).unlink()
    with pytest.raises(HomegrownError, match=r"missing index\.json"):
        TokenShards(tmp_path / "shards", "train")


def test_too_short_split_is_a_clear_error(tmp_path, tok):
    pack({"train": DOCS[:1], "val": DOCS[1:2]}, tok, tmp_path / "shards")
    with pytest.raises(HomegrownError, match="too few"):
        TokenShards(tmp_path / "shards", "train").sample(1, 4096, torch.Generator())
