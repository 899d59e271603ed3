"""The figure of docs/stability.md from the traces next to this file.

    python docs/stability/plots.py   # writes docs/stability/before-after.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from titans.io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
TRACES = {"old defaults": HERE / "trace-old.jsonl", "new defaults": HERE / "trace-new.jsonl"}
PANELS = (("grad_norm", "gradient norm (before clipping)", True),
          ("weight_norm", "max memory-weight norm", True),
          ("sigma_z", "min spread sigma(z) of the LayerNorm input", True),
          ("theta", "max theta (inner lr)", False),
          ("eta", "max eta (momentum)", False),
          ("loss", "training loss (1 x 512 tokens)", False))


def main() -> None:
    runs = {name: [json.loads(line) for line in path.read_text().splitlines()]
            for name, path in TRACES.items()}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title, log) in zip(axes.flat, PANELS, strict=True):
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points, strict=True), label=name, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("MAC small on the embedded corpus, lr 3e-3, clip 1.0: old vs new memory defaults")
    fig.tight_layout()
    with atomic_write(HERE / "before-after.png", "wb") as f:
        fig.savefig(f, format="png", dpi=110)


if __name__ == "__main__":
    main()
