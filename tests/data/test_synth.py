"""The teacher client against a real HTTP server on loopback that misbehaves on cue (429, 500, slow, garbage).

The server (tests/openai_stub.py) is a stand-in for a remote API's failure modes only; synthesize() talks to it
through the official openai SDK exactly as it would to api.openai.com.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator

import pytest
import torch

from homegrown.config import ModelConfig, SynthConfig
from homegrown.data.recipes import RECIPES, SeedInputs, build_prompts, load_inputs
from homegrown.data.synth import synthesize
from homegrown.errors import HomegrownError
from homegrown.model import Transformer
from homegrown.serve.launch import launch
from homegrown.train.checkpoint import save_checkpoint
from tests.openai_stub import ChatStub

MODEL = "teacher-test"


def story_reply(request: dict) -> str:
    """A distinct, valid reply per prompt (so dedup keeps them all)."""
    return "Once upon a time. " + request["messages"][-1]["content"]


@pytest.fixture
def teacher() -> Iterator[ChatStub]:
    with ChatStub(story_reply, usage=(50, 50)) as server:
        yield server


def _cfg(**overrides: object) -> SynthConfig:
    base = {"records": 3, "concurrency": 1, "backoff_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0,
            "max_tokens": 60}
    return SynthConfig(**{**base, **overrides})


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_errors_are_retried_and_never_cached(teacher, tmp_path):
    teacher.script = ["429", "500", "garbage", "not-json"]
    out = tmp_path / "stories.jsonl"
    stats = synthesize(teacher.url, MODEL, "story", out, _cfg(records=2), progress=False)
    assert teacher.requests == 6 and stats.retries == 4 and stats.bad_replies == 2 and stats.records == 2
    records = _records(out)
    assert {r["teacher_model"] for r in records} == {MODEL} and {r["recipe"] for r in records} == {"story"}
    assert all(r["messages"][-1]["content"].startswith("Once upon a time.") for r in records)
    with sqlite3.connect(tmp_path / "stories.jsonl.cache.sqlite") as db:
        cached = [row[0] for row in db.execute("SELECT content FROM replies")]
    assert len(cached) == 2 and all(c.startswith("Once upon a time.") for c in cached)
    manifest = json.loads((tmp_path / "stories.jsonl.manifest.json").read_text())
    assert manifest["teacher_model"] == MODEL and manifest["records"] == 2 and manifest["requests"] == 6


def test_timeout_is_retried(teacher, tmp_path):
    teacher.script = ["slow"]
    stats = synthesize(teacher.url, MODEL, "story", tmp_path / "s.jsonl", _cfg(records=1, timeout_s=0.5),
                       progress=False)
    assert stats.records == 1 and stats.retries == 1 and teacher.requests == 2


def test_second_run_sends_zero_requests(teacher, tmp_path):
    out = tmp_path / "book.jsonl"
    cfg = _cfg(records=4, concurrency=3)
    first = synthesize(teacher.url, MODEL, "textbook", out, cfg, progress=False)
    sent = teacher.requests
    text = out.read_text()
    second = synthesize(teacher.url, MODEL, "textbook", out, cfg, progress=False)
    assert sent == 4 and teacher.requests == sent and second.cache_hits == 4 and second.requests == 0
    assert first.records == second.records == 4
    strip = [{k: v for k, v in r.items() if k != "cached"} for r in _records(out)]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "cached"} for line in text.splitlines()]


def test_budget_stops_cleanly_and_a_rerun_resumes(teacher, tmp_path):
    out = tmp_path / "b.jsonl"
    stats = synthesize(teacher.url, MODEL, "story", out, _cfg(records=6, max_tokens_budget=350), progress=False)
    paid = teacher.requests
    assert 0 < paid < 6 and stats.stopped_by_budget and stats.records == paid
    assert stats.prompt_tokens + stats.completion_tokens == 100 * paid <= 350
    assert json.loads((tmp_path / "b.jsonl.manifest.json").read_text())["stopped_by_budget"] is True
    resumed = synthesize(teacher.url, MODEL, "story", out, _cfg(records=6), progress=False)
    assert teacher.requests == 6 and resumed.cache_hits == paid and resumed.records == 6


def test_cost_cap_needs_a_known_price(teacher, tmp_path):
    with pytest.raises(HomegrownError, match="no list price"):
        synthesize(teacher.url, MODEL, "story", tmp_path / "c.jsonl", _cfg(max_cost_usd=1.0), progress=False)
    assert teacher.requests == 0


def test_a_prompt_that_keeps_failing_is_skipped_and_retried_next_run(teacher, tmp_path):
    teacher.script = ["500", "500"]
    out = tmp_path / "f.jsonl"
    stats = synthesize(teacher.url, MODEL, "story", out, _cfg(records=2, max_retries=1), progress=False)
    assert stats.failed_prompts == 1 and stats.records == 1 and "InternalServerError" in stats.errors[0]
    again = synthesize(teacher.url, MODEL, "story", out, _cfg(records=2, max_retries=1), progress=False)
    assert again.requests == 1 and again.records == 2


def test_rejected_key_is_a_clear_error(teacher, tmp_path):
    teacher.script = ["401"] * 5
    with pytest.raises(HomegrownError, match="OPENAI_API_KEY"):
        synthesize(teacher.url, MODEL, "story", tmp_path / "k.jsonl", _cfg(records=3, concurrency=2),
                   progress=False)
    assert teacher.requests <= 2  # no request is started after the fatal answer
    assert not (tmp_path / "k.jsonl").exists()


def test_grounded_qa_and_conversations_parse_json_and_drop_duplicates(teacher, tmp_path):
    doc = {"text": "The apt tool installs packages on Debian. " * 80, "source": "https://example.org/apt"}
    teacher.reply = lambda request: "```json\n" + json.dumps(
        [{"question": "What installs packages on Debian?", "answer": "The apt tool."},
         {"question": "Bad pair", "answer": ""}]) + "\n```"
    stats = synthesize(teacher.url, MODEL, "qa", tmp_path / "qa.jsonl", _cfg(records=3),
                       inputs=SeedInputs(documents=[doc]), progress=False)
    records = _records(tmp_path / "qa.jsonl")
    assert stats.records == 1 and stats.duplicates_dropped == 2  # the same answer from every chunk is kept once
    assert records[0]["grounded_in"].startswith("https://example.org/apt#chunk") and records[0]["seed"]["qa_style"]
    assert records[0]["text"] == "What installs packages on Debian?\n\nThe apt tool."

    teacher.reply = lambda request: json.dumps(
        [{"role": "user", "content": "How do I list files?"}, {"role": "assistant", "content": "Use ls."},
         {"role": "user", "content": request["messages"][-1]["content"][-40:]},
         {"role": "assistant", "content": "Glad to help: " + request["messages"][-1]["content"][:60]}])
    stats = synthesize(teacher.url, MODEL, "conversation", tmp_path / "conv.jsonl", _cfg(records=2),
                       progress=False)
    assert stats.records == 2 and all(len(r["messages"]) == 4 for r in _records(tmp_path / "conv.jsonl"))


def test_existing_data_is_not_generated_again(teacher, tmp_path):
    first = tmp_path / "one.jsonl"
    synthesize(teacher.url, MODEL, "story", first, _cfg(records=2), progress=False)
    stats = synthesize(teacher.url, MODEL, "story", tmp_path / "two.jsonl", _cfg(records=3), existing=first,
                       progress=False)
    assert stats.duplicates_dropped == 2 and stats.records == 1


def test_synth_cli(cli, teacher, tmp_path):
    out = tmp_path / "cli.jsonl"
    done = cli("data", "synth", "--teacher-url", teacher.url, "--teacher-model", MODEL, "--recipe", "story",
               "--out", str(out), "--records", "2", "--concurrency", "2", env={"OPENAI_API_KEY": "sk-test"})
    assert done.returncode == 0, done.stderr
    assert len(_records(out)) == 2 and teacher.requests == 2
    bad = cli("data", "synth", "--teacher-url", teacher.url, "--teacher-model", MODEL, "--recipe", "poem",
              "--out", str(out))
    assert bad.returncode == 2 and "unknown recipe" in bad.stderr


def test_homegrown_serve_is_a_teacher(tiny_run, tmp_path):
    """The real `homegrown serve` (console script, loopback port, API key) answers as the teacher."""
    run = tmp_path / "teacher_run"
    torch.manual_seed(0)  # untrained: noise text, which the free-text recipes accept as long as it is long enough,
    # and with ignore_eos every reply is max_tokens long whatever the noise samples
    save_checkpoint(run / "ckpt", 1, Transformer(ModelConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=2,
                                                             n_kv_heads=2, max_seq_len=512)),
                    tiny_run / "tokenizer.json")
    env = {**os.environ, "HOMEGROWN_API_KEY": "serve-key"}
    server = launch(run, "--device", "cpu", "--threads", "1", "--generation-config", '{"ignore_eos": true}',
                    log=tmp_path / "serve.log", env=env)
    try:
        url = f"{server.base_url}/v1"
        cfg = _cfg(records=3, concurrency=2, max_tokens=40, temperature=1.0, timeout_s=60.0, max_retries=8)
        with pytest.raises(HomegrownError, match="OPENAI_API_KEY"):
            synthesize(url, "teacher_run", "textbook", tmp_path / "nokey.jsonl", cfg, api_key="wrong",
                       progress=False)
        out = tmp_path / "served.jsonl"
        stats = synthesize(url, "teacher_run", "textbook", out, cfg, api_key="serve-key", progress=False)
        assert stats.records == 3 and stats.requests >= 3
        assert all(r["teacher_model"] == "teacher_run" and r["teacher_url"] == url for r in _records(out))
        again = synthesize(url, "teacher_run", "textbook", out, cfg, api_key="serve-key", progress=False)
        assert again.requests == 0 and again.cache_hits == 3
    finally:
        server.stop()


def test_combinatorial_seeds_give_distinct_reproducible_prompts():
    first = build_prompts(RECIPES["story"], SeedInputs(), 50, seed=0)
    assert first == build_prompts(RECIPES["story"], SeedInputs(), 50, seed=0)  # same seed → same cache keys
    assert first != build_prompts(RECIPES["story"], SeedInputs(), 50, seed=1)
    assert len({json.dumps(m) for _, m in first}) == 50
    assert len(RECIPES["story"].seeds(SeedInputs())) >= 12 * 10 * 10 * 6  # noun × verb × adjective × feature
    with pytest.raises(HomegrownError, match="needs documents"):
        load_inputs(RECIPES["qa"], None, None)
