"""``titans forecast train|eval``: the paper's long-term forecasting experiment (§5.6, Table 3).

A config file has the sections

* ``data`` (:class:`ForecastDataConfig`): the CSV (``default``: vic_elec, fetched offline-safe),
  lookback, split scheme, channel columns;
* ``model``: :class:`~titans.models.forecasting.ForecastConfig` fields shared by every model;
* ``models``: name -> per-model overrides (``mixer`` defaults to the name; ``lr`` overrides
  ``train.lr`` for that model);
* ``horizons``: the forecast lengths, each trained as its own model (as in the literature);
* ``train`` (:class:`ForecastTrainConfig`).

Every (model, horizon) is trained on the training windows with MSE, the epoch with the lowest
validation MSE is kept (early stopping after ``patience`` epochs without improvement), and the
test MSE / MAE are measured over every test window in the standardised space (as the literature
reports them). The run directory holds ``config.json`` (the resolved sections), one folder per
(model, horizon) with ``model.safetensors`` and ``config.json``, ``results.json`` (rewritten after
every model, so an interrupted job keeps what it finished and a re-run skips it) and
``forecasts.png`` (each model's forecast of one test window against the truth).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F

from titans.checks import check_choice, check_int, check_ints, check_number
from titans.config_files import build_dataclass, check_sections
from titans.data.timeseries import (
    DEFAULT_SERIES,
    SPLIT_SCHEMES,
    ForecastData,
    load_forecast_data,
)
from titans.io import atomic_save_json, atomic_write
from titans.models.forecasting import MIXERS, ForecastConfig, Forecaster
from titans.plots import plot_forecasts

FORECAST_SECTIONS = ("data", "model", "models", "horizons", "train")
RESULTS_FILE = "results.json"
PLOT_FILE = "forecasts.png"
WEIGHTS_FILE = "model.safetensors"
# The ForecastConfig fields the data and the horizon decide (not settable in model sections).
_DERIVED_FIELDS = ("num_channels", "lookback", "horizon")


@dataclass
class ForecastDataConfig:
    """The series: a CSV path or ``"default"`` (vic_elec), ``lookback`` input rows, the split
    scheme (``auto``: by file name, see :mod:`titans.data.timeseries`), the channel ``columns``
    (None: all but the time column) and the time column (None: the first)."""

    path: str = DEFAULT_SERIES
    lookback: int = 96
    split: str = "auto"
    columns: list[str] | None = None
    time_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"data.path must be a non-empty string, got {self.path!r}")
        check_int("data.lookback", self.lookback, 1)
        check_choice("data.split", self.split, SPLIT_SCHEMES)

    def load(self) -> ForecastData:
        return load_forecast_data(self.path, self.lookback, self.split, self.columns,
                                  self.time_column)


@dataclass
class ForecastTrainConfig:
    """Training of each (model, horizon). ``max_train_windows``: a fresh random sample of at
    most this many training windows per epoch (None: all); ``max_val_windows``: at most this
    many evenly spaced validation windows score each epoch (None: all; the test always uses
    all). ``plot_channel``: the column drawn in the forecast plot (None: the last)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    max_train_windows: int | None = None
    max_val_windows: int | None = None
    eval_batch_size: int = 256
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    plot_channel: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_batch_size", "log_every"):
            check_int(f"train.{name}", getattr(self, name), 1)
        for name in ("max_train_windows", "max_val_windows"):
            check_int(f"train.{name}", getattr(self, name), 1, optional=True)
        check_int("train.seed", self.seed, 0)
        check_number("train.lr", self.lr, "> 0", lambda x: x > 0)
        check_number("train.weight_decay", self.weight_decay, ">= 0", lambda x: x >= 0)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"train.device must be a device name or 'auto', got "
                             f"{self.device!r}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class ForecastJob:
    """A config file's sections, validated: the data, each model's config template (horizon and
    data-derived sizes filled in per run) and learning rate, the horizons, the training."""

    data: ForecastDataConfig
    models: dict[str, dict[str, Any]]
    lrs: dict[str, float]
    horizons: list[int]
    train: ForecastTrainConfig = field(default_factory=ForecastTrainConfig)

    def model_config(self, name: str, data: ForecastData, horizon: int) -> ForecastConfig:
        return ForecastConfig(**self.models[name], num_channels=data.num_channels,
                              lookback=data.lookback, horizon=horizon)


