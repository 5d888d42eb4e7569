"""Teacher-free chat data: questions and answers cut from the corpus documents themselves.

A small model cannot be taught to answer by a teacher it does not have, but reference manuals already hold
question-shaped facts: each documented function starts with what it does ("What does `os.path.join()` do?"
→ its first sentences), each numbered section starts with what it is about ("Tell me about 4.2. for
Statements" → the section's opening), each page with its purpose. Answers are verbatim text of the page,
so the data is grounded by construction and carries the page's source URL and licence. Questions from
held-out (val) pages are written to a separate file and never trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from homegrown.config import SFTConfig
from homegrown.data.sources import iter_corpus
from homegrown.io import atomic_open, write_json_atomic
from homegrown.layout import MANIFEST
from homegrown.posttrain.chat import message_problem

_QUALIFIERS = r"(?:(?:class|exception|coroutine|abstractmethod|classmethod|staticmethod|awaitable|async|method|" \
              r"function|decorator|data|attribute)\s+)*"
# An API entry as the extractors write Sphinx's <dt>/<dd>: trafilatura as "- name(args)" then "- Description.",
# resiliparse as a bare "name(args)" paragraph then the description paragraph.
_API = re.compile(rf"^(\s*)(- )?({_QUALIFIERS})([A-Za-z_][\w.]*)(\([^\n]*\))?\s*$")
_API_KIND = re.compile(r"^\s*(?:- )?(class|exception) ")
_DESCRIPTION = re.compile(r"^\s*(?:- )?([A-Z][^\n]{20,})$")
_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+([A-Za-z][^\n]{2,70}[\w)])$")
_CALLOUT = re.compile(r"^(?:[A-Z]{3,}\s+)+[A-Z]")
_VERSION_NOTE = re.compile(r"\s*(?:New in version|Changed in version|Deprecated since|Availability:).*$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]’'\"`])[.!?](?=\s+[A-Z(`“]|\s*$)")
_BOILERPLATE = ("Source code:", "Note", "See also", "Changed in version", "New in version", "Deprecated",
                "Availability:", "Example", "Table of Contents")

FUNCTION_QUESTIONS = ("What does `{name}()` do?", "What is {name}() used for?", "Explain {name}() briefly.",
                      "In Python, what does {name}() do?", "Can you tell me what `{name}` does?")
CLASS_QUESTIONS = ("What is `{name}`?", "What is the {name} class for?", "Explain {name} in one or two sentences.")
NAME_QUESTIONS = ("What is `{name}`?", "What does {name} mean in Python?")
SECTION_QUESTIONS = ("Tell me about {title}.", "Summarize the section \"{title}\".", "What is \"{title}\" about?",
                     "Give me a short overview of {title}.")
DEBIAN_QUESTIONS = ("How does {title} work on Debian?", "On Debian, what should I know about {title}?",
                    "Explain {title} in Debian.")
PAGE_QUESTIONS = ("What is the page \"{title}\" about?", "What does the documentation say about {title}?")


@dataclass
class QAPair:
    question: str
    answer: str
    source: str
    kind: str


@dataclass
class DocQAStats:
    """Counts per split and per kind of question, kept in the data's MANIFEST.json."""

    conversations: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


def _pick(options: tuple[str, ...], key: str) -> str:
    """A template chosen by hashing the key: varied wording, identical on every rebuild."""
    return options[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(options)]


def _is_prose(line: str) -> bool:
    stripped = line.strip()
    if len(stripped) < 30 or stripped.startswith((">>>", "...", "#", "$", "- ", "|", *_BOILERPLATE)):
        return False
    if _CALLOUT.match(stripped):  # the Handbook's boxed notes: "BACK TO BASICS …", "TIP …", "CAUTION …"
        return False
    letters = sum(c.isalpha() or c == " " for c in stripped)
    return letters / len(stripped) > 0.8 and stripped[0].isupper()


def lead_sentences(text: str, max_chars: int) -> str:
    """The first whole sentences of `text` that fit in `max_chars` (at least one, or '' if none is short enough)."""
    text = _VERSION_NOTE.sub("", " ".join(text.split()))
    out = ""
    for m in _SENTENCE_END.finditer(text):
        candidate = text[: m.end()].strip()
        if len(candidate) > max_chars:
            break
        out = candidate
        if len(out) >= max_chars // 2:
            break
    return out


