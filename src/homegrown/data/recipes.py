"""Generation recipes for the teacher client: prompt templates, combinatorial seeds, and reply parsers.

A recipe fills one template from a seed — a combination drawn from a few short lists (topic × audience ×
style, noun × verb × adjective × feature …) — so a handful of lists give thousands of distinct prompts
(the Phi and TinyStories recipe for diversity), and turns the teacher's reply into chat conversations. A
reply that does not parse raises BadReply; the client retries it and never caches it.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from homegrown.data.sources import iter_corpus, iter_jsonl
from homegrown.errors import HomegrownError
from homegrown.posttrain.chat import message_problem

Parsed = list[list[dict[str, str]]]
"""Conversations (lists of messages) made from one teacher reply."""


class BadReply(ValueError):
    """The teacher answered, but not with something the recipe can use; retried, never cached."""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    system: str
    template: str
    parse: Callable[[str, dict[str, str]], Parsed]
    seeds: Callable[[SeedInputs], list[dict[str, str]]]


@dataclass
class SeedInputs:
    """What the user supplies: topics (textbook, conversation) and source documents (qa)."""

    topics: list[str] = field(default_factory=list)
    documents: list[dict[str, str]] = field(default_factory=list)


DEFAULT_TOPICS = [
    "Python list comprehensions", "Python dictionaries", "reading and writing files in Python",
    "Python exceptions and try/except", "Python generators", "the Python import system", "virtual environments",
    "unit testing with unittest", "regular expressions", "Unicode strings and bytes", "Python decorators",
    "installing packages with apt on Debian", "systemd services", "file permissions on Linux",
    "SSH keys", "configuring a network interface on Debian", "cron jobs", "shell pipes and redirection",
    "Debian package dependencies", "backups with rsync",
]
AUDIENCES = ["a complete beginner", "a student who knows basic programming", "an experienced engineer"]
STYLES = ["with one small worked example", "with an everyday analogy", "step by step",
          "pointing out a common mistake and how to avoid it"]
STORY_NOUNS = ["ball", "garden", "robot", "kite", "river", "cookie", "tree", "boat", "cat", "moon", "box", "hat"]
STORY_VERBS = ["jump", "share", "find", "build", "sing", "hide", "help", "climb", "paint", "fix"]
STORY_ADJECTIVES = ["brave", "tiny", "shiny", "sleepy", "happy", "curious", "soft", "loud", "kind", "funny"]
STORY_FEATURES = ["a dialogue between two characters", "a plot twist", "a moral lesson", "a happy ending",
                  "something that goes wrong and is fixed", "a surprise"]
PERSONAS = ["a new Debian user", "a data scientist learning Python", "a system administrator",
            "a student preparing for an exam"]
QA_STYLES = ["factual questions", "how-to questions", "why questions"]


def _strip_fences(text: str) -> str:
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    return (m.group(1) if m else text).strip()


def _plain(prompt: str) -> Callable[[str, dict[str, str]], Parsed]:
    """Free text: the reply is the assistant's answer to `prompt` (formatted with the seed)."""

    def parse(reply: str, seed: dict[str, str]) -> Parsed:
        text = reply.strip()
        if len(text) < 20:
            raise BadReply(f"reply too short ({len(text)} characters)")
        conv = [{"role": "user", "content": prompt.format(**seed)}, {"role": "assistant", "content": text}]
        if message_problem(conv):
            raise BadReply(message_problem(conv))
        return [conv]

    return parse


def _parse_qa(reply: str, seed: dict[str, str]) -> Parsed:
    try:
        pairs = json.loads(_strip_fences(reply))
    except json.JSONDecodeError as e:
        raise BadReply(f"expected a JSON list of question/answer pairs: {e.msg}") from None
    if not isinstance(pairs, list):
        raise BadReply("expected a JSON list of question/answer pairs")
    out = []
    for p in pairs:
        if isinstance(p, dict):
            conv = [{"role": "user", "content": p.get("question")}, {"role": "assistant", "content": p.get("answer")}]
            if message_problem(conv) is None:
                out.append(conv)
    if not out:
        raise BadReply("no usable question/answer pair in the reply")
    return out


def _parse_conversation(reply: str, seed: dict[str, str]) -> Parsed:
    try:
        turns = json.loads(_strip_fences(reply))
    except json.JSONDecodeError as e:
        raise BadReply(f"expected a JSON list of messages: {e.msg}") from None
    problem = message_problem(turns)
    if problem is None and turns[0].get("role") != "user":
        problem = "the conversation must start with a user message"
    if problem:
        raise BadReply(problem)
    return [[{"role": t["role"], "content": t["content"]} for t in turns]]


def _product(*lists: Iterable[str], names: tuple[str, ...]) -> list[dict[str, str]]:
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]


