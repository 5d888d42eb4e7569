"""`homegrown` command line: a table of sub-commands, each parsing its options and calling one stage function.

Option help comes from the docstrings under the config fields the options set (config.field_help), so the CLI
says what config.py says. What a command prints lives with the stage that produced it (`print_*` functions).
User errors (HomegrownError) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from homegrown.config import (
    PRESET_NAMES,
    SECTIONS,
    DataConfig,
    DistillConfig,
    DPOConfig,
    IngestConfig,
    LoRAConfig,
    PlanConfig,
    Preset,
    ServeConfig,
    SynthConfig,
    apply_overrides,
    field_help,
    get_preset,
    resolve_preset,
)
from homegrown.errors import HomegrownError
from homegrown.layout import MANIFEST, RunLayout, run_dir_of
from homegrown.progress import console


class _Commands(TyperGroup):
    """The top-level command table, which also routes `homegrown serve keys ...` to the keys commands: `serve`
    itself takes a run directory as its first argument, so it cannot be a group (a run named `keys` is served
    as `homegrown serve ./keys`)."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        if args[:2] == ["serve", "keys"]:
            _, command, rest = super().resolve_command(ctx, [SERVE_KEYS, *args[2:]])
            return "serve keys", command, rest
        return super().resolve_command(ctx, args)


app = typer.Typer(help="Own the whole LLM stack: data → tokenizer → pretrain → sample → export.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Commands)
data_app = typer.Typer(help="Corpus building: ingest a crawl, merge shards, audit, forget, mix.",
                       no_args_is_help=True)
checkpoint_app = typer.Typer(help="Checkpoint tools.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of `homegrown serve`, one per user (and role), stored hashed in its database.",
                       no_args_is_help=True)
SERVE_KEYS = "serve-keys"
app.add_typer(data_app, name="data")
app.add_typer(checkpoint_app, name="checkpoint")
gateway_app = typer.Typer(help="OpenAI-compatible gateway over provider and in-house backends: `homegrown gateway "
                               "--config gateway.yaml` runs it; sub-commands inspect it.")
app.add_typer(gateway_app, name="gateway")
app.add_typer(keys_app, name=SERVE_KEYS, hidden=True)  # reached as `homegrown serve keys` (see _Commands)

DEFAULT_PRESET = os.environ.get("HOMEGROWN_PRESET", "small")


def _opt(cls: type, name: str, extra: str = "") -> Any:
    """An option that sets config field `cls.name`, its help the field's docstring (then `extra`)."""
    return typer.Option(help=field_help(cls, name, extra))


# ---- options shared by several commands ----

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help=f"One of: {', '.join(PRESET_NAMES)}.")]
RunPresetOpt = Annotated[str | None, typer.Option(
    "--preset", "-p", help=f"One of: {', '.join(PRESET_NAMES)}; default: the run's own (RUN/preset.json), else "
    f"{DEFAULT_PRESET}.", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: train.lr=1e-3, model.n_layers=4, "
                                                   "ingest.filters.min_words=20 (sections: " + ", ".join(SECTIONS)
                                                   + ").")]
CheckpointArg = Annotated[Path, typer.Argument(help="Run directory or ckpt/step_N.")]
ModelsArg = Annotated[list[Path], typer.Argument(help="Run directories (every model in them) or ckpt/step_N.")]
TasksOpt = Annotated[list[str] | None, typer.Option(
    "--tasks", help="Task name (data/tasks/NAME.jsonl) or JSONL path; repeatable. Default: the shipped suite.")]
MaxItemsOpt = Annotated[int | None, typer.Option(help="Score only the first N test items of each task (0 = all; "
                                                  "default: the first run's eval.max_items, else 0).")]
CorpusOpt = Annotated[Path | None, typer.Option(help=(
    "Held-out text for bits/byte: a corpus directory, scored on its val split (`homegrown data` output, or a "
    "folder holding a val.jsonl.gz of {\"text\": ...} pages). Default: each run's own corpus, else the bundled "
    "sample's."))]
OptOutOpt = Annotated[Path | None, typer.Option(help="Opt-out list: domains, URL prefixes, sha256s.")]
HoldoutOpt = Annotated[float, _opt(IngestConfig, "holdout_fraction", "Fraction of pages held out.")]
NearOpt = Annotated[float, _opt(IngestConfig, "near_dedup_threshold")]
NoProgressOpt = Annotated[bool, typer.Option(help="Plain log lines even on a terminal.")]
LORA_OPTIONS: dict[str, Any] = {
    "rank": Annotated[int | None, _opt(LoRAConfig, "rank", "Default: the preset's lora.rank (0).")],
    "alpha": Annotated[float | None, _opt(LoRAConfig, "alpha", f"Default: {LoRAConfig.alpha:g}.")],
    "dropout": Annotated[float | None, _opt(LoRAConfig, "dropout")],
    "targets": Annotated[str | None, _opt(LoRAConfig, "targets")],
}
"""LoRAConfig field → its `--lora-FIELD` option, for every command that trains with adapters."""


def _lora_options(command: Callable[..., None]) -> Callable[..., None]:
    """Gives a training command the `--lora-*` options (LORA_OPTIONS) after its own; it receives those the user
    gave as `lora`, a dict of LoRAConfig fields to replace in the preset's (one left out keeps the preset's)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "lora"]
    added = [inspect.Parameter(f"lora_{field}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
             for field, option in LORA_OPTIONS.items()]

    @functools.wraps(command)
    def with_lora(*args: Any, **kwargs: Any) -> None:
        command(*args, lora=_given(**{field: kwargs.pop(f"lora_{field}") for field in LORA_OPTIONS}), **kwargs)

    with_lora.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]  # what typer reads
    return with_lora


def _preset(name: str, overrides: list[str] | None) -> Preset:
    return apply_overrides(get_preset(name), overrides or [])


def _run_preset(run_dir: Path | None, name: str | None = None, overrides: list[str] | None = None,
                default: str = DEFAULT_PRESET) -> Preset:
    """The preset a command on `run_dir` works with: `--preset` when given, else the run's saved one read back
    whole (so its `--set` overrides stay in force), else `default`; then this command's `--set` overrides."""
    return resolve_preset(name, RunLayout(run_dir).preset if run_dir is not None else None, overrides, default)


def _given(**values: Any) -> dict[str, Any]:
    """The options a user actually gave (None = left out, so the saved preset's value stands)."""
    return {k: v for k, v in values.items() if v is not None}


