"""Plot tokens/s against length for every variant from a ``model_throughput.py`` results file.

Left panel: training tok/s against T (each T at its own batch, B = max(1, tokens-per-step // T),
the same for every variant); right panel, if decode runs are in the file: decode tok/s against
the prefill length. Both axes logarithmic; one line per variant. The PNG is written atomically.

    python benchmarks/plot_throughput.py [RESULTS.json] [--out docs/benchmarks/tok_s_vs_T.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from measure import REPO, RESULTS

from titans.io import atomic_write
from titans.plots import format_length

DEFAULT_PNG = REPO / "docs" / "benchmarks" / "tok_s_vs_T.png"
PANELS = (("train", "training (B = max(1, {tokens_per_step} // T))", "sequence length T"),
          ("decode", "decode after a prefill (B = {batch_size})", "prefill length"))


def plot_tok_s_vs_length(report: dict, path: str | Path) -> None:
    """One PNG with a panel per mode that has results (train, decode): tok/s against length,
    log-log, one line with markers per variant. Raises ValueError if neither mode has results
    or the report is from a model_throughput.py older than --tokens-per-step."""
    if "tokens_per_step" not in report["config"]:
        raise ValueError("results written by an older model_throughput.py (no tokens_per_step "
                         "in its config): run the benchmark again")
    panels = [(mode, title, xlabel) for mode, title, xlabel in PANELS
              if any(r["mode"] == mode for r in report["results"])]
    if not panels:
        raise ValueError("no train or decode results to plot")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    config, machine = report["config"], report["machine"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=120,
                             squeeze=False)
    for ax, (mode, title, xlabel) in zip(axes[0], panels, strict=True):
        rows = [r for r in report["results"] if r["mode"] == mode]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            points = sorted((r["length"], r["tokens_per_s"]) for r in rows
                            if r["variant"] == variant)
            ax.plot(*zip(*points, strict=True), "o-", label=variant)
        lengths = sorted({r["length"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [format_length(n) for n in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(title.format(**config), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"TitansLM preset {config['preset']}, {config['dtype']}, "
                 f"{machine['device']} ({machine.get('gpu', machine['cpu'])}), "
                 f"commit {machine['git']}", fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="?",
                        default=RESULTS / "model_throughput.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_PNG)
    args = parser.parse_args()
    try:
        plot_tok_s_vs_length(json.loads(args.results.read_text()), args.out)
    except ValueError as err:
        sys.exit(f"{args.results}: {err}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