def build_job(values: dict[str, Any]) -> ForecastJob:
    """The sections of a forecast config (see the module docstring) as a :class:`ForecastJob`;
    every model config is checked now (with a placeholder size), not after the first ones
    have trained."""
    data = build_dataclass(ForecastDataConfig, values.get("data"), "data")
    train = build_dataclass(ForecastTrainConfig, values.get("train"), "train")
    horizons = values.get("horizons", [96, 192, 336, 720])
    check_ints("horizons", horizons, 1)
    shared = dict(values.get("model") or {})
    settable = {f.name for f in fields(ForecastConfig)} - set(_DERIVED_FIELDS)
    sections = values.get("models") or {name: {} for name in MIXERS}
    models, lrs = {}, {}
    for name, overrides in sections.items():
        where = f"models.{name}"
        overrides = dict(overrides or {})
        lrs[name] = overrides.pop("lr", train.lr)
        check_number(f"{where}.lr", lrs[name], "> 0", lambda x: x > 0)
        merged = {"mixer": name, **shared, **overrides}
        unknown = sorted(set(merged) - settable)
        if unknown:
            raise ValueError(f"unknown keys in {where}: {unknown}; valid keys: "
                             f"{sorted(settable | {'lr'})}")
        ForecastConfig(**merged, lookback=data.lookback, horizon=1)
        models[name] = merged
    return ForecastJob(data, models, lrs, list(horizons), train)


def run_name(model: str, horizon: int) -> str:
    return f"{model}-h{horizon}"


def _log(message: str) -> None:
    print(message, flush=True)


@torch.no_grad()
def evaluate(
    model: Forecaster, data: ForecastData, split: str, batch_size: int,
    max_windows: int | None = None,
) -> dict[str, float]:
    """MSE and MAE of ``model`` over the windows of ``split`` (all, or ``max_windows`` evenly
    spaced ones), in the standardised space; averaged over rows, horizon steps and channels."""
    model.eval()
    horizon = model.config.horizon
    count = data.num_windows(split, horizon)
    device = next(model.parameters()).device
    index = torch.arange(count)
    if max_windows is not None and max_windows < count:
        index = torch.linspace(0, count - 1, max_windows).round().long()
    squared = absolute = 0.0
    for batch in index.split(batch_size):
        x, y = data.windows(split, horizon, batch)
        error = model(x.to(device)) - y.to(device)
        squared += float(error.double().pow(2).sum())
        absolute += float(error.double().abs().sum())
    total = index.numel() * horizon * data.num_channels
    return {"mse": squared / total, "mae": absolute / total, "windows": index.numel()}