# ---- the whole pipeline ----


@app.command()
def run(
    preset: PresetOpt = DEFAULT_PRESET,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<preset>).")] = None,
    source: Annotated[str, typer.Option(help="HTML/JSONL/text dir or file; default: the bundled corpus.")] = "",
    set_: SetOpt = None,
    samples: Annotated[int, typer.Option(help="Held-out questions the chat model answers at the end.")] = 3,
    serve_: Annotated[bool | None, typer.Option(
        "--serve/--no-serve", help="Serve the chat model at the end (default: only on an interactive terminal).",
        show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(
        help="Pretraining budget in wall-clock minutes, with the model's width and depth chosen for it on this "
             "machine (train.auto_shape: a longer budget buys a bigger model). Without it: the preset's budget "
             "and shape (small: 10 minutes, d192 · 4 layers; tiny: none).")] = None,
) -> None:
    """The whole pipeline on a preset: corpus → tokenizer → shards → pretrain → chat SFT → samples."""
    from homegrown.pipeline import print_summary
    from homegrown.pipeline import run as run_pipeline

    by_budget = [f"train.budget_minutes={budget}", "train.auto_shape=true"] if budget is not None else []
    cfg = _preset(preset, [*(set_ or []), *by_budget])
    if source:
        cfg.data.source = source
    summary = run_pipeline(cfg, out or Path("runs") / preset, samples=samples)
    print_summary(summary)
    if serve_ or (serve_ is None and sys.stdin.isatty() and sys.stdout.isatty()):
        from homegrown.serve.server import serve as serve_model

        console.rule("serving (Ctrl-C stops)")
        serve_model(summary.checkpoint, cfg.serve, api_key=os.environ.get("HOMEGROWN_API_KEY"),
                    db_url=f"sqlite:///{RunLayout(summary.run_dir).conversations_db.resolve()}",
                    model_name=Path(summary.run_dir).name)


@app.command()
def presets() -> None:
    """List the presets with their exact parameter counts."""
    from homegrown.plan import print_presets

    print_presets()


# ---- data ----


@data_app.command("ingest")
def data_ingest(
    sources: Annotated[list[Path] | None, typer.Argument(help="Directories or files (HTML, WARC, JSONL, Parquet, "
                                                         "text) to read.")] = None,
    out: Annotated[Path, typer.Option(help="Output corpus directory.")] = Path("corpus"),
    licence: Annotated[str, typer.Option(help="Licence of these sources, recorded per document.")] = "unknown",
    url_prefix: Annotated[str, typer.Option(help="Public URL prefix replacing the local path.")] = "",
    glob: Annotated[str, typer.Option(help="Which files to read under a directory.")] = "**/*.html",
    exclude: Annotated[list[str] | None, typer.Option(help="Skip matching relative paths (repeatable).")] = None,
    name: Annotated[str, typer.Option(help="Source name for audit and mixture (default: URL host).")] = "",
    text_field: Annotated[str, typer.Option(help="JSONL field / Parquet column with the text.")] = "text",
    sources_file: Annotated[Path | None, typer.Option(help="JSON list of sources, each {path, licence, "
                                                      "url_prefix, glob, exclude, name, text_field}.")] = None,
    workers: Annotated[int, _opt(IngestConfig, "workers")] = IngestConfig.workers,
    shards: Annotated[int, _opt(IngestConfig, "shards")] = IngestConfig.shards,
    ray_address: Annotated[str, _opt(IngestConfig, "ray_address")] = IngestConfig.ray_address,
    shard: Annotated[str, typer.Option(help="Only slice i/n of the files (parts only; then `data merge`).")] = "",
    opt_out: OptOutOpt = None,
    holdout: HoldoutOpt = IngestConfig.holdout_fraction,
    language: Annotated[list[str] | None, _opt(IngestConfig, "languages", "Repeatable.")] = None,
    near_threshold: NearOpt = IngestConfig.near_dedup_threshold,
    extractor: Annotated[str, _opt(DataConfig, "extractor")] = DataConfig.extractor,
    keep_parts: Annotated[bool, _opt(IngestConfig, "keep_parts")] = IngestConfig.keep_parts,
    pii_kinds: Annotated[str, _opt(IngestConfig, "pii_kinds")] = IngestConfig.pii_kinds,
    pii_private_ips: Annotated[bool, _opt(IngestConfig, "pii_private_ips")] = IngestConfig.pii_private_ips,
    no_progress: NoProgressOpt = False,
) -> None:
    """Crawl → extract → language → quality rules → PII scrub → exact+near dedup → corpus with a manifest."""
    from homegrown.data.ingest import ingest, ingest_parts, parse_shard, print_stats, sources_from

    specs = sources_from(sources or [], sources_file, licence=licence, url_prefix=url_prefix, glob=glob,
                         exclude=exclude or [], name=name, text_field=text_field)
    cfg = IngestConfig(workers=workers, shards=shards, ray_address=ray_address, holdout_fraction=holdout,
                       languages=language or [], near_dedup_threshold=near_threshold, keep_parts=keep_parts,
                       pii_kinds=pii_kinds, pii_private_ips=pii_private_ips)
    if shard:
        done = ingest_parts(specs, out, cfg, shard=parse_shard(shard), extractor=extractor, progress=not no_progress)
        console.print(f"shard {shard}: {done} files processed into {out / 'parts'}; when every shard is done: "
                      f"homegrown data merge {out}")
        return
    print_stats(ingest(specs, out, cfg=cfg, opt_out=opt_out, extractor=extractor, progress=not no_progress), out)


@data_app.command("merge")
def data_merge(
    out: Annotated[Path, typer.Argument(help="Corpus directory whose parts/ the shards wrote.")],
    parts: Annotated[list[Path] | None, typer.Option(help="More parts/ directories (other machines).")] = None,
    opt_out: OptOutOpt = None,
    holdout: HoldoutOpt = IngestConfig.holdout_fraction,
    near_threshold: NearOpt = IngestConfig.near_dedup_threshold,
    workers: Annotated[int, _opt(IngestConfig, "workers")] = IngestConfig.workers,
    shards: Annotated[int, _opt(IngestConfig, "shards")] = IngestConfig.shards,
    ray_address: Annotated[str, _opt(IngestConfig, "ray_address")] = IngestConfig.ray_address,
    no_progress: NoProgressOpt = False,
) -> None:
    """Combine the parts of every `--shard` with cross-shard exact and near dedup into one sharded corpus."""
    from homegrown.data.ingest import merge, print_stats

    cfg = IngestConfig(holdout_fraction=holdout, near_dedup_threshold=near_threshold, workers=workers,
                       shards=shards, ray_address=ray_address)
    print_stats(merge(out, cfg, opt_out=opt_out, extra_parts=parts or [], progress=not no_progress), out)


