"""Plot the reports of several ``titans eval niah|babi --out`` runs together, as one
``titans eval ... --run A B C --plots DIR`` would: accuracy against context length per task
(one curve per model) and, for needle tasks, a heatmap per model.

    python docs/long-context/plot_reports.py --out docs/long-context/recall-1k \\
        lmm=evals/lmm-1k mac=evals/mac-1k

Each argument is ``name=report`` (the name labels the model in the figures); reports of one
kind (niah or babi) only.
"""

import argparse
import json
from pathlib import Path

from titans.experiments.long_context import plot_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("reports", nargs="+", help="name=path of a titans eval --out report")
    a = p.parse_args()
    merged: dict = {"models": {}, "tasks": []}
    for spec in a.reports:
        name, path = spec.split("=", 1)
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if merged.setdefault("kind", report["kind"]) != report["kind"]:
            raise SystemExit(f"{path} is a {report['kind']} report, the others {merged['kind']}")
        merged["tasks"] += [t for t in report["tasks"] if t not in merged["tasks"]]
        (model,) = report["models"].values()
        merged["models"][name] = model
    Path(a.out).mkdir(parents=True, exist_ok=True)
    plot_report(merged, Path(a.out))


if __name__ == "__main__":
    main()
