import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, sample_next, stream_tokens
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