@data_app.command("audit")
def data_audit(run_dir: Annotated[Path, typer.Argument(help="Run directory (or corpus directory).")]) -> None:
    """Token share (characters before a tokenizer exists) by source, licence and language; table + PNG."""
    from homegrown.data.provenance import audit, audit_chart, print_audit

    report = audit(run_dir)
    print_audit(report)
    png = audit_chart(report, RunLayout(run_dir).audit_png)
    console.print(f"{report.documents:,} documents, {report.total:,} {report.unit}; chart {png}")


@data_app.command("forget")
def data_forget(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or corpus directory).")],
    url: Annotated[list[str] | None, typer.Option(help="Exact source URL (repeatable).")] = None,
    hash_: Annotated[list[str] | None, typer.Option("--hash", help="sha256 of the text (repeatable).")] = None,
    id_: Annotated[list[str] | None, typer.Option("--id", help="Manifest id (repeatable).")] = None,
) -> None:
    """Remove documents from the corpus and shards (or conversations from a `data from-gateway` export); list the
    checkpoints trained on them."""
    from homegrown.data import from_gateway
    from homegrown.data.forget import forget, print_result

    if from_gateway.is_export(run_dir):
        for row in from_gateway.forget(run_dir, urls=url or [], hashes=hash_ or [], ids=id_ or []):
            console.print(f"removed {row['id']}  {row['source']}  (later exports into {run_dir} leave it out)",
                          highlight=False)
        return
    print_result(forget(run_dir, urls=url or [], hashes=hash_ or [], ids=id_ or []))


@data_app.command("from-gateway")
def data_from_gateway(
    config: Annotated[Path, typer.Option("--config", help="The gateway's YAML file (its flywheel: section decides "
                                                          "what may be exported).")],
    out: Annotated[Path, typer.Option(help="Directory for train.jsonl (chat JSONL for `homegrown sft --data`), "
                                           "manifest.jsonl and MANIFEST.json.")],
    db: Annotated[str | None, typer.Option(help="The request log's SQLAlchemy URL (default: the config's "
                                                "log.db_url).")] = None,
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    since_hours: Annotated[float | None, typer.Option(help="Only requests of the last N hours.")] = None,
) -> None:
    """The flywheel: logged requests with the incumbent's answers as chat data, with provenance per conversation."""
    from homegrown.data.from_gateway import export_from_config

    stats = export_from_config(config, out, db_url=db, route=route, since_hours=since_hours)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
    console.print(f"{stats.exported} conversations → {out}/train.jsonl; skipped: {skipped}", highlight=False)
    console.print(f"next       homegrown sft RUN --data {out}/train.jsonl", highlight=False)


@data_app.command("mix")
def data_mix(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with corpus/ (tokenizer.json is trained if absent).")],
    mixture: Annotated[str | None, _opt(DataConfig, "mixture", "Default: the preset's data.mixture.")] = None,
    max_repeat: Annotated[float | None, _opt(DataConfig, "mixture_max_repeat",
                                             "Default: the preset's data.mixture_max_repeat.")] = None,
    preset: RunPresetOpt = None,
) -> None:
    """Pack RUN/corpus into RUN/shards, drawing the train split to the target token share per source."""
    from homegrown.data.mixture import pack_corpus, print_packing
    from homegrown.pipeline import prepare_tokenizer

    paths, cfg = RunLayout(run_dir), _run_preset(run_dir, preset)
    data = dataclasses.replace(cfg.data, **_given(mixture=mixture, mixture_max_repeat=max_repeat))
    if not paths.tokenizer_done():  # an existing tokenizer is kept: checkpoints of this run depend on it
        prepare_tokenizer(paths.corpus, cfg.model.vocab_size, paths.tokenizer)
    stats, plan = pack_corpus(paths.corpus, paths.tokenizer, paths.shards, data.mixture, data.mixture_max_repeat,
                              workers=cfg.ingest.workers)
    print_packing(stats, plan, paths.shards)


@data_app.command("synth")
def data_synth(
    teacher_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1.")],
    teacher_model: Annotated[str, typer.Option(help="Model name at that endpoint (e.g. gpt-4o).")],
    recipe: Annotated[str, typer.Option(help="textbook, story, qa or conversation.")],
    out: Annotated[Path, typer.Option(help="Chat JSONL to write (plus .manifest.json and .cache.sqlite).")],
    records: Annotated[int, _opt(SynthConfig, "records")] = SynthConfig.records,
    max_tokens_budget: Annotated[int, _opt(SynthConfig, "max_tokens_budget")] = SynthConfig.max_tokens_budget,
    max_cost: Annotated[float, _opt(SynthConfig, "max_cost_usd")] = SynthConfig.max_cost_usd,
    concurrency: Annotated[int, _opt(SynthConfig, "concurrency", "Requests in flight.")] = SynthConfig.concurrency,
    topics: Annotated[Path | None, typer.Option(help="Topics, one per line (textbook, conversation).")] = None,
    source: Annotated[Path | None, typer.Option(help="Corpus dir or JSONL whose documents ground qa.")] = None,
    existing: Annotated[Path | None, typer.Option(help="JSONL of data already owned: duplicates dropped.")] = None,
    cache: Annotated[Path | None, typer.Option(help="SQLite cache (default OUT.cache.sqlite).")] = None,
    temperature: Annotated[float, _opt(SynthConfig, "temperature")] = SynthConfig.temperature,
    max_tokens: Annotated[int, _opt(SynthConfig, "max_tokens")] = SynthConfig.max_tokens,
    seed: Annotated[int, _opt(SynthConfig, "seed")] = SynthConfig.seed,
) -> None:
    """Generate chat data with a teacher model (key from HOMEGROWN_TEACHER_KEY or OPENAI_API_KEY)."""
    from homegrown.data.recipes import RECIPES, load_inputs
    from homegrown.data.synth import print_stats, synthesize

    if recipe not in RECIPES:
        raise HomegrownError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    cfg = SynthConfig(records=records, max_tokens_budget=max_tokens_budget, max_cost_usd=max_cost,
                      concurrency=concurrency, temperature=temperature, max_tokens=max_tokens, seed=seed)
    print_stats(synthesize(teacher_url, teacher_model, recipe, out, cfg, inputs=load_inputs(RECIPES[recipe], topics,
                source), cache_path=cache, existing=existing), out)


