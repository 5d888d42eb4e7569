"""llama.cpp's batch-1 decode of the SmolLM2 GGUF in a process of its own: the peer figure for
`decode_imported.py`, which also runs llama.cpp but in the same process as torch, where torch's OpenMP threads
(spinning after each of our runs) and llama.cpp's pool share two cores and llama.cpp measured 29.9 tok/s instead
of this script's 87 on the same machine.

Same request as decode_imported.py: QUESTION through SmolLM2's ChatML (its default system prompt, 42 tokens),
then exactly --new-tokens greedy tokens (end-of-text and <|im_end|> biased out so that the reply cannot end
early); time covers prefill + decode, median of --repeats after one warm-up. Runs with the interpreter of the
side venv that holds llama-cpp-python (never a project dependency):

    LLAMA_PY=/path/to/llama-venv/bin/python
    $LLAMA_PY benchmarks/llama_cpp_decode.py ~/.cache/homegrown/models/SmolLM2-135M-Instruct.Q4_1.gguf

llama.cpp's AMX repack ("extra buffer types") segfaults in ggml_backend_amx_mul_mat on the AMX Xeon these
figures come from (llama-cpp-python 0.3.36), so it is off unless --extra-bufts is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp

QUESTION = "Write a short story about a robot who learns to paint."
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--extra-bufts", action="store_true", help="let llama.cpp repack weights (AMX)")
    args = parser.parse_args()

    defaults = llama_cpp.llama_model_default_params

    def model_params() -> llama_cpp.llama_model_params:
        params = defaults()
        params.use_extra_bufts = args.extra_bufts
        return params

    llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = model_params
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
              "<|im_start|>assistant\n")
    ends = {llm.token_eos(): -100.0, llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]: -100.0}

    def run(n: int) -> tuple[float, dict]:
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, logit_bias=ends)
        return time.perf_counter() - start, out["usage"]

    run(16)
    runs = [run(args.new_tokens) for _ in range(args.repeats)]
    usage = runs[0][1]
    median = statistics.median(t for t, _ in runs)
    print(f"llama.cpp {llama_cpp.__version__}, {args.threads} threads, extra buffers {args.extra_bufts}: prompt "
          f"{usage['prompt_tokens']} + {usage['completion_tokens']} tokens, runs "
          f"{[round(t, 2) for t, _ in runs]} s -> {usage['completion_tokens'] / median:.1f} tok/s at batch 1")


if __name__ == "__main__":
    main()
