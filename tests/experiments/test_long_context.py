"""titans.experiments.long_context: the settings of `titans eval niah|babi` are checked before
any run is read, the defaults, and the figures of merged reports. (Whole evaluations:
tests/test_cli.py; the evaluation itself: tests/evals/test_long_context.py.)"""

import re

import pytest

from titans.experiments.long_context import QUICK, TASK_EVAL, evaluate_runs, plot_report


def test_the_defaults_cover_every_task_of_their_kind():
    assert TASK_EVAL["niah"]["tasks"] == ["niah1", "niah2", "niah3"]
    assert TASK_EVAL["babi"]["tasks"] == ["qa1", "qa2", "qa3", "qa4", "qa5"]
    assert TASK_EVAL["babi"]["depths"] is None  # bAbI facts are scattered, not at a depth
    assert QUICK["items"] < min(d["items"] for d in TASK_EVAL.values())


@pytest.mark.parametrize(("kind", "kwargs", "message"), [
    ("babi", {"depths": [0.5]}, "--depths is for niah"),
    ("niah", {"tasks": ["qa1"]}, "not ['qa1']"),
    ("babi", {"tasks": ["qa1", "niah1"]}, "not ['niah1']"),
    ("niah", {"depths": [0.0, 1.5]}, "must lie in [0, 1]"),
    ("niah", {"depths": [-0.1]}, "must lie in [0, 1]"),
])
def test_bad_settings_are_refused_before_any_run_is_read(tmp_path, kind, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_runs(kind, [str(tmp_path / "absent")], out=str(tmp_path / "r.json"), **kwargs)
    assert not (tmp_path / "r.json").exists()


def test_runs_need_distinct_names(tmp_path):
    with pytest.raises(ValueError, match="distinct directory names"):
        evaluate_runs("niah", [str(tmp_path / "a" / "mac"), str(tmp_path / "b" / "mac")])


def test_a_run_without_its_data_config_is_named(tmp_path):
    (tmp_path / "mac").mkdir()
    with pytest.raises(ValueError, match=r"has no data\.json: was it trained with "):
        evaluate_runs("babi", [str(tmp_path / "mac")], out=str(tmp_path / "r.json"))


def test_a_merged_report_plots_each_task_with_the_models_that_ran_it(tmp_path):
    def rows(task, accuracy):
        return [{"task": task, "length": n, "depth": d, "accuracy": accuracy, "items": 4,
                 "correct": int(4 * accuracy)} for n in (128, 512) for d in (0.1, 0.9)]

    report = {"kind": "niah", "tasks": ["niah1", "niah2"], "models": {
        "both": {"rows": rows("niah1", 1.0) + rows("niah2", 0.5)},
        "niah1-only": {"rows": rows("niah1", 0.25)}}}
    plot_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "niah1-accuracy-vs-length.png", "niah1-both.png", "niah1-niah1-only.png",
        "niah2-accuracy-vs-length.png", "niah2-both.png"]