def train_model(
    config: ForecastConfig, data: ForecastData, train: ForecastTrainConfig, lr: float, tag: str
) -> tuple[Forecaster, dict[str, Any]]:
    """Train one forecaster; returns it with the weights of its best validation epoch and a
    summary (epochs run, best epoch, validation MSE per epoch, train seconds)."""
    torch.manual_seed(train.seed)
    device = train.torch_device()
    model = Forecaster(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train.weight_decay)
    count = data.num_windows("train", config.horizon)
    per_epoch = min(count, train.max_train_windows or count)
    steps_per_epoch = math.ceil(per_epoch / train.batch_size)
    total = steps_per_epoch * train.epochs
    generator = torch.Generator().manual_seed(train.seed)
    best, best_state, val_history, since_best, step = math.inf, None, [], 0, 0
    start = time.perf_counter()
    for epoch in range(1, train.epochs + 1):
        model.train()
        order = torch.randperm(count, generator=generator)[:per_epoch]
        for batch in order.split(train.batch_size):
            x, y = data.windows("train", config.horizon, batch)
            loss = F.mse_loss(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{tag}: the training loss is {float(loss)} at step "
                                         f"{step + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % train.log_every == 0 or step == total:
                elapsed = time.perf_counter() - start
                eta = elapsed / step * (total - step)
                _log(f"[{tag}] epoch {epoch}/{train.epochs} step {step}/{total} "
                     f"loss {loss.item():.4f} elapsed {elapsed:.0f}s eta {eta:.0f}s")
        val = evaluate(model, data, "validation", train.eval_batch_size, train.max_val_windows)
        val_history.append(val["mse"])
        _log(f"[{tag}] epoch {epoch} validation mse {val['mse']:.4f}")
        if val["mse"] < best:
            best, since_best = val["mse"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= train.patience:
                _log(f"[{tag}] early stop: {since_best} epochs without a better validation mse")
                break
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    best_epoch = val_history.index(best) + 1
    return model, {"epochs": len(val_history), "best_epoch": best_epoch,
                   "val_mse": val_history, "train_seconds": seconds}


def save_model(model: Forecaster, folder: Path) -> None:
    """``folder/model.safetensors`` and ``folder/config.json``, each written atomically."""
    with atomic_write(folder / WEIGHTS_FILE) as f:
        f.write(safetensors.torch.save({k: v.contiguous() for k, v in
                                        model.state_dict().items()}))
    atomic_save_json(model.config.to_dict(), folder / "config.json")


def load_model(folder: Path, device: torch.device) -> Forecaster:
    """The forecaster saved in ``folder`` by :func:`save_model`."""
    if not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} holds no {WEIGHTS_FILE}: train the run first")
    config = ForecastConfig(**json.loads((folder / "config.json").read_text()))
    model = Forecaster(config)
    model.load_state_dict(safetensors.torch.load_file(folder / WEIGHTS_FILE))
    return model.to(device)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and run again") from None


def _averages(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per model: the mean MSE / MAE over its horizons (Table 3 reports these means)."""
    out = {}
    for name, per_horizon in results.items():
        rows = list(per_horizon.values())
        out[name] = {"mse": sum(r["mse"] for r in rows) / len(rows),
                     "mae": sum(r["mae"] for r in rows) / len(rows), "horizons": len(rows)}
    return out


def print_table(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """One line per model: test MSE / MAE per horizon and their mean."""
    averages = _averages(results)
    for name, per_horizon in results.items():
        cells = "  ".join(f"h{h} {r['mse']:.3f}/{r['mae']:.3f}" for h, r in per_horizon.items())
        mean = averages[name]
        _log(f"{name:>10}  {cells}  mean {mean['mse']:.3f}/{mean['mae']:.3f}")


def _plot(
    results: dict[str, dict[str, Any]], job: ForecastJob, data: ForecastData, out: Path,
    device: torch.device,
) -> None:
    """Every saved model of ``results`` at the shortest horizon they share forecasting the
    middle test window."""
    horizon = min(int(h) for rows in results.values() for h in rows)
    names = [n for n, rows in results.items() if str(horizon) in rows]
    channel = job.train.plot_channel or data.columns[-1]
    check_choice("train.plot_channel", channel, data.columns)
    c = data.columns.index(channel)
    index = torch.tensor([data.num_windows("test", horizon) // 2])
    x, y = data.windows("test", horizon, index)
    scale, shift = float(data.std[c]), float(data.mean[c])
    forecasts = {}
    with torch.no_grad():
        for name in names:
            model = load_model(out / run_name(name, horizon), device).eval()
            forecasts[name] = (model(x.to(device))[0, :, c].cpu() * scale + shift).tolist()
    plot_forecasts((x[0, :, c] * scale + shift).tolist(), (y[0, :, c] * scale + shift).tolist(),
                   forecasts, out / PLOT_FILE,
                   title=f"{data.name}: {channel}, test window {int(index)}, horizon {horizon}")


def train_forecasts(values: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Train every (model, horizon) of the config ``values`` into ``out`` (reusing those
    ``results.json`` already holds with saved weights and the same settings; other settings are
    an error), then write the results and the plot. Returns the results."""
    job, out = build_job(values), Path(out)
    data = job.data.load()
    device = job.train.torch_device()
    results_path = out / RESULTS_FILE
    # Rows of earlier runs into this directory, of other models too, are kept.
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if results_path.is_file():
        saved = _read_json(results_path)
        if saved["data"] != _data_summary(data):
            raise ValueError(f"{results_path} holds results on other data ({saved['data']}): "
                             "train into another --out")
        results = saved["results"]
    # Every reused model checked before anything is trained or written.
    plan = []
    for name in job.models:
        for horizon in job.horizons:
            folder = out / run_name(name, horizon)
            config = job.model_config(name, data, horizon)
            settings = _settings(job, name, config)
            done = results.get(name, {}).get(str(horizon))
            reuse = done is not None and (folder / WEIGHTS_FILE).is_file()
            if reuse and done.get("settings") != settings:
                raise ValueError(f"{folder} was trained with other settings than this config's: "
                                 "train into another --out, or delete it")
            plan.append((name, horizon, config, settings, reuse))
    atomic_save_json(values, out / "config.json")
    _log(f"{data.name}: {data.num_channels} channels {data.columns}, lookback {data.lookback}, "
         f"splits {data.bounds} ({data.scheme})")
    for name, horizon, config, settings, reuse in plan:
        tag, folder = run_name(name, horizon), out / run_name(name, horizon)
        if reuse:
            _log(f"[{tag}] already trained: test mse {results[name][str(horizon)]['mse']:.4f}")
            continue
        model, summary = train_model(config, data, job.train, job.lrs[name], tag)
        save_model(model, folder)
        test = evaluate(model, data, "test", job.train.eval_batch_size)
        results.setdefault(name, {})[str(horizon)] = {
            "mse": test["mse"], "mae": test["mae"], "test_windows": test["windows"],
            "params": model.num_parameters(), **summary, "settings": settings}
        _log(f"[{tag}] test mse {test['mse']:.4f} mae {test['mae']:.4f} "
             f"({summary['train_seconds']:.0f}s, {model.num_parameters()} params)")
        _write_results(results_path, data, results)
    _write_results(results_path, data, results)
    _plot(results, job, data, out, device)
    print_table(results)
    return results


def _settings(job: ForecastJob, name: str, config: ForecastConfig) -> dict[str, Any]:
    """What a trained model depends on: its config, the data and the training settings (not
    the logging, plotting, evaluation batch or device), as JSON values."""
    train = {k: v for k, v in asdict(job.train).items()
             if k not in ("log_every", "plot_channel", "eval_batch_size", "device")}
    return json.loads(json.dumps({"model": config.to_dict(), "data": asdict(job.data),
                                  "train": {**train, "lr": job.lrs[name]}}))


def _data_summary(data: ForecastData) -> dict[str, Any]:
    """The data a results file is about, as JSON values."""
    return json.loads(json.dumps({"name": data.name, "columns": data.columns,
                                  "lookback": data.lookback, "scheme": data.scheme,
                                  "bounds": data.bounds}))


def _write_results(path: Path, data: ForecastData, results: dict[str, Any]) -> None:
    atomic_save_json({"data": _data_summary(data), "results": results,
                      "averages": _averages(results)}, path)


def evaluate_forecasts(run: str | Path) -> dict[str, Any]:
    """Re-evaluate the saved models of the run directory ``run`` (those its ``results.json``
    lists) on the test split, the data reloaded from its config; write ``eval.json`` and the
    plot there; returns the results."""
    run = Path(run)
    if not (run / "config.json").is_file() or not (run / RESULTS_FILE).is_file():
        raise ValueError(f"{run} is not a forecast run directory (no config.json and "
                         f"{RESULTS_FILE}): run `titans forecast train` first")
    values = _read_json(run / "config.json")
    check_sections(values, FORECAST_SECTIONS)
    job = build_job(values)
    data = job.data.load()
    device = job.train.torch_device()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rows in _read_json(run / RESULTS_FILE)["results"].items():
        for horizon in rows:
            model = load_model(run / run_name(name, int(horizon)), device)
            test = evaluate(model, data, "test", job.train.eval_batch_size)
            results.setdefault(name, {})[horizon] = {
                "mse": test["mse"], "mae": test["mae"], "test_windows": test["windows"],
                "params": model.num_parameters()}
    _write_results(run / "eval.json", data, results)
    _plot(results, job, data, run, device)
    print_table(results)
    return results


__all__ = [
    "FORECAST_SECTIONS", "ForecastDataConfig", "ForecastJob", "ForecastTrainConfig", "build_job",
    "evaluate", "evaluate_forecasts", "load_model", "save_model", "train_forecasts",
    "train_model",
]