def _doc_chunks(inputs: SeedInputs, max_chars: int = 2500) -> list[dict[str, str]]:
    chunks = []
    for doc in inputs.documents:
        paragraphs, size, start = [], 0, 0
        for para in doc["text"].split("\n"):
            paragraphs.append(para)
            size += len(para) + 1
            if size >= max_chars:
                chunks.append({"document": "\n".join(paragraphs), "source": f"{doc['source']}#chunk{start}"})
                paragraphs, size, start = [], 0, start + 1
        if size > 200:
            chunks.append({"document": "\n".join(paragraphs), "source": f"{doc['source']}#chunk{start}"})
    return chunks


RECIPES: dict[str, Recipe] = {
    "textbook": Recipe(
        "textbook", "Phi-style textbook sections: topic × audience × style",
        "You write clear, correct, self-contained textbook sections.",
        "Write a short textbook section (150-300 words) that explains {topic} to {audience}, {style}. "
        "Write only the section.",
        _plain("Explain {topic} to me; I am {audience}."),
        lambda i: _product(i.topics or DEFAULT_TOPICS, AUDIENCES, STYLES, names=("topic", "audience", "style"))),
    "story": Recipe(
        "story", "TinyStories-style stories: noun × verb × adjective × feature",
        "You write very short stories for small children, using only simple words.",
        "Write a short story (3-5 short paragraphs) that a 3-year-old can understand. Use the noun \"{noun}\", "
        "the verb \"{verb}\" and the adjective \"{adjective}\". The story should contain {feature}. "
        "Write only the story.",
        _plain("Tell me a short story about a {adjective} {noun}."),
        lambda i: _product(STORY_NOUNS, STORY_VERBS, STORY_ADJECTIVES, STORY_FEATURES,
                           names=("noun", "verb", "adjective", "feature"))),
    "qa": Recipe(
        "qa", "question/answer pairs grounded in a source document: chunk × question style",
        "You write question/answer pairs that are fully supported by a given document.",
        "Document:\n---\n{document}\n---\nWrite 3 {qa_style} a user might ask, each answered in 1-3 sentences "
        "using only facts from the document. Reply with JSON only: "
        "[{{\"question\": \"...\", \"answer\": \"...\"}}, ...]",
        _parse_qa,
        lambda i: [{**c, "qa_style": s} for c in _doc_chunks(i) for s in QA_STYLES]),
    "conversation": Recipe(
        "conversation", "multi-turn conversations: topic × persona × length",
        "You write realistic, helpful conversations between a user and an AI assistant.",
        "Write a conversation of {turns} exchanges between {persona} (the user) and a helpful assistant about "
        "{topic}. Each assistant reply is accurate and concise. Reply with JSON only: "
        "[{{\"role\": \"user\", \"content\": \"...\"}}, {{\"role\": \"assistant\", \"content\": \"...\"}}, ...]",
        _parse_conversation,
        lambda i: _product(i.topics or DEFAULT_TOPICS, PERSONAS, ["2", "3"], names=("topic", "persona", "turns"))),
}


def build_prompts(recipe: Recipe, inputs: SeedInputs, n: int, seed: int) -> list[tuple[dict[str, str], list[dict]]]:
    """`n` (seed, messages) prompts: the recipe's seed combinations shuffled by `seed` (same seed, same prompts)."""
    seeds = recipe.seeds(inputs)
    if not seeds:
        raise HomegrownError(f"recipe {recipe.name!r} has no seeds; give it --topics or --source documents")
    random.Random(seed).shuffle(seeds)
    out = []
    for s in seeds[:n]:
        fields = {k: v for k, v in s.items() if k != "source"}
        out.append((s, [{"role": "system", "content": recipe.system},
                        {"role": "user", "content": recipe.template.format(**fields)}]))
    return out


def load_inputs(recipe: Recipe, topics: Path | None, source: Path | None, limit_docs: int = 200) -> SeedInputs:
    """Topics (one per line) and source documents (an ingested corpus dir or a JSONL file) for the seeds."""
    inputs = SeedInputs()
    if topics is not None:
        if not topics.is_file():
            raise HomegrownError(f"--topics {topics} does not exist; give a text file with one topic per line")
        inputs.topics = [t.strip() for t in topics.read_text(encoding="utf-8").splitlines() if t.strip()]
    if source is not None:
        if not source.exists():
            raise HomegrownError(f"--source {source} does not exist; give a corpus directory or a JSONL file")
        records = (iter_corpus(source, "train") if source.is_dir()
                   else ({"text": d.text, **d.meta} for d in iter_jsonl(source)))
        inputs.documents = [{"text": r["text"], "source": str(r.get("source") or r.get("url") or source)}
                            for r in itertools.islice(records, limit_docs)]
    if recipe.name == "qa" and not inputs.documents:
        raise HomegrownError("recipe qa needs documents to ground its questions: pass --source CORPUS_DIR_OR_JSONL")
    return inputs
