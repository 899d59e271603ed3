"""Markdown tables and plots of docs/long-context.md from the JSON the commands there write.

    python docs/long-context/tables.py docs/long-context/training.json
    python docs/long-context/tables.py --plots docs/long-context docs/long-context/niah.json \
        docs/long-context/niah-transformer.json

Evaluation files given together are one evaluation run in parts (e.g. one model per process):
their models are tabulated, and with ``--plots`` drawn, together: an accuracy-vs-length plot per
task, and for needle tasks a heatmap per model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from titans.plots import format_length, plot_accuracy_vs_length, plot_niah_heatmap


def training_table(report: dict) -> str:
    tasks = list(report["results"][0]["accuracy"])
    lines = ["| model | params | train tok/s | train time | val answer loss | "
             + " | ".join(tasks) + " |", "|---" * (5 + len(tasks)) + "|"]
    for r in report["results"]:
        t = r["train"]
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.2f}M | {t['tokens_per_s']:.0f} | "
                     f"{t['wall_time'] / 60:.1f} min | {t['final_val_loss']:.3f} | "
                     + " | ".join(f"{100 * r['accuracy'][k]:.0f}%" for k in tasks) + " |")
    return "\n".join(lines)


def accuracy_tables(report: dict) -> str:
    """Per task, then over all tasks: accuracy (over depths and items) per model and length."""
    out = []
    groups = [([task], task) for task in report["tasks"]]
    if len(report["tasks"]) > 1:
        groups.append((report["tasks"], "all tasks"))
    for tasks, title in groups:
        models = report["models"]
        lengths = sorted({r["length"] for m in models.values() for r in m["rows"]
                          if r["task"] in tasks})
        lines = [f"**{title}**", "", "| model | " + " | ".join(map(format_length, lengths))
                 + " |", "|---" * (1 + len(lengths)) + "|"]
        for name, m in models.items():
            cells = []
            for n in lengths:
                rows = [r for r in m["rows"] if r["task"] in tasks and r["length"] == n]
                done = [r for r in rows if r["accuracy"] is not None]
                correct, items = (sum(r[k] for r in done) for k in ("correct", "items"))
                cells.append(f"{100 * correct / items:.0f}%" if done else "not run")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def cost_table(report: dict, task: str) -> str:
    """Streaming speed and peak memory per model and length, for one task."""
    models = report["models"]
    lengths = sorted({r["length"] for m in models.values() for r in m["rows"] if r["task"] == task})
    lines = ["| model | " + " | ".join(format_length(n) for n in lengths) + " |",
             "|---" * (1 + len(lengths)) + "|"]
    for name, m in models.items():
        cells = []
        for n in lengths:
            row = next(r for r in m["rows"] if r["task"] == task and r["length"] == n)
            cells.append("not run" if row["accuracy"] is None else
                         f"{row['tokens_per_s'] / 1e3:.1f}K tok/s, "
                         f"{row['peak_memory_mib']:.0f} MiB")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(report: dict, out: Path) -> None:
    for task in report["tasks"]:
        curves = {name: [r for r in m["rows"] if r["task"] == task]
                  for name, m in report["models"].items()}
        plot_accuracy_vs_length(curves, out / f"{task}-accuracy-vs-length.png",
                                title=f"{task}: accuracy against context length")
        if report["depths"] is not None:
            for name, rows in curves.items():
                plot_niah_heatmap(rows, out / f"{task}-{name}.png", title=f"{task}, {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--plots", type=Path, help="directory for the PNGs")
    args = parser.parse_args()
    reports = [json.loads(Path(path).read_text()) for path in args.files]
    if "results" in reports[0]:
        print(training_table(reports[0]))
        return
    merged = {**reports[0], "models": {k: v for r in reports for k, v in r["models"].items()}}
    print(accuracy_tables(merged))
    print()
    print(cost_table(merged, merged["tasks"][0]))
    if args.plots:
        plots(merged, args.plots)


if __name__ == "__main__":
    main()
