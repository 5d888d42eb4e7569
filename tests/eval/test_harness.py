"""lm-eval-harness runs our checkpoint on a task from a local YAML + JSONL, offline, and agrees with our scorer."""

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from homegrown.bundle import load_bundle
from homegrown.eval.harness import HomegrownLM, run_harness
from homegrown.eval.tasks import LocalModel, evaluate_task, load_task
from tests.eval.conftest import scripted_lm

HERE = Path(__file__).parent / "harness_task"


@pytest.fixture
def task_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    out = tmp_path / "tasks"
    out.mkdir()
    data = shutil.copy(HERE / "doc_entry_sample.jsonl", out / "doc_entry_sample.jsonl")
    yaml = (HERE / "doc_entry_sample.yaml").read_text().replace("DATA_FILE", str(data))
    (out / "doc_entry_sample.yaml").write_text(yaml)
    return out


def test_lm_eval_scores_a_local_task_like_our_own_scorer(eval_run, task_dir):
    ckpt = eval_run / "ckpt" / "step_8"
    results = run_harness(ckpt, ["homegrown_doc_entry_sample"], include_path=task_dir)
    harness = results["homegrown_doc_entry_sample"]
    ours = evaluate_task(load_task(task_dir / "doc_entry_sample.jsonl"), LocalModel(load_bundle(ckpt)))
    assert ours.n == 24 and ours.num_fewshot == 0
    assert harness["acc,none"] == pytest.approx(ours.metrics["acc"])
    assert harness["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"])


def test_registered_model_answers_all_three_request_types(eval_run):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    lm = get_model("homegrown").create_from_arg_string(f"path={eval_run / 'ckpt' / 'step_8'},batch_size=4")
    assert isinstance(lm, HomegrownLM)

    def req(kind: str, args: tuple) -> Instance:
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    [(lp, _)] = lm.loglikelihood([req("loglikelihood", ("The Python", " interpreter"))])
    ours = lm.local.loglikelihoods([("The Python", " interpreter")])[0][0]
    assert lp == pytest.approx(ours) and lp < 0
    text = "The Python interpreter is usually installed as /usr/local/bin/python3. " * 4
    [rolling] = lm.loglikelihood_rolling([req("loglikelihood_rolling", (text,))])
    assert rolling < lp
    [generated] = lm.generate_until([req("generate_until", ("def read_file(path):", {"until": ["\n"],
                                                                                       "max_gen_toks": 10}))])
    assert isinstance(generated, str) and "\n" not in generated


def test_cli_eval_harness_writes_lm_evals_results(cli, eval_run, task_dir, tmp_path):
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    out = cli("eval", str(eval_run / "ckpt"), "--harness", "homegrown_doc_entry_sample", "--include-path",
              str(task_dir), "--limit", "6", "--out", str(tmp_path / "ev"), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "ev" / "harness-step_8.json").read_text())
    assert 0 <= results["homegrown_doc_entry_sample"]["acc_norm,none"] <= 1
    bad = cli("eval", str(eval_run / "ckpt"), "--harness", "no_such_task", "--include-path", str(task_dir), env=env)
    assert bad.returncode == 2 and "lm-eval knows no task no_such_task" in bad.stderr


def test_generate_until_keeps_lm_evals_rule_a_stop_cuts_even_leading_whitespace(eval_run):
    """Our suite lets a reply start on a new line; lm-eval's `until` does not, and the harness must score the way
    lm-eval does. The scripted model answers "\\nx\\nx…" whatever the prompt."""
    from lm_eval.api.instance import Instance

    lm = HomegrownLM(str(eval_run / "ckpt" / "step_8"))
    tok = lm.local.tok
    [newline], [word] = tok.encode("\n", add_special_tokens=False).ids, tok.encode("x", add_special_tokens=False).ids
    context = "Answer:"
    lm.local = scripted_lm(tok, {lm.local.encode(context)[-1]: newline, newline: word, word: newline})
    assert lm.local.generate([context], 6, ["\n"]) == ["\nx"]

    def req(until: list[str]) -> Instance:
        return Instance(request_type="generate_until", doc={}, arguments=(context, {"until": until,
                                                                                  "max_gen_toks": 6}), idx=0)

    assert lm.generate_until([req(["\n"]), req(["Q"])]) == ["", "\nx\nx\nx"]