@data_app.command("pairs")
def data_pairs(
    model: Annotated[Path, typer.Argument(help="The policy to sample answers from: a run directory (its chat model) "
                                                "or ckpt/step_N.")],
    prompts: Annotated[Path, typer.Option(help='JSONL of {"prompt": text or messages} or chat {"messages": [...]} '
                                               "(the conversation up to its last user turn is the prompt).")],
    judge_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL of the judge model.")],
    judge_model: Annotated[str, typer.Option(help="Judge model name at that endpoint (e.g. gpt-4o).")],
    out: Annotated[Path, typer.Option(help="Pairs JSONL to write (plus .manifest.json and .cache.sqlite).")],
    samples: Annotated[int, typer.Option(help="Answers sampled per prompt; every two distinct ones are compared.")]
        = 2,
    max_tokens: Annotated[int, typer.Option(help="Longest sampled answer, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the policy.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling of the policy.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seeds and judge order derive from it: same seed, same pairs.")]
        = 0,
    max_tokens_budget: Annotated[int, _opt(SynthConfig, "max_tokens_budget")] = SynthConfig.max_tokens_budget,
    max_cost: Annotated[float, _opt(SynthConfig, "max_cost_usd")] = SynthConfig.max_cost_usd,
    concurrency: Annotated[int, _opt(SynthConfig, "concurrency", "Judge requests in flight.")] = (
        SynthConfig.concurrency),
    cache: Annotated[Path | None, typer.Option(help="SQLite cache of verdicts (default OUT.cache.sqlite).")] = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Preference pairs: sample answers from the policy, a judge compares them in both orders (key from
    HOMEGROWN_TEACHER_KEY or OPENAI_API_KEY); cached, resumable, budgeted like `data synth`."""
    from homegrown.generate import SamplingParams
    from homegrown.posttrain.judge import build_pairs, print_pair_stats

    # The judge answers one word, deterministically: temperature 0 and a few tokens.
    cfg = SynthConfig(max_tokens_budget=max_tokens_budget, max_cost_usd=max_cost, concurrency=concurrency,
                      temperature=0.0, max_tokens=4, seed=seed)
    stats = build_pairs(model, prompts, out, judge_url, judge_model, cfg, samples=samples,
                        sampling=SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p),
                        cache_path=cache, progress=not no_progress)
    print_pair_stats(stats, out)


@data_app.command("docqa")
def data_docqa(
    corpus: Annotated[Path, typer.Argument(help="Corpus directory (train/val.jsonl.gz, as `data ingest` writes).")],
    out: Annotated[Path, typer.Option(help="Directory for train.jsonl, val.jsonl and MANIFEST.json.")],
    preset: PresetOpt = DEFAULT_PRESET,
    set_: SetOpt = None,
) -> None:
    """Teacher-free chat data: questions and answers cut from the documents (val pages → val.jsonl only)."""
    import json

    from homegrown.posttrain.docqa import build_docqa

    done = build_docqa(corpus, out, _preset(preset, set_).sft)
    counts = json.loads((done / MANIFEST).read_text())["conversations"]
    console.print(f"{counts['train']:,} training and {counts['val']:,} held-out conversations in {done}")


# ---- training ----


@app.command()
def pretrain(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding tokenizer.json and shards/.")],
    preset: RunPresetOpt = None,
    set_: SetOpt = None,
    init_from: Annotated[Path | None, typer.Option(
        help="Continue pretraining this checkpoint or run (e.g. an imported model) on RUN's corpus, with its "
             "tokenizer; RUN must be a new directory (or one this started).")] = None,
) -> None:
    """Pretrain (or resume) on a run directory's packed shards; the resolved preset is saved as RUN/preset.json.

    Under `torchrun --nproc_per_node=N --no-python homegrown pretrain RUN` the same command trains with FSDP2
    on N ranks; train.batch_size stays the global batch.
    """
    from homegrown.pipeline import pretrain as run_pretrain

    if init_from is not None and preset is None and not RunLayout(run_dir).preset.exists():
        # A new continued-pretraining run starts from the settings saved with the model it continues (an
        # import's fine-tuning learning rates), not from a from-scratch preset.
        cfg = resolve_preset(None, RunLayout(run_dir_of(init_from)).preset, set_, DEFAULT_PRESET)
    else:
        cfg = _run_preset(run_dir, preset, set_)
    if init_from is not None:
        cfg.train.init_from = str(init_from)
    run_pretrain(cfg, run_dir)


@checkpoint_app.command("consolidate")
def checkpoint_consolidate(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or ckpt/step_N with a dcp/ directory.")],
) -> None:
    """Write model.safetensors from a sharded (DCP) checkpoint, for export and serving."""
    from homegrown.train.checkpoint import consolidate, resolve_dcp_checkpoint

    console.print(f"wrote {consolidate(resolve_dcp_checkpoint(checkpoint))}")


StrictOpt = Annotated[bool, typer.Option(help="Stop at the first malformed line instead of skipping it.")]
TrainPresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="Preset for training settings "
                                                    "(default: the run's own, else small).")]


def _posttrain_run(base: Path, out: Path | None, preset: str | None, set_: list[str] | None) -> tuple[Path, Preset]:
    """Where a post-training command on `base` writes (`--out`, else BASE's run) and the preset it trains with."""
    from homegrown.posttrain.sft import default_run_dir

    run_dir = out or default_run_dir(base)
    return run_dir, _run_preset(run_dir, preset, set_, default="small")


@app.command()
@_lora_options
def sft(
    base: Annotated[Path, typer.Argument(help="Run directory (its pretrained ckpt/) or a ckpt/step_N to start from.")],
    data: Annotated[Path, typer.Option(help="Chat JSONL: one {\"messages\": [{\"role\", \"content\"}, …]} per line.")],
    val: Annotated[Path | None, typer.Option(help="Held-out chat JSONL; default: 1 in 20 of --data.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory for sft/ckpt (default: BASE's run).")] = None,
    strict: StrictOpt = False,
    preset: TrainPresetOpt = None,
    set_: SetOpt = None,
    *,
    lora: dict[str, Any],
) -> None:
    """Fine-tune a checkpoint on chat conversations (loss on assistant replies only) into RUN/sft/ckpt."""
    from homegrown.posttrain.sft import sft as run_sft

    run_dir, cfg = _posttrain_run(base, out, preset, set_)
    result = run_sft(base, data, run_dir, cfg.sft, cfg.train, val=val, strict=strict,
                     lora=dataclasses.replace(cfg.lora, **lora))
    console.print(f"chat model {result.final_checkpoint}  held-out answer loss {result.final_val_loss:.3f} nats/token")
    console.print(f"next       homegrown chat {result.final_checkpoint}")


@app.command()
@_lora_options
def dpo(
    base: Annotated[Path, typer.Argument(help="Run directory (its chat model: sft/ckpt, else ckpt/) or ckpt/step_N.")],
    data: Annotated[Path, typer.Option(help='Preference JSONL: {"prompt" or "messages", "chosen", "rejected"} '
                                            "per line (TRL's format; `homegrown data pairs` writes one).")],
    val: Annotated[Path | None, typer.Option(help="Held-out preference JSONL; default: 1 in 20 of --data.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory for dpo/ckpt (default: BASE's run).")] = None,
    strict: StrictOpt = False,
    beta: Annotated[float | None, _opt(DPOConfig, "beta", f"Default: the preset's dpo.beta, {DPOConfig.beta}.")]
        = None,
    loss: Annotated[str | None, _opt(DPOConfig, "loss")] = None,
    label_smoothing: Annotated[float | None, _opt(DPOConfig, "label_smoothing")] = None,
    rpo_alpha: Annotated[float | None, _opt(DPOConfig, "rpo_alpha")] = None,
    preset: TrainPresetOpt = None,
    set_: SetOpt = None,
    *,
    lora: dict[str, Any],
) -> None:
    """Preference-tune a chat model on chosen/rejected pairs (DPO, as TRL) into RUN/dpo/ckpt; resumable."""
    from homegrown.posttrain.dpo import dpo as run_dpo

    run_dir, cfg = _posttrain_run(base, out, preset, set_)
    settings = dataclasses.replace(cfg.dpo, **_given(beta=beta, loss=loss, label_smoothing=label_smoothing,
                                                     rpo_alpha=rpo_alpha))
    result = run_dpo(base, data, run_dir, settings, cfg.train, lora=dataclasses.replace(cfg.lora, **lora), val=val,
                     strict=strict)
    console.print(f"preference-tuned model {result.final_checkpoint}  held-out DPO loss {result.final_val_loss:.3f}")
    console.print(f"next       homegrown chat {result.final_checkpoint}")


@app.command()
def distill(
    run_dir: Annotated[Path, typer.Argument(help="Student run directory holding tokenizer.json and shards/.")],
    teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (or run dir) with the same tokenizer.")],
    alpha: Annotated[float | None, _opt(DistillConfig, "alpha", "Default: the preset's distill.alpha, "
                                        f"{DistillConfig.alpha}.")] = None,
    temperature: Annotated[float | None, _opt(DistillConfig, "temperature", "Softening temperature T for both "
                                              "distributions (default: the preset's distill.temperature, "
                                              f"{DistillConfig.temperature}).")] = None,
    preset: RunPresetOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the preset's (smaller) model on a run's shards against a teacher's logits, into RUN/distill/ckpt."""
    from homegrown.posttrain.distill import distill as run_distill

    cfg = _run_preset(run_dir, preset, set_)
    result = run_distill(run_dir, teacher, cfg,
                         dataclasses.replace(cfg.distill, **_given(alpha=alpha, temperature=temperature)))
    console.print(f"student {result.final_checkpoint}  val loss {result.final_val_loss:.3f}  "
                  f"val bits/byte {result.final_val_bpb:.3f}")


# ---- using a model ----

DtypeOpt = Annotated[str, typer.Option(help="Weights on the CPU: auto (fp32), fp32, bf16, or int8 / int4 weight-only "
                                            "quantization (bf16 activations; the fastest decode).")]


@app.command()
def generate(
    checkpoint: CheckpointArg,
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    dtype: DtypeOpt = "auto",
) -> None:
    """Continue a prompt with a trained model, streaming tokens as they come."""
    from homegrown.generate import SamplingParams
    from homegrown.repl import continue_prompt

    continue_prompt(checkpoint, prompt, SamplingParams(max_tokens, temperature, top_k, top_p, seed), dtype=dtype)


@app.command()
def chat(
    checkpoint: CheckpointArg,
    system: Annotated[str, typer.Option(help="System prompt (default: none, so the model's template applies its "
                                              "own default, as SmolLM2's does).")] = "",
    max_tokens: int = 200,
    temperature: float = 0.7,
    top_k: int = 40,
    top_p: float = 0.95,
    seed: int | None = None,
    dtype: DtypeOpt = "auto",
) -> None:
    """Terminal chat REPL using the chat template (answers well only after SFT; a base model rambles)."""
    from homegrown.generate import SamplingParams
    from homegrown.repl import chat as chat_repl

    chat_repl(checkpoint, system, SamplingParams(max_tokens, temperature, top_k, top_p, seed), dtype=dtype)


@app.command()
def export(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Option(help="Output directory (hf) or .gguf file (gguf).")],
    format: Annotated[str, typer.Option("--format", help="hf (transformers Llama) or gguf (llama.cpp / Ollama).")]
        = "hf",
    outtype: Annotated[str, typer.Option(help="gguf only: f32, f16 or q8_0.")] = "f16",
) -> None:
    """Export a checkpoint for other runtimes (transformers / vLLM, llama.cpp / Ollama)."""
    from homegrown.train.checkpoint import resolve_checkpoint

    if format not in ("hf", "gguf"):
        raise HomegrownError(f"unknown export format {format!r}; supported: hf, gguf")
    if format == "hf":
        from homegrown.export.hf import export_hf

        path = export_hf(resolve_checkpoint(checkpoint), out)
        console.print(f"wrote {path} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    else:
        from homegrown.export.gguf import export_gguf

        path = export_gguf(resolve_checkpoint(checkpoint), out, outtype)
        console.print(f"wrote {path} ({outtype}; run with llama.cpp `llama-cli -m {path}` or an Ollama Modelfile)")


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="A .gguf file (llama or qwen3 architecture) or a transformers Llama "
                                             "or Qwen3 directory.")],
    out: Annotated[Path, typer.Option(help="Run directory to create; the model goes to OUT/ckpt/step_0.")],
) -> None:
    """Import open weights as an ordinary run that generate, chat, serve, eval, export and sft accept."""
    from homegrown.importer import import_model

    r = import_model(src, out)
    c = r.config
    console.print(f"imported        {r.source_format} {r.architecture} from {src}", highlight=False)
    console.print(f"parameters      {r.params:,}: {c.n_layers} layers, d_model {c.d_model}, heads {c.n_heads}/"
                  f"{c.n_kv_heads} (head dim {c.head_dim}), ffn {c.ffn_hidden}, context {c.max_seq_len}, RoPE base "
                  f"{c.rope_theta:g}, RMSNorm eps {c.norm_eps:g}, {'tied' if c.tie_embeddings else 'untied'} head",
                  highlight=False)
    console.print("tensor types    " + ", ".join(f"{name} {n}" for name, n in r.tensor_types.items()), highlight=False)
    console.print(f"vocabulary      {r.vocab_size:,} tokens", highlight=False)
    console.print(f"chat template   {'yes' if r.chat_template else 'none'}; stops at "
                  + ", ".join(f"{t} ({i})" for t, i in r.stop_tokens.items()), highlight=False)
    console.print(f"checkpoint      {r.checkpoint}", highlight=False)
    console.print(f"next            homegrown chat {r.run_dir}", highlight=False)


