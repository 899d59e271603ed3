"""titans.plots, long-context figures: length labels, the NIAH heatmap matrix and picture (valid
PNG, red/green/grey cells where expected, 0% depth at the top), the items-weighted accuracy per
length, input validation, and atomic writes into directories that do not exist yet."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from titans.plots import (
    _accuracy_grid,
    _mean_accuracy_by_length,
    format_length,
    plot_accuracy_vs_length,
    plot_niah_heatmap,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(length: int, depth: float | None, accuracy: float | None, items: int = 10) -> dict:
    """One result row of the long-context evaluation."""
    return {"length": length, "depth": depth, "accuracy": accuracy, "items": items}


def read_png(path: Path) -> np.ndarray:
    """The PNG at ``path`` as an (H, W, 3) float array in [0, 1], after checking its signature."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)[..., :3]


def pixels_near(image: np.ndarray, rgb: tuple[float, ...]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels within 2/255 of colour ``rgb`` in every channel."""
    return np.all(np.abs(image - np.asarray(rgb[:3])) <= 2 / 255, axis=-1)


@pytest.mark.parametrize(
    ("n", "label"),
    [
        (512, "512"),
        (1024, "1K"),
        (2048, "2K"),
        (1536, "1.5K"),
        (16384, "16K"),
        (1 << 20, "1M"),
        (3 << 19, "1.5M"),
        (1000, "1000"),
        (1280, "1280"),
    ],
)
def test_format_length(n: int, label: str) -> None:
    assert format_length(n) == label


def test_accuracy_grid_places_cells_and_averages_duplicates() -> None:
    rows = [
        row(4096, 0.5, 0.25),
        row(1024, 0.0, 1.0),
        row(1024, 1.0, 0.0),
        row(4096, 0.0, None),  # not evaluated -> NaN
        row(1024, 0.5, 1.0, items=1),  # duplicates of one cell: items-weighted mean
        row(1024, 0.5, 0.0, items=3),
        row(1024, 0.5, None, items=100),  # skipped, not counted as 0
    ]
    lengths, depths, grid = _accuracy_grid(rows)
    assert lengths == [1024, 4096]
    assert depths == [0.0, 0.5, 1.0]
    assert grid.shape == (3, 2)
    assert grid[0, 0] == 1.0
    assert grid[1, 0] == pytest.approx(0.25)
    assert grid[2, 0] == 0.0
    assert math.isnan(grid[0, 1])  # accuracy None
    assert grid[1, 1] == 0.25
    assert math.isnan(grid[2, 1])  # no row at all


def test_mean_accuracy_by_length_is_items_weighted_and_skips_none() -> None:
    rows = [
        row(2048, 0.0, 1.0, items=3),
        row(2048, 1.0, 0.0, items=1),
        row(1024, None, 0.5, items=7),
        row(2048, 0.5, None, items=50),
        row(8192, 0.0, None),  # only None rows: the length is left out
    ]
    means = _mean_accuracy_by_length(rows)
    assert list(means) == [1024, 2048]
    assert means[1024] == 0.5
    assert means[2048] == pytest.approx(0.75)


def test_niah_heatmap_png_colours_and_orientation(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "heat.png"  # atomic_write creates the parents
    rows = [row(1024, 0.0, 0.0), row(1024, 1.0, 1.0), row(2048, 0.0, None), row(2048, 1.0, 1.0)]
    plot_niah_heatmap(rows, path, title="passkey")
    assert os.listdir(path.parent) == ["heat.png"]  # no temporary file left behind
    image = read_png(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    cmap = matplotlib.colormaps["RdYlGn"]
    red = pixels_near(image, cmap(0.0))
    green = pixels_near(image, cmap(1.0))
    grey = pixels_near(image, matplotlib.colors.to_rgb("lightgrey"))
    # One red cell, two green cells, one grey cell, each over 10,000 pixels (the colour bar has
    # only a thin band of its extreme colours, and anti-aliased black text some grey pixels).
    assert 10_000 < red.sum() < green.sum()
    assert grey.sum() > 10_000
    # Depth 0% (the red cell) is drawn above depth 100%.
    red_rows = np.nonzero(red)[0].mean()
    green_rows = np.nonzero(green)[0].mean()
    assert red_rows < green_rows


def test_niah_heatmap_all_correct_has_no_red_or_grey(tmp_path: Path) -> None:
    path = tmp_path / "heat.png"
    plot_niah_heatmap([row(1024, d, 1.0) for d in (0.0, 0.5, 1.0)], path)
    image = read_png(path)
    cmap = matplotlib.colormaps["RdYlGn"]
    assert pixels_near(image, cmap(1.0)).sum() > 10_000
    assert pixels_near(image, cmap(0.0)).sum() < 1000  # the colour bar's end only
    assert pixels_near(image, matplotlib.colors.to_rgb("lightgrey")).sum() < 5000  # text edges


def test_accuracy_vs_length_png(tmp_path: Path) -> None:
    path = tmp_path / "new" / "acc.png"
    curves = {
        "mac": [row(n, d, 1.0 - d / 2) for n in (1024, 4096, 1 << 20) for d in (0.0, 1.0)],
        "attention": [row(1024, None, 0.5), row(4096, None, 0.25), row(1 << 20, None, None)],
        "never evaluated": [row(1024, None, None)],
    }
    plot_accuracy_vs_length(curves, path, title="S-NIAH")
    assert os.listdir(path.parent) == ["acc.png"]
    image = read_png(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.05  # not a blank canvas


@pytest.mark.parametrize(
    ("plot", "data", "match"),
    [
        (plot_niah_heatmap, [row(1024, None, 0.5)], "depth None"),
        (plot_niah_heatmap, [], "no result rows"),
        (plot_niah_heatmap, [row(1024, 0.5, 1.5)], r"accuracy must be in \[0, 1\]"),
        (plot_niah_heatmap, [row(1024, 0.5, 0.5, items=0)], "items > 0"),
        (plot_accuracy_vs_length, {}, "no models"),
        (plot_accuracy_vs_length, {"mac": []}, "no result rows"),
        (plot_accuracy_vs_length, {"mac": [row(1024, None, 1.5)]}, r"\[0, 1\]"),
        (plot_accuracy_vs_length, {"mac": [row(1024, 0.0, -0.1)]}, r"\[0, 1\]"),
    ],
)
def test_invalid_input_raises_and_writes_nothing(tmp_path: Path, plot, data, match: str) -> None:
    path = tmp_path / "out" / "plot.png"
    with pytest.raises(ValueError, match=match):
        plot(data, path)
    assert not path.parent.exists()
