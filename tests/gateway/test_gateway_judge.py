"""The pairwise judge against a real judge process: both orders, flips as ties, unparseable counted."""

from __future__ import annotations

import asyncio
import socket

import openai
import pytest

from homegrown.gateway.judge import Judge, combine, judge_prompt, openai_complete, parse_verdict

CONV = [{"role": "user", "content": "What is 2 + 2?"}]


def test_parse_verdict_needs_exactly_one_mark() -> None:
    assert parse_verdict("A is clearer. [[A]]") == "A"
    assert parse_verdict("[[TIE]]") == "TIE"
    assert parse_verdict("[[B]] ... final: [[B]]") == "B"
    assert parse_verdict("[[A]] or maybe [[B]]") is None
    assert parse_verdict("A is better") is None
    assert parse_verdict("") is None


def test_combine_counts_a_flip_as_a_tie() -> None:
    assert combine("A", "B") == ("win", False)  # candidate better in both orders
    assert combine("B", "A") == ("loss", False)
    assert combine("TIE", "TIE") == ("tie", False)
    assert combine("A", "A") == ("tie", True)  # "whichever is first" — position bias, not a preference
    assert combine("A", "TIE") == ("tie", False)
    assert combine(None, "B") == ("unparseable", False)


def _judge(base_url: str, seed: int = 0) -> Judge:
    return Judge(openai_complete(openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0), "judge"),
                 seed=seed)


def test_judge_process_verdicts(llm_stubs) -> None:
    marker = llm_stubs("--role", "judge", "--marker", "GOOD")
    judge = _judge(marker.base_url)

    async def run() -> list:
        return [await judge.compare("p1", CONV, "GOOD: 4", "four"),
                await judge.compare("p2", CONV, "4", "GOOD 4"),
                await judge.compare("p3", CONV, "4", "4")]

    win, loss, tie = asyncio.run(run())
    assert (win.outcome, loss.outcome, tie.outcome) == ("win", "loss", "tie")
    assert (win.as_a, win.as_b) == ("A", "B")
    assert marker.requests() == 6  # both orders, every pair


def test_judge_stub_listens_on_the_port_it_is_given(llm_stubs) -> None:
    """The README's walk-through starts the stub judge on a fixed --port (the tests' default 0 picks a free one).
    The port is one this test holds bound, not listening, so no other process can take it meanwhile: with
    SO_REUSEADDR on both sockets Linux lets the stub bind and listen on it too."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        stub = llm_stubs("--role", "judge", "--port", str(port))
    assert stub.url == f"http://127.0.0.1:{port}"
    verdict = asyncio.run(_judge(stub.base_url).compare("p", CONV, "GOOD", "bad"))
    assert verdict.outcome == "win"


def test_position_is_randomised_and_repeatable() -> None:
    judge = _judge("http://127.0.0.1:9/v1", seed=3)
    firsts = [judge.candidate_first(f"pair-{i}") for i in range(200)]
    assert 70 < sum(firsts) < 130  # a fixed hash sequence: the same numbers on every run
    assert firsts == [judge.candidate_first(f"pair-{i}") for i in range(200)]


def test_position_biased_judge_gives_ties_and_garbage_is_unparseable(llm_stubs) -> None:
    biased = _judge(llm_stubs("--role", "judge", "--prefer", "first").base_url)
    garbage = _judge(llm_stubs("--role", "judge", "--prefer", "garbage").base_url)
    v = asyncio.run(biased.compare("p", CONV, "GOOD", "bad"))
    assert (v.outcome, v.flipped) == ("tie", True)
    g = asyncio.run(garbage.compare("p", CONV, "GOOD", "bad"))
    assert g.outcome == "unparseable"
    assert "cannot decide" in g.detail


def test_judge_that_fails_is_an_error_not_a_verdict(llm_stubs) -> None:
    stub = llm_stubs("--role", "judge")
    stub.control(mode="fail")
    v = asyncio.run(_judge(stub.base_url).compare("p", CONV, "GOOD", "bad"))
    assert v.outcome == "error"
    assert "500" in v.detail


@pytest.mark.parametrize(("a", "b"), [("x", "y"), ("same", "same")])
def test_prompt_holds_both_answers_in_place(a: str, b: str) -> None:
    text = judge_prompt(CONV, a, b)[1]["content"]
    assert text.index(a) < text.index("[The Start of Assistant B's Answer]") < text.rindex(b)
