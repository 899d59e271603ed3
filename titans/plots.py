"""Loss curves of training runs, from their ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

from titans.io import atomic_write
from titans.train import read_metrics


def plot_loss_curves(runs: dict[str, str | Path], path: str | Path, title: str = "") -> None:
    """One PNG: training loss (lines) and validation loss (markers) against tokens seen.

    runs: name -> the run's metrics.jsonl.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (name, metrics) in enumerate(runs.items()):
        records = read_metrics(metrics)
        color = f"C{i}"
        train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
        val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.8, label=f"{name} train")
        if val:
            ax.plot(*zip(*val, strict=True), "o--", color=color, label=f"{name} validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
