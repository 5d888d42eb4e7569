import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.generate import (
    NUCLEUS_CANDIDATES,
    SamplingParams,
    _nucleus,
    sample_batch,
    sample_next,
    stream_text,
    stream_tokens,
)
from homegrown.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # away from init so sampling has something to choose
    return m.eval()


def test_same_seed_same_tokens_and_different_seed_differs(model):
    def run(seed: int) -> list[int]:
        return list(stream_tokens(model, [1, 2, 3], SamplingParams(max_tokens=30, temperature=1.0, seed=seed)))

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_top_k_one_is_greedy(model):
    greedy = list(stream_tokens(model, [4, 5], SamplingParams(max_tokens=20, temperature=0)))
    top1 = list(stream_tokens(model, [4, 5], SamplingParams(max_tokens=20, temperature=1.5, top_k=1, seed=1)))
    assert greedy == top1 and len(greedy) == 20


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), g)) for _ in range(300)}
    assert picks == {0, 1}


@pytest.mark.parametrize("spread", [1.0, 8.0])
def test_nucleus_from_the_top_candidates_equals_sorting_the_whole_row(spread: float):
    """Peaked rows (nucleus among the top candidates) and flat ones (it is not: the whole row is sorted) both give
    exactly the nucleus a full sort gives."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 5000) * spread, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= 0.9
    want = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    kept = (want > 0).sum(dim=-1)
    assert (kept < NUCLEUS_CANDIDATES).all() if spread > 1 else (kept > NUCLEUS_CANDIDATES).all()
    assert torch.equal(_nucleus(probs, 0.9), want)


def test_stop_token_ends_generation(model):
    free = list(stream_tokens(model, [1, 2, 3], SamplingParams(max_tokens=30, temperature=0)))
    stop = free[5]
    stopped = list(stream_tokens(model, [1, 2, 3], SamplingParams(max_tokens=30, temperature=0,
                                                                   stop_token_ids=[stop])))
    assert stopped == free[:free.index(stop)]


def test_context_overflow_names_both_numbers(model):
    with pytest.raises(HomegrownError, match=r"prompt \(60 tokens\) \+ max_tokens \(10\)"):
        list(stream_tokens(model, [1] * 60, SamplingParams(max_tokens=10)))
    with pytest.raises(HomegrownError, match="top_p"):
        list(stream_tokens(model, [1], SamplingParams(top_p=0)))



def _byte_char(b: int) -> str:
    """GPT-2's byte → printable character map, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return chr(b) if b in printable else chr(256 + sorted(set(range(256)) - set(printable)).index(b))


def test_stream_text_holds_back_a_split_character_until_it_is_whole(model):
    """A byte-level tokenizer whose 64 tokens include the two bytes of "é" (0xC3 0xA9): streamed pieces never
    end inside a character, and together they are the text decoded up to its last whole character."""
    from tokenizers import Tokenizer, decoders, models

    chars = [_byte_char(b) for b in [*range(ord("A"), ord("A") + 62), 0xC3, 0xA9]]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.decoder = decoders.ByteLevel()
    assert tok.decode([62, 63]) == "é" and tok.decode([0, 62]).endswith("\ufffd")
    split = 0
    for seed in range(8):
        params = SamplingParams(max_tokens=40, temperature=3.0, seed=seed)
        ids = list(stream_tokens(model, [1, 2], params))
        pieces = list(stream_text(model, tok, [1, 2], params))
        whole = [k for k in range(len(ids) + 1) if not tok.decode(ids[:k]).endswith("\ufffd")]
        assert "".join(pieces) == tok.decode(ids[:whole[-1]])
        assert not any(p.endswith("\ufffd") for p in pieces)
        split += len(whole) < len(ids) + 1  # some prefix ended inside a character and was held back
    assert split  # the property was exercised, not vacuous


def test_sample_batch_rows_are_stream_tokens_with_their_own_seeds(model):
    """Batched answers to one prompt: each row is what its seed samples alone, whatever the other rows sample."""
    params = SamplingParams(max_tokens=25, temperature=1.0)
    alone = [list(stream_tokens(model, [1, 2, 3], SamplingParams(max_tokens=25, temperature=1.0, seed=s)))
             for s in (7, 8)]
    assert sample_batch(model, [1, 2, 3], [7], params) == alone[:1]
    batched = sample_batch(model, [1, 2, 3], [7, 8], params)
    assert batched[0] != batched[1]
    assert batched == alone


def test_sample_batch_stops_each_row_at_a_stop_token(model):
    free = sample_batch(model, [1, 2, 3], [3, 4], SamplingParams(max_tokens=30, temperature=1.0))
    stop = free[0][4]
    stopped = sample_batch(model, [1, 2, 3], [3, 4], SamplingParams(max_tokens=30, temperature=1.0,
                                                                     stop_token_ids=[stop]))
    for got, row in zip(stopped, free, strict=True):
        assert got == (row[:row.index(stop)] if stop in row else row)