def _api_pairs(lines: list[str], source: str, max_chars: int) -> Iterator[QAPair]:
    """Documented functions/classes: a `name(args)` line followed by its description (see `_API`).

    A bare line (no "- ") counts only when it looks like code — a dotted name, an argument list or a
    qualifier — so headings such as "Note" or "Example" are not taken for names. Sphinx writes methods
    without their class: one after a class entry gets the class's name (trafilatura also indents them).
    """
    current_class = ""
    for i, line in enumerate(lines[:-1]):
        m = _API.match(line)
        d = _DESCRIPTION.match(lines[i + 1])
        if not m or not d or _API.match(lines[i + 1]):
            continue
        indent, dash, qualifiers, name, args = m.groups()
        if not dash and "." not in name and args is None and not qualifiers:
            continue
        kind = _API_KIND.match(line)
        if kind:
            current_class = name
        elif "." not in name and current_class and (indent or not dash):
            name = f"{current_class}.{name}"
        answer = lead_sentences(d.group(1), max_chars)
        if not answer:
            continue
        if kind:
            templates, label = CLASS_QUESTIONS, "class"
        else:
            templates, label = (FUNCTION_QUESTIONS, "function") if args is not None else (NAME_QUESTIONS, "name")
        yield QAPair(_pick(templates, source + name).format(name=name), answer, source, label)


def _section_pairs(lines: list[str], source: str, title: str, max_chars: int) -> Iterator[QAPair]:
    """Numbered headings (`4.2. for Statements`) → the prose that opens the section; the page title likewise."""
    debian = "debian-handbook" in source
    heads = [(0, title)] if title else []
    heads += [(i, m.group(2)) for i, line in enumerate(lines) if (m := _HEADING.match(line.strip()))]
    for i, head in heads:
        prose = []
        for line in lines[i + 1: i + 8]:
            if _HEADING.match(line.strip()):
                break
            if _is_prose(line):
                prose.append(line)
                if len(" ".join(prose)) > max_chars:
                    break
        answer = lead_sentences(" ".join(prose), max_chars)
        if not answer:
            continue
        clean = re.sub(r"^(Chapter|Appendix)\s+\w+\.\s*|^\d+(?:\.\d+)*\.?\s+", "", head).strip()
        if i == 0:
            templates, kind = PAGE_QUESTIONS, "page"
        else:
            templates, kind = (DEBIAN_QUESTIONS, "debian-section") if debian else (SECTION_QUESTIONS, "section")
        yield QAPair(_pick(templates, source + head).format(title=clean), answer, source, kind)


def document_pairs(text: str, title: str, source: str, max_chars: int) -> list[QAPair]:
    """Every question this page answers, duplicates of a question on the same page dropped."""
    lines = [line for line in text.split("\n") if line.strip()]  # resiliparse puts blank lines between blocks
    seen: set[str] = set()
    pairs = []
    for pair in [*_api_pairs(lines, source, max_chars), *_section_pairs(lines, source, title or "", max_chars)]:
        if pair.question not in seen:
            seen.add(pair.question)
            pairs.append(pair)
    return pairs


def conversations(records: Iterable[dict], cfg: SFTConfig) -> Iterator[dict]:
    """Chat records in OpenAI `messages` form, with the page's source and licence for provenance.

    Every `multi_turn_every`-th conversation strings two answers of one page together, so the model also sees
    a second user turn after its own reply; the system prompt is given to every other conversation, so the
    model answers with and without one.
    """
    n = 0
    for record in records:
        pairs = document_pairs(record["text"], record.get("title") or "", record.get("source", ""),
                               cfg.max_answer_chars)
        i = 0
        while i < len(pairs):
            take = 2 if cfg.multi_turn_every and n % cfg.multi_turn_every == cfg.multi_turn_every - 1 else 1
            group = pairs[i: i + take]
            i += take
            messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt and n % 2 else []
            for p in group:
                messages += [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer}]
            if message_problem(messages) is None:
                n += 1
                yield {"messages": messages, "source": record.get("source"), "licence": record.get("licence"),
                       "kind": "+".join(p.kind for p in group), "generator": "homegrown.posttrain.docqa"}


def _write_jsonl(path: Path, rows: Iterable[dict]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return kinds


def build_docqa(corpus_dir: Path, out_dir: Path, cfg: SFTConfig) -> Path:
    """Write `train.jsonl` and `val.jsonl` (from the corpus' val pages) into `out_dir`, MANIFEST.json last."""
    out_dir = Path(out_dir)
    marker = out_dir / MANIFEST
    if marker.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = DocQAStats()
    for split in ("train", "val"):
        kinds = _write_jsonl(out_dir / f"{split}.jsonl", conversations(iter_corpus(corpus_dir, split), cfg))
        stats.conversations[split] = sum(kinds.values())
        for k, v in kinds.items():
            stats.kinds[k] = stats.kinds.get(k, 0) + v
    manifest = {"format": "homegrown-chat/1", "generator": "homegrown.posttrain.docqa", "corpus": str(corpus_dir),
                "conversations": stats.conversations, "kinds": stats.kinds,
                "rule": "answers are the opening sentences of the documented text; val questions come only from "
                        "the corpus' val pages"}
    write_json_atomic(marker, manifest)
    return out_dir
