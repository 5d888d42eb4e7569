"""`homegrown` command line: one sub-command per stage. Parses arguments into configs, calls the stage.

User errors (HomegrownError) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from homegrown.config import PRESET_NAMES, Preset, apply_overrides, get_preset
from homegrown.errors import HomegrownError
from homegrown.progress import console

app = typer.Typer(help="Own the whole LLM stack: data → tokenizer → pretrain → sample → export.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Corpus building: ingest HTML/JSONL/text into a cleaned corpus.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEFAULT_PRESET = os.environ.get("HOMEGROWN_PRESET", "small")

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help=f"One of: {', '.join(PRESET_NAMES)}.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: train.lr=1e-3, model.n_layers=4.")]


def _preset(name: str, overrides: list[str] | None) -> Preset:
    return apply_overrides(get_preset(name), overrides or [])


@app.command()
def run(
    preset: PresetOpt = DEFAULT_PRESET,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<preset>).")] = None,
    source: Annotated[str, typer.Option(help="HTML/JSONL/text dir or file; default: the bundled corpus.")] = "",
    set_: SetOpt = None,
    samples: Annotated[int, typer.Option(help="Continuations to print at the end.")] = 3,
) -> None:
    """The whole pipeline on a preset: corpus → tokenizer → shards → pretrain → samples."""
    from homegrown.pipeline import run as run_pipeline

    cfg = _preset(preset, set_)
    if source:
        cfg.data.source = source
    summary = run_pipeline(cfg, out or Path("runs") / preset, samples=samples)
    console.rule("samples")
    for prompt, text in summary.samples:
        console.print(f"[bold]{prompt}[/bold]{text}", highlight=False, markup=True)
        console.print()
    console.rule("done")
    console.print(f"run directory   {summary.run_dir}")
    console.print(f"checkpoint      {summary.checkpoint}")
    console.print(f"loss curve      {summary.run_dir / 'loss_pretrain.png'}")
    console.print(f"metrics         {summary.run_dir / 'metrics.jsonl'}")
    console.print(f"val bits/byte   {summary.val_bpb:.3f}   (val loss {summary.val_loss:.3f} nats/token)")
    console.print(f"throughput      {summary.tokens_per_second:,.0f} tokens/s; total {summary.seconds / 60:.1f} min")
    console.print(f"next            homegrown generate {summary.checkpoint} \"Your prompt\"")


@app.command()
def presets() -> None:
    """List the presets with their exact parameter counts."""
    from rich.table import Table

    from homegrown.model import count_params

    table = Table()
    for name in ("preset", "params", "layers", "d_model", "heads/kv", "vocab", "seq"):
        table.add_column(name, no_wrap=True, justify="left" if name == "preset" else "right")
    for preset_name in PRESET_NAMES:
        p = get_preset(preset_name)
        m = p.model
        table.add_row(preset_name, f"{count_params(m):,}", str(m.n_layers), str(m.d_model),
                      f"{m.n_heads}/{m.n_kv_heads}", f"{m.vocab_size:,}", str(p.train.seq_len))
    console.print(table)
    for preset_name in PRESET_NAMES:
        console.print(f"[bold]{preset_name}[/bold]: {get_preset(preset_name).description}")


@data_app.command("ingest")
def data_ingest(
    sources: Annotated[list[Path], typer.Argument(help="Directories or files to read.")],
    out: Annotated[Path, typer.Option(help="Output corpus directory.")],
    licence: Annotated[str, typer.Option(help="Licence of these sources, recorded per document.")] = "unknown",
    url_prefix: Annotated[str, typer.Option(help="Public URL prefix replacing the local path.")] = "",
    glob: Annotated[str, typer.Option(help="Which files to read under a directory.")] = "**/*.html",
    holdout: Annotated[float, typer.Option(help="Fraction of pages held out for validation.")] = 0.05,
) -> None:
    """HTML → main text (trafilatura) → exact dedup → train/val JSONL.gz with licence and sha256."""
    from homegrown.data.ingest import SourceSpec, ingest

    specs = [SourceSpec(path=s, licence=licence, url_prefix=url_prefix or s.resolve().as_uri() + "/", glob=glob)
             for s in sources]
    stats = ingest(specs, out, holdout_fraction=holdout)
    console.print(stats)


@app.command()
def pretrain(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding tokenizer.json and shards/.")],
    preset: PresetOpt = DEFAULT_PRESET,
    set_: SetOpt = None,
) -> None:
    """Pretrain (or resume) on a run directory's packed shards."""
    from homegrown.train.loop import train

    cfg = _preset(preset, set_)
    result = train(cfg.model, cfg.train, run_dir / "shards", run_dir, run_dir / "tokenizer.json")
    console.print(f"checkpoint {result.final_checkpoint}  val bits/byte {result.final_val_bpb:.3f}")


@app.command()
def generate(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or ckpt/step_N.")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")],
    max_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
) -> None:
    """Continue a prompt with a trained model, streaming tokens as they come."""
    from homegrown.generate import SamplingParams, stream_tokens
    from homegrown.tokenizer import eot_id
    from homegrown.train.checkpoint import load_for_inference

    model, tok = load_for_inference(checkpoint)
    params = SamplingParams(max_tokens, temperature, top_k, top_p, seed, [eot_id(tok)])
    ids: list[int] = []
    shown = ""
    sys.stdout.write(prompt)
    for token in stream_tokens(model, tok.encode(prompt, add_special_tokens=False).ids, params):
        ids.append(token)
        text = tok.decode(ids)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")


@app.command()
def chat(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or ckpt/step_N.")],
    system: Annotated[str, typer.Option(help="System prompt.")] = "You are a helpful assistant.",
    max_tokens: int = 200,
    temperature: float = 0.7,
    top_k: int = 40,
    top_p: float = 0.95,
    seed: int | None = None,
) -> None:
    """Terminal chat REPL using the chat template (answers well only after SFT; a base model rambles)."""
    from homegrown.generate import SamplingParams, stream_tokens
    from homegrown.posttrain.chat import render_prompt
    from homegrown.train.checkpoint import load_for_inference

    model, tok = load_for_inference(checkpoint)
    stops = [tok.token_to_id("<|end|>"), tok.token_to_id("<|endoftext|>")]
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
        ids = tok.encode(render_prompt(messages), add_special_tokens=False).ids
        budget = model.cfg.max_seq_len - max_tokens
        if len(ids) > budget:
            console.print(f"[yellow]conversation is longer than the {model.cfg.max_seq_len}-token context; "
                          "keeping only the latest message[/yellow]")
            messages = messages[:1] + messages[-1:] if system else messages[-1:]
            ids = tok.encode(render_prompt(messages), add_special_tokens=False).ids[-budget:]
        reply = tok.decode(list(stream_tokens(model, ids, SamplingParams(max_tokens, temperature, top_k, top_p,
                                                                          seed, stops))))
        print(f"model> {reply.strip()}")
        messages.append({"role": "assistant", "content": reply.strip()})


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or ckpt/step_N.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    format: Annotated[str, typer.Option("--format", help="hf (transformers Llama).")] = "hf",
) -> None:
    """Export a checkpoint for other runtimes (transformers / vLLM)."""
    if format != "hf":
        raise HomegrownError(f"unknown export format {format!r}; supported: hf")
    from homegrown.export.hf import export_hf
    from homegrown.train.checkpoint import resolve_checkpoint

    path = export_hf(resolve_checkpoint(checkpoint), out)
    console.print(f"wrote {path} (load with transformers.AutoModelForCausalLM.from_pretrained)")


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
