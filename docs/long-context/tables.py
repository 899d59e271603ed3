"""Markdown tables of docs/long-context.md from the JSON the commands there write.

    python docs/long-context/tables.py runs/long-context/results.json docs/long-context/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from titans.plots import format_length


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
    """Per task: accuracy (over depths and items) per model and length."""
    out = []
    for task in report["tasks"]:
        models = report["models"]
        lengths = sorted({r["length"] for m in models.values() for r in m["rows"]
                          if r["task"] == task})
        lines = [f"**{task}**", "", "| model | " + " | ".join(map(format_length, lengths)) + " |",
                 "|---" * (1 + len(lengths)) + "|"]
        for name, m in models.items():
            cells = []
            for n in lengths:
                rows = [r for r in m["rows"] if r["task"] == task and r["length"] == n]
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


def main(paths: list[str]) -> None:
    for path in paths:
        report = json.loads(Path(path).read_text())
        print(f"<!-- {path} -->")
        if "results" in report:
            print(training_table(report))
        else:
            print(accuracy_tables(report))
            print()
            print(cost_table(report, report["tasks"][0]))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
