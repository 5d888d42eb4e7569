"""Prompt log-probabilities on /v1/completions (echo + logprobs), as vLLM and the legacy OpenAI API return them,
checked against the same checkpoint run in-process: this is what lm-eval's local-completions and
`homegrown report --external` score multiple choice with."""

from __future__ import annotations

import re
import threading

import httpx
import openai
import pytest
import torch

from homegrown.bundle import load_bundle
from homegrown.eval.tasks import LocalModel
from homegrown.serve.engine import Delta, Engine, GenerationParams
from homegrown.tokenizer import eot_id
from tests.serve.conftest import Server

TEXT = "The quick brown fox jumps over the lazy dog, and the printing press changed Europe."
PREFIX = "You are a helpful assistant who answers questions about the printing press and its history. "


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def reference(server: Server):
    """log_softmax of the served checkpoint run in-process over <|endoftext|> + text: (token ids, log-probs of each
    token after the first, top log-prob at each position before the last, character offsets)."""
    bundle = load_bundle(server.ckpt)
    model, tok = bundle.model, bundle.tokenizer

    def run(text: str) -> tuple[list[int], list[float], list[float], list[int]]:
        enc = tok.encode(text, add_special_tokens=False)
        ids = [eot_id(tok), *enc.ids]
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
        token_lps = [float(logp[k - 1, ids[k]]) for k in range(1, len(ids))]
        return ids, token_lps, logp.max(-1).values.tolist(), [0, *(start for start, _ in enc.offsets)]

    return run


