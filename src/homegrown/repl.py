"""What a person at a terminal sees of a model: a streamed continuation (`homegrown generate`) and the chat
REPL (`homegrown chat`). The CLI only parses their options and calls these."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch

from homegrown.bundle import ModelBundle, load_bundle, resolve_precision
from homegrown.generate import SamplingParams, stream_text, stream_tokens
from homegrown.progress import console


def load_on_cpu(checkpoint: Path, dtype: str) -> ModelBundle:
    """The model as `--dtype` asks (`auto`, `fp32`, `bf16`, `int8`, `int4`), on the CPU as these commands run."""
    precision = resolve_precision(dtype, torch.device("cpu"))
    return load_bundle(checkpoint, "cpu", precision.dtype, precision.quantize)


def continue_prompt(checkpoint: Path, prompt: str, params: SamplingParams, out: TextIO = sys.stdout,
                    dtype: str = "auto") -> None:
    """Write `prompt`, then the model's continuation as it is sampled (up to the model's stop tokens), then a
    newline."""
    bundle = load_on_cpu(checkpoint, dtype)
    params = replace(params, stop_token_ids=bundle.stop_ids)
    out.write(prompt)
    for piece in stream_text(bundle.model, bundle.tokenizer, bundle.text_prompt_ids(prompt), params):
        out.write(piece)
        out.flush()
    out.write("\n")


def chat(checkpoint: Path, system: str, params: SamplingParams, dtype: str = "auto") -> None:
    """Read a user line, answer through the model's chat template, repeat; an empty line or end of input quits.

    The conversation is kept whole while it fits the context with room for `params.max_tokens`; beyond that
    only the system prompt and the latest message are kept, and the user is told.
    """
    bundle = load_on_cpu(checkpoint, dtype)
    model, tok = bundle.model, bundle.tokenizer
    params = replace(params, stop_token_ids=bundle.stop_ids)
    messages = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a message; an empty line or Ctrl-D quits.[/dim]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        ids = bundle.chat_prompt_ids(messages)
        budget = model.cfg.max_seq_len - params.max_tokens
        if len(ids) > budget:
            console.print(f"[yellow]conversation is longer than the {model.cfg.max_seq_len}-token context; "
                          "keeping only the latest message[/yellow]")
            messages = messages[:1] + messages[-1:] if system else messages[-1:]
            ids = bundle.chat_prompt_ids(messages)[-budget:]
        reply = tok.decode(list(stream_tokens(model, ids, params)))
        print(f"model> {reply.strip()}")
        messages.append({"role": "assistant", "content": reply.strip()})
