"""The continuous-batching engine against the single-sequence reference path (generate.stream_tokens)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import pytest
import torch

from homegrown.bundle import load_bundle
from homegrown.config import ModelConfig, ServeConfig
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.model import KVCache
from homegrown.serve.batched import forward_groups, forward_rows
from homegrown.serve.engine import ContextLengthError, Engine, EngineBusyError, GenerationParams

PROMPTS = ["The quick brown fox", "In the beginning", "Python is a programming language that",
           "A", "def main():\n    return"]


def greedy(max_tokens: int = 24, **kw) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, **kw)


def run_concurrently(engine: Engine, jobs: list[tuple[list[int], list[GenerationParams]]]) -> list[list[tuple]]:
    """Submit every job at once from separate threads, so they share decode steps."""
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        results[i] = engine.generate(*jobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_forward_rows_matches_single_sequence_decode(engine: Engine) -> None:
    """Rows of unequal length prefilled together, then decoded at different positions, give each row's logits
    from Transformer.decode run alone."""
    model = engine.model
    prompts = [engine.encode(p) for p in PROMPTS[:3]]
    cache = KVCache.allocate(model.cfg, 3)
    lengths = torch.tensor([len(p) for p in prompts])
    idx = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for row, p in enumerate(prompts):
        idx[row, : len(p)] = torch.tensor(p)
    with torch.inference_mode():
        batched = forward_rows(model, cache, idx, torch.zeros(3, dtype=torch.long), lengths - 1)
        nxt = batched.argmax(-1)
        step = forward_rows(model, cache, nxt[:, None], lengths, torch.zeros(3, dtype=torch.long))
        for row, p in enumerate(prompts):
            single = KVCache.allocate(model.cfg, 1)
            ref = model.decode(torch.tensor([p]), single)
            torch.testing.assert_close(batched[row], ref[0], atol=1e-4, rtol=1e-4)
            ref_step = model.decode(nxt[row].view(1, 1), single)
            torch.testing.assert_close(step[row], ref_step[0], atol=1e-4, rtol=1e-4)


def test_rows_decoding_in_step_match_single_sequence_decode(engine: Engine) -> None:
    """Rows at the same length decode without a mask (every cached key is theirs): still each row's logits from
    Transformer.decode run alone, also with a longer earlier occupant's entries left in a slot."""
    model = engine.model
    prompts = [engine.encode(p)[:3] for p in PROMPTS[:3]]
    assert all(len(p) == 3 for p in prompts)
    cache = KVCache.allocate(model.cfg, 3)
    with torch.inference_mode():
        forward_rows(model, cache, torch.tensor([engine.encode(PROMPTS[2])] * 3), torch.zeros(3, dtype=torch.long),
                     torch.zeros(3, dtype=torch.long))
        forward_rows(model, cache, torch.tensor(prompts), torch.zeros(3, dtype=torch.long),
                     torch.full((3,), 2))
        nxt = torch.tensor([[5], [6], [7]])
        step = forward_rows(model, cache, nxt, torch.full((3,), 3), torch.zeros(3, dtype=torch.long))
        for row, p in enumerate(prompts):
            single = KVCache.allocate(model.cfg, 1)
            model.decode(torch.tensor([p]), single)
            torch.testing.assert_close(step[row], model.decode(nxt[row].view(1, 1), single)[0], atol=1e-4, rtol=1e-4)


def test_one_sequence_decode_leaves_the_thread_count_as_it_was(engine: Engine) -> None:
    """A one-sequence step runs on one thread, then the engine's count comes back: threads started afterwards
    (torch hands them the last count set) still get it."""
    engine.generate(engine.encode(PROMPTS[0]), [greedy(4, ignore_eos=True)])
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [engine.threads]


