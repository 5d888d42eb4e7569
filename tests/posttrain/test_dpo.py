"""`homegrown dpo`: preference data read and checked, training resumes exactly, CLI, torchrun, LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homegrown.bundle import load_chat_format
from homegrown.config import apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.posttrain.dpo import PairData, dpo
from homegrown.posttrain.pairs import read_pairs
from homegrown.train.checkpoint import resolve_checkpoint
from tests.conftest import HOMEGROWN_EXE

SETTINGS = ["train.threads=1", "train.dtype=fp32", "train.min_lr_ratio=1.0", "dpo.batch_size=4", "dpo.lr=3e-3",
            "dpo.eval_every=2", "dpo.ckpt_every=2", "dpo.eval_batches=1"]


def _pairs(path: Path, n: int = 12) -> Path:
    rows = [{"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"Maybe {i * 3} or so",
             "judge_model": "test"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics_dpo.jsonl").read_text().splitlines()]


def test_bad_pairs_are_reported_by_line_and_skipped(tmp_path):
    lines = [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "judge_model": "j", "seed": 1},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
         "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"messages": [{"role": "user", "content": "Hi?"}], "chosen": "Hey.", "rejected": "Bye."},
        {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."},
        {"prompt": "Hi?", "chosen": "  ", "rejected": "No."},
        "not json",
        {"prompt": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "x"}], "chosen": "a",
         "rejected": "b"},
        {"prompt": "Hi?", "chosen": "I am <|end|> done", "rejected": "No."},
        {"prompt": "Hi?", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    read = read_pairs(path)
    assert [p.chosen for p in read.pairs] == ["Hello.", "Hello.", "Hey."]
    assert read.pairs[0].meta == {"judge_model": "j", "seed": 1}  # provenance travels with the pair
    assert read.pairs[1].prompt[0] == {"role": "system", "content": "Be brief."}
    problems = "\n".join(read.problems)
    for lineno, why in ((4, "same answer"), (5, '"chosen" is empty'), (6, "not valid JSON"),
                        (7, "ends with an assistant message"), (8, "reserved marker <|end|>"),
                        (9, "one assistant message")):
        assert f"pairs.jsonl:{lineno}: " in problems and why in problems, (lineno, problems)
    with pytest.raises(HomegrownError, match=":4: chosen and rejected are the same"):
        read_pairs(path, strict=True)


def test_a_pair_longer_than_the_context_is_reported_and_skipped(tiny_base, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}) + "\n"
                    + json.dumps({"prompt": "word " * 200, "chosen": "Hello.", "rejected": "No."}) + "\n")
    tok, chat = load_chat_format(resolve_checkpoint(tiny_base / "ckpt"))
    data = PairData(tok, chat, read_pairs(path).pairs, 64)
    assert len(data) == 1 and len(data.problems) == 1 and "pairs.jsonl:2: " in data.problems[0]
    x, _, mask, _ = data.batch([0])
    assert x.shape[:2] == (1, 2) and mask[0, 0].sum() > 0  # the answer's tokens and its end of turn only
    ids = data.items[0].chosen
    learned = [ids[i + 1] for i in range(len(ids) - 1) if mask[0, 0, i]]
    assert tok.decode(learned, skip_special_tokens=False) == "Hello.<|end|>"


def test_dpo_resumes_exactly_and_reuses_its_reference(tiny_base, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl")
    whole = apply_overrides(get_preset("tiny"), [*SETTINGS, "dpo.max_steps=6"])
    dpo(tiny_base, data, tmp_path / "whole", whole.dpo, whole.train, val=data, progress=False)
    part = apply_overrides(get_preset("tiny"), [*SETTINGS, "dpo.max_steps=4"])
    dpo(tiny_base, data, tmp_path / "parts", part.dpo, part.train, val=data, progress=False)
    reference = tmp_path / "parts" / "dpo" / "reference.safetensors"
    stamp = reference.stat().st_mtime_ns
    dpo(tiny_base, data, tmp_path / "parts", whole.dpo, whole.train, val=data, progress=False)
    assert reference.stat().st_mtime_ns == stamp  # computed once, read back on resume
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "parts")
    assert [m["step"] for m in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["rewards/margins"] == pytest.approx(y["rewards/margins"], rel=1e-5, abs=1e-7)
    last = a[-1]
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "val_rewards/accuracies"} <= last.keys()
    assert last["val_rewards/accuracies"] == 1.0  # the pairs are easy and the held-out set is the training set
    assert resolve_checkpoint(tmp_path / "whole").parent.parent.name == "dpo"  # the run's final model now
    assert (tmp_path / "whole" / "rewards_dpo.png").stat().st_size > 0


def test_dpo_cli_with_lora(cli, tiny_base, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl")
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}) + "\n")
    out = tmp_path / "run"
    done = cli("dpo", str(tiny_base), "--data", str(data), "--out", str(out), "--preset", "tiny", "--beta", "0.2",
               "--lora-rank", "4", "--lora-alpha", "8", *(f"--set={s}" for s in [*SETTINGS, "dpo.max_steps=4"]))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "pairs.jsonl:13: chosen and rejected are the same answer" in said and "LoRA rank 4" in said
    final = out / "dpo" / "ckpt" / "step_4"
    assert (final / "adapter.safetensors").stat().st_size < (final / "model.safetensors").stat().st_size / 4
    assert not (out / "dpo" / "ckpt" / "step_2" / "model.safetensors").exists()
    assert len(_metrics(out)) == 4



def test_unusable_input_is_a_clear_error(tiny_base, tmp_path):
    preset = apply_overrides(get_preset("tiny"), SETTINGS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "", "rejected": "y"}\n')
    with pytest.raises(HomegrownError, match="holds no usable preference pairs"):
        dpo(tiny_base, bad, tmp_path / "r", preset.dpo, preset.train, progress=False)
    data = _pairs(tmp_path / "pairs.jsonl")
    for override, message in (("dpo.loss=hinge", "dpo.loss must be one of sigmoid, ipo"),
                              ("dpo.beta=0", "dpo.beta must be > 0"),
                              ("dpo.label_smoothing=0.6", r"label_smoothing must be in \[0, 0.5\)"),
                              ("lora.targets=qkv", "unknown module")):
        cfg = apply_overrides(get_preset("tiny"), [*SETTINGS, "lora.rank=2", override])
        with pytest.raises(HomegrownError, match=message):
            dpo(tiny_base, data, tmp_path / override, cfg.dpo, cfg.train, lora=cfg.lora if "lora" in override
                else None, progress=False)


@pytest.mark.parametrize("lora", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_two_torchrun_ranks_train_as_one_process(tiny_base, tmp_path, lora):
    data = _pairs(tmp_path / "pairs.jsonl", n=8)
    args = ["dpo", str(tiny_base), "--data", str(data), "--val", str(data), "--preset", "tiny", *lora,
            *(f"--set={s}" for s in [*SETTINGS, "dpo.max_steps=3", "dpo.eval_every=3", "dpo.ckpt_every=3"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    for name, prefix in (("one", []), ("two", [str(torchrun), "--nproc_per_node=2", "--standalone", "--no-python"])):
        done = subprocess.run([*prefix, str(HOMEGROWN_EXE), *args, "--out", str(tmp_path / name)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "rewards/margins", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
