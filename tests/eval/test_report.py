import gzip
import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from homegrown.bundle import load_bundle
from homegrown.data.sources import iter_corpus
from homegrown.eval.perplexity import evaluate_split
from homegrown.eval.report import build_report
from homegrown.eval.suite import eval_file, evaluate_model, find_models
from homegrown.eval.tasks import load_tasks

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""CLI children get one OpenMP thread for the reason given in conftest._one_thread."""


def test_find_models_names_every_stage_of_a_run(eval_run):
    specs = find_models(eval_run)
    assert [(s.name, s.stage, s.checkpoint.name) for s in specs] == [
        ("evalrun/base", "base", "step_8"), ("evalrun/sft", "sft", "step_4")]
    assert specs[0].metrics_file == eval_run / "metrics.jsonl"
    assert specs[1].metrics_file == eval_run / "metrics_sft.jsonl" and specs[1].chat
    assert [s.name for s in find_models(eval_run / "sft" / "ckpt" / "step_4")] == ["evalrun/sft"]
    assert [s.name for s in find_models(eval_run / "ckpt")] == ["evalrun/base"]


def test_report_puts_models_side_by_side_with_chance_levels(eval_run, small_suite, tmp_path):
    md = build_report([eval_run], tmp_path / "card", [str(p) for p in small_suite])
    data = json.loads((tmp_path / "card" / "report.json").read_text())
    tasks = {t["name"]: t for t in data["tasks"]}
    assert set(tasks) == {"doc_entry", "doc_continuation", "doc_qa", "doc_module"}
    assert [m["name"] for m in data["models"]] == ["evalrun/base", "evalrun/sft"]
    base, sft = data["models"]
    assert base["params"] == sft["params"] > 0
    assert base["tokens_trained"] == 8 * 8 * 64 and sft["tokens_trained"] == 4 * 8 * 64
    assert 0 < base["val"]["bpb"] < 9 and base["val"]["corpus"] == str(eval_run / "corpus")
    for model in data["models"]:
        for name, result in model["tasks"].items():
            assert 0 <= result["score"] <= 1 and result["n"] == 12
            assert result["chance"] == pytest.approx(tasks[name]["chance"])
    assert base["tasks"]["doc_qa"]["mode"] == "generation" and sft["tasks"]["doc_qa"]["mode"] == "chat"
    text = md.read_text()
    assert "| evalrun/base | base |" in text and "| evalrun/sft | sft |" in text
    assert f"{base['val']['bpb']:.3f}" in text
    row = next(line for line in text.splitlines() if line.startswith("| doc_entry |"))
    assert f"| {tasks['doc_entry']['chance']:.3f} |" in row
    assert f"{base['tasks']['doc_entry']['score']:.3f} ± " in row
    assert "## How to read this" in text
    for png in ("report_loss.png", "report_tasks.png"):
        assert f"]({png})" in text
        height, width, _ = mpimg.imread(tmp_path / "card" / png).shape
        assert height > 200 and width > 400
    assert not list((tmp_path / "card").glob("*.tmp*"))


def test_eval_results_are_cached_until_the_weights_change(eval_run, small_suite, tmp_path):
    spec = find_models(eval_run)[0]
    tasks = load_tasks([str(small_suite[0])])
    first = evaluate_model(spec, tasks, eval_dir=tmp_path)
    path = eval_file(spec, tmp_path)
    stamp = path.stat().st_mtime_ns
    assert evaluate_model(spec, tasks, eval_dir=tmp_path) == first and path.stat().st_mtime_ns == stamp
    other = load_tasks([str(small_suite[1])])
    assert set(evaluate_model(spec, other, eval_dir=tmp_path)["tasks"]) == {other[0].name}


def test_cli_eval_and_report(cli, eval_run, small_suite, tmp_path):
    tasks = [arg for p in small_suite[:2] for arg in ("--tasks", str(p))]
    out = cli("eval", str(eval_run / "ckpt"), *tasks, "--out", str(tmp_path / "ev"), env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "ev" / "base-step_8.json").read_text())
    assert set(record["tasks"]) == {json.loads(Path(p).read_text().splitlines()[0])["task"]["name"]
                                    for p in small_suite[:2]}
    assert "held-out bits/byte" in out.stderr
    out = cli("report", str(eval_run), *tasks, "--out", str(tmp_path / "card"), "--max-items", "5", env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "card" / "report.md") in out.stderr.replace("\n", "")
    assert "evalrun/sft" in (tmp_path / "card" / "report.md").read_text()
    card = json.loads((tmp_path / "card" / "report.json").read_text())
    assert {t["items"] for t in card["tasks"]} == {5}
    assert all(r["n"] == 5 for m in card["models"] for r in m["tasks"].values())


def test_cli_errors_are_one_line(cli, eval_run, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"context": "a", "answer": "b"}\n{"context": "a", "answer": \n')
    out = cli("eval", str(eval_run), "--tasks", str(broken), env=ONE_THREAD)
    assert out.returncode == 2 and "broken.jsonl:2:" in out.stderr and "Traceback" not in out.stderr
    out = cli("report", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = cli("report", str(eval_run), "--external", "http://127.0.0.1:9/v1")
    assert out.returncode == 2 and "--external-model" in out.stderr


def test_cli_eval_and_report_score_bits_per_byte_on_the_given_corpus(cli, eval_run, small_suite, tmp_path):
    """--corpus: held-out bits/byte on that text (here one page of the run's own val split), the same figure the
    library gives for it, and not the run's default; a folder without a val split is refused (eval and report
    share the check) before any model loads."""
    page = next(iter_corpus(eval_run / "corpus", "val"))
    one_page = tmp_path / "one_page"
    one_page.mkdir()
    with gzip.open(one_page / "val.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": page["text"]}) + "\n")
    task = ["--tasks", str(small_suite[0]), "--max-items", "1"]
    out = cli("eval", str(eval_run / "ckpt"), *task, "--corpus", str(one_page), "--out", str(tmp_path / "ev"),
              env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    val = json.loads((tmp_path / "ev" / "base-step_8.json").read_text())["val"]
    bundle = load_bundle(find_models(eval_run)[0].checkpoint)
    expected = evaluate_split(bundle.model, bundle.tokenizer, one_page)
    whole = evaluate_split(bundle.model, bundle.tokenizer, eval_run / "corpus")
    assert val["corpus"] == str(one_page) and val["bytes"] == expected.bytes < whole.bytes
    assert val["bpb"] == pytest.approx(expected.bpb, rel=1e-5)
    out = cli("report", str(eval_run / "ckpt"), *task, "--corpus", str(one_page), "--out", str(tmp_path / "card"),
              env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "card" / "report.json").read_text())["models"][0]["val"] == val
    out = cli("report", str(eval_run), "--corpus", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "no held-out split" in out.stderr and "Traceback" not in out.stderr
