"""Shared fixtures: a small real corpus cut from the bundled sample, and a tiny tokenizer + shards built from it.

Built once per session with the project's own stage functions, so every test runs on real text.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from homegrown.data.sources import iter_corpus
from homegrown.layout import MANIFEST
from homegrown.pipeline import SAMPLE_DIR, prepare_shards, prepare_tokenizer

TINY_VOCAB = 512


def write_corpus(out: Path, train_docs: int = 120, val_docs: int = 12) -> Path:
    """The first pages of each split of the bundled corpus, in the same format."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_docs), ("val", val_docs)):
        with gzip.open(out / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for record in itertools.islice(iter_corpus(SAMPLE_DIR, split), n):
                f.write(json.dumps(record) + "\n")
    (out / MANIFEST).write_text(json.dumps({"from": str(SAMPLE_DIR), "train": train_docs, "val": val_docs}))
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole test session (starting one costs seconds); ingest uses it when it runs.

    Ray's workers are started with this process's environment, so they import this tree's sources too.
    """
    import ray

    from homegrown.data.engine import OBJECT_STORE_BYTES

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with corpus/, tokenizer.json (512 tokens) and shards/ — ready for pretraining."""
    run = tmp_path_factory.mktemp("tiny_run")
    corpus = write_corpus(run / "corpus")
    tok = prepare_tokenizer(corpus, TINY_VOCAB, run / "tokenizer.json")
    prepare_shards(corpus, tok, run / "shards")
    return run


HOMEGROWN_EXE = Path(sys.executable).with_name("homegrown")


def _run_cli(*args: str, timeout: float = 300, env: dict | None = None,
             input_text: str = "") -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([str(HOMEGROWN_EXE), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input_text)


FETCH_SMOLLM2 = Path(__file__).resolve().parents[1] / "scripts" / "fetch_smollm2.sh"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as GGUF, fetched (once, then cached) by the same script `make smollm2` runs.

    Fails rather than skips when it cannot be had: the checks against transformers that use it must run in CI.
    """
    try:
        done = subprocess.run(["bash", str(FETCH_SMOLLM2), sys.executable], capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{FETCH_SMOLLM2} did not finish in 15 minutes")
    if done.returncode != 0:
        pytest.fail(f"{FETCH_SMOLLM2} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    path = Path(done.stdout.strip().splitlines()[-1])
    if not path.is_file():
        pytest.fail(f"{FETCH_SMOLLM2} printed {path}, which is not a file")
    return path


@pytest.fixture
def cli():
    """Run the real `homegrown` console script in a child process, the way a user does."""
    return _run_cli


CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")
"""ChatML as SmolLM2, Qwen and others use it (without SmolLM2's default system prompt)."""


@pytest.fixture(scope="session")
def chatml_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory's tokenizer files for a ChatML model, as an import writes them: the tiny tokenizer plus
    <|im_start|> / <|im_end|>, a ChatML template, and <|im_end|> as EOS and the one stop token."""
    from tokenizers import Tokenizer

    out = tmp_path_factory.mktemp("chatml")
    tok = Tokenizer.from_file(str(tiny_run / "tokenizer.json"))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(out / "tokenizer.json"))
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "add_bos_token": False, "chat_template": CHATML_TEMPLATE}))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": start, "eos_token_id": [end]}))
    return out


@pytest.fixture(scope="session")
def smollm2_template(smollm2_gguf: Path) -> str:
    """SmolLM2's own chat template, as its GGUF stores it (`tokenizer.chat_template`)."""
    from gguf import GGUFReader

    return GGUFReader(smollm2_gguf).fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="session")
def smol_import(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M-Instruct imported once per session by `homegrown import`'s own function (its ImportResult)."""
    from homegrown.importer import import_model

    return import_model(smollm2_gguf, tmp_path_factory.mktemp("smol") / "run")


@pytest.fixture(scope="session")
def smol_run(smol_import) -> Path:
    """The run directory of the session's SmolLM2 import, shared by every test on the real model. Read-only: a
    test that trains or evaluates into a run works on `linked_run(smol_run, …)`."""
    return smol_import.run_dir


def linked_run(run: Path, out: Path) -> Path:
    """A run directory with the same files as `run`, hard-linked (copied across file systems): a test can write
    its own stages into it without touching the shared one or copying half a gigabyte of weights."""
    for src in run.rglob("*"):
        dst = out / src.relative_to(run)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return out
