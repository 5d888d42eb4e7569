"""`homegrown eval` and `homegrown report` on an imported SmolLM2-135M-Instruct, through the console script.

A run made by `import` has no corpus of its own; this one is given a one-page held-out split (a page of the
bundled docs, cut short) so that scoring 135M parameters on it takes seconds, and two items per task.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

from homegrown.data.sources import iter_corpus
from homegrown.layout import MANIFEST, SAMPLE_DIR
from tests.conftest import linked_run

TASKS = ["doc_continuation", "doc_module"]


def _one_page_corpus(out: Path, chars: int = 1500) -> str:
    out.mkdir(parents=True)
    page = dict(next(itertools.islice(iter_corpus(SAMPLE_DIR, "val"), 1)))
    page["text"] = page["text"][:chars]
    for split in ("train", "val"):
        with gzip.open(out / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(json.dumps(page) + "\n")
    (out / MANIFEST).write_text(json.dumps({"from": str(SAMPLE_DIR), "train": 1, "val": 1}))
    return page["text"]


def test_cli_eval_and_report_of_the_import(smol_run: Path, tmp_path: Path, cli) -> None:
    run = linked_run(smol_run, tmp_path / "smol")
    text = _one_page_corpus(run / "corpus")
    task_args = [a for t in TASKS for a in ("--tasks", t)]
    done = cli("eval", str(run), *task_args, "--max-items", "2", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((run / "eval" / "base-step_0.json").read_text())
    assert record["params"] == 134_515_008 and record["vocab_size"] == 49_152
    # Every byte but the first token's (SmolLM2's text starts bare: nothing predicts it).
    assert record["val"]["corpus"] == str(run / "corpus")
    assert len(text.encode()) - 8 < record["val"]["bytes"] < len(text.encode())
    # A real model on English documentation: far below the ~4 bits/byte of uniform guessing over its vocabulary.
    assert 0.3 < record["val"]["bpb"] < 1.5
    assert {name: r["n"] for name, r in record["tasks"].items()} == dict.fromkeys(TASKS, 2)
    assert record["tasks"]["doc_module"]["mode"] == "generation"

    done = cli("report", str(run), *task_args, "--max-items", "2", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "eval: reusing" in done.stderr  # same weights, tasks and text: nothing is scored twice
    report = (run / "report.md").read_text()
    assert "smol/base" in report and all(t in report for t in TASKS)
