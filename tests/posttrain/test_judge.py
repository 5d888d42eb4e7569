"""`homegrown data pairs`: policy samples judged in both orders by a real HTTP judge endpoint, cached and budgeted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from homegrown.config import SynthConfig
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams
from homegrown.posttrain.judge import build_pairs, parse_verdict
from homegrown.posttrain.pairs import read_pairs
from homegrown.train.checkpoint import resolve_checkpoint
from tests.openai_stub import ChatStub


def alphabetical(request: dict) -> str:
    """A consistent judge: the reply that sorts first wins, wherever it is shown."""
    text = request["messages"][-1]["content"]
    a, b = re.search(r"Reply A:\n(.*)\n\nReply B:\n(.*)\n\nWhich reply", text, re.S).groups()
    return "A" if a < b else "B"


@pytest.fixture
def judge() -> Iterator[ChatStub]:
    """A consistent judge: verdicts by `alphabetical`."""
    with ChatStub(alphabetical, usage=(40, 1)) as server:
        yield server


def _prompts(path, n=4):
    path.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(n)) +
                    '{"messages": [{"role": "assistant", "content": "no user turn"}]}\n')
    return path


CFG = SynthConfig(concurrency=2, temperature=0.0, max_tokens=4, seed=3, backoff_s=0.001, backoff_max_s=0.01)
SAMPLING = SamplingParams(max_tokens=12, temperature=1.0)


def test_pairs_follow_the_judge_in_both_orders_and_rerun_from_cache(tiny_base, judge, tmp_path):
    model = resolve_checkpoint(tiny_base / "ckpt")
    out = tmp_path / "pairs.jsonl"
    stats = build_pairs(model, _prompts(tmp_path / "prompts.jsonl"), out, judge.url, "judge-x", CFG, samples=3,
                        sampling=SAMPLING, progress=False)
    assert stats.prompts == 4 and stats.problems and ":5:" in stats.problems[0]  # reported by line
    pairs = read_pairs(out).pairs
    assert len(pairs) == stats.pairs >= 1
    for p in pairs:
        assert p.chosen < p.rejected  # what this judge prefers, whichever position each answer was shown in
        assert p.meta["judge_model"] == "judge-x" and p.meta["seed"] == 3 and p.meta["date"]
        assert sorted(p.meta["wins"]) == [0, 1, 2]  # three answers, a strict order: best and worst are clear
    assert judge.requests == 2 * stats.comparisons  # every comparison asked in both orders
    manifest = json.loads((tmp_path / "pairs.jsonl.manifest.json").read_text())
    assert manifest["judge_url"] == judge.url and manifest["pairs"] == stats.pairs

    again = build_pairs(model, tmp_path / "prompts.jsonl", out, judge.url, "judge-x", CFG, samples=3,
                        sampling=SAMPLING, progress=False)
    assert judge.requests == 2 * stats.comparisons and again.judge_cache_hits == 2 * stats.comparisons
    assert [p.chosen for p in read_pairs(out).pairs] == [p.chosen for p in pairs]  # seeded: the same pairs


def test_a_judge_that_always_picks_the_first_position_yields_no_pairs(tiny_base, tmp_path):
    with ChatStub(lambda request: "A", usage=(40, 1)) as server:
        stats = build_pairs(resolve_checkpoint(tiny_base / "ckpt"), _prompts(tmp_path / "prompts.jsonl", n=2),
                            tmp_path / "pairs.jsonl", server.url, "biased", CFG, sampling=SAMPLING, progress=False)
    assert stats.pairs == 0 and stats.ties_or_disagreements == stats.comparisons > 0
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_verdicts_are_parsed_strictly():
    assert [parse_verdict(t) for t in ("A", " b.", "TIE", "**B**")] == ["A", "B", "TIE", "B"]
    with pytest.raises(ValueError):
        parse_verdict("Both are fine")


def test_data_pairs_cli(cli, tiny_base, judge, tmp_path):
    out = tmp_path / "pairs.jsonl"
    done = cli("data", "pairs", str(tiny_base), "--prompts", str(_prompts(tmp_path / "prompts.jsonl", n=3)),
               "--judge-url", judge.url, "--judge-model", "judge-x", "--out", str(out), "--samples", "2",
               "--max-tokens", "8", "--seed", "5", "--no-progress")
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    n = len(out.read_text().splitlines())
    assert f"{n} pairs → " in said and "prompts.jsonl:4: " in said
    with pytest.raises(HomegrownError, match="--samples must be at least 2"):
        build_pairs(tiny_base, tmp_path / "prompts.jsonl", out, judge.url, "judge-x", CFG, samples=1)
