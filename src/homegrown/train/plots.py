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


def plot_preference_metrics(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    """DPO's TRL metrics per step: chosen / rejected rewards and their margin, and reward accuracy (train and
    held-out)."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, (rewards, acc) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for key, style in (("rewards/chosen", "-"), ("rewards/rejected", "-"), ("rewards/margins", "--")):
        rewards.plot(steps, [r.get(key, float("nan")) for r in rows], style, lw=1, label=key)
    rewards.axhline(0, color="grey", lw=0.5)
    rewards.set_xlabel("step")
    rewards.set_ylabel("reward (β · log-ratio)")
    rewards.legend()
    acc.plot(steps, [r.get("rewards/accuracies", float("nan")) for r in rows], lw=1, alpha=0.6,
             label="rewards/accuracies (train batch)")
    evals = [r for r in rows if "val_rewards/accuracies" in r]
    if evals:
        acc.plot([r["step"] for r in evals], [r["val_rewards/accuracies"] for r in evals], "o-",
                 label="held-out reward accuracy")
    acc.set_ylim(-0.05, 1.05)
    acc.set_xlabel("step")
    acc.legend()
    for ax in (rewards, acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "preference tuning")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)
