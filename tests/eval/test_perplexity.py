import math

import pytest
import torch

from homegrown.config import ModelConfig
from homegrown.data.pack import TokenShards, token_byte_lengths
from homegrown.data.sources import iter_corpus
from homegrown.eval.perplexity import evaluate, evaluate_split
from homegrown.model import Transformer
from homegrown.tokenizer import eot_id, load_tokenizer


def test_uniform_model_scores_log_vocab_and_matching_bits_per_byte(tiny_run):
    """A model whose logits are all zero predicts uniformly: loss = ln V exactly, bpb = log2 V · tokens / bytes."""
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    vocab = tok.get_vocab_size()
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    max_seq_len=64))
    torch.nn.init.zeros_(model.lm_head.weight)
    lengths = torch.from_numpy(token_byte_lengths(tok))
    val = TokenShards(tiny_run / "shards", "val")
    loss, bpb = evaluate(model, val, lengths, 4, 64, 3, torch.device("cpu"), None)
    targets = torch.cat([y.reshape(-1) for _, y in val.sequential(4, 64, 3)])
    assert loss == pytest.approx(math.log(vocab), rel=1e-5)
    assert bpb == pytest.approx(math.log2(vocab) * targets.numel() / int(lengths[targets].sum()), rel=1e-5)


def test_whole_split_is_scored_token_by_token_with_the_checkpoints_tokenizer(tiny_run):
    """Every token of every val page (and each page's <|endoftext|>) after the first is predicted exactly once."""
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    vocab = tok.get_vocab_size()
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    max_seq_len=64))
    torch.nn.init.zeros_(model.lm_head.weight)
    ids = []
    for record in iter_corpus(tiny_run / "corpus", "val"):
        ids += [*tok.encode(record["text"], add_special_tokens=False).ids, eot_id(tok)]
    lengths = token_byte_lengths(tok)
    score = evaluate_split(model, tok, tiny_run / "corpus", batch=8)
    assert score.tokens == len(ids) - 1
    assert score.bytes == int(lengths[ids[1:]].sum())
    assert score.loss == pytest.approx(math.log(vocab), rel=1e-5)
    assert score.bpb == pytest.approx(math.log2(vocab) * score.tokens / score.bytes, rel=1e-5)
    assert evaluate_split(model, tok, tiny_run / "corpus", batch=3, seq_len=17).tokens == score.tokens
