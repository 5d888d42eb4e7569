"""Build the shipped evaluation suite (data/tasks/*.jsonl) from the bundled corpus's held-out pages.

Only `val` pages are read, and no model ever trains on them, so every item tests what a model learned from
*other* pages. The build is deterministic (fixed seed, pages in file order): rerunning it rewrites the same
bytes. Usage: `python scripts/build_tasks.py [--corpus data/sample] [--out data/tasks]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

from homegrown.data.sources import iter_corpus
from homegrown.eval.tasks import TASKS_DIR
from homegrown.pipeline import SAMPLE_DIR

SEED = 0
# An API entry in the Python docs: "sys.argv" / "int PyCodec_Register(PyObject *f)" followed by its description,
# as paragraphs (resiliparse) or as "- " items (trafilatura).
ENTRY = re.compile(r"^(?:(?:exception|class|type|abstractmethod|classmethod|staticmethod|async)\s+)?"
                   r"(?:[A-Za-z_]\w*(?:\s+\**|\s*\*+\s*))?"
                   r"(?P<name>[A-Za-z_][\w.]*)(?:\(.*\))?$")
SECTION = re.compile(r"^\d+(?:\.\d+)+\.\s+(?P<title>.+)$")
BOILERPLATE = re.compile(r"^(?:Return value: [^.]*\.\s*|Part of the (?:Stable ABI|Limited API)[^.]*\.\s*)+")
REFERENCE_PAGE = re.compile(r"/(?:library|c-api)/")
"""Python API entries are read only on reference pages: on a HOWTO or a What's New page a code line
(`curses.noecho()`, `stdscr.refresh()`) followed by prose looks like a definition but is not one."""
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]”’'\"])\.(?=\s+[A-Z]|$)")


def first_sentence(text: str) -> str:
    text = BOILERPLATE.sub("", text.strip())
    m = SENTENCE_END.search(text)
    return text[:m.end()] if m else ""


def usable(sentence: str, lo: int = 5, hi: int = 40) -> bool:
    words = sentence.split()
    return lo <= len(words) <= hi and sentence[:1].isupper() and "(" not in words[0]


def entries(page: dict) -> list[dict]:
    """(name, description) pairs: documented Python/C API names and Debian Handbook section titles."""
    lines = [ln.strip() for ln in page["text"].split("\n") if ln.strip()]
    found = []
    reference = REFERENCE_PAGE.search(page["source"]) is not None
    for a, b in itertools.pairwise(lines):
        m = ENTRY.match(a.removeprefix("- ")) if reference and a.startswith("- ") == b.startswith("- ") else None
        if m and ("." in m["name"] or m["name"].startswith(("Py", "_Py"))):
            desc = first_sentence(b.removeprefix("- "))
            if usable(desc) and not ENTRY.match(desc):
                found.append({"name": m["name"], "desc": desc, "page": page["title"], "source": page["source"]})
        s = SECTION.match(a)
        if s and not b.startswith("- ") and not SECTION.match(b):
            desc = first_sentence(b)
            if usable(desc):
                found.append({"name": s["title"], "desc": desc, "page": page["title"], "source": page["source"]})
    unique = {e["name"]: e for e in found}
    return list(unique.values())


def prose_sentences(page: dict) -> list[str]:
    out = []
    for line in page["text"].split("\n"):
        line = line.strip()
        if line.startswith(("- ", "•")) or len(line.split()) < 12:
            continue
        start = 0
        for m in SENTENCE_END.finditer(line):
            sentence = line[start:m.end()].strip()
            start = m.end()
            if usable(sentence, 12, 40) and not re.search(r"[{}<>=;]|\s{2,}", sentence):
                out.append(sentence)
    return out


def round_robin(groups: dict[str, list], n: int, rng: random.Random) -> list:
    """Up to n items taking one page at a time, so the biggest pages do not fill the task on their own."""
    pools = {k: rng.sample(v, len(v)) for k, v in groups.items()}
    out: list = []
    while len(out) < n and any(pools.values()):
        for k in list(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    return out


def split_dev(items: list[dict], n_dev: int) -> list[dict]:
    for i, it in enumerate(items):
        it["split"] = "dev" if i < n_dev else "test"
    return items


def doc_entry(all_entries: list[dict], rng: random.Random, n: int = 160) -> list[dict]:
    """Which documented name does a description belong to? Distractors come from the same page when possible."""
    by_page = defaultdict(list)
    for e in all_entries:
        by_page[e["page"]].append(e)
    items = []
    for e in round_robin({k: v for k, v in by_page.items() if len(v) >= 2}, n, rng):
        same = [x["name"] for x in by_page[e["page"]] if x["name"] != e["name"]]
        others = [x["name"] for x in all_entries if x["page"] != e["page"]]
        wrong = rng.sample(same, min(3, len(same)))
        wrong += rng.sample(others, 3 - len(wrong))
        choices = [" " + c for c in [e["name"], *wrong]]
        rng.shuffle(choices)
        items.append({"id": f"entry-{len(items)}", "context": f"Description: {e['desc']}\nName:",
                      "choices": choices, "answer": choices.index(" " + e["name"]), "page": e["page"],
                      "source": e["source"]})
    return split_dev(items, 10)


def doc_continuation(pages: list[dict], rng: random.Random, n: int = 160) -> list[dict]:
    """The true end of a held-out sentence against the ends of three sentences from other held-out pages."""
    halves = []
    for page in pages:
        for s in prose_sentences(page):
            words = s.split()
            cut = len(words) // 2
            halves.append({"page": page["title"], "source": page["source"], "head": " ".join(words[:cut]),
                           "tail": " " + " ".join(words[cut:])})
    by_page = defaultdict(list)
    for h in halves:
        by_page[h["page"]].append(h)
    items = []
    for h in round_robin(by_page, n, rng):
        others = [x["tail"] for x in halves if x["page"] != h["page"]]
        choices = [h["tail"], *rng.sample(others, 3)]
        rng.shuffle(choices)
        items.append({"id": f"cont-{len(items)}", "context": h["head"], "choices": choices,
                      "answer": choices.index(h["tail"]), "page": h["page"], "source": h["source"]})
    return split_dev(items, 5)


def doc_qa(all_entries: list[dict], rng: random.Random, n: int = 85) -> list[dict]:
    """Say what a documented Python name is; scored by token F1 against the docs' first sentence."""
    python = [e for e in all_entries if "." in e["name"] and " " not in e["name"]]
    by_page = defaultdict(list)
    for e in python:
        by_page[e["page"]].append(e)
    items = [{"id": f"qa-{i}", "context": f"Question: What is {e['name']} in Python?\nAnswer:",
              "question": f"What is {e['name']} in Python? Answer in one sentence.", "answer": " " + e["desc"],
              "page": e["page"], "source": e["source"]}
             for i, e in enumerate(round_robin(by_page, n, rng))]
    return split_dev(items, 5)


