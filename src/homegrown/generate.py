"""Single-prompt text generation with the KV cache: what `homegrown generate`, `chat` and `run` samples use.

The sampling rule (temperature → top-k → top-p) lives in `sample_next` so the serving engine applies the
very same rule per request; a seeded generator makes a sample reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from homegrown.errors import HomegrownError
from homegrown.model import KVCache, Transformer
from homegrown.tokenizer import IncrementalDecoder


@dataclass
class SamplingParams:
    max_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise HomegrownError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise HomegrownError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise HomegrownError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise HomegrownError(f"top_k must be >= 0, got {self.top_k}")


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token id per row of (B, V) logits. Temperature 0 is greedy."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


NUCLEUS_CANDIDATES = 256
"""Most probable tokens looked at first for top-p: sorting a 49K vocabulary took ~2.6 ms per row per step on a
2-core Xeon, and a nucleus is almost always far smaller."""


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` with everything outside the smallest prefix (by probability) whose mass reaches `top_p` zeroed (the
    token that crosses it included). The prefix is found among the top NUCLEUS_CANDIDATES when they hold the mass,
    which gives the same prefix as sorting the whole row; otherwise the whole row is sorted."""
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    sorted_probs, order = probs.topk(k, dim=-1)
    if k < probs.shape[-1] and bool((sorted_probs.sum(dim=-1) < top_p).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))


@torch.inference_mode()
def stream_tokens(model: Transformer, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
    """Yield sampled token ids one at a time; stops at a stop token or max_tokens (the stop token is not yielded)."""
    params.validate()
    limit = model.cfg.max_seq_len
    if not prompt_ids:
        raise HomegrownError("the prompt is empty after tokenization")
    if len(prompt_ids) + params.max_tokens > limit:
        raise HomegrownError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {limit} tokens; shorten the prompt or lower max_tokens")
    weight = next(model.parameters())
    device = weight.device
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    cache = KVCache.allocate(model.cfg, 1, len(prompt_ids) + params.max_tokens, dtype=weight.dtype, device=device)
    logits = model.decode(torch.tensor([prompt_ids], device=device), cache)
    for i in range(params.max_tokens):
        token = int(sample_next(logits, params, generator))
        if token in params.stop_token_ids:
            return
        yield token
        if i + 1 < params.max_tokens:
            logits = model.decode(torch.tensor([[token]], device=device), cache)


@torch.inference_mode()
def sample_batch(model: Transformer, prompt_ids: list[int], seeds: list[int],
                 params: SamplingParams) -> list[list[int]]:
    """One sampled answer per seed to the same prompt, decoded together as one batch: a CPU decode step reads
    every weight whatever the batch, so k answers cost about what one does. Row r is sampled with its own
    generator seeded `seeds[r]` (`params.seed` is not used), so with one seed it is exactly `stream_tokens`'
    answer; stop tokens end a row and are not included."""
    params.validate()
    if not prompt_ids:
        raise HomegrownError("the prompt is empty after tokenization")
    if len(prompt_ids) + params.max_tokens > model.cfg.max_seq_len:
        raise HomegrownError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {model.cfg.max_seq_len} tokens; shorten the prompt or lower "
                             "max_tokens")
    weight = next(model.parameters())
    device = weight.device
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    cache = KVCache.allocate(model.cfg, len(seeds), len(prompt_ids) + params.max_tokens, dtype=weight.dtype,
                             device=device)
    logits = model.decode(torch.tensor([prompt_ids] * len(seeds), device=device), cache)
    answers: list[list[int]] = [[] for _ in seeds]
    done = [False] * len(seeds)
    for i in range(params.max_tokens):
        tokens = [int(sample_next(logits[r:r + 1], params, g)) for r, g in enumerate(generators)]
        for r, token in enumerate(tokens):
            if not done[r]:
                done[r] = token in params.stop_token_ids
                if not done[r]:
                    answers[r].append(token)
        if all(done) or i + 1 == params.max_tokens:
            break
        logits = model.decode(torch.tensor([[t] for t in tokens], device=device), cache)
    return answers


def generate_text(model: Transformer, tok: Tokenizer, prompt: str, params: SamplingParams) -> str:
    ids = tok.encode(prompt, add_special_tokens=False).ids
    return tok.decode(list(stream_tokens(model, ids, params)))


def stream_text(model: Transformer, tok: Tokenizer, prompt_ids: list[int], params: SamplingParams) -> Iterator[str]:
    """Yield the text of `stream_tokens` as it grows; a piece that ends inside a multi-byte character is held
    back until the character is whole (`IncrementalDecoder`)."""
    decoder = IncrementalDecoder(tok)
    for token in stream_tokens(model, prompt_ids, params):
        piece = decoder.add(token)
        if piece:
            yield piece
