"""The report card: checkpoints (and external endpoints) side by side, as Markdown, PNG charts and JSON.

The card answers one question for a person deciding whether the model they own can replace the one they
rent: on text none of them trained on, how do they compare, and how far is each from guessing? So every
task score sits next to its chance level and its standard error, and `report.json` keeps every figure the
Markdown shows for scripts and dashboards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from homegrown.eval.suite import evaluate_model, find_models
from homegrown.eval.tasks import Task, load_tasks
from homegrown.io import atomic_path, write_json_atomic, write_text_atomic
from homegrown.progress import console

REPORT_MD, REPORT_JSON = "report.md", "report.json"
LOSS_PNG, TASKS_PNG = "report_loss.png", "report_tasks.png"


@dataclass
class ExternalSpec:
    """An OpenAI-compatible endpoint to score next to our checkpoints (e.g. the model being replaced)."""

    base_url: str
    model: str
    api_key: str = ""
    mode: str = "auto"


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _metrics_rows(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict], out: Path) -> Path | None:
    """Train loss and held-out bits/byte per step for every model that has a training log."""
    logs = [(r["name"], _metrics_rows(r.get("metrics_file"))) for r in records]
    logs = [(name, rows) for name, rows in logs if rows]
    if not logs:
        return None
    fig, (loss_ax, bpb_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, rows in logs:
        loss_ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label=name)
        evals = [r for r in rows if "val_bpb" in r]
        if evals:
            bpb_ax.plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", label=name)
    loss_ax.set(title="training loss", xlabel="step", ylabel="nats / token")
    bpb_ax.set(title="validation bits/byte during training (each stage's own held-out set)", xlabel="step",
               ylabel="bits / byte")
    for ax in (loss_ax, bpb_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    return out


def plot_tasks(records: list[dict], tasks: list[Task], out: Path) -> Path:
    """One group of bars per task (a bar per model, ± standard error) with the chance level drawn across it."""
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(tasks)), 4.2), dpi=110)
    width = 0.8 / max(len(records), 1)
    for m, rec in enumerate(records):
        xs, ys, errs = [], [], []
        for t, task in enumerate(tasks):
            res = rec["tasks"].get(task.name)
            if res is not None:
                xs.append(t - 0.4 + width * (m + 0.5))
                ys.append(res["score"])
                errs.append(res["stderr"])
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=rec["name"])
    for t, task in enumerate(tasks):
        ax.hlines(task.chance, t - 0.45, t + 0.45, colors="black", linestyles="--", lw=1.2,
                  label="chance" if t == 0 else None)
    ax.set_xticks(range(len(tasks)), [f"{t.name}\n({t.metric})" for t in tasks], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("task scores on held-out pages (dashed: chance)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    return out


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def render_markdown(records: list[dict], tasks: list[Task], charts: dict[str, str | None]) -> str:
    names = [r["name"] for r in records]
    lines = [f"# Report card: {', '.join(names)}", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `homegrown report`. "
             "Every figure is also in `report.json`.", "", "## Models", "",
             "| model | stage | parameters | tokens trained | context | held-out bits/byte ↓ |",
             "|---|---|---:|---:|---:|---:|"]
    for r in records:
        bpb = f"{r['val']['bpb']:.3f}" if r.get("val") else "—"
        lines.append(f"| {r['name']} | {r['stage']} | {_fmt_count(r.get('params'))} | "
                     f"{_fmt_count(r.get('tokens_trained'))} | {r.get('context') or '—'} | {bpb} |")
    lines += ["", "## Tasks", "", "| task | metric | items | shots | chance | " + " | ".join(names) + " |",
              "|---|---|---:|---:|---:|" + "---:|" * len(names)]
    for task in tasks:
        cells = []
        for r in records:
            res = r["tasks"].get(task.name)
            if res is None:
                cells.append("—")
                continue
            mark = "" if res["mode"] in ("loglikelihood", "generation") else f" ({res['mode']})"
            cells.append(f"{res['score']:.3f} ± {res['stderr']:.3f}{mark}")
        lines.append(f"| {task.name} | {task.metric} | {len(task.items)} | {task.num_fewshot} | "
                     f"{task.chance:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "What each task asks:", ""]
    lines += [f"- **{t.name}** ({t.kind.replace('_', ' ')}): {t.description}" for t in tasks]
    if charts.get("loss") or charts.get("tasks"):
        lines += ["", "## Charts", ""]
        lines += [f"![{k}]({v})" for k, v in charts.items() if v]
    lines += ["", "## One answer per task", ""]
    for task in tasks:
        for r in records:
            res = r["tasks"].get(task.name)
            if res and res["examples"]:
                ex = res["examples"][0]
                context = ex["context"] if isinstance(ex["context"], str) else json.dumps(ex["context"])
                lines += [f"**{task.name}**, {r['name']}:", "", "```text", context.strip()[-300:],
                          f"→ model: {str(ex['predicted']).strip()[:200]!r}",
                          f"→ right: {str(ex['gold']).strip()[:200]!r}", "```", ""]
                break
    lines += ["## How to read this", "",
              "- **Held-out bits/byte** is the average surprise per byte of text on the corpus pages no model "
              "trained on (lower is better). It does not depend on the tokenizer, so models with different "
              "vocabularies compare directly. Uniform guessing over bytes is 8; a unigram model of the `small` "
              "tokenizer scores 2.77 (benchmarks/quality.py).",
              "- **Tasks** are built from those same held-out pages (`scripts/build_tasks.py`). A score means "
              "something only above its **chance** column: 1/choices for multiple choice; for generation, the "
              "best score one fixed answer gets on every question.",
              "- **±** is one standard error over items; two models whose scores differ by less than about twice "
              "that are not distinguishable on this suite.",
              "- Multiple choice is scored by log-likelihood, as lm-eval-harness does: the choice with the highest "
              "log-probability per character after the prompt wins (`acc_norm`). Generation is greedy and a reply "
              "ends at a stop string only after its first non-whitespace text (data/tasks/README.md); chat "
              "models get the questions as chat turns (marked *chat*); an endpoint that cannot return prompt "
              "log-probabilities answers multiple choice as a lettered question (marked *lettered*).",
              "- **Tokens trained** counts this stage only (a chat model's count is its fine-tuning tokens).", ""]
    return "\n".join(lines)


def build_report(paths: Sequence[Path], out_dir: Path, task_names: Sequence[str] = (),
                 external: Sequence[ExternalSpec] = (), corpus: Path | None = None, batch_size: int = 32,
                 max_items: int = 0) -> Path:
    """Evaluate every model in `paths` (run or checkpoint directories) and every external endpoint on the same
    tasks; write report.md, report.json and the PNG charts into `out_dir`. Returns the Markdown path."""
    tasks = load_tasks(task_names, max_items)
    specs = [spec for p in paths for spec in find_models(Path(p))]
    records = [evaluate_model(s, tasks, corpus=corpus, batch_size=batch_size) for s in specs]
    if external:
        from homegrown.eval.external import evaluate_endpoint

        records += [evaluate_endpoint(e.base_url, e.model, tasks, api_key=e.api_key, mode=e.mode) for e in external]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loss_png = plot_losses(records, out_dir / LOSS_PNG)
    plot_tasks(records, tasks, out_dir / TASKS_PNG)
    charts = {"loss": LOSS_PNG if loss_png else None, "tasks": TASKS_PNG}
    write_json_atomic(out_dir / REPORT_JSON, {
        "models": records,
        "tasks": [{"name": t.name, "kind": t.kind, "metric": t.metric, "items": len(t.items), "chance": t.chance,
                   "num_fewshot": t.num_fewshot, "file": str(t.path), "description": t.description}
                  for t in tasks],
        "charts": charts})
    md = out_dir / REPORT_MD
    write_text_atomic(md, render_markdown(records, tasks, charts))
    console.print(f"report: {md}")
    return md
