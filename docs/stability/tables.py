"""Tables and the validation-loss figure of docs/stability.md from the comparison runs.

    OMP_NUM_THREADS=1 titans compare --config docs/stability/compare-a.yaml --out runs/stability/a
    OMP_NUM_THREADS=1 titans compare --config docs/stability/compare-b.yaml --out runs/stability/b
    python docs/stability/tables.py   # prints the tables; writes results.json and val-loss.png

``results.json`` keeps what the page quotes (per model: parameters, validation loss at every
evaluation, test loss, tokens/s, gradient-norm and memory-health extremes), so the tables can be
rebuilt without the run directories.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib

from titans.experiments.compare import RESULTS_FILE
from titans.io import atomic_save_json, atomic_write
from titans.models.health import WEIGHT_NORM_KEY
from titans.runs import METRICS_FILE, read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
RUNS = Path("runs/stability")
ORDER = ("mac", "mac-linear", "lmm", "lmm-linear", "mag", "mal", "transformer", "swa")


def collect() -> dict[str, dict]:
    """Per model, the numbers the page quotes, from each half's results.json and metrics."""
    out = {}
    for half in sorted(RUNS.iterdir()):
        for result in json.loads((half / RESULTS_FILE).read_text())["results"]:
            records = read_metrics(half / result["name"] / METRICS_FILE)
            steps = [r for r in records if "loss" in r]
            norms = [r["grad_norm"] for r in steps]
            weights = [r[WEIGHT_NORM_KEY] for r in steps if WEIGHT_NORM_KEY in r]
            out[result["name"]] = {
                "variant": result["variant"], "parameters": result["parameters"],
                "val_loss": {r["step"]: r["val_loss"] for r in records if "val_loss" in r},
                "test_nll": result["eval"][0]["nll"],
                "tokens_per_s": result["train"]["tokens_per_s"],
                "grad_norm_max": max(norms), "grad_norm_median": statistics.median(norms),
                "memory_weight_norm_max": max(weights) if weights else None,
            }
    return {name: out[name] for name in ORDER if name in out}


def main() -> None:
    results = collect() if RUNS.is_dir() else json.loads((HERE / "results.json").read_text())
    if RUNS.is_dir():
        atomic_save_json(results, HERE / "results.json")
    print("| model | parameters | val loss @100 | @500 | final | val ppl | test nll "
          "| tokens/s | max / median grad norm | max memory-weight norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        val = {int(k): v for k, v in r["val_loss"].items()}
        last = val[max(val)]
        weight = r["memory_weight_norm_max"]
        print(f"| {name} | {r['parameters'] / 1e6:.2f}M | {val.get(100, math.nan):.3f} "
              f"| {val.get(500, math.nan):.3f} | {last:.3f} | {math.exp(last):.1f} "
              f"| {r['test_nll']:.3f} | {r['tokens_per_s']:.0f} "
              f"| {r['grad_norm_max']:.2f} / {r['grad_norm_median']:.2f} "
              f"| {'-' if weight is None else f'{weight:.1f}'} |")
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, r in results.items():
        points = sorted((int(k), v) for k, v in r["val_loss"].items())
        style = "--" if name.endswith("-linear") else "-"
        ax.plot(*zip(*points, strict=True), style, marker="o", ms=3, label=name)
    ax.set_xlabel("step (1 x 512 tokens)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("equal-size models, library memory defaults (dashed: linear memory)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(HERE / "val-loss.png", "wb") as f:
        fig.savefig(f, format="png")


if __name__ == "__main__":
    main()
