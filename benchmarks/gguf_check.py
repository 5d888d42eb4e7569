"""Claim: the GGUF export runs in the real llama.cpp with our model's tokens, logits and greedy text.

Exports a checkpoint with `export_gguf` (f32, f16, q8_0), loads each file with llama-cpp-python (llama.cpp
compiled from source) and compares, in one process, against our own model and tokenizer:
  - tokenization of mixed strings (special tokens parsed, no BOS) — ids identical;
  - BOS: llama.cpp's default tokenization prepends <|endoftext|>, as our completions endpoint does;
  - end of generation: <|end|> and <|endoftext|> are both end-of-generation tokens in llama.cpp;
  - logits of whole sequences (llama.cpp's batch prefill) — max |diff| and top-1 agreement;
  - greedy continuations decoded token by token through llama.cpp's KV cache — tokens identical until the
    first divergence;
  - a chat completion through llama.cpp's chat path (the GGUF's template, stop at <|end|>) vs our server's.

llama-cpp-python is not a homegrown dependency; build it in a separate venv and point at its site-packages:

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    python benchmarks/gguf_check.py --run runs/small --llama-site /tmp/llvenv/lib/python3.11/site-packages
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from homegrown.bundle import load_bundle
from homegrown.export.gguf import export_gguf
from homegrown.generate import SamplingParams, stream_tokens

STRINGS = [
    "The quick brown fox jumps over the lazy dog.",
    "import os\nfor name in os.listdir('.'):\n    print(name)  # 42 files\n",
    "<|system|>\nBe brief.<|end|>\n<|user|>\nHow do I list files?<|end|>\n<|assistant|>\n",
    "Ünïcode café naïve — 🦊 tabs\tand  double  spaces, 3.14159 and 1,000,000.",
    "apt-get install --no-install-recommends python3-venv && systemctl restart nginx.service",
]
PROMPTS = ["The Debian package manager", "def main():\n", "<|user|>\nWhat is a virtual environment?<|end|>\n"
           "<|assistant|>\n"]
NEW_TOKENS = 48
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is apt?"}]


def _llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def _is_eog(llama_cpp, llm, token: int) -> bool | None:
    try:
        return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))
    except AttributeError:
        try:
            return bool(llama_cpp.llama_token_is_eog(llm.model, token))
        except AttributeError:
            return None


def check(run: Path, outtype: str, out_dir: Path, llama_cpp) -> None:
    bundle = load_bundle(run)
    model, tok = bundle.model, bundle.tokenizer
    path = export_gguf(run, out_dir / f"model-{outtype}.gguf", outtype)
    # f32 files also get an f32 KV cache (llama.cpp's default is f16), so that comparison is exact arithmetic.
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if outtype == "f32" else {}
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=model.cfg.max_seq_len, n_threads=2,
                          verbose=False, **kv)
    eot, end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")
    print(f"== {outtype}: {path.stat().st_size / 1e6:.2f} MB")

    same = sum(llm.tokenize(s.encode(), add_bos=False, special=True) == tok.encode(s, add_special_tokens=False).ids
               for s in STRINGS)
    bos = llm.tokenize(b"hello")[:1] == [eot]
    print(f"tokenization identical: {same}/{len(STRINGS)} strings; BOS <|endoftext|> prepended by default: {bos}; "
          f"EOG <|end|>: {_is_eog(llama_cpp, llm, end)}, <|endoftext|>: {_is_eog(llama_cpp, llm, eot)}")

    diffs, agree, total = [], 0, 0
    for s in STRINGS:
        ids = [eot, *tok.encode(s, add_special_tokens=False).ids]
        llm.reset()
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].double().numpy()
        diffs.append(float(np.abs(theirs - ours).max()))
        agree += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
    scale = float(np.abs(ours).max())
    print(f"logits: max |diff| {max(diffs):.2e} (logit scale {scale:.1f}); top-1 agreement {agree}/{total} "
          f"({agree / total:.1%})")

    matched, produced = 0, 0
    for p in PROMPTS:
        ids = [eot, *tok.encode(p, add_special_tokens=False).ids]
        ours = list(stream_tokens(model, ids, SamplingParams(max_tokens=NEW_TOKENS, temperature=0)))
        theirs = _llama_greedy(llm, ids, NEW_TOKENS)
        prefix = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), NEW_TOKENS)
        matched += prefix
        produced += NEW_TOKENS
        print(f"greedy {p[:30]!r}: identical for {prefix}/{NEW_TOKENS} tokens; llama.cpp: "
              f"{tok.decode(theirs)[:60]!r}")
    print(f"greedy continuations: {matched}/{produced} tokens before first divergence")

    # Chat through llama.cpp's own path (the GGUF's Jinja template, stop at <|end|>) against our server's
    # (`chat_prompt_ids`): both start where the template starts — a BOS only if the template writes one, as in
    # transformers' apply_chat_template and in how SFT encodes conversations.
    reply = llm.create_chat_completion(messages=CHAT, max_tokens=NEW_TOKENS, temperature=0)["choices"][0]
    ids = bundle.chat_prompt_ids(CHAT)
    ours = tok.decode(list(stream_tokens(model, ids, SamplingParams(max_tokens=NEW_TOKENS, temperature=0,
                                                                    stop_token_ids=bundle.stop_ids))))
    print(f"chat completion: finish_reason={reply['finish_reason']}, identical to ours: "
          f"{reply['message']['content'] == ours} ({ours[:50]!r})")
    if hasattr(llm, "close"):
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/small"), help="Run directory or ckpt/step_N.")
    parser.add_argument("--outtype", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--llama-site", type=Path, help="site-packages holding llama_cpp (appended to sys.path).")
    args = parser.parse_args()
    if args.llama_site:
        sys.path.append(str(args.llama_site))
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}, checkpoint {args.run}")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtype:
            check(args.run, outtype, Path(tmp), llama_cpp)


if __name__ == "__main__":
    main()
