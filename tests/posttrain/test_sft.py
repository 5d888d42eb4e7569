import json

import torch

from homegrown.bundle import load_bundle
from homegrown.config import apply_overrides, get_preset
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.posttrain.chat import read_chat_jsonl
from homegrown.posttrain.docqa import build_docqa
from homegrown.posttrain.sft import sft
from homegrown.train.checkpoint import resolve_checkpoint

TINY = ["train.threads=1", "train.dtype=fp32"]


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ends_with_end(ckpt, questions) -> int:
    bundle = load_bundle(ckpt)
    model, end = bundle.model, bundle.chat.end_of_turn_id(bundle.tokenizer)
    assert end == bundle.tokenizer.token_to_id("<|end|>")
    ended = 0
    for conv in questions:
        ids = bundle.chat_prompt_ids([next(m for m in conv if m["role"] == "user")])
        params = SamplingParams(max_tokens=min(40, model.cfg.max_seq_len - len(ids)), temperature=0.0)
        ended += end in stream_tokens(model, ids, params)
    return ended


def test_sft_teaches_the_chat_format_and_resumes(tiny_base, tmp_path):
    data = build_docqa(tiny_base / "corpus", tmp_path / "chat", get_preset("tiny").sft)
    preset = apply_overrides(get_preset("tiny"), [*TINY, "sft.max_steps=24", "sft.eval_every=12",
                                                  "sft.ckpt_every=12"])
    out = tmp_path / "run"
    result = sft(tiny_base, data / "train.jsonl", out, preset.sft, preset.train, val=data / "val.jsonl",
                 progress=False)
    assert result.final_checkpoint == out / "sft" / "ckpt" / "step_24"
    metrics = _metrics(out / "metrics_sft.jsonl")
    assert len(metrics) == 24 and [m["step"] for m in metrics if "val_loss" in m] == [12, 24]
    assert (out / "loss_sft.png").exists()
    questions = read_chat_jsonl(data / "val.jsonl").conversations[:8]
    assert _ends_with_end(resolve_checkpoint(tiny_base / "ckpt"), questions) == 0  # the base model never stops
    assert _ends_with_end(result.final_checkpoint, questions) >= 6

    longer = apply_overrides(get_preset("tiny"), [*TINY, "sft.max_steps=26", "sft.eval_every=12",
                                                  "sft.ckpt_every=12"])
    again = sft(tiny_base, data / "train.jsonl", out, longer.sft, longer.train, val=data / "val.jsonl",
                progress=False)
    assert again.final_checkpoint.name == "step_26" and len(_metrics(out / "metrics_sft.jsonl")) == 26
    assert resolve_checkpoint(out) == again.final_checkpoint  # a run's final model is its chat model


def test_without_a_val_file_one_in_twenty_is_held_out(tiny_base, tmp_path):
    convs = [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                           {"role": "assistant", "content": f"It is {i + 1}."}]} for i in range(200)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in convs))
    preset = apply_overrides(get_preset("tiny"), [*TINY, "sft.max_steps=2", "sft.eval_every=2", "sft.ckpt_every=2"])
    result = sft(tiny_base, data, tmp_path / "run", preset.sft, preset.train, progress=False)
    assert torch.isfinite(torch.tensor(result.final_val_loss))


def test_sft_cli_reports_bad_lines_and_strict_rejects_them(cli, tiny_base, tmp_path):
    good = {"messages": [{"role": "user", "content": "How do I list files?"},
                         {"role": "assistant", "content": "Use ls."}]}
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join([json.dumps(good)] * 30 + ['{"messages": [{"role": "user"}]}', "oops"]) + "\n")
    args = ["sft", str(tiny_base), "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--set", "sft.max_steps=2", "--set", "sft.eval_every=2", "--set", "train.threads=1"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped 2 malformed" in done.stderr and "chat.jsonl:31" in done.stderr and "chat.jsonl:32" in done.stderr
    assert (tmp_path / "run" / "sft" / "ckpt" / "step_2" / "model.safetensors").exists()
    strict = cli(*args, "--strict")
    assert strict.returncode == 2 and "chat.jsonl:31" in strict.stderr and "Traceback" not in strict.stderr
