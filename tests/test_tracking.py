"""titans.tracking: the records of a training session go to metrics.jsonl and, without a terminal,
to one plain line each; other ranks report nothing; a missing tracker package is a clear error.
(The records a training run writes: tests/test_train.py.)"""

import sys

import pytest

from titans import TitansConfig
from titans.runs import METRICS_FILE, read_metrics
from titans.runtime import RuntimeConfig
from titans.tracking import TrainingLog, check_trackers_installed
from titans.train import TrainConfig

MODEL = TitansConfig(variant="mac", vocab_size=64, hidden_size=32, num_hidden_layers=2,
                     num_heads=2, segment_len=16, chunk_size=4)
STEP = {"step": 1, "tokens": 64, "loss": 4.17403, "lr": 0.003, "grad_norm": 1.5,
        "memory_weight_norm_max": 8.1923, "memory_lr_max": 0.0125, "memory_momentum_max": 0.81,
        "tokens_per_s": 1234.4, "elapsed": 0.5}
EVAL = {"step": 2, "tokens": 128, "val_loss": 4.07491, "elapsed": 0.9}


@pytest.mark.parametrize("progress", [True, False])
def test_records_go_to_the_metrics_file_and_plain_lines(tmp_path, capsys, progress):
    cfg = TrainConfig(out_dir=str(tmp_path), progress=progress)
    log = TrainingLog(cfg, MODEL, RuntimeConfig(), start_step=0, num_steps=4, enabled=True)
    log.train_record(STEP, eta=150.0)
    log.step_done()
    log.eval_record(EVAL)
    log.close()
    assert read_metrics(tmp_path / METRICS_FILE) == [STEP, EVAL]
    expected = ("step 1/4  loss 4.1740  |W| 8.19  theta 0.0125  mom 0.81  1234 tok/s  eta 2.5 min\n"
                "step 2/4  validation loss 4.0749\n")
    assert capsys.readouterr().out == (expected if progress else "")


def test_a_process_that_does_not_report_writes_nothing(tmp_path, capsys):
    log = TrainingLog(TrainConfig(out_dir=str(tmp_path / "run")), MODEL, RuntimeConfig(), 0, 4,
                      enabled=False)
    log.train_record(STEP, eta=1.0)
    log.eval_record(EVAL)
    log.close()
    assert not (tmp_path / "run").exists() and capsys.readouterr().out == ""


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_a_missing_tracker_package_is_named(monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # as if the package were not installed
    with pytest.raises(ImportError, match=rf"{tracker}=True needs the {tracker} package: "
                                          rf"pip install 'titans-lm\[{tracker}\]'"):
        check_trackers_installed(TrainConfig(**{tracker: True}))
    check_trackers_installed(TrainConfig())  # nothing enabled: nothing needed
