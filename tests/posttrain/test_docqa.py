import json

from homegrown.config import SFTConfig
from homegrown.data.sources import iter_corpus
from homegrown.posttrain.chat import message_problem
from homegrown.posttrain.docqa import build_docqa, document_pairs, lead_sentences

PAGE = """os.path — Common pathname manipulations
This module implements some useful functions on pathnames. To read or write files see open().
- os.path.join(path, *paths)
- Join one or more path segments intelligently. The return value is the concatenation of path and all members of *paths. New in version 3.4.
- class pathlib.PurePath(*pathsegments)
- A generic class that represents the system's path flavour. Instantiating it creates either a PurePosixPath or a PureWindowsPath.
4.2. for Statements
The for statement in Python differs a bit from what you may be used to in C or Pascal.
>>> for w in words:
"""  # noqa: E501


def test_documented_functions_sections_and_pages_become_grounded_questions():
    pairs = {p.kind: p for p in document_pairs(PAGE, "os.path — Common pathname manipulations",
                                               "https://docs.python.org/3.11/library/os.path.html", 300)}
    assert "os.path.join" in pairs["function"].question
    assert pairs["function"].answer == ("Join one or more path segments intelligently. The return value is the "
                                        "concatenation of path and all members of *paths.")
    assert "pathlib.PurePath" in pairs["class"].question
    assert "for Statements" in pairs["section"].question
    assert pairs["section"].answer.startswith("The for statement in Python differs")
    assert pairs["page"].answer.startswith("This module implements some useful functions on pathnames.")


RESILIPARSE_PAGE = """shlex — Simple lexical analysis

The shlex module defines the following functions:

shlex.split(s, comments=False, posix=True)

Split the string s using shell-like syntax. If comments is False (the default), comments are kept.

Note

Since the split() function instantiates a shlex instance, passing None for s reads standard input.

class shlex.shlex(instream=None, infile=None)

A shlex instance or subclass instance is a lexical analyzer object.

get_token()

Return a token. If tokens have been stacked using push_token(), pop a token off the stack.
"""


def test_resiliparse_layout_gives_the_same_kinds_of_questions():
    pairs = document_pairs(RESILIPARSE_PAGE, "shlex — Simple lexical analysis",
                           "https://docs.python.org/3.11/library/shlex.html", 300)
    by_kind = {}
    for p in pairs:
        by_kind.setdefault(p.kind, []).append(p)
    assert "shlex.split" in by_kind["function"][0].question
    assert by_kind["function"][0].answer.startswith("Split the string s using shell-like syntax.")
    assert "shlex.shlex.get_token" in by_kind["function"][1].question  # a method is named with its class
    assert "shlex.shlex" in by_kind["class"][0].question
    assert not any("Note" in p.question for p in pairs)  # a bare one-word heading is not an API name


def test_lead_sentences_stop_at_whole_sentences():
    text = "First sentence here. Second one is a bit longer than the first. Third."
    assert lead_sentences(text, 30) == "First sentence here."
    assert lead_sentences(text, 120) == "First sentence here. Second one is a bit longer than the first."  # ≥ half
    assert lead_sentences(text, 200) == text
    assert lead_sentences("no sentence end at all", 100) == ""


def test_held_out_pages_only_give_validation_questions(tiny_run, tmp_path):
    out = build_docqa(tiny_run / "corpus", tmp_path / "chat", SFTConfig())
    rows = {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val")}
    assert len(rows["train"]) > 100 and len(rows["val"]) > 5
    val_pages = {r["source"] for r in iter_corpus(tiny_run / "corpus", "val")}
    assert {r["source"] for r in rows["val"]} <= val_pages
    assert not {r["source"] for r in rows["train"]} & val_pages
    assert all(message_problem(r["messages"]) is None and r["messages"][-1]["role"] == "assistant"
               for split in rows.values() for r in split)
    assert any(len(r["messages"]) >= 4 for r in rows["train"])  # multi-turn ones too
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["conversations"] == {"train": len(rows["train"]), "val": len(rows["val"])}


def test_docqa_cli(cli, tiny_run, tmp_path):
    done = cli("data", "docqa", str(tiny_run / "corpus"), "--out", str(tmp_path / "chat"), "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    counts = json.loads((tmp_path / "chat" / "MANIFEST.json").read_text())["conversations"]
    assert f"{counts['train']:,} training" in done.stderr
    missing = cli("data", "docqa", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert not list((tmp_path / "x").glob("*.tmp"))