def test_decode_and_prefill_rows_in_one_pass_match_separate_passes(engine: Engine) -> None:
    """forward_groups (the running rows' decode and the joiners' prompts packed into one pass) gives each row the
    logits forward_rows gives it in a pass of its own."""
    model = engine.model
    running, joining = [engine.encode(p) for p in PROMPTS[:2]], [engine.encode(p) for p in PROMPTS[2:4]]

    def prompts(cache: KVCache, ids: list[list[int]], first: int) -> tuple:
        lengths = torch.tensor([len(p) for p in ids])
        idx = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for row, p in enumerate(ids):
            idx[row, : len(p)] = torch.tensor(p)
        return idx, torch.zeros(len(ids), dtype=torch.long), lengths - 1, first

    with torch.inference_mode():
        apart, packed = KVCache.allocate(model.cfg, 4), KVCache.allocate(model.cfg, 4)
        for cache in (apart, packed):  # the running rows' prompts, in slots 0-1
            forward_rows(model, cache, *prompts(cache, running, 0)[:3])
        step = (torch.tensor([[7], [9]]), torch.tensor([len(p) for p in running]), torch.zeros(2, dtype=torch.long), 0)
        alone = torch.cat([forward_rows(model, apart, *step[:3]),
                           forward_rows(model, apart, *prompts(apart, joining, 2)[:3], first_slot=2)])
        together = forward_groups(model, packed, [step, prompts(packed, joining, 2)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.k, apart.k, atol=1e-6, rtol=1e-6)


def test_a_request_joining_a_running_one_decodes_as_alone(engine: Engine) -> None:
    """The joiner's prefill and the running sequence's decode share a step (one forward); both still produce
    exactly the single-sequence tokens. The running sequence's emit holds the engine at its third token until
    the joiner is queued, so the two overlap whatever the threads' speed."""
    fresh = Engine(engine.bundle, ServeConfig(max_batch=4)).start()
    first, second = engine.encode(PROMPTS[0]), engine.encode(PROMPTS[1])
    queued, done = threading.Event(), [threading.Event(), threading.Event()]
    out: list[list[int]] = [[], []]

    def emitter(k: int):
        def emit(_: int, delta) -> None:
            out[k].extend(delta.token_ids)
            if k == 0 and len(out[0]) == 3:
                assert queued.wait(30)
            if delta.finish_reason:
                done[k].set()
        return emit

    try:
        fresh.submit(first, [greedy(24, ignore_eos=True)], emitter(0))
        while len(out[0]) < 3 and not done[0].is_set():
            time.sleep(0.01)
        fresh.submit(second, [greedy(16)], emitter(1))
        queued.set()
        assert done[0].wait(60) and done[1].wait(60)
    finally:
        fresh.stop(drain=False, timeout=30)
    assert out[0] == list(stream_tokens(engine.model, first, SamplingParams(24, 0.0, stop_token_ids=[])))
    assert out[1] == list(stream_tokens(engine.model, second, SamplingParams(16, 0.0,
                                                                             stop_token_ids=engine.stop_token_ids)))


def test_batched_greedy_equals_single_sequence(engine: Engine) -> None:
    jobs = [(engine.encode(p), [greedy(30)]) for p in PROMPTS]
    results = run_concurrently(engine, jobs)
    for (ids, _), [(text, tokens, _, reason)] in zip(jobs, results, strict=True):
        ref = list(stream_tokens(engine.model, ids, SamplingParams(30, 0.0, stop_token_ids=engine.stop_token_ids)))
        assert tokens == ref
        assert text == engine.tokenizer.decode(ref)
        assert reason == ("length" if len(ref) == 30 else "stop")


def test_seed_gives_same_text_whatever_shares_the_batch(engine: Engine) -> None:
    ids = engine.encode("Once upon a time")
    params = dict(max_tokens=25, temperature=1.0, seed=1234, ignore_eos=True)
    alone = engine.generate(ids, [GenerationParams(**params)])[0]
    companions = [(engine.encode(p), [GenerationParams(max_tokens=40, temperature=1.0)]) for p in PROMPTS]
    crowded = run_concurrently(engine, [(ids, [GenerationParams(**params)]), *companions])[0][0]
    assert crowded[1] == alone[1] and crowded[0] == alone[0]
    other = engine.generate(ids, [GenerationParams(**{**params, "seed": 99})])[0]
    assert other[1] != alone[1]


def test_stop_string_cuts_text_before_it(engine: Engine) -> None:
    ids = engine.encode("The meaning of life is")
    text = engine.generate(ids, [greedy(40, ignore_eos=True)])[0][0]
    assert len(text) > 12, text
    stop = text[6:9]
    cut = engine.generate(ids, [greedy(40, ignore_eos=True, stop=["\u2603never", stop])])[0]
    assert cut[0] == text[: text.find(stop)]
    assert cut[3] == "stop"


def test_stop_token_id_ends_generation_without_emitting_it(engine: Engine) -> None:
    ids = engine.encode("The meaning of life is")
    tokens = engine.generate(ids, [greedy(40, ignore_eos=True)])[0][1]
    stop_id = tokens[3]
    out = engine.generate(ids, [greedy(40, ignore_eos=True, stop_token_ids=[stop_id])])[0]
    assert out[1] == tokens[: tokens.index(stop_id)]
    assert out[3] == "stop"


def test_max_tokens_gives_length_finish(engine: Engine) -> None:
    out = engine.generate(engine.encode("Hello"), [GenerationParams(max_tokens=7, temperature=1.0, seed=3,
                                                                    ignore_eos=True)])[0]
    assert len(out[1]) == 7 and out[3] == "length"


def test_min_tokens_masks_the_end_tokens_and_ignore_eos_outlives_them(engine: Engine) -> None:
    """A +100 bias makes an end token certain at every step: it ends the reply at once, after exactly
    min_tokens tokens, or (ignore_eos) never, the end tokens then being generated as ordinary tokens."""
    ids = engine.encode("Hello")
    end = engine.stop_token_ids[0]

    def run(**kw) -> tuple:
        return engine.generate(ids, [GenerationParams(max_tokens=9, temperature=1.0, seed=4, logit_bias={end: 100},
                                                      **kw)])[0]

    assert run()[1] == [] and run()[3] == "stop"
    held = run(min_tokens=5)
    assert len(held[1]) == 5 and end not in held[1] and held[3] == "stop"
    ignored = run(ignore_eos=True)
    assert ignored[1] == [end] * 9 and ignored[3] == "length"


def test_logit_bias_is_added_before_sampling(engine: Engine) -> None:
    ids = engine.encode("Hello")
    plain = engine.generate(ids, [greedy(6, ignore_eos=True)])[0][1]
    other = next(t for t in range(engine.model.cfg.vocab_size) if t not in plain and t not in engine.stop_token_ids)
    forced = engine.generate(ids, [greedy(6, ignore_eos=True, logit_bias={other: 100})])[0][1]
    assert forced == [other] * 6
    banned = engine.generate(ids, [greedy(6, ignore_eos=True, logit_bias={plain[0]: -100})])[0][1]
    assert banned[0] != plain[0]


def test_penalties_change_the_output(engine: Engine) -> None:
    ids = engine.encode("the the the the")
    plain = engine.generate(ids, [greedy(40, ignore_eos=True)])[0][1]
    penalised = engine.generate(ids, [greedy(40, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0)])[0][1]
    assert penalised != plain
    assert max(Counter(penalised).values()) <= max(Counter(plain).values())


def test_n_choices_with_seeds_are_independent_and_reproducible(engine: Engine) -> None:
    ids = engine.encode("Once upon a time")
    params = [GenerationParams(max_tokens=20, temperature=1.0, seed=10 + i, ignore_eos=True) for i in range(3)]
    first = engine.generate(ids, params)
    again = engine.generate(ids, [GenerationParams(max_tokens=20, temperature=1.0, seed=10 + i, ignore_eos=True)
                                  for i in range(3)])
    assert [r[1] for r in first] == [r[1] for r in again]
    assert len({tuple(r[1]) for r in first}) > 1


def test_logprobs_are_a_distribution(engine: Engine) -> None:
    out = engine.generate(engine.encode("The quick brown"), [greedy(10, logprobs=True, top_logprobs=5,
                                                                    ignore_eos=True)])[0]
    _, tokens, lps, _ = out
    assert [lp.token_id for lp in lps] == tokens
    for lp in lps:
        assert lp.logprob <= 0
        values = [v for _, v in lp.top]
        assert len(values) == 5 and values == sorted(values, reverse=True)
        assert lp.top[0][0] == lp.token_id and math.isclose(lp.top[0][1], lp.logprob, abs_tol=1e-5)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5


def test_context_length_is_enforced_with_both_numbers(engine: Engine) -> None:
    limit = engine.max_len
    with pytest.raises(ContextLengthError, match=rf"{limit} tokens.*{limit - 20 + 50} tokens"):
        engine.generate([5] * (limit - 20), [greedy(50)])
    params = GenerationParams(max_tokens=None, temperature=0.0, stop_token_ids=[])  # type: ignore[arg-type]
    out = engine.generate([5] * (limit - 6), [params])[0]
    assert len(out[1]) <= 6
    with pytest.raises(ContextLengthError, match="no room"):
        engine.resolve_max_tokens(limit, None)


def test_full_queue_is_refused(serve_run) -> None:


    idle = Engine(load_bundle(serve_run), ServeConfig(max_batch=1, max_waiting=2))  # never started: nothing drains
    idle.submit([5, 6], [greedy(4)], lambda i, d: None)
    with pytest.raises(EngineBusyError):
        idle.submit([5, 6], [greedy(4), greedy(4)], lambda i, d: None)


def test_abort_frees_the_slot(engine: Engine) -> None:
    seen = threading.Event()
    seqs = engine.submit(engine.encode("Hello"), [GenerationParams(max_tokens=100, temperature=1.0,
                                                                   ignore_eos=True)],
                         lambda i, d: seen.set())
    assert seen.wait(30)
    engine.abort(seqs)
    deadline = time.monotonic() + 30
    while engine.num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.num_running == 0


def test_exported_hf_directory_serves_the_same_tokens(engine: Engine, serve_run, tmp_path) -> None:

    from homegrown.export.hf import export_hf

    hf_engine = Engine(load_bundle(export_hf(serve_run, tmp_path / "hf")), ServeConfig(max_batch=2)).start()
    assert hf_engine.stop_token_ids == engine.stop_token_ids
    try:
        ids = engine.encode("The quick brown fox")
        assert hf_engine.generate(ids, [greedy(20)])[0][1] == engine.generate(ids, [greedy(20)])[0][1]
    finally:
        hf_engine.stop()


def test_shared_prompt_prefix_is_copied_not_recomputed(engine: Engine) -> None:
    """A prompt starting like a running one reuses its cached prefix and still decodes exactly as alone.

    Both are queued before the engine starts, so they join in one step: the first is prefilled (and running)
    before the second, which copies its prefix; nothing depends on how fast either thread runs."""
    system = engine.encode("You are a helpful assistant who answers questions about the printing press.")
    first, second = system + engine.encode("Who?"), system + engine.encode("When was it built?")
    fresh = Engine(engine.bundle, ServeConfig(max_batch=4))
    fresh.submit(first, [greedy(60, ignore_eos=True)], lambda i, d: None)
    done = threading.Event()
    out: list[int] = []

    def emit(_: int, delta) -> None:
        out.extend(delta.token_ids)
        if delta.finish_reason:
            done.set()

    fresh.submit(second, [greedy(20)], emit)
    fresh.start()
    try:
        assert done.wait(60)
    finally:
        fresh.stop(drain=False, timeout=30)
    assert fresh.reused_prompt_tokens >= len(system)
    ref = list(stream_tokens(engine.model, second, SamplingParams(20, 0.0, stop_token_ids=engine.stop_token_ids)))
    assert out == ref

    before = engine.reused_prompt_tokens
    choices = engine.generate(second, [GenerationParams(max_tokens=5, temperature=1.0, seed=s) for s in range(3)])
    assert engine.reused_prompt_tokens - before >= 2 * (len(second) - 1)
    alone = [engine.generate(second, [GenerationParams(max_tokens=5, temperature=1.0, seed=s)])[0] for s in range(3)]
    assert [c[1] for c in choices] == [a[1] for a in alone]


def test_a_finished_sequence_keeps_its_cache_for_the_next_prompt(engine: Engine) -> None:
    """A freed slot keeps the keys/values of the sequence that left it: the next turn of that conversation (its
    prompt and reply, then more) copies them, from the joiner's own slot or swapped in from another free one, and
    still decodes exactly as alone. A and B are queued before the engine starts, so they join in one step; A ends
    first and B, moved into its slot, swaps A's cache out to slot 1, where A's next turn finds it."""
    fresh = Engine(engine.bundle, ServeConfig(max_batch=4))
    a, b = engine.encode(PROMPTS[2]), engine.encode(PROMPTS[0])
    out: dict[str, list[int]] = {"a": [], "b": []}
    done = threading.Event()

    def emitter(name: str):
        def emit(_: int, delta) -> None:
            out[name].extend(delta.token_ids)
            if delta.finish_reason and name == "b":
                done.set()
        return emit

    fresh.submit(a, [greedy(4, ignore_eos=True)], emitter("a"))
    fresh.submit(b, [greedy(12, ignore_eos=True)], emitter("b"))
    fresh.start()
    alone = Engine(engine.bundle, ServeConfig(max_batch=1)).start()  # the reference: nothing cached to reuse
    try:
        assert done.wait(60)
        assert out["b"] == list(stream_tokens(engine.model, b, SamplingParams(12, 0.0, stop_token_ids=[])))
        for ids, reply in ((a, out["a"]), (b, out["b"])):
            turn = ids + reply + engine.encode(" Tell me more.")
            before = fresh.reused_prompt_tokens
            [(_, tokens, lps, _)] = fresh.generate(turn, [greedy(10, logprobs=True, top_logprobs=3)])
            assert fresh.reused_prompt_tokens - before == len(ids) + len(reply) - 1  # the last token was never fed
            [(_, ref, ref_lps, _)] = alone.generate(turn, [greedy(10, logprobs=True, top_logprobs=3)])
            assert tokens == ref
            for got, want in zip(lps, ref_lps, strict=True):  # the keys/values copied are the ones computed alone
                assert [i for i, _ in got.top] == [i for i, _ in want.top]
                assert [v for _, v in got.top] == pytest.approx([v for _, v in want.top], abs=1e-4)
    finally:
        fresh.stop(drain=False, timeout=30)
        alone.stop(drain=False, timeout=30)


def test_max_model_len_bounds_the_cache_and_the_context(serve_run):
    bundle = load_bundle(serve_run)
    short = Engine(bundle, ServeConfig(max_batch=2, max_model_len=32))
    assert short.cache.k.shape[3] == 32 and short.max_len == 32
    with pytest.raises(ContextLengthError, match="maximum context length is 32 tokens"):
        short.submit(list(range(1, 21)), [GenerationParams(max_tokens=20)], lambda *_: None)
def test_kv_cache_fits_its_budget() -> None:
    """SmolLM2's shape: 30 layers × 3 KV heads × 64 dims × 8,192 tokens is 377 MB per slot in fp32, so the default
    4 GiB holds 11 slots, not max_batch's 32 (12 GB); a shorter max_model_len gives all 32; one slot over the
    budget is a clear error."""
    from homegrown.serve.engine import kv_cache_shape

    smol = ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, max_seq_len=8192)
    assert kv_cache_shape(smol, ServeConfig(), torch.float32) == (8192, 11)
    assert kv_cache_shape(smol, ServeConfig(max_model_len=2048), torch.float32) == (2048, 32)
    assert kv_cache_shape(smol, ServeConfig(), torch.bfloat16) == (8192, 22)
    with pytest.raises(HomegrownError, match="over the model's context of 8192 tokens"):
        kv_cache_shape(smol, ServeConfig(max_model_len=99999), torch.float32)
    with pytest.raises(HomegrownError, match="lower --max-model-len or raise --kv-cache-gib"):
        kv_cache_shape(smol, ServeConfig(kv_cache_gib=0.25), torch.float32)
