"""`homegrown run`: corpus → tokenizer → shards → pretrain → samples, in one run directory.

Each stage checks for its completion marker (written last, atomically) and is skipped when present, so a
re-run after a crash redoes only the unfinished stage, and pretraining resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from homegrown.config import DataConfig, Preset
from homegrown.data.ingest import SourceSpec, ingest
from homegrown.data.pack import INDEX_NAME, pack
from homegrown.data.sources import iter_corpus
from homegrown.errors import HomegrownError
from homegrown.generate import SamplingParams, generate_text
from homegrown.progress import console
from homegrown.tokenizer import eot_id, load_tokenizer, train_tokenizer
from homegrown.train.checkpoint import load_for_inference
from homegrown.train.loop import TrainResult, train

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
CORPUS_MARKER = "MANIFEST.json"
SAMPLE_PROMPTS = ["The Python interpreter", "To install a package on Debian, ", "def read_file(path):\n"]


@dataclass
class RunSummary:
    run_dir: Path
    checkpoint: Path
    val_bpb: float
    val_loss: float
    tokens_per_second: float
    seconds: float
    samples: list[tuple[str, str]] = field(default_factory=list)


def prepare_corpus(data: DataConfig, corpus_dir: Path) -> Path:
    """The bundled sample (copied, so the run dir is self-contained) or an ingest of `source`."""
    if (corpus_dir / CORPUS_MARKER).exists():
        return corpus_dir
    if not data.source:
        if not (SAMPLE_DIR / CORPUS_MARKER).exists():
            raise HomegrownError(f"bundled corpus not found at {SAMPLE_DIR}; pass --source DIR or rebuild it with "
                                 "`bash scripts/build_sample.sh`")
        tmp = corpus_dir.with_name(corpus_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(SAMPLE_DIR, tmp)
        shutil.rmtree(corpus_dir, ignore_errors=True)
        tmp.rename(corpus_dir)
        return corpus_dir
    path = Path(data.source)
    if not path.exists():
        raise HomegrownError(f"--source {data.source} does not exist")
    ingest([SourceSpec(path=path, licence=data.source_licence, url_prefix=path.resolve().as_uri() + "/",
                       glob=data.source_glob)], corpus_dir)
    return corpus_dir


def _texts(corpus_dir: Path, split: str) -> Iterator[str]:
    for record in iter_corpus(corpus_dir, split):
        yield record["text"]


def prepare_tokenizer(corpus_dir: Path, vocab_size: int, path: Path) -> Path:
    if path.exists() and load_tokenizer(path).get_vocab_size() == vocab_size:
        return path
    console.print(f"training a {vocab_size}-token byte-level BPE tokenizer on {corpus_dir}")
    train_tokenizer(_texts(corpus_dir, "train"), vocab_size, path)
    return path


def prepare_shards(corpus_dir: Path, tokenizer_path: Path, shard_dir: Path) -> Path:
    index = shard_dir / INDEX_NAME
    tok = load_tokenizer(tokenizer_path)
    if index.exists() and json.loads(index.read_text())["vocab_size"] == tok.get_vocab_size():
        return shard_dir
    console.print(f"packing token shards into {shard_dir}")
    stats = pack({split: _texts(corpus_dir, split) for split in ("train", "val")}, tok, shard_dir)
    for split in ("train", "val"):
        console.print(f"  {split}: {stats.documents[split]:,} documents, {stats.tokens[split]:,} tokens, "
                      f"{stats.text_bytes[split] / stats.tokens[split]:.2f} bytes/token")
    return shard_dir


def run(preset: Preset, run_dir: Path, samples: int = 3, progress: bool = True) -> RunSummary:
    """The whole foundation pipeline on `preset`; returns where everything went and the final figures."""
    if not preset.trainable_on_cpu and not torch.cuda.is_available():
        raise HomegrownError(f"preset {preset.name!r} is far too large to train on a CPU; use `small` or `tiny` "
                             "here, or a GPU cluster (see README: scaling)")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "preset.json").write_text(json.dumps(asdict(preset), indent=2))
    corpus = prepare_corpus(preset.data, run_dir / "corpus")
    tok_path = prepare_tokenizer(corpus, preset.model.vocab_size, run_dir / "tokenizer.json")
    shards = prepare_shards(corpus, tok_path, run_dir / "shards")
    result: TrainResult = train(preset.model, preset.train, shards, run_dir, tok_path, progress=progress)
    summary = RunSummary(run_dir, result.final_checkpoint, result.final_val_bpb, result.final_val_loss,
                         result.tokens_per_second, time.perf_counter() - t0)
    if samples:
        model, tok = load_for_inference(result.final_checkpoint)
        for i, prompt in enumerate(SAMPLE_PROMPTS[:samples]):
            params = SamplingParams(max_tokens=min(60, preset.model.max_seq_len // 2), temperature=0.7, top_k=40,
                                    seed=i, stop_token_ids=[eot_id(tok)])
            summary.samples.append((prompt, generate_text(model, tok, prompt, params)))
    return summary
