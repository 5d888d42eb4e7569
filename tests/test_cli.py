"""The console script as a user meets it: real child processes, real files."""

import json


def _assert_user_error(result, needle):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3


def test_help_lists_the_stages(cli):
    out = cli("--help")
    assert out.returncode == 0
    for stage in ("run", "pretrain", "generate", "chat", "export", "data", "presets", "eval", "report"):
        assert stage in out.stdout
    presets = cli("presets")
    assert presets.returncode == 0 and "8,030,261,248" in presets.stderr and "small:" in presets.stderr


def test_user_errors_are_one_clear_line(cli, tmp_path):
    _assert_user_error(cli("run", "--preset", "nope", "--out", str(tmp_path)), "unknown preset 'nope'")
    _assert_user_error(cli("generate", str(tmp_path / "missing"), "hi"), "no checkpoint found")
    _assert_user_error(cli("run", "--preset", "tiny", "--set", "train.lr", "--out", str(tmp_path)), "must look like")
    _assert_user_error(cli("run", "--preset", "llama-8b", "--out", str(tmp_path)), "far too large")
    _assert_user_error(cli("run", "--preset", "tiny", "--budget", "-1", "--out", str(tmp_path)), "budget_minutes")
    _assert_user_error(cli("run", "--preset", "tiny", "--source", str(tmp_path / "nothing"), "--out",
                           str(tmp_path / "r")), "does not exist")


def test_run_end_to_end_then_rerun_skips_finished_stages(cli, tmp_path):
    run = tmp_path / "run"
    first = cli("run", "--preset", "tiny", "--out", str(run), "--samples", "2", "--set", "train.threads=1")
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("corpus/MANIFEST.json", "tokenizer.json", "shards/index.json", "metrics.jsonl",
                 "loss_pretrain.png", "ckpt/step_40/model.safetensors", "ckpt/step_40/trainer_state.pt"):
        assert (run / name).exists(), name
    assert first.stderr.count("model>") == 2 and "val bits/byte" in first.stderr  # held-out questions answered
    assert (run / "sft" / "ckpt" / "step_20" / "model.safetensors").exists() and (run / "metrics_sft.jsonl").exists()
    assert "report.md" in first.stderr
    assert [m["name"] for m in json.loads((run / "report.json").read_text())["models"]] == ["run/base", "run/sft"]
    stamp = (run / "tokenizer.json").stat().st_mtime_ns
    second = cli("run", "--preset", "tiny", "--out", str(run), "--samples", "0", "--set", "train.threads=1")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "training a" not in second.stderr and "packing" not in second.stderr
    assert "resuming pretrain" in second.stderr
    assert second.stderr.count("eval: reusing") == 2  # both models' scores are cached by weights + tasks
    assert (run / "tokenizer.json").stat().st_mtime_ns == stamp
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 40

    gen = cli("generate", str(run), "import os", "--max-tokens", "8", "--seed", "3")
    again = cli("generate", str(run), "import os", "--max-tokens", "8", "--seed", "3")
    assert gen.returncode == 0 and gen.stdout.startswith("import os") and gen.stdout == again.stdout

    chat = cli("chat", str(run), "--max-tokens", "5", "--seed", "1", input_text="How do I list files?\n\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model>") == 1

    exported = cli("export", str(run), "--out", str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    _assert_user_error(cli("export", str(run), "--out", str(tmp_path / "x"), "--format", "onnx"), "unknown export")

    mismatch = cli("pretrain", str(run), "--preset", "tiny", "--set", "model.n_layers=3")
    _assert_user_error(mismatch, "another model config")
    assert json.loads((run / "preset.json").read_text())["name"] == "tiny"


def test_set_overrides_given_to_pretrain_stay_in_force_for_later_commands(cli, tiny_run, tmp_path):
    """RUN/preset.json is read back whole: `sft RUN` and `report RUN` use the pretrain command's --set values."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("corpus", "tokenizer.json", "shards"):
        (run / name).symlink_to(tiny_run / name)
    overrides = ["train.threads=1", "train.max_steps=2", "train.eval_every=2", "train.ckpt_every=2",
                 "sft.max_steps=3", "sft.eval_every=3", "sft.ckpt_every=3", "eval.tasks=doc_qa", "eval.max_items=2"]
    done = cli("pretrain", str(run), "--preset", "tiny", *(f"--set={o}" for o in overrides))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "preset.json").read_text())["sft"]["max_steps"] == 3

    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                                      {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                             for i in range(40)))
    tuned = cli("sft", str(run), "--data", str(chats))  # no --preset, no --set: the run's own
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert [p.name for p in (run / "sft" / "ckpt").iterdir()] == ["step_3"]  # tiny's own sft.max_steps is 20

    card = cli("report", str(run))
    assert card.returncode == 0, card.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert [(t["name"], t["items"]) for t in report["tasks"]] == [("doc_qa", 2)]
    assert [m["name"] for m in report["models"]] == ["run/base", "run/sft"]

    broken = cli("pretrain", str(run), "--set", "eval.nope=1")
    _assert_user_error(broken, "eval has no field 'nope'")
