"""Plots: loss curves of training runs (from their ``metrics.jsonl``), forecasts against the
truth (``titans forecast``) and long-context evaluation results (needle-in-a-haystack heatmaps,
accuracy against context length).

The long-context functions take result rows: dicts with ``"length"`` (context tokens),
``"depth"`` (needle depth in [0, 1], or None for tasks whose facts are scattered), ``"accuracy"``
(in [0, 1], or None for "not evaluated") and ``"items"`` (the number of items scored, the weight
of the row when rows are averaged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from titans.io import atomic_write
from titans.runs import read_metrics

_UNITS = ((1 << 20, "M"), (1 << 10, "K"))


def format_length(n: int) -> str:
    """A context length as a short label: 512 -> "512", 1024 -> "1K", 1536 -> "1.5K",
    1048576 -> "1M"; lengths that are not a multiple of half a K (or M) stay plain integers
    (1000 -> "1000")."""
    for unit, suffix in _UNITS:
        if n >= unit and (2 * n) % unit == 0:  # a whole or a half number of units
            return f"{n // unit}{'.5' if n % unit else ''}{suffix}"
    return str(n)


def _check_rows(rows: list[dict]) -> None:
    """Raise ValueError if ``rows`` is empty or a row's accuracy or items is out of range."""
    if not rows:
        raise ValueError("no result rows to plot")
    for row in rows:
        acc = row["accuracy"]
        if acc is None:
            continue
        if not 0.0 <= acc <= 1.0:  # also rejects NaN
            raise ValueError(f"accuracy must be in [0, 1] or None, got {acc!r} in row {row!r}")
        if row["items"] <= 0:
            raise ValueError(f"an evaluated row needs items > 0, got {row['items']!r} in {row!r}")


def _weighted_means(rows: list[dict], key: Callable[[dict], Hashable]) -> dict[Hashable, float]:
    """Items-weighted mean accuracy of the rows grouped by ``key(row)``; rows whose accuracy is
    None are skipped, so a group with only such rows is absent from the result."""
    sums: dict[Hashable, list[float]] = {}
    for row in rows:
        if row["accuracy"] is not None:
            acc_items = sums.setdefault(key(row), [0.0, 0.0])
            acc_items[0] += row["accuracy"] * row["items"]
            acc_items[1] += row["items"]
    return {k: total / items for k, (total, items) in sums.items()}


def _accuracy_grid(rows: list[dict]) -> tuple[list[int], list[float], np.ndarray]:
    """The heatmap matrix of needle rows: ascending distinct lengths, ascending distinct depths and
    ``grid[i, j]``, the items-weighted mean accuracy at ``(depths[i], lengths[j])``; NaN where no
    row there was evaluated (accuracy None or no row at all)."""
    _check_rows(rows)
    if any(row["depth"] is None for row in rows):
        raise ValueError("the NIAH heatmap needs a needle depth in every row, got depth None")
    lengths = sorted({row["length"] for row in rows})
    depths = sorted({row["depth"] for row in rows})
    grid = np.full((len(depths), len(lengths)), np.nan)
    means = _weighted_means(rows, lambda row: (row["depth"], row["length"]))
    for (depth, length), acc in means.items():
        grid[depths.index(depth), lengths.index(length)] = acc
    return lengths, depths, grid


def _mean_accuracy_by_length(rows: list[dict]) -> dict[int, float]:
    """Length -> items-weighted mean accuracy over that length's rows (all depths), ascending by
    length; rows with accuracy None are skipped and a length with only such rows is left out."""
    _check_rows(rows)
    means = _weighted_means(rows, lambda row: row["length"])
    return {length: means[length] for length in sorted(means)}


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
    _finish(fig, ax, path, title, legend=True)


def plot_niah_heatmap(rows: list[dict], path: str | Path, title: str = "") -> None:
    """One PNG: the needle-in-a-haystack heatmap of one model on one task.

    x = context length (one column per distinct length, ascending), y = needle depth in percent
    (0% at the top), colour = accuracy on a fixed scale (red = 0, green = 1, colour bar in
    percent), each cell annotated with its accuracy in percent; cells not evaluated are grey and
    annotated "n/a". Raises ValueError on empty rows, an accuracy outside [0, 1] or a row with
    depth None.
    """
    lengths, depths, grid = _accuracy_grid(rows)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    size = (max(5.0, 0.8 * len(lengths) + 2.5), max(3.0, 0.45 * len(depths) + 1.5))
    fig, ax = plt.subplots(figsize=size, dpi=120)
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
    )
    for (i, j), acc in np.ndenumerate(grid):
        if math.isnan(acc):
            text, color = "n/a", "black"
        else:
            red, green, blue, _ = cmap(acc)
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # luma of the cell colour
            text, color = f"{100 * acc:.0f}", "white" if dark else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    fig.colorbar(image, ax=ax, label="accuracy", format=PercentFormatter(xmax=1.0))
    _finish(fig, ax, path, title, legend=False)


def plot_accuracy_vs_length(
    curves: dict[str, list[dict]], path: str | Path, title: str = ""
) -> None:
    """One PNG: accuracy against context length, one line with markers per model.

    curves: model name -> its result rows. A model's accuracy at a length is the items-weighted
    mean over that length's rows (all depths), skipping rows whose accuracy is None; a length with
    only such rows is left out of the model's line. The x axis is log2-scaled with a tick at every
    length of any row; a model with no evaluated row keeps its legend entry but draws no point.
    Raises ValueError on no curves, a model with no rows or an accuracy
    outside [0, 1].
    """
    if not curves:
        raise ValueError("no models to plot")
    means = {name: _mean_accuracy_by_length(rows) for name, rows in curves.items()}
    lengths = sorted({row["length"] for rows in curves.values() for row in rows})
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, by_length in means.items():
        # Markers at 0 and 1 sit on the axis limits: draw them whole.
        ax.plot(list(by_length), list(by_length.values()), "o-", label=name, clip_on=False)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy")
    _finish(fig, ax, path, title, legend=True)


def plot_forecasts(
    history: list[float], truth: list[float], forecasts: dict[str, list[float]],
    path: str | Path, title: str = "",
) -> None:
    """One PNG of a forecast window: the input rows (``history``), the true continuation
    (``truth``) and each model's forecast of it, against the row number (0 = first forecast
    row). Raises ValueError on no forecasts or a forecast whose length is not the truth's."""
    if not forecasts:
        raise ValueError("no forecasts to plot")
    for name, values in forecasts.items():
        if len(values) != len(truth):
            raise ValueError(f"forecast {name!r} has {len(values)} rows, the truth {len(truth)}")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(range(-len(history), 0), history, color="0.5", label="input")
    ax.plot(range(len(truth)), truth, color="black", label="truth")
    for name, values in forecasts.items():
        ax.plot(range(len(values)), values, label=name, linewidth=1.2)
    ax.axvline(0, color="0.7", linestyle="--", linewidth=0.8)
    ax.set_xlabel("row (0 = first forecast row)")
    _finish(fig, ax, path, title, legend=True)


def _finish(fig: Any, ax: Any, path: str | Path, title: str, legend: bool) -> None:
    """Title (plus grid and legend for line plots), then write the PNG atomically and free it."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    if legend:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
