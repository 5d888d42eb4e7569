"""`homegrown run`: corpus → tokenizer → shards → pretrain → chat SFT → samples, in one run directory.

Each stage checks for its completion marker (written last, atomically) and is skipped when present, so a
re-run after a crash redoes only the unfinished stage, and pretraining resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from homegrown.bundle import load_bundle
from homegrown.chat_template import CHAT_FILES
from homegrown.config import DataConfig, IngestConfig, ModelConfig, Preset, save_preset
from homegrown.data.mixture import pack_corpus
from homegrown.data.sources import iter_corpus
from homegrown.errors import HomegrownError
from homegrown.eval.report import REPORT_JSON, build_report
from homegrown.generate import SamplingParams, stream_tokens
from homegrown.io import atomic_dir, write_bytes_atomic
from homegrown.layout import MANIFEST, SAMPLE_DIR, SFT, SHARD_INDEX, RunLayout
from homegrown.progress import console
from homegrown.tokenizer import load_tokenizer, train_tokenizer
from homegrown.train.checkpoint import CONFIG, TOKENIZER, check_same_config, resolve_checkpoint
from homegrown.train.loop import TrainResult, train


@dataclass
class RunSummary:
    run_dir: Path
    checkpoint: Path
    val_bpb: float
    """The base model's bits/byte on the whole held-out split, the figure report.md gives (not the last
    training eval, which sees only a few batches)."""
    val_loss: float
    tokens_per_second: float
    seconds: float
    samples: list[tuple[str, str]] = field(default_factory=list)
    base_checkpoint: Path | None = None
    """The pretrained checkpoint SFT started from; `checkpoint` is the chat model."""
    sft_val_loss: float = float("nan")
    """Loss on the assistant tokens of held-out conversations."""
    report: Path | None = None
    """report.md: base vs chat model on held-out bits/byte and the task suite (eval/report.py)."""


def print_summary(summary: RunSummary) -> None:
    """What `homegrown run` ends with: the sampled answers, then where everything went and the figures."""
    from rich.markup import escape

    console.rule("samples")
    for prompt, text in summary.samples:
        console.print(f"[bold]user>[/bold] {escape(prompt)}\n[bold]model>[/bold] {escape(text)}", highlight=False)
        console.print()
    console.rule("done")
    paths = RunLayout(summary.run_dir)
    console.print(f"run directory   {summary.run_dir}")
    console.print(f"base model      {summary.base_checkpoint}")
    console.print(f"chat model      {summary.checkpoint}")
    console.print(f"loss curves     {paths.loss_png()}, {paths.loss_png(SFT)}")
    console.print(f"metrics         {paths.metrics()}, {paths.metrics(SFT)}")
    console.print(f"val bits/byte   {summary.val_bpb:.3f}   (base model, whole held-out split as in the report; "
                  f"val loss {summary.val_loss:.3f} nats/token)")
    console.print(f"chat val loss   {summary.sft_val_loss:.3f} nats/token on held-out answers")
    console.print(f"report          {summary.report}")
    console.print(f"throughput      {summary.tokens_per_second:,.0f} tokens/s; total {summary.seconds / 60:.1f} min")
    console.print(f"next            homegrown chat {summary.checkpoint}")


def prepare_corpus(data: DataConfig, corpus_dir: Path, ingest_cfg: IngestConfig | None = None) -> Path:
    """The bundled sample (copied, so the run dir is self-contained) or an ingest of `source` with `ingest_cfg`."""
    if (corpus_dir / MANIFEST).exists():
        return corpus_dir
    if not data.source:
        if not (SAMPLE_DIR / MANIFEST).exists():
            raise HomegrownError(f"bundled corpus not found at {SAMPLE_DIR}; pass --source DIR or rebuild it with "
                                 "`bash scripts/build_sample.sh`")
        with atomic_dir(corpus_dir) as tmp:
            shutil.copytree(SAMPLE_DIR, tmp, dirs_exist_ok=True)
        return corpus_dir
    path = Path(data.source)
    if not path.exists():
        raise HomegrownError(f"--source {data.source} does not exist")
    # imported here: the HTML/dedup stack (resiliparse, trafilatura, datasketch) is for building a corpus, and
    # `homegrown pretrain` on a GPU node with only torch's stack installed must not need it
    from homegrown.data.ingest import SourceSpec, ingest

    stats = ingest([SourceSpec(path=path, licence=data.source_licence, url_prefix=path.resolve().as_uri() + "/",
                               glob=data.source_glob)], corpus_dir, cfg=ingest_cfg, opt_out=data.opt_out or None,
                   extractor=data.extractor)
    if not stats.train_pages:
        (corpus_dir / MANIFEST).unlink()  # not a usable corpus: the next run ingests again
        raise HomegrownError(f"no document of {path} survived ingest (rejected: {stats.rejected}); check "
                             f"data.source_glob={data.source_glob!r} or the source itself")
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


def prepare_shards(corpus_dir: Path, tokenizer_path: Path, shard_dir: Path, mixture: str = "",
                   max_repeat: float = DataConfig.mixture_max_repeat, workers: int = 1) -> Path:
    """Pack the corpus (drawn to the `mixture` token shares when given) unless matching shards exist."""
    index = shard_dir / SHARD_INDEX
    tok = load_tokenizer(tokenizer_path)
    if index.exists():
        packed = json.loads(index.read_text())
        if packed["vocab_size"] == tok.get_vocab_size() and packed.get("mixture", {}).get("spec", "") == mixture:
            return shard_dir
    console.print(f"packing token shards into {shard_dir}")
    stats, plan = pack_corpus(corpus_dir, tokenizer_path, shard_dir, mixture, max_repeat, workers=workers)
    if plan is not None:
        for name, share in sorted(plan.achieved.items()):
            console.print(f"  mixture {name}: target {plan.target.get(name, 0):.1%}, achieved {share:.1%}")
    for split in ("train", "val"):
        console.print(f"  {split}: {stats.documents[split]:,} documents, {stats.tokens[split]:,} tokens, "
                      f"{stats.text_bytes[split] / stats.tokens[split]:.2f} bytes/token")
    return shard_dir


def adopt_tokenizer(ckpt: Path, run_dir: Path) -> Path:
    """Make `ckpt`'s tokenizer (and its chat files) the run's, so shards, checkpoints and chat all use its ids.

    A run that already has another tokenizer is refused: its shards and checkpoints speak different ids.
    """
    ours, theirs = RunLayout(run_dir).tokenizer, ckpt / TOKENIZER
    if ours.exists() and ours.read_bytes() != theirs.read_bytes():
        raise HomegrownError(f"{ours} is not the tokenizer of {ckpt}; continue pretraining in a new run directory")
    for name in (TOKENIZER, *CHAT_FILES):
        if (ckpt / name).is_file() and not (ours.parent / name).exists():
            write_bytes_atomic(ours.parent / name, (ckpt / name).read_bytes())
    return ours


def continue_pretraining(preset: Preset, run_dir: Path, progress: bool = True) -> TrainResult:
    """Pretrain the model at `preset.train.init_from` further on the run's corpus (the bundled one unless
    `data.source` says otherwise), tokenized with that model's own tokenizer, into `run_dir/ckpt`.

    The model's shape comes from the checkpoint, not the preset; the resolved preset (with `init_from`) is written
    to preset.json, and a second call resumes from the run's newest checkpoint like any pretraining run.
    """
    run_dir = Path(run_dir)
    paths = RunLayout(run_dir)
    start = resolve_checkpoint(Path(preset.train.init_from))
    if start.resolve().parent == paths.ckpt_root().resolve():
        raise HomegrownError(f"{start} is in {run_dir}/ckpt, where continued pretraining writes its own checkpoints; "
                             f"pass a new run directory (e.g. {run_dir}-cpt) with --init-from {run_dir}")
    preset.model = ModelConfig.load(start / CONFIG)
    if preset.train.seq_len > preset.model.max_seq_len:
        raise HomegrownError(f"train.seq_len={preset.train.seq_len} exceeds the context of {start} "
                             f"({preset.model.max_seq_len} tokens)")
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_path = adopt_tokenizer(start, run_dir)
    record_preset(preset, run_dir)
    corpus = prepare_corpus(preset.data, paths.corpus, preset.ingest)
    shards = prepare_shards(corpus, tok_path, paths.shards, preset.data.mixture, preset.data.mixture_max_repeat,
                            preset.ingest.workers)
    return train(preset.model, preset.train, shards, run_dir, tok_path, init_from=start, progress=progress)


def fit_shape(preset: Preset, run_dir: Path, distributed: bool = False) -> float:
    """With `train.auto_shape`, set `preset.model`'s width and depth for the budget: the shape this run chose
    before (RUN/shape.json, so a resumed run keeps it) or one chosen now on this machine (train/shape.py) and
    saved. Returns the seconds the choice took, which the budget counts as spent; 0 when the shape is fixed."""
    from homegrown.train import shape
    from homegrown.train.precision import run_dtype

    train_cfg = preset.train
    if not train_cfg.auto_shape:
        return 0.0
    path = RunLayout(run_dir).shape
    choice = shape.load(path, train_cfg.budget_minutes)
    if choice is None:
        if distributed:
            raise HomegrownError("train.auto_shape times candidate shapes in one process; choose the shape first "
                                 "(a single-process run writes RUN/shape.json) or set the model's shape and "
                                 "train.auto_shape=false under torchrun")
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        amp = run_dtype(train_cfg.dtype, device).autocast
        choice = shape.choose(preset.model, train_cfg.budget_minutes,
                              train_cfg.batch_size * train_cfg.seq_len * train_cfg.grad_accum,
                              lambda cfg: shape.measure_step_seconds(cfg, train_cfg, device, amp))
        run_dir.mkdir(parents=True, exist_ok=True)
        shape.save(choice, path)
        timed = ", ".join(f"d{c.d_model}·{c.n_layers}L {c.tokens_per_param:.2g}" for c in choice.candidates)
        console.print(f"shape for the {choice.budget_minutes:g}-minute budget: d_model {choice.d_model}, "
                      f"{choice.n_layers} layers (target {choice.target_tokens_per_param:g} tokens/parameter; timed: "
                      f"{timed}; {choice.seconds:.1f} s; saved in {path})")
    preset.model = choice.apply(preset.model)
    return choice.seconds


def pretrain(preset: Preset, run_dir: Path) -> TrainResult:
    """`homegrown pretrain`: record the preset and train on the run's shards (or continue pretraining the model at
    `train.init_from`), resuming from the newest checkpoint; every rank of a torchrun job calls it."""
    from homegrown.train import distributed

    env = distributed.init_distributed()
    if preset.train.init_from:
        result = continue_pretraining(preset, run_dir)
    else:
        spent = fit_shape(preset, run_dir, env.distributed)
        if env.is_main:
            record_preset(preset, run_dir)
        paths = RunLayout(run_dir)
        result = train(preset.model, preset.train, paths.shards, run_dir, paths.tokenizer, budget_spent_s=spent)
    if env.is_main:
        console.print(f"checkpoint {result.final_checkpoint}  val bits/byte {result.final_val_bpb:.3f}")
    distributed.shutdown(env)
    return result


def record_preset(preset: Preset, run_dir: Path) -> Path:
    """Write RUN/preset.json, the run's full resolved preset that every later command on the run reads back.

    A preset whose model differs from the run's pretrained checkpoints is refused first: training would refuse
    it anyway, and the saved preset must stay the one those checkpoints were trained with.
    """
    paths = RunLayout(run_dir)
    latest = paths.latest()
    if latest is not None:
        check_same_config(latest, preset.model)
    return save_preset(preset, paths.preset)


def run(preset: Preset, run_dir: Path, samples: int = 3, progress: bool = True) -> RunSummary:
    """The whole foundation pipeline on `preset`; returns where everything went and the final figures."""
    if not preset.trainable_on_cpu and not torch.cuda.is_available():
        raise HomegrownError(f"preset {preset.name!r} is far too large to train on a CPU; use `small` or `tiny` "
                             "here, or a GPU cluster (see README: scaling)")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    paths = RunLayout(run_dir)
    spent = fit_shape(preset, run_dir)
    record_preset(preset, run_dir)
    with contextlib.ExitStack() as ray_scope:
        if preset.data.source:  # one Ray for ingest and packing: its start-up (~6 s) is paid once, not twice
            from homegrown.data import engine

            ray_scope.enter_context(engine.connect(preset.ingest.workers, preset.ingest.ray_address))
        corpus = prepare_corpus(preset.data, paths.corpus, preset.ingest)
        tok_path = prepare_tokenizer(corpus, preset.model.vocab_size, paths.tokenizer)
        shards = prepare_shards(corpus, tok_path, paths.shards, preset.data.mixture, preset.data.mixture_max_repeat,
                                preset.ingest.workers)
    result: TrainResult = train(preset.model, preset.train, shards, run_dir, tok_path, progress=progress,
                                budget_spent_s=spent)
    chat = prepare_sft(preset, run_dir, result.final_checkpoint, progress=progress)
    tasks = [t.strip() for t in preset.eval.tasks.split(",") if t.strip()]
    report = build_report([run_dir], run_dir, tasks, batch_size=preset.eval.batch_size,
                          max_items=preset.eval.max_items)
    base_val = next(m["val"] for m in json.loads((report.parent / REPORT_JSON).read_text())["models"]
                    if Path(m["checkpoint"]).resolve() == Path(result.final_checkpoint).resolve())
    summary = RunSummary(run_dir, chat.final_checkpoint if chat else result.final_checkpoint, base_val["bpb"],
                         base_val["loss"], result.tokens_per_second, time.perf_counter() - t0,
                         base_checkpoint=result.final_checkpoint,
                         sft_val_loss=chat.final_val_loss if chat else float("nan"), report=report)
    if samples and chat:
        summary.samples = chat_samples(chat.final_checkpoint, paths.sft_data, samples)
    return summary


def prepare_sft(preset: Preset, run_dir: Path, base: Path, progress: bool = True) -> TrainResult | None:
    """Chat data derived from the run's corpus (teacher-free), then SFT of `base` into run_dir/sft/ckpt.

    Both parts are skipped when complete: the data has its MANIFEST.json marker, and the training loop
    resumes (or returns at once) from run_dir/sft/ckpt. None (no SFT) when `sft.max_steps` is 0 or the
    corpus yields no question/answer pairs (a corpus without documented APIs, headings or page titles), or
    none of them fits the model's context.
    """
    from homegrown.posttrain.docqa import build_docqa
    from homegrown.posttrain.sft import NoChatFits, sft

    if preset.sft.max_steps <= 0:
        return None
    paths = RunLayout(run_dir)
    data = build_docqa(paths.corpus, paths.sft_data, preset.sft)
    counts = json.loads((data / MANIFEST).read_text())["conversations"]
    if not counts["train"]:
        console.print("no chat data could be derived from this corpus; skipping SFT (the base model is final; "
                      "give `homegrown sft` a chat JSONL, e.g. from `homegrown data synth`)")
        return None
    try:
        return sft(base, data / "train.jsonl", run_dir, preset.sft, preset.train,
                   val=data / "val.jsonl" if counts["val"] else None, progress=progress)
    except NoChatFits as err:  # a short context: the pretrained model is still worth its report
        console.print(f"skipping SFT, the base model is final: {err}")
        return None


def chat_samples(checkpoint: Path, data: Path, n: int) -> list[tuple[str, str]]:
    """Greedy answers to the first `n` questions of `data`/val.jsonl (held out: never trained on), or of
    train.jsonl when the corpus had no val pages to ask about, as (question, answer)."""
    from homegrown.posttrain.chat import read_chat_jsonl

    questions = data / "val.jsonl"
    if not questions.read_text().strip():
        questions = data / "train.jsonl"
    bundle = load_bundle(checkpoint)
    model, tok = bundle.model, bundle.tokenizer
    out = []
    for conv in read_chat_jsonl(questions).conversations[:n]:
        question = next(m for m in conv if m["role"] == "user")
        ids = bundle.chat_prompt_ids([question])
        params = SamplingParams(max_tokens=min(80, model.cfg.max_seq_len - len(ids)), temperature=0.0,
                                stop_token_ids=bundle.stop_ids)
        out.append((question["content"], tok.decode(list(stream_tokens(model, ids, params)))))
    return out