def doc_module(all_entries: list[dict], pages: list[dict], rng: random.Random, n: int = 105) -> list[dict]:
    """Name the module that documents an attribute (`argv` → `sys`); scored by exact match."""
    modules = {p["title"]: p["title"].split(" — ")[0] for p in pages if " — " in p["title"]}
    by_page = defaultdict(list)
    for e in all_entries:
        module = modules.get(e["page"])
        if module and e["name"].startswith(module + "."):
            by_page[e["page"]].append({**e, "module": module, "short": e["name"][len(module) + 1:]})
    items = [{"id": f"module-{i}", "context": f"Question: Which Python module provides {e['short']}?\nAnswer:",
              "question": f"Which Python module provides {e['short']}? Answer with the module name only.",
              "answer": " " + e["module"], "pattern": rf"^\s*{re.escape(e['module'])}\b", "page": e["page"],
              "source": e["source"]}
             for i, e in enumerate(round_robin(by_page, n, rng))]
    return split_dev(items, 5)


HEADERS = {
    "doc_entry": {"type": "multiple_choice", "metric": "acc_norm", "num_fewshot": 3,
                  "description": "Pick the documented name (function, attribute, C API, Handbook section) that "
                                 "a held-out description belongs to; 4 choices, mostly from the same page."},
    "doc_continuation": {"type": "multiple_choice", "metric": "acc_norm", "num_fewshot": 0,
                         "description": "Complete a sentence from a held-out page: its true second half against "
                                        "the second halves of 3 sentences from other held-out pages."},
    "doc_qa": {"type": "generation", "metric": "f1", "num_fewshot": 2, "max_tokens": 48, "stop": ["\n"],
               "description": "Say what a documented Python name is; token F1 against the first sentence of "
                              "its held-out documentation."},
    "doc_module": {"type": "generation", "metric": "exact_match", "num_fewshot": 3, "max_tokens": 8,
                   "stop": ["\n"], "description": "Name the module that provides an attribute or function "
                                                  "(argv → sys); exact match."},
}


def write_jsonl(path: Path, header: dict, items: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"task": {"name": path.stem, **header}}, ensure_ascii=False) + "\n")
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--out", type=Path, default=TASKS_DIR)
    args = parser.parse_args()
    pages = list(iter_corpus(args.corpus, "val"))
    all_entries = [e for p in pages for e in entries(p)]
    args.out.mkdir(parents=True, exist_ok=True)
    built = {
        "doc_entry": doc_entry(all_entries, random.Random(SEED)),
        "doc_continuation": doc_continuation(pages, random.Random(SEED)),
        "doc_qa": doc_qa(all_entries, random.Random(SEED)),
        "doc_module": doc_module(all_entries, pages, random.Random(SEED)),
    }
    for name, items in built.items():
        write_jsonl(args.out / f"{name}.jsonl", HEADERS[name], items)
        test = sum(it["split"] == "test" for it in items)
        print(f"{name}: {test} test + {len(items) - test} dev items from {len({it['page'] for it in items})} pages")


if __name__ == "__main__":
    main()
