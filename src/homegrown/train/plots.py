"""Loss-curve PNG from metrics.jsonl, redrawn at every checkpoint so a person can glance at a running job."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from homegrown.io import atomic_path


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    """Train loss per step and validation loss / bits-per-byte at each eval."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, alpha=0.8, label="train loss (nats/token)")
    evals = [r for r in rows if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss (nats/token)")
        bpb = ax.twinx()
        bpb.plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "s--", color="tab:green",
                 label="val bits/byte")
        bpb.set_ylabel("bits per byte")
        bpb.legend(loc="upper center")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)
