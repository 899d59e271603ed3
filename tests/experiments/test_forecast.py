"""titans.experiments.forecast and ``titans forecast``: the config sections, the test metrics,
one-line CLI errors, and a tiny train + eval round trip on a real ETTh1 slice (slow)."""

import csv
import json

import pytest
import torch

from titans.cli import main
from titans.data.timeseries import load_forecast_data
from titans.experiments.forecast import build_job, evaluate
from titans.models.forecasting import MIXERS, ForecastConfig, Forecaster

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ett_head(tmp_path, ett_rows):
    """The first 600 rows of the real ETTh1 file (70/10/20 split under this name)."""
    path = tmp_path / "head.csv"  # not ETTh*: the 70/10/20 split
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(ett_rows(600))
    return path


def test_a_job_from_config_sections():
    job = build_job({})
    assert list(job.models) == list(MIXERS) and job.horizons == [96, 192, 336, 720]
    job = build_job({"model": {"hidden_size": 32}, "horizons": [24],
                     "models": {"mem": {"mixer": "memory", "lr": 0.01}, "dlinear": None},
                     "train": {"lr": 0.002}})
    assert job.lrs == {"mem": 0.01, "dlinear": 0.002}
    assert job.models["mem"] == {"mixer": "memory", "hidden_size": 32}
    assert job.models["dlinear"] == {"mixer": "dlinear", "hidden_size": 32}


@pytest.mark.parametrize(("values", "message"), [
    ({"models": {"memory": {"horizon": 12}}}, r"unknown keys in models.memory: \['horizon'\]"),
    ({"models": {"lstm": {}}}, "mixer must be one of"),
    ({"models": {"memory": {"lr": 0}}}, "models.memory.lr must be a finite number > 0"),
    ({"horizons": [96, 0]}, "horizons must be a non-empty list of ints >= 1"),
    ({"model": {"patch_len": 7}}, "patch_len 7 must divide lookback 96"),
    ({"train": {"epochs": 0}}, "train.epochs must be an int >= 1"),
    ({"data": {"split": "random"}}, "data.split must be one of"),
])
def test_bad_sections_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        build_job(values)


def test_test_metrics_average_every_row_step_and_channel(ett_head):
    data = load_forecast_data(ett_head, lookback=16)
    model = Forecaster(ForecastConfig(mixer="dlinear", num_channels=7, lookback=16, horizon=4,
                                      moving_average=3, normalize_window=False))
    for p in model.parameters():
        torch.nn.init.zeros_(p)  # forecasts 0: the errors are the targets themselves
    count = data.num_windows("test", 4)
    _, y = data.windows("test", 4, torch.arange(count))
    result = evaluate(model, data, "test", batch_size=7)
    assert result["windows"] == count == 136 - 16 - 4 + 1
    assert result["mse"] == pytest.approx(float(y.double().pow(2).mean()), rel=1e-9)
    assert result["mae"] == pytest.approx(float(y.double().abs().mean()), rel=1e-9)
    sampled = evaluate(model, data, "test", batch_size=7, max_windows=3)
    index = torch.tensor([0, (count - 1) // 2, count - 1])
    assert sampled["windows"] == 3
    assert sampled["mse"] == pytest.approx(
        float(data.windows("test", 4, index)[1].double().pow(2).mean()), rel=1e-6)


TRAIN = ["forecast", "train", "--config", "{config}", "--out", "{tmp}/run"]


@pytest.mark.parametrize(("argv", "expected"), [
    (TRAIN, "lookback 16 + horizon 200 is longer than the validation part of head (76 rows)"),
    ([*TRAIN, "--set", "data.columns=[OT, x]"], "has no column 'x'"),
    ([*TRAIN, "--set", "window=3"], "unknown config sections ['window']"),
    (["forecast", "eval", "--run", "{tmp}/nothing"], "is not a forecast run directory"),
])
def test_cli_errors_are_one_line(ett_head, tmp_path, capsys, argv, expected):
    config = tmp_path / "forecast.yaml"
    config.write_text(f"data:\n  path: {ett_head}\n  lookback: 16\nhorizons: [200]\n"
                      "models:\n  dlinear: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(config=config, tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("titans forecast: error: ") and expected in err


@pytest.mark.slow
def test_train_then_eval_round_trip(ett_head, tmp_path, capsys):
    config = tmp_path / "forecast.yaml"
    config.write_text(
        f"data:\n  path: {ett_head}\n  lookback: 16\n"
        "model:\n  patch_len: 4\n  hidden_size: 16\n  num_hidden_layers: 1\n  num_heads: 2\n"
        "  chunk_size: 2\n  window_size: 2\n  moving_average: 5\n"
        "models:\n  memory: {}\n  attention: {}\n  swa: {}\n  dlinear: {}\n"
        "horizons: [4, 8]\n"
        "train:\n  epochs: 2\n  batch_size: 32\n  log_every: 5\n  plot_channel: OT\n")
    run = tmp_path / "run"
    main(["forecast", "train", "--config", str(config), "--out", str(run)])
    out = capsys.readouterr().out
    assert "[memory-h4] epoch 1/2 step 5/26 loss" in out and "eta" in out
    assert "[dlinear-h8] test mse" in out
    results = json.loads((run / "results.json").read_text())
    assert results["data"]["bounds"] == {"train": [0, 420], "validation": [404, 480],
                                        "test": [464, 600]}
    for name in MIXERS:
        for horizon in ("4", "8"):
            row = results["results"][name][horizon]
            assert row["epochs"] >= 1 and row["train_seconds"] > 0 and row["params"] > 0
            assert 0 < row["mse"] < 2 and 0 < row["mae"] < 2
    assert (run / "forecasts.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "memory-h8" / "model.safetensors").is_file()

    main(["forecast", "eval", "--run", str(run)])
    evaluated = json.loads((run / "eval.json").read_text())
    for name in MIXERS:
        for horizon in ("4", "8"):
            assert evaluated["results"][name][horizon]["mse"] == pytest.approx(
                results["results"][name][horizon]["mse"], rel=1e-6)

    # A re-run keeps what is done, also with fewer models; other settings are refused.
    capsys.readouterr()
    main(["forecast", "train", "--config", str(config), "--out", str(run), "--set",
          "models={swa: {}}", "--set", "train.log_every=1"])
    assert "[swa-h8] already trained" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["results"] == results["results"]
    with pytest.raises(SystemExit):
        main(["forecast", "train", "--config", str(config), "--out", str(run), "--set",
              "train.lr=0.01"])
    assert "memory-h4 was trained with other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["forecast", "train", "--config", str(config), "--out", str(run), "--set",
              "data.lookback=8", "--set", "model.patch_len=2"])
    assert "results.json holds results on other data" in capsys.readouterr().err
    # eval covers every model results.json lists, whatever the last config named.
    main(["forecast", "eval", "--run", str(run)])
    assert set(json.loads((run / "eval.json").read_text())["results"]) == set(MIXERS)