# ---- evaluation ----


def _eval_settings(run_dir: Path | None, tasks: list[str] | None, max_items: int | None) -> tuple[list[str], int, int]:
    """Task names, items per task and batch size: the flags when given, else the run's saved eval section."""
    cfg = _run_preset(run_dir).eval
    names = tasks or [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    return names, cfg.max_items if max_items is None else max_items, cfg.batch_size


def _held_out_corpus(corpus: Path | None) -> Path | None:
    """--corpus checked before any model loads: every shard's val split must be there."""
    from homegrown.data.corpus import list_shards

    if corpus is not None and not all(shard["val"].is_file() for shard in list_shards(corpus)):
        raise HomegrownError(f"--corpus {corpus}: no held-out split there (expected val.jsonl.gz or a corpus "
                             "made by `homegrown data`)")
    return corpus


@app.command("eval")
def eval_(
    models: ModelsArg,
    tasks: TasksOpt = None,
    out: Annotated[Path | None, typer.Option(help="Directory for the <stage>-step_N.json files "
                                                  "(default: <run>/eval).")] = None,
    harness: Annotated[list[str] | None, typer.Option(
        help="Run these lm-eval-harness tasks instead (needs lm-eval); repeatable.")] = None,
    include_path: Annotated[Path | None, typer.Option(help="Directory of your own lm-eval task YAML files.")] = None,
    limit: Annotated[int | None, typer.Option(help="lm-eval: score only the first N items per task.")] = None,
    max_items: MaxItemsOpt = None,
    corpus: CorpusOpt = None,
) -> None:
    """Score checkpoints: held-out bits/byte and the task suite (or lm-eval-harness tasks with --harness)."""
    from homegrown.eval.suite import eval_file, evaluate_model, find_models
    from homegrown.eval.tasks import load_tasks

    specs = [spec for m in models for spec in find_models(m)]
    if harness and corpus is not None:
        raise HomegrownError("--corpus sets the text for held-out bits/byte, which --harness does not score")
    held_out = _held_out_corpus(corpus)
    if harness:
        try:
            from homegrown.eval.harness import harness_for_models
        except ModuleNotFoundError as e:
            raise HomegrownError(f"--harness needs lm-eval ({e}); install it with `pip install lm-eval`") from e
        harness_for_models(specs, harness, include_path, limit, out)
        return
    names, max_items, batch_size = _eval_settings(specs[0].run_dir, tasks, max_items)
    suite = load_tasks(names, max_items)
    for spec in specs:
        record = evaluate_model(spec, suite, eval_dir=out, corpus=held_out, batch_size=batch_size)
        console.print(f"{spec.name}: held-out bits/byte {record['val']['bpb']:.3f}; wrote {eval_file(spec, out)}")


@app.command()
def report(
    models: ModelsArg,
    out: Annotated[Path | None, typer.Option(help="Where report.md/.json/.png go (default: the first run).")] = None,
    tasks: TasksOpt = None,
    external: Annotated[list[str] | None, typer.Option(
        help="Base URL of an OpenAI-compatible API to compare against (e.g. https://api.openai.com/v1).")] = None,
    external_model: Annotated[list[str] | None, typer.Option(help="Model name at each --external URL.")] = None,
    external_mode: Annotated[str, typer.Option(help="auto, completions (log-likelihoods) or chat.")] = "auto",
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", show_envvar=True,
                                         help="Key for the --external endpoints.")] = "",
    max_items: MaxItemsOpt = None,
    corpus: CorpusOpt = None,
) -> None:
    """Report card: models side by side on held-out bits/byte and tasks, with chance levels and charts."""
    from homegrown.eval.report import ExternalSpec, build_report
    from homegrown.eval.suite import find_models

    urls, names = external or [], external_model or []
    if len(urls) != len(names):
        raise HomegrownError("give one --external-model for each --external URL")
    first = find_models(models[0])[0]
    task_names, max_items, batch_size = _eval_settings(first.run_dir, tasks, max_items)
    md = build_report(models, out or first.run_dir or Path("report"), task_names,
                      [ExternalSpec(u, n, api_key, external_mode) for u, n in zip(urls, names, strict=True)],
                      corpus=_held_out_corpus(corpus), batch_size=batch_size, max_items=max_items)
    console.print(f"report          {md}")


