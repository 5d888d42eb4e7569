"""`homegrown generate` and `homegrown chat` through the console script on an imported SmolLM2-135M-Instruct:
greedy (temperature 0), so what the real model says can be checked — and that the chat reply ends at its own
end-of-turn token (<|im_end|>), which never shows up as text."""

from __future__ import annotations

import re
from pathlib import Path


def test_generate_continues_plain_text(smol_run: Path, cli) -> None:
    prompt = "The capital of France is"
    done = cli("generate", str(smol_run), prompt, "--max-tokens", "6", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(prompt)
    assert "Paris" in done.stdout[len(prompt):]


def test_chat_answers_through_the_models_template(smol_run: Path, cli) -> None:
    done = cli("chat", str(smol_run), "--temperature", "0", "--max-tokens", "40",
               input_text="What is the capital of France?\nAnd of Italy?\n\n")
    assert done.returncode == 0, done.stderr
    replies = re.findall(r"model> (.*)", done.stdout)  # after the `you> ` prompt, which input() ends no line
    assert len(replies) == 2, done.stdout
    assert "Paris" in replies[0] and "Rome" in replies[1], replies
    assert not any("<|im_" in r or "<|endoftext|>" in r for r in replies)


def test_generate_with_int4_weights_and_a_refused_dtype(smol_run: Path, cli) -> None:
    """`--dtype int4` quantizes at load (homegrown.quant) and still answers; an unknown dtype is a clear error."""
    prompt = "The capital of France is"
    done = cli("generate", str(smol_run), prompt, "--max-tokens", "6", "--temperature", "0", "--dtype", "int4")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout[len(prompt):]
    refused = cli("generate", str(smol_run), prompt, "--dtype", "fp16")
    assert refused.returncode == 2
    assert "unknown dtype 'fp16'; use auto, fp32, bf16, int8, int4" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