def reused_tokens(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return float(re.search(r"^homegrown_prompt_tokens_reused_total (\S+)$", text, re.M).group(1))


def check_echo(choice, text: str, reference, n_top: int, max_tokens: int = 1) -> None:
    ids, token_lps, best, offsets = reference(text)
    lp = choice.logprobs
    generated = int(max_tokens == 1 and choice.finish_reason == "length")  # an untrained model may stop at once
    assert choice.text.startswith(text)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == len(ids) + generated
    assert "".join(lp.tokens) == choice.text  # <|endoftext|> echoes as '' at offset 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(token_lps, rel=1e-4, abs=1e-5)
    assert lp.text_offset[:len(ids)] == offsets
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    if generated:
        assert lp.text_offset[-1] == len(text)
    for k in range(1, len(ids)):
        top = lp.top_logprobs[k]
        assert 1 <= len(top) <= n_top and max(top.values()) == pytest.approx(best[k - 1], rel=1e-4, abs=1e-5)


def test_echo_returns_the_prompts_logprobs_from_the_served_model(client, server, reference) -> None:
    r = client.completions.create(model=server.model, prompt=TEXT, max_tokens=1, echo=True, logprobs=2,
                                  temperature=0)
    check_echo(r.choices[0], TEXT, reference, 2)
    assert r.usage.prompt_tokens == len(reference(TEXT)[0])


def test_max_tokens_zero_echoes_the_prompt_alone(client, server, reference) -> None:
    r = client.completions.create(model=server.model, prompt=TEXT, max_tokens=0, echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text == TEXT and choice.finish_reason == "length" and r.usage.completion_tokens == 0
    check_echo(choice, TEXT, reference, 1, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=server.model, prompt=TEXT, max_tokens=0)


def test_an_empty_prompt_is_a_document_start(client, server) -> None:
    r = client.completions.create(model=server.model, prompt="", max_tokens=2, echo=True, logprobs=1, seed=0)
    lp = r.choices[0].logprobs
    assert r.usage.prompt_tokens == 1 and lp.tokens[0] == "" and lp.token_logprobs[0] is None
    assert len(lp.tokens) == 1 + r.usage.completion_tokens + (r.choices[0].finish_reason == "stop")


def test_streamed_echo_carries_the_same_prompt_logprobs(client, server, reference) -> None:
    kwargs = dict(model=server.model, prompt=TEXT, max_tokens=4, echo=True, logprobs=2, temperature=0)
    plain = client.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert chunks[0].choices[0].text.startswith(TEXT)
    first = chunks[0].choices[0].logprobs  # the echo chunk carries the whole prompt's entries
    assert len(first.tokens) >= len(reference(TEXT)[0]) and first.token_logprobs[0] is None
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        for key, values in merged.items():
            values.extend(getattr(c.choices[0].logprobs, key))
    assert "".join(c.choices[0].text for c in chunks) == plain.text
    assert merged["tokens"] == plain.logprobs.tokens and merged["text_offset"] == plain.logprobs.text_offset
    assert merged["token_logprobs"][0] is None
    assert merged["token_logprobs"][1:] == pytest.approx(plain.logprobs.token_logprobs[1:], rel=1e-5)
    assert merged["top_logprobs"][1:] == [pytest.approx(t, rel=1e-5) for t in plain.logprobs.top_logprobs[1:]]


def test_prompts_sharing_a_cached_prefix_are_still_scored_whole(client, server, reference) -> None:
    """A running request, and the n choices of one, put a long shared prefix in the cache; a scored prompt must
    not copy it (a copied prefix has no logits)."""
    long = client.completions.create(model=server.model, prompt=PREFIX + "Who built it?", temperature=1.0,
                                     seed=3, stream=True, extra_body={"ignore_eos": True})  # to the end of context
    next(iter(long))  # it is running now
    reused = reused_tokens(server)
    texts = [PREFIX + "When was it built?", PREFIX + "Where?"]
    r = client.completions.create(model=server.model, prompt=texts, max_tokens=1, echo=True, logprobs=1,
                                  temperature=0, n=2)
    long.close()
    # The second choice of each prompt copied the scored first one's prefix; the scored ones copied nothing.
    assert reused_tokens(server) - reused == sum(len(reference(t)[0]) - 1 for t in texts)
    assert len(r.choices) == 4
    for choice in r.choices:
        check_echo(choice, texts[choice.index // 2], reference, 1)


@pytest.mark.parametrize("stops_at_once", [False, True])
def test_lm_eval_local_completions_reads_the_continuations_logprobs(server: Server, stops_at_once: bool) -> None:
    """lm-eval's own payload (batched token ids, max_tokens=1) and its own parser: it sums
    token_logprobs[ctxlen:-1], so the one generated token must have an entry even when it is a stop token."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    bundle = load_bundle(server.ckpt)
    model, tok = bundle.model, bundle.tokenizer
    ctx, cont = tok.encode("The quick brown fox", add_special_tokens=False).ids, tok.encode(" jumps over").ids
    body = {"model": server.model, "prompt": [ctx + cont], "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True}
    if stops_at_once:
        body["stop_token_ids"] = list(range(model.cfg.vocab_size))
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, headers=server.headers(), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == ("stop" if stops_at_once else "length")
    assert len(out["choices"][0]["logprobs"]["tokens"]) == len(ctx) + len(cont) + 1
    [(total, greedy)] = LocalCompletionsAPI.parse_logprobs(out, ctxlens=[len(ctx)])
    [(expected, expected_greedy)] = LocalModel(bundle).score_tokens([(ctx, cont)])
    assert total == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy


def test_engine_scores_the_prompt_instead_of_copying_a_running_prefix(engine: Engine) -> None:
    prefix = engine.encode(PREFIX)
    eot = eot_id(engine.tokenizer)
    first, second = [eot, *prefix, *engine.encode("Who?")], [eot, *prefix, *engine.encode("When was it built?")]
    started, done = threading.Event(), threading.Event()
    engine.submit(first, [GenerationParams(max_tokens=60, temperature=0.0, ignore_eos=True)],
                  lambda i, d: started.set())
    assert started.wait(30)
    got: list[Delta] = []

    def emit(_: int, delta: Delta) -> None:
        got.append(delta)
        if delta.finish_reason:
            done.set()

    before = engine.reused_prompt_tokens
    engine.submit(second, [GenerationParams(max_tokens=0, temperature=0.0, prompt_logprobs=3)], emit)
    assert done.wait(30)
    assert engine.reused_prompt_tokens == before  # computed whole, not copied from `first`
    assert [d.finish_reason for d in got] == [None, "length"] and got[-1].completion_tokens == 0
    scored = got[0].prompt_logprobs
    assert scored[0] is None and len(scored) == len(second)
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(torch.tensor([second]))[0].float(), dim=-1)
    expected = [float(logp[k - 1, second[k]]) for k in range(1, len(second))]
    assert [s.logprob for s in scored[1:]] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert [s.token_id for s in scored[1:]] == second[1:]
    assert all(len(s.top) == 3 and s.top[0][1] == pytest.approx(float(logp[k].max()), abs=1e-5)
               for k, s in enumerate(scored[1:]))