# ---- serving and planning ----


def _serve_opt(name: str, text: str = "") -> Any:
    """An option that overrides the run's saved serve.NAME (RUN/preset.json) for this server."""
    return _opt(ServeConfig, name, f"{text} Default: the run's serve.{name} (RUN/preset.json), else "
                f"{getattr(ServeConfig(), name)}.".strip())


@app.command()
def serve(
    run_or_ckpt: Annotated[Path, typer.Argument(help="Run directory, ckpt/step_N, or an exported HF directory.")],
    host: Annotated[str | None, _serve_opt("host", "Interface to listen on.")] = None,
    port: Annotated[int | None, _serve_opt("port", "TCP port; 0 = any free one (the banner shows it).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="HOMEGROWN_API_KEY", show_envvar=True, help=(
        "A key for the admin user 'default' (who owns conversations saved before user keys). Without it and "
        "without user keys (`homegrown serve keys add`) the server is open."))] = None,
    max_batch: Annotated[int | None, _serve_opt("max_batch")] = None,
    max_waiting: Annotated[int | None, _serve_opt("max_waiting")] = None,
    max_model_len: Annotated[int | None, _serve_opt("max_model_len")] = None,
    kv_cache_gib: Annotated[float | None, _serve_opt("kv_cache_gib")] = None,
    db_url: Annotated[str | None, typer.Option(help="Conversations database (SQLAlchemy URL); default: "
                                                    "sqlite:///<run dir>/conversations.sqlite.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Model id clients send; default: the run dir's name.")] = (
        None),
    device: Annotated[str | None, _serve_opt("device")] = None,
    dtype: Annotated[str | None, _serve_opt("dtype")] = None,
    threads: Annotated[int | None, _serve_opt("threads")] = None,
    max_body_bytes: Annotated[int | None, _serve_opt("max_body_bytes")] = None,
    generation_config: Annotated[str | None, _opt(ServeConfig, "generation_defaults")] = None,
) -> None:
    """Serve a model: OpenAI-compatible API at /v1, chat page at /, Prometheus metrics at /metrics.

    Keys per user: `homegrown serve keys add|list|revoke --db-url URL` (see `homegrown serve keys --help`).
    """
    from homegrown.serve.protocol import parse_generation_defaults
    from homegrown.serve.server import serve as serve_model

    if max_body_bytes is not None and max_body_bytes < 1:
        raise HomegrownError(f"--max-body-bytes must be at least 1, got {max_body_bytes}")
    given = _given(host=host, port=port, max_batch=max_batch, max_waiting=max_waiting, max_model_len=max_model_len,
                   kv_cache_gib=kv_cache_gib, device=device, dtype=dtype, threads=threads,
                   max_body_bytes=max_body_bytes,
                   generation_defaults=parse_generation_defaults(generation_config) if generation_config else None)
    cfg = dataclasses.replace(_run_preset(run_dir_of(run_or_ckpt)).serve, **given)
    serve_model(run_or_ckpt, cfg, api_key=api_key, db_url=db_url, model_name=model_name)


