"""Pairwise LLM-as-judge: which of two answers to the same request is better, asked of any OpenAI-compatible model.

LLM judges prefer whichever answer they read first (or second) — position bias (Zheng et al. 2023, "Judging
LLM-as-a-judge with MT-Bench and Chatbot Arena"). So every pair is judged twice, once in each order, the order
asked first is drawn at random (seeded by the pair's id, so a re-judge asks the same way), and the two verdicts
are combined conservatively: they must agree, otherwise the pair is a tie (and a win that turns into a loss when
the order is swapped is counted as a flip). A judge reply without exactly one verdict mark is counted as
unparseable — never guessed — and a failed judge call is counted as an error; neither enters the win rate.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

log = logging.getLogger(__name__)
Complete = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""A non-streaming chat completion: request body (without `model`) → the response JSON. The gateway passes its
judge backend's `complete`; `openai_complete` adapts the official client for use outside a gateway."""

SYSTEM = ("Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
          "assistants to the conversation below. Choose the assistant that follows the user's instructions and "
          "answers the user's question better, considering helpfulness, relevance, accuracy, depth and level of "
          "detail. Do not let the order in which the responses were presented, their length, or the names of the "
          "assistants influence your decision. Be as objective as possible. After a short explanation, output "
          'your final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B '
          'is better, and "[[TIE]]" for a tie.')
A_START, A_END = "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]"
B_START, B_END = "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]"
VERDICT = re.compile(r"\[\[(A|B|TIE)\]\]")
OUTCOMES = ("win", "tie", "loss", "unparseable", "error")
"""From the candidate's side. Only the first three are judgments; the other two are counted apart."""


def render_conversation(messages: Sequence[dict]) -> str:
    """The request as the judge reads it: one `role: content` block per message."""
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def judge_prompt(messages: Sequence[dict], answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages asking for one verdict on (A, B)."""
    user = (f"[The Start of Conversation]\n{render_conversation(messages)}\n[The End of Conversation]\n\n"
            f"{A_START}\n{answer_a}\n{A_END}\n\n{B_START}\n{answer_b}\n{B_END}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "TIE" when the reply holds exactly one distinct verdict mark, else None (unparseable)."""
    found = set(VERDICT.findall(text or ""))
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class Verdict:
    """The combined judgment of one pair, and both raw verdicts it came from."""

    outcome: str
    """win / tie / loss for the candidate, or unparseable / error."""
    candidate_first: bool
    """Whether the order with the candidate as A was asked first."""
    as_a: str | None
    """Raw verdict (A/B/TIE) when the candidate was A; None if unparseable or failed."""
    as_b: str | None
    """Raw verdict when the candidate was B."""
    flipped: bool
    """The two orders named opposite winners (counted as a tie)."""
    detail: str = ""


def combine(as_a: str | None, as_b: str | None) -> tuple[str, bool]:
    """(outcome, flipped) from the verdict with the candidate as A and the one with the candidate as B."""
    if as_a is None or as_b is None:
        return "unparseable", False
    first = {"A": "win", "B": "loss", "TIE": "tie"}[as_a]
    second = {"A": "loss", "B": "win", "TIE": "tie"}[as_b]
    if first == second:
        return first, False
    return "tie", {first, second} == {"win", "loss"}


def openai_complete(client: openai.AsyncOpenAI, model: str) -> Complete:
    """A `Complete` through the official client (any OpenAI-compatible base URL)."""

    async def complete(body: dict[str, Any]) -> dict[str, Any]:
        reply = await client.chat.completions.create(model=model, **body)
        return reply.model_dump()

    return complete


def reply_text(response: dict[str, Any]) -> str:
    choices = response.get("choices") or [{}]
    return str(((choices[0] or {}).get("message") or {}).get("content") or "")


class Judge:
    """Asks one judge model (any OpenAI-compatible endpoint) for pairwise verdicts."""

    def __init__(self, complete: Complete, max_tokens: int = 512, temperature: float = 0.0, seed: int = 0) -> None:
        self.complete = complete
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed

    async def _ask(self, messages: Sequence[dict], a: str, b: str) -> tuple[str | None, str]:
        text = reply_text(await self.complete({"messages": judge_prompt(messages, a, b), "max_tokens": self.max_tokens,
                                               "temperature": self.temperature}))
        return parse_verdict(text), text

    def candidate_first(self, pair_id: str) -> bool:
        """The order asked first, drawn from the pair id and the judge's seed: random across pairs, repeatable."""
        digest = hashlib.sha256(f"{self.seed}:{pair_id}".encode()).digest()
        return random.Random(digest).random() < 0.5

    async def compare(self, pair_id: str, messages: Sequence[dict], candidate: str, incumbent: str) -> Verdict:
        """Judge the candidate's answer against the incumbent's, in both orders."""
        cand_first = self.candidate_first(pair_id)
        raw: dict[bool, tuple[str | None, str]] = {}  # keyed by "the candidate was A"
        try:
            for cand_is_a in (cand_first, not cand_first):
                a, b = (candidate, incumbent) if cand_is_a else (incumbent, candidate)
                raw[cand_is_a] = await self._ask(messages, a, b)
        except Exception as e:  # any failure of the judge call (transport, status, shape) is counted, not judged
            log.warning("judge call for pair %s failed: %s: %s", pair_id, type(e).__name__, e)
            return Verdict("error", cand_first, None, None, False, f"{type(e).__name__}: {e}"[:500])
        (as_a, text_a), (as_b, text_b) = raw[True], raw[False]
        outcome, flipped = combine(as_a, as_b)
        detail = "" if outcome != "unparseable" else (text_a if as_a is None else text_b)[:500]
        return Verdict(outcome, cand_first, as_a, as_b, flipped, detail)
