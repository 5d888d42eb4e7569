import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from homegrown.bundle import ModelBundle
from homegrown.chat_template import our_chat_format
from homegrown.config import ModelConfig
from homegrown.data.sources import iter_corpus
from homegrown.errors import HomegrownError
from homegrown.eval.tasks import (
    TASKS_DIR,
    LocalModel,
    build_messages,
    build_prompt,
    cut_at_stop,
    evaluate_task,
    fewshot_examples,
    load_task,
    load_tasks,
    pick_choice,
    score_generation,
    stop_index,
    token_f1,
)
from homegrown.model import Transformer
from homegrown.pipeline import SAMPLE_DIR
from homegrown.tokenizer import load_tokenizer
from tests.eval.conftest import scripted_lm


@pytest.fixture(scope="module")
def tiny_lm(tiny_run: Path) -> LocalModel:
    """A seeded random tiny model: its log-probs are arbitrary but fixed, which is all scoring needs."""
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                    max_seq_len=48, init_std=0.5))
    return LocalModel(ModelBundle(model, model.cfg, tok, our_chat_format(tok), tiny_run), batch_size=3)


def direct_logprob(lm: LocalModel, context: str, continuation: str) -> tuple[float, bool]:
    """Hand computation: one unbatched forward over <eot> + context + continuation, summing the continuation's
    token log-probs (the continuation's tokens are what the whole string adds after the context's tokens)."""
    ctx = lm.tok.encode(context, add_special_tokens=False).ids
    whole = lm.tok.encode(context + continuation, add_special_tokens=False).ids
    cont = whole[len(ctx):]
    seq = ([lm.eot, *ctx, *cont])[-(lm.model.cfg.max_seq_len + 1):]
    with torch.no_grad():
        logits = lm.model(torch.tensor([seq[:-1]]))[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, greedy = 0.0, True
    for k in range(len(cont)):
        pos = len(seq) - 1 - len(cont) + k
        total += float(logp[pos, seq[pos + 1]])
        greedy &= int(logp[pos].argmax()) == seq[pos + 1]
    return total, greedy


REQUESTS = [
    ("Description: Return the value of the given header.\nName:", " Request.get_header"),
    ("Description: Return the value of the given header.\nName:", " sys.argv"),
    ("The list of command line arguments passed to a Python script", " is sys.argv."),
    ("x" * 300 + " a context far longer than the 48-token window, so it is cut from the left:", " yes"),
    ("Trailing spaces move to the continuation ", "like this"),
]


def test_batched_loglikelihoods_match_a_direct_forward_pass(tiny_lm):
    got = tiny_lm.loglikelihoods(REQUESTS)
    for (context, continuation), (lp, greedy) in zip(REQUESTS, got, strict=True):
        context, continuation = (context.rstrip(), context[len(context.rstrip()):] + continuation)
        want_lp, want_greedy = direct_logprob(tiny_lm, context, continuation)
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy
        assert lp < 0


def test_greedy_flag_is_true_for_the_models_own_argmax_continuation(tiny_lm):
    context = "The Python interpreter"
    ids = [tiny_lm.eot, *tiny_lm.encode(context)]
    with torch.no_grad():
        nxt = int(tiny_lm.model(torch.tensor([ids]))[0, -1].argmax())
    continuation = tiny_lm.tok.decode([nxt])
    if tiny_lm.encode(context + continuation)[len(ids) - 1:] != [nxt]:
        pytest.skip("the argmax token does not re-tokenize to itself after this context")
    [(lp, greedy)] = tiny_lm.loglikelihoods([(context, continuation)])
    assert greedy and lp > -math.log(tiny_lm.tok.get_vocab_size()) * 3


def test_normalisations_pick_by_sum_by_character_and_by_byte():
    # sum: -4.4 > -5 → 0; per character: -4.4/4 = -1.1 < -5/5 = -1.0 → 1; per byte: -4.4/8 = -0.55 > -1.0 → 0
    assert pick_choice([-4.4, -5.0], ["éééé", "abcde"]) == {"acc": 0, "acc_norm": 1, "acc_bytes": 0}
    assert pick_choice([-10.0, -12.0], [" ab", " abcdefgh"]) == {"acc": 0, "acc_norm": 1, "acc_bytes": 1}


def write_task(path: Path, header: dict | None, items: list[dict | str]) -> Path:
    lines = [json.dumps({"task": header})] if header else []
    lines += [it if isinstance(it, str) else json.dumps(it) for it in items]
    path.write_text("\n".join(lines) + "\n")
    return path


MC_ITEMS = [
    {"id": f"d{i}", "split": "dev", "context": f"Example {i}:", "choices": [f" right{i}", f" wrong{i}"], "answer": 0}
    for i in range(4)
] + [
    {"id": "t0", "context": "Description: Return the value of the given header.\nName:",
     "choices": [" Request.get_header", " sys.argv", " gc.collect", " struct.pack"], "answer": 0},
    {"id": "t1", "context": "The garbage collector can be", "choices": [" disabled.", " a kind of fish that sings.",
                                                                        " sys", " x"], "answer": 0},
    {"id": "t2", "context": "Debian packages are installed with",
     "choices": [" apt", " a spoon", " dpkg and apt", " ?"], "answer": 2},
]


def test_task_accuracy_equals_argmax_of_hand_computed_normalised_logprobs(tiny_lm, tmp_path):
    task = load_task(write_task(tmp_path / "mc.jsonl", {"type": "multiple_choice", "num_fewshot": 2}, MC_ITEMS))
    result = evaluate_task(task, tiny_lm)
    expected = {"acc": 0, "acc_norm": 0}
    for item in task.items:
        prompt = build_prompt(task, item)
        lps = [direct_logprob(tiny_lm, prompt, c)[0] for c in item["choices"]]
        expected["acc"] += max(range(4), key=lambda i: lps[i]) == item["answer"]
        expected["acc_norm"] += max(range(4), key=lambda i: lps[i] / len(item["choices"][i])) == item["answer"]
    assert result.metrics["acc"] == pytest.approx(expected["acc"] / 3)
    assert result.metrics["acc_norm"] == pytest.approx(expected["acc_norm"] / 3)
    assert result.score == result.metrics["acc_norm"] and result.n == 3 and result.chance == 0.25
    assert result.mode == "loglikelihood"


def test_fewshot_prompt_uses_k_dev_examples_with_their_answers_deterministically(tmp_path):
    task = load_task(write_task(tmp_path / "mc.jsonl", {"type": "multiple_choice", "num_fewshot": 2}, MC_ITEMS))
    item = task.items[0]
    prompt = build_prompt(task, item)
    parts = prompt.split("\n\n")
    assert len(parts) == 3 and parts[-1] == item["context"]
    shots = fewshot_examples(task, item)
    assert [d["split"] for d in shots] == ["dev", "dev"] and len({d["id"] for d in shots}) == 2
    assert parts[:2] == [d["context"] + d["choices"][d["answer"]] for d in shots]
    assert build_prompt(task, item) == prompt
    assert {tuple(d["id"] for d in fewshot_examples(task, it)) for it in task.items} != {()}
    messages = build_messages(task, item)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == shots[0]["choices"][shots[0]["answer"]].strip()


@pytest.mark.parametrize(("line", "message"), [
    ('{"context": "a", "choices": [" x", " y"], "answer": 0', "not valid JSON"),
    ('{"context": "a", "choices": [" x", " y"], "answer": 5}', "'answer' must be the index"),
    ('{"choices": [" x", " y"], "answer": 0}', "missing string field 'context'"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"context": "a", "choices": [" x"], "answer": 0}', "at least two"),
])
def test_a_broken_line_is_reported_with_file_and_line_number(tmp_path, line, message):
    good = {"context": "ok", "choices": [" a", " b"], "answer": 1}
    path = write_task(tmp_path / "broken.jsonl", {"type": "multiple_choice"}, [good, "", line])
    with pytest.raises(HomegrownError, match=rf"broken\.jsonl:4: .*{message}"):
        load_task(path)


def test_generation_items_are_checked_too(tmp_path):
    path = write_task(tmp_path / "gen.jsonl", None, [{"context": "Q", "answer": "a"}, {"context": "Q", "answer": 3}])
    with pytest.raises(HomegrownError, match=r"gen\.jsonl:2: generation items need a string 'answer'"):
        load_task(path)
    path = write_task(tmp_path / "re.jsonl", None, [{"context": "Q", "answer": "a", "pattern": "("}])
    with pytest.raises(HomegrownError, match=r"re\.jsonl:1: 'pattern' is not a valid regular expression"):
        load_task(path)
    with pytest.raises(HomegrownError, match="not found"):
        load_task(tmp_path / "missing.jsonl")


def test_generation_metrics_and_computed_chance(tmp_path):
    assert token_f1("The list of command line arguments", "list of arguments") == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert token_f1("nothing shared", "list of arguments") == 0.0
    item = {"answer": " sys", "pattern": r"^\s*sys\b"}
    assert score_generation(" Sys.", item) == {"exact_match": 1.0, "f1": 1.0, "regex": 0.0}
    assert score_generation(" sys module", item) == {"exact_match": 0.0, "f1": pytest.approx(2 / 3), "regex": 1.0}
    items = [{"context": f"Q{i}", "answer": a} for i, a in enumerate([" sys", " sys", " gc", " typing"])]
    task = load_task(write_task(tmp_path / "g.jsonl", {"type": "generation", "metric": "exact_match"}, items))
    assert task.chance == pytest.approx(0.5)  # always answering "sys" gets 2 of 4


def test_generation_is_greedy_cut_at_the_stop_string_and_deterministic(tiny_lm, tmp_path):
    items = [{"context": f"Question: What is sys.argv number {i}?\nAnswer:", "answer": " a list"} for i in range(3)]
    task = load_task(write_task(tmp_path / "g.jsonl", {"type": "generation", "max_tokens": 12, "stop": ["e"]},
                                items))
    first = evaluate_task(task, tiny_lm)
    assert first.mode == "generation" and first.metric == "f1"
    outputs = tiny_lm.generate([it["context"] for it in items], 12, ["e"])
    assert [ex["predicted"] for ex in first.examples] == outputs
    assert all("e" not in o for o in outputs)
    assert evaluate_task(task, tiny_lm).examples == first.examples


def test_shipped_suite_is_built_from_held_out_pages_only():
    val_pages = {r["source"] for r in iter_corpus(SAMPLE_DIR, "val")}
    train_pages = {r["source"] for r in iter_corpus(SAMPLE_DIR, "train")}
    tasks = load_tasks()
    assert {t.name for t in tasks} == {"doc_entry", "doc_continuation", "doc_qa", "doc_module"}
    for task in tasks:
        assert 50 <= len(task.items) <= 200, task.name
        assert 0 < task.chance < 0.5
        pages = {it["source"] for it in task.items + task.dev}
        assert pages <= val_pages and not pages & train_pages, task.name
    for task in (t for t in tasks if t.name in ("doc_qa", "doc_module")):
        # API entries come from reference pages only: a HOWTO's code line followed by prose is no definition.
        assert all(re.search(r"docs\.python\.org/[\d.]+/(library|c-api)/", it["source"])
                   for it in task.items + task.dev), task.name


@pytest.mark.parametrize(("text", "stop", "want"), [
    ("\n\nReturn the size.\nMore text", ["\n"], "\n\nReturn the size."),
    (" sys\n", ["\n"], " sys"),
    ("\n \n\t", ["\n"], "\n \n\t"),
    ("\nQuestion: next one", ["Question:"], "\n"),
    ("\n\nsys.argv\n\nQuestion:", ["Question:", "\n\n"], "\n\nsys.argv"),
    ("no stop here", ["\n", ""], "no stop here"),
    ("", ["\n"], ""),
])
def test_a_stop_string_ends_a_reply_only_after_its_first_non_whitespace_text(text, stop, want):
    assert cut_at_stop(text, stop) == want
    assert (stop_index(text, stop) is None) == (want == text)


def test_a_reply_that_starts_on_a_new_line_is_kept_to_the_next_newline(tiny_run, tmp_path):
    tok = load_tokenizer(tiny_run / "tokenizer.json")
    [newline], [word] = tok.encode("\n", add_special_tokens=False).ids, tok.encode("x", add_special_tokens=False).ids
    prompt = "Question: What is x?\nAnswer:"
    last = tok.encode(prompt, add_special_tokens=False).ids[-1]
    lm = scripted_lm(tok, {last: newline, newline: word, word: newline})
    assert lm.generate([prompt], 8, []) == ["\nx\nx\nx\nx"]
    assert lm.generate([prompt], 8, ["\n"]) == ["\nx"]
    task = load_task(write_task(tmp_path / "g.jsonl", {"type": "generation", "metric": "exact_match",
                                                        "max_tokens": 8, "stop": ["\n"]},
                                [{"context": prompt, "answer": " x"}]))
    result = evaluate_task(task, lm)
    assert result.examples[0]["predicted"] == "\nx" and result.metrics == {"exact_match": 1.0, "f1": 1.0}
    silent = scripted_lm(tok, {last: newline, newline: newline})
    assert silent.generate([prompt], 5, ["\n"]) == ["\n" * 5]
    assert evaluate_task(task, silent).score == 0.0


def test_shipped_suite_is_exactly_what_the_build_script_writes(tmp_path):
    """No item is edited by hand: the files equal a fresh deterministic build from the held-out pages."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "scripts" / "build_tasks.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shipped = sorted(p.name for p in TASKS_DIR.glob("*.jsonl"))
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (TASKS_DIR / name).read_bytes(), name