DbUrlOpt = Annotated[str, typer.Option("--db-url", "--db", envvar="HOMEGROWN_DB_URL", show_envvar=True, help=(
    "The server's database (SQLAlchemy URL), as given to `homegrown serve --db-url`; its default is "
    "sqlite:///RUN/conversations.sqlite."))]


@keys_app.command("add")
def keys_add(
    user: Annotated[str, typer.Option(help="The user the key acts for; their conversations are theirs alone.")],
    db_url: DbUrlOpt,
    admin: Annotated[bool, typer.Option(help="Admin role: may also list, add and revoke keys over /api/keys.")] = False,
) -> None:
    """Make a key for a user and print it, once (only its hash is stored). Works on a running server's database."""
    from homegrown.serve.keys import KeyStore, print_new_key

    with KeyStore.open(db_url) as store:
        print_new_key(*store.add(user, "admin" if admin else "user"))


@keys_app.command("list")
def keys_list(db_url: DbUrlOpt) -> None:
    """Every key: id, prefix, user, role, created, revoked (tab-separated). Secrets are not stored, so not shown."""
    from homegrown.serve.keys import KeyStore, print_keys

    with KeyStore.open(db_url) as store:
        print_keys(store.list_keys())


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id or prefix (hg-1a2b3c4d), as `keys list` shows.")],
    db_url: DbUrlOpt,
) -> None:
    """Revoke a key; a running server refuses it from its next request."""
    from homegrown.serve.keys import KeyStore

    with KeyStore.open(db_url) as store:
        done = store.revoke(key)
    console.print(f"revoked key {done.id} ({done.prefix}) of user {done.user}", highlight=False)


