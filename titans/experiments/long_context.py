"""Long-context task accuracy of trained runs (``titans eval niah|babi``), and the task data over
a data config's prose that it shares with the task fine-tuning of ``titans compare``.

Every run is evaluated on the same items (one seed), rendered from the held-out prose of its own
data config; the results go to one JSON file, rewritten after every model, and optionally to
plots: accuracy against context length per task, and for needle tasks one heatmap per model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from titans import runs
from titans.checks import check_int
from titans.config_files import DataConfig, TaskConfig
from titans.data.pipeline import load_corpus
from titans.data.tokenizer import Tokenizer
from titans.evals.babi import BABI_TASKS
from titans.evals.long_context import BATCH_SIZE, MAX_FULL_ATTENTION, PIECE_LEN, evaluate_task
from titans.evals.tasks import NEEDLE_TASKS, TaskGenerator, needs_depth
from titans.io import atomic_save_json
from titans.machine import describe_machine
from titans.models import TitansLM
from titans.plots import format_length, plot_accuracy_vs_length, plot_niah_heatmap

# Defaults of `titans eval niah|babi`: full and --quick settings.
TASK_EVAL = {
    "niah": {"tasks": list(NEEDLE_TASKS), "depths": [0.0, 0.25, 0.5, 0.75, 1.0],
             "multipliers": [1, 4, 16, 64], "items": 4},
    "babi": {"tasks": list(BABI_TASKS), "depths": None,  # bAbI facts are scattered: no depth
             "multipliers": [1, 4, 16, 64], "items": 8},
}
QUICK = {"multipliers": [1, 4], "items": 2, "niah_depths": [0.0, 0.5, 1.0]}


def task_generators(
    data: DataConfig, which: tuple[str, ...] = ("train", "validation", "test")
) -> tuple[Tokenizer, dict[str, TaskGenerator]]:
    """Tokenizer and task generators over the corpus's prose: ``train`` (training split, for
    fine-tuning), ``validation`` (its loss during training) and ``test`` (validation + test
    documents: the held-out prose every evaluation item is cut from)."""
    corpus, tokenizer = load_corpus(data)
    documents = {"train": ("train",), "validation": ("validation",),
                 "test": ("validation", "test")}
    return tokenizer, {name: TaskGenerator(tokenizer, [d.text for split in documents[name]
                                                       for d in corpus.split(split)])
                       for name in which}


def task_accuracy(model: TitansLM, generator: TaskGenerator, task_cfg: TaskConfig,
                  length: int) -> dict[str, float]:
    """Answer accuracy per task at one context length, over depths and items (held-out prose)."""
    accuracy = {}
    for task in task_cfg.tasks:
        depths = task_cfg.eval_depths if needs_depth(task) else None
        rows = evaluate_task(model, generator, task, [length], depths, task_cfg.eval_items)
        accuracy[task] = sum(r["correct"] for r in rows) / sum(r["items"] for r in rows)
    return accuracy


def evaluate_runs(
    kind: str,
    run_dirs: list[str],
    *,
    tasks: list[str] | None = None,
    lengths: list[int] | None = None,
    depths: list[float] | None = None,
    items: int | None = None,
    quick: bool = False,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    piece_len: int = PIECE_LEN,
    max_full_attention: int | None = MAX_FULL_ATTENTION,
    out: str | None = None,
    plots: str | None = None,
) -> dict[str, Any]:
    """Accuracy per (task, length, depth) of each run on ``kind``'s tasks ("niah" or "babi"),
    streamed with carried state (:func:`titans.evals.long_context.evaluate_task`).

    tasks, lengths, depths (niah only), items: None for :data:`TASK_EVAL`'s defaults, or with
    ``quick`` :data:`QUICK`'s. lengths default to multiples of each run's training length. The
    report (settings, machine, and per model its rows) is written to ``out`` (None:
    ``./<kind>.json``) after every model, and returned; ``plots``: a directory for the PNGs.
    """
    start = time.perf_counter()
    defaults = TASK_EVAL[kind]
    tasks = tasks or defaults["tasks"]
    wrong = [t for t in tasks if t not in defaults["tasks"]]
    if wrong:
        raise ValueError(f"titans eval {kind} runs {defaults['tasks']}, not {wrong}")
    if all(needs_depth(task) for task in tasks):  # a kind's tasks all take depths, or none does
        depths = depths or (QUICK["niah_depths"] if quick else defaults["depths"])
        if any(not 0 <= d <= 1 for d in depths):
            raise ValueError(f"--depths must lie in [0, 1], got {depths}")
    elif depths:
        raise ValueError("bAbI facts are scattered through the prose: --depths is for niah")
    if items is None:
        items = QUICK["items"] if quick else defaults["items"]
    check_int("items per cell", items, 1)
    names = [Path(run).name for run in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs must have distinct directory names, got {names}")
    out_path = Path(out or f"{kind}.json")

    generators: dict[str, TaskGenerator] = {}  # one per data config (tokenizer, held-out prose)
    report: dict[str, Any] = {
        "kind": kind, "tasks": tasks, "depths": depths, "items": items, "seed": seed,
        "quick": quick, "machine": _machine(), "models": {},
    }
    for run, name in zip(run_dirs, names, strict=True):
        data = runs.read_data_config(run)
        key = json.dumps(asdict(data), sort_keys=True)
        if key not in generators:
            generators[key] = task_generators(data, ("test",))[1]["test"]
        model, saved = runs.load_checkpoint(run)
        seq_len = saved["train"]["seq_len"]
        multipliers = QUICK["multipliers"] if quick else defaults["multipliers"]
        run_lengths = lengths or [m * seq_len for m in multipliers]
        rows = []
        for task in tasks:
            rows += evaluate_task(model, generators[key], task, run_lengths, depths, items, seed,
                                  batch_size, piece_len, max_full_attention)
            _print_task_rows(name, task, [r for r in rows if r["task"] == task])
        report["models"][name] = {"run": str(run), "variant": model.config.variant,
                                  "parameters": model.num_parameters(), "rows": rows}
        report["wall_time_s"] = time.perf_counter() - start
        atomic_save_json(report, out_path)  # after every model: a long run keeps what it measured
    if plots:
        plot_report(report, Path(plots))
    print(f"results: {out_path}" + (f"; plots: {plots}" if plots else "")
          + f"; {report['wall_time_s'] / 60:.1f} min")
    return report


def plot_report(report: dict[str, Any], folder: Path) -> None:
    """Per task: accuracy against length of every model, and for needle tasks each model's
    heatmap. A model without rows of a task (reports merged from runs on different tasks) is
    left out of that task's figures."""
    for task in report["tasks"]:
        curves = {name: rows for name, m in report["models"].items()
                  if (rows := [r for r in m["rows"] if r["task"] == task])}
        plot_accuracy_vs_length(curves, folder / f"{task}-accuracy-vs-length.png",
                                title=f"{task}: accuracy against context length")
        if needs_depth(task):
            for name, rows in curves.items():
                plot_niah_heatmap(rows, folder / f"{task}-{name}.png", title=f"{task}, {name}")


def _print_task_rows(name: str, task: str, rows: list[dict[str, Any]]) -> None:
    """One line per length: accuracy over all depths, throughput and peak memory."""
    for length in sorted({r["length"] for r in rows}):
        here = [r for r in rows if r["length"] == length]
        if here[0]["accuracy"] is None:
            print(f"{name:<12} {task:<6}{format_length(length):>6}  not run: {here[0]['skipped']}")
            continue
        accuracy = sum(r["correct"] for r in here) / sum(r["items"] for r in here)
        print(f"{name:<12} {task:<6}{format_length(length):>6}  accuracy {accuracy:5.2f}  "
              f"{here[0]['tokens_per_s']:8.0f} tok/s  peak {here[0]['peak_memory_mib']:7.0f} MiB",
              flush=True)


def _machine() -> dict[str, Any]:
    """Where a result was measured: the machine and its CUDA device, if any."""
    return {**describe_machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