@app.command()
def plan(
    preset: Annotated[str | None, typer.Option("--preset", "-p", help=f"One of: {', '.join(PRESET_NAMES)}.")] = None,
    layers: Annotated[int | None, typer.Option(help="Explicit shape: transformer layers.")] = None,
    d_model: Annotated[int | None, typer.Option(help="Explicit shape: model width.")] = None,
    heads: Annotated[int | None, typer.Option(help="Explicit shape: attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="Explicit shape: KV heads (GQA); default = heads.")] = None,
    vocab: Annotated[int | None, typer.Option(help="Explicit shape: vocabulary size.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Training sequence length.")] = None,
    ffn: Annotated[int | None, typer.Option(help="SwiGLU hidden size; default: Llama's 8/3·d rule.")] = None,
    tied: Annotated[bool | None, typer.Option("--tied/--untied", help="Tie embedding and head.")] = None,
    gpu: Annotated[str | None, _opt(PlanConfig, "gpu")] = None,
    gpus: Annotated[int | None, _opt(PlanConfig, "gpus")] = None,
    tokens: Annotated[float | None, _opt(PlanConfig, "tokens")] = None,
    mfu: Annotated[float | None, _opt(PlanConfig, "mfu")] = None,
    tflops: Annotated[float | None, _opt(PlanConfig, "achieved_tflops")] = None,
    price_per_gpu_hour: Annotated[float | None, _opt(PlanConfig, "price_per_gpu_hour", "Dollars per GPU-hour.")] = None,
    tp: Annotated[int | None, _opt(PlanConfig, "tp")] = None,
    pp: Annotated[int | None, _opt(PlanConfig, "pp")] = None,
    recompute: Annotated[str | None, _opt(PlanConfig, "recompute")] = None,
    sharding: Annotated[str | None, _opt(PlanConfig, "sharding")] = None,
    activations: Annotated[str | None, _opt(PlanConfig, "activations")] = None,
    micro_batch: Annotated[int | None, _opt(PlanConfig, "micro_batch", "Sequences per GPU per micro-step.")] = None,
    max_days: Annotated[float | None, _opt(PlanConfig, "max_days", "Deadline used to size the cluster.")] = None,
    measure: Annotated[bool, typer.Option(help="Measure MFU by training a proxy model on this machine.")] = False,
    proxy: Annotated[str, typer.Option(help="Preset trained by --measure (default: small on CPU).")] = "",
    measure_seconds: Annotated[float | None, _opt(PlanConfig, "measure_seconds")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
    crawl: Annotated[str | None, typer.Option(help="Data side: plan ingesting a named crawl (fineweb).")] = None,
    data_docs: Annotated[str | None, typer.Option(help="Data side: pages in the crawl (2.64e9, 3G).")] = None,
    data_bytes: Annotated[str | None, typer.Option(help="Data side: raw HTML bytes (394TiB, 4.3e14).")] = None,
    snapshots: Annotated[int | None, typer.Option(help="Data side: crawl snapshots (for the per-snapshot check).")] = (
        None),
    filter_keep: Annotated[float | None, typer.Option(help="Data side: share of pages the filters keep; default: "
                                                           "the crawl's, else the measured one.")] = None,
    dedup_keep: Annotated[float | None, typer.Option(help="Data side: share of filtered pages dedup keeps.")] = None,
    worker_memory_gb: Annotated[float, typer.Option(help="Data side: memory of one worker (sizes partitions).")] = 4.0,
    rates: Annotated[Path | None, typer.Option(help="Data side: rates file (default: the shipped one).")] = None,
    measure_data: Annotated[bool, typer.Option(help="Measure the data stages' rates on the bundled sample and "
                                                    "write them to --rates-out.")] = False,
    measure_docs: Annotated[int, typer.Option(help="Sample pages --measure-data uses (all: 100000).")] = 100_000,
    rates_out: Annotated[Path, typer.Option(help="Where --measure-data writes the rates.")] = Path("data-rates.json"),
) -> None:
    """Size a training run: parameters, FLOPs, memory per GPU, parallel layout, days and cost on a cluster.

    With --crawl or --data-docs/--data-bytes: size ingesting a crawl instead (CPU-hours per stage, memory per
    worker, shuffle, storage), from rates measured by --measure-data.
    """
    if measure_data or crawl or data_docs or data_bytes:
        from homegrown.plan_data import crawl_from, measure_to, print_data_plan

        if measure_data:
            measure_to(rates_out, measure_docs)
            rates = rates if rates is not None else rates_out
            if not (crawl or data_docs or data_bytes):
                return
        spec = crawl_from(crawl, data_docs, data_bytes, snapshots, filter_keep, dedup_keep)
        print_data_plan(spec, rates, worker_memory_gb, as_json)
        return
    from homegrown.plan import print_plan

    shape = {"n_layers": layers, "d_model": d_model, "n_heads": heads, "n_kv_heads": kv_heads,
             "vocab_size": vocab, "max_seq_len": seq_len, "ffn_hidden": ffn, "tie_embeddings": tied}
    settings = {"gpu": gpu, "gpus": gpus, "tokens": tokens, "mfu": mfu, "achieved_tflops": tflops,
                "price_per_gpu_hour": price_per_gpu_hour, "tp": tp, "pp": pp, "recompute": recompute,
                "sharding": sharding, "activations": activations, "micro_batch": micro_batch, "max_days": max_days,
                "measure_seconds": measure_seconds}
    print_plan(preset, shape, settings, measure, proxy, as_json)


# ---- gateway ----

GatewayConfigOpt = Annotated[Path | None, typer.Option("--config", help="The gateway's YAML file (README: gateway).")]


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    config: GatewayConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen here instead of the file's listen.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen here instead of the file's listen.port; 0 = any "
                                                  "free port (the banner shows it).")] = None,
) -> None:
    """Run the gateway (without a sub-command): routes, fallback, breakers, keys, request log, /metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from homegrown.gateway.config import load_config
    from homegrown.gateway.judging import attach
    from homegrown.gateway.server import run_gateway

    if config is None:
        raise HomegrownError("homegrown gateway needs --config gateway.yaml (see the README's gateway section)")
    cfg = load_config(config)
    if host is not None:
        cfg.listen.host = host
    if port is not None:
        cfg.listen.port = port
    run_gateway(cfg, extend=[attach])


@gateway_app.command("status")
def gateway_status(
    config: GatewayConfigOpt = None,
    db: Annotated[str | None, typer.Option(help="The request log's SQLAlchemy URL (default: the config's "
                                                "log.db_url).")] = None,
    since_hours: Annotated[float | None, typer.Option(help="Only requests of the last N hours.")] = None,
) -> None:
    """Requests, errors, tokens, p50/p95 latency and cost per route and backend; live breakers and shares."""
    from homegrown.gateway.config import load_config
    from homegrown.gateway.status import live_lines, live_state, status_lines

    if config is None and db is None:
        raise HomegrownError("give --config gateway.yaml or --db URL")
    cfg = load_config(config) if config is not None else None
    for line in status_lines(db or cfg.log.db_url, since_hours):  # type: ignore[union-attr]
        print(line)
    for line in judging_status(db or cfg.log.db_url):  # type: ignore[union-attr]
        print(line)
    if cfg is not None:
        keys = [os.environ.get(k.key_env) for k in cfg.keys]
        state = live_state(cfg, next((k for k in keys if k), None))
        print(*(live_lines(state) if state else ["live: the gateway does not answer at its configured address"]),
              sep="\n")
        if state:
            from homegrown.gateway.judging_status import live_judging_lines

            for line in live_judging_lines(state):
                print(line)


def judging_status(db_url: str) -> list[str]:
    """The judging lines of `gateway status` (shadow verdicts, ladder decisions) from the gateway's database."""
    from homegrown.gateway.judging_status import judging_lines
    from homegrown.gateway.judging_store import JudgingStore
    from homegrown.gateway.store import RequestLog

    log = RequestLog(db_url)
    try:
        return judging_lines(JudgingStore(log.engine))
    finally:
        log.close()


@gateway_app.command("report")
def gateway_report(
    config: GatewayConfigOpt = None,
    out: Annotated[Path, typer.Option(help="Directory for gateway_report.md, .json and the PNG charts.")] = Path(
        "gateway_report"),
    db: Annotated[str | None, typer.Option(help="The gateway's SQLAlchemy URL (default: the config's "
                                                "log.db_url).")] = None,
    since_hours: Annotated[float | None, typer.Option(help="Only requests of the last N hours.")] = None,
) -> None:
    """Markdown + PNG: traffic share over time, judged win rate with intervals, latency, cost per 1,000 requests
    and what the current split saves against all-provider, for every shadowed route."""
    from homegrown.gateway.config import load_config
    from homegrown.gateway.report import report_from_db

    if config is None:
        raise HomegrownError("homegrown gateway report needs --config gateway.yaml (it names each route's pair)")
    report_from_db(load_config(config), out, db_url=db, since_hours=since_hours)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except HomegrownError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
