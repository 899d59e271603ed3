"""Models trained side by side on the same data and token budget, then evaluated and tabulated
(``titans compare``, the README's main job).

The output directory holds one run directory per model (:mod:`titans.runs`), the training loss
curves of all of them (``loss_curves.png``) and the report (``results.json``). With a ``task``
section the models are fine-tuned on long-context tasks instead of language modelling, and
evaluated by answer accuracy at the training length. A ``recall`` section adds such a task
comparison after the main one (in ``recall/``), evaluated on its needle tasks at multiples of its
training length: how far beyond it each model still finds the needle.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from titans import runs
from titans.checks import check_int, check_ints
from titans.config_files import (
    RECALL_SECTIONS,
    DataConfig,
    EvalConfig,
    TaskConfig,
    build_dataclass,
    check_sections,
    model_config,
)
from titans.data.pipeline import prepare
from titans.evals import evaluate_perplexity, generate_text
from titans.evals.tasks import NEEDLE_TASKS, TaskBatches
from titans.experiments.long_context import evaluate_runs, task_accuracy, task_generators
from titans.experiments.single_run import context_lengths, print_perplexity
from titans.io import atomic_save_json
from titans.models import TitansConfig, count_parameters, match_parameters
from titans.plots import plot_loss_curves
from titans.runtime import RuntimeConfig
from titans.train import TrainConfig, train

RESULTS_FILE = "results.json"
LOSS_CURVES_FILE = "loss_curves.png"
RECALL_DIR = "recall"
RECALL_FILE = "niah.json"
RECALL_MULTIPLIERS = [1, 4, 16]
DEFAULT_SAMPLE = {"prompt": "Fellow-Citizens of the Senate and House of Representatives:",
                  "max_new_tokens": 60}


def compare(values: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and tabulate the models of a comparison config's sections (``models``:
    name -> model section; ``match_parameters``, ``train``, ``data``, ``eval``, ``sample``,
    ``task``, ``runtime``: for every model; ``recall``: see :func:`recall_comparison`) into
    ``out``. ``resume`` continues (or just re-evaluates) the runs already there.

    Unless ``match_parameters`` is false, every model but the first (the reference) without an
    explicit ``intermediate_size`` has its MLP width matched to the reference's parameter count.
    Returns the report also written to ``out/results.json``.
    """
    start = time.perf_counter()
    if not isinstance(values.get("models"), dict) or not values["models"]:
        raise ValueError("compare needs a 'models' section: name -> model settings")
    data = build_dataclass(DataConfig, values.get("data"), "data")
    eval_cfg = build_dataclass(EvalConfig, values.get("eval"), "eval")
    task_cfg = build_dataclass(TaskConfig, values["task"], "task") if "task" in values else None
    runtime = build_dataclass(RuntimeConfig, values.get("runtime"), "runtime")
    recall = values.get("recall")
    if recall is not None:
        _check_recall(recall)  # before hours of training, not after
    sample = {**DEFAULT_SAMPLE, **(values.get("sample") or {})}
    # Checked before any training: a bad value found only at sampling time would waste it.
    unknown = sorted(set(sample) - set(DEFAULT_SAMPLE))
    if unknown:
        raise ValueError(f"unknown keys in 'sample': {unknown}; valid keys: "
                         f"{sorted(DEFAULT_SAMPLE)}")
    if not isinstance(sample["prompt"], str):
        raise ValueError(f"sample.prompt must be a string, got {sample['prompt']!r}")
    check_int("sample.max_new_tokens", sample["max_new_tokens"], 0)
    if task_cfg is None:
        tokenizer, files = prepare(data)
        train_data, val_data = files["train"].tokens, files["validation"].tokens
        print(f"data ready: {len(files['train']):,} training tokens "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    else:
        tokenizer, generators = task_generators(data)
        train_data, val_data = (
            TaskBatches(generators[split], task_cfg.tasks, task_cfg.weights,
                        task_cfg.score_context) for split in ("train", "validation"))
        print(f"task data ready: {', '.join(task_cfg.tasks)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    configs = model_configs(values["models"], tokenizer.vocab_size,
                             values.get("match_parameters", True))
    results = []
    for name, cfg in configs.items():
        run = out / name
        train_cfg = build_dataclass(
            TrainConfig, {**(values.get("train") or {}), "out_dir": str(run)}, "train")
        print(f"\n== {name}: {cfg.variant}, {count_parameters(cfg):,} parameters", flush=True)
        summary = train(cfg, train_cfg, train_data, val_data,
                        resume=resume and runs.has_checkpoint(run), runtime=runtime, data=data)
        if not summary.get("tokens_per_s"):
            # A resumed run that had already finished trained nothing in this session.
            speeds = [r["tokens_per_s"] for r in runs.read_metrics(run / runs.METRICS_FILE)
                      if "tokens_per_s" in r][1:]
            summary["tokens_per_s"] = sum(speeds) / len(speeds) if speeds else float("nan")
        # This runtime, not the one saved: a finished run resumed with new knobs saves nothing.
        model, _ = runs.load_checkpoint(run, runtime)
        result = {"name": name, "variant": cfg.variant, "parameters": count_parameters(cfg),
                  "train": summary}
        if task_cfg is None:
            lengths = context_lengths(eval_cfg, train_cfg.seq_len, None)
            result["eval"] = evaluate_perplexity(
                model, files[eval_cfg.split].tokens, lengths, decode=tokenizer.decode,
                max_tokens=eval_cfg.max_tokens, piece_len=eval_cfg.piece_len)
            print_perplexity(result["eval"])
            text = generate_text(model, tokenizer, sample["prompt"], sample["max_new_tokens"])
            result["sample"] = sample["prompt"] + text
        else:
            result["accuracy"] = task_accuracy(model, generators["test"], task_cfg,
                                               train_cfg.seq_len)
            print("accuracy at the training length: " + ", ".join(
                f"{t} {a:.2f}" for t, a in result["accuracy"].items()), flush=True)
        results.append(result)

    plot_loss_curves({r["name"]: out / r["name"] / runs.METRICS_FILE for r in results},
                     out / LOSS_CURVES_FILE,
                     title="training on the default corpus" if task_cfg is None else
                     "fine-tuning on long-context tasks (loss on the answers)")
    report = {"data": asdict(data), "results": results,
              "wall_time_s": time.perf_counter() - start}
    if task_cfg is not None:
        report["task"] = asdict(task_cfg)
    atomic_save_json(report, out / RESULTS_FILE)
    if task_cfg is None:
        print_comparison(results, eval_cfg.split)
    else:
        print_task_comparison(results)
    if recall is not None:
        report["recall"] = recall_comparison(
            recall, out / RECALL_DIR, resume,
            {key: values[key] for key in ("data", "runtime") if key in values})
        report["wall_time_s"] = time.perf_counter() - start
        atomic_save_json(report, out / RESULTS_FILE)
    print(f"\nloss curves: {out / LOSS_CURVES_FILE}; results: {out / RESULTS_FILE}; "
          f"total {report['wall_time_s'] / 60:.1f} min")
    return report


def _check_recall(section: Any) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"recall must be a section (models, task, train, ...), got {section!r}")
    check_sections(section, RECALL_SECTIONS)
    if "task" not in section:
        raise ValueError("recall needs a task section: the needle tasks its models train on")
    tasks = build_dataclass(TaskConfig, section["task"], "recall.task").tasks
    if not all(task in NEEDLE_TASKS for task in tasks):
        raise ValueError(f"recall.task.tasks must be needle tasks {NEEDLE_TASKS}, got {tasks}: "
                         "recall is scored with a needle at set depths")
    check_ints("recall.multipliers", section.get("multipliers", RECALL_MULTIPLIERS), 1)


def recall_comparison(section: dict[str, Any], out: Path, resume: bool,
                      shared: dict[str, Any]) -> dict[str, Any]:
    """The ``recall`` section of a comparison: its models (``models``, ``match_parameters``,
    ``train``) fine-tuned on its ``task`` items side by side (a task comparison in ``out``, with
    the main comparison's ``shared`` data and runtime sections), then scored on the task's needle
    tasks at ``multipliers`` (default 1, 4, 16) times the training length, at the task's
    ``eval_depths`` with ``eval_items`` items per cell. Prints the accuracy table, writes
    ``out/niah.json`` and the plots (accuracy against length, one heatmap per model) into
    ``out``, and returns ``{"comparison": the task report, "niah": the evaluation report}``."""
    _check_recall(section)
    comparison = compare({**shared, **{k: v for k, v in section.items() if k != "multipliers"}},
                         out, resume)
    task_cfg = build_dataclass(TaskConfig, section["task"], "recall.task")
    seq_len = build_dataclass(TrainConfig, {**(section.get("train") or {}),
                                            "out_dir": str(out)}, "recall.train").seq_len
    lengths = [m * seq_len for m in section.get("multipliers", RECALL_MULTIPLIERS)]
    print(f"\n== recall beyond the training length ({seq_len} tokens): "
          f"{', '.join(task_cfg.tasks)} at {lengths}", flush=True)
    niah = evaluate_runs("niah", [str(out / r["name"]) for r in comparison["results"]],
                         tasks=task_cfg.tasks, lengths=lengths, depths=task_cfg.eval_depths,
                         items=task_cfg.eval_items, out=str(out / RECALL_FILE), plots=str(out))
    print_recall_table(niah)
    return {"comparison": comparison, "niah": niah}


def print_recall_table(niah: dict[str, Any]) -> None:
    """Accuracy per model (rows) and context length (columns), over depths and items, per task."""
    for task in niah["tasks"]:
        per_model = {name: [r for r in m["rows"] if r["task"] == task]
                     for name, m in niah["models"].items()}
        lengths = sorted({r["length"] for rows in per_model.values() for r in rows})
        head = f"{'model':<14}" + "".join(f"{n:>9}" for n in lengths)
        print(f"\n{task}: accuracy against context length (tokens; needle depths "
              f"{niah['depths']}, {niah['items']} items each)\n{head}\n{'-' * len(head)}")
        for name, rows in per_model.items():
            cells = []
            for n in lengths:
                here = [r for r in rows if r["length"] == n]
                if here[0]["accuracy"] is None:
                    cells.append(f"{'not run':>9}")
                    continue
                accuracy = sum(r["correct"] for r in here) / sum(r["items"] for r in here)
                cells.append(f"{accuracy:>8.0%} ")
            print(f"{name:<14}" + "".join(cells))


def model_configs(sections: dict[str, Any], vocab_size: int,
                   match: bool) -> dict[str, TitansConfig]:
    """Each model section's config; with ``match``, every model after the first whose section
    does not fix ``intermediate_size`` is resized to the first one's parameter count."""
    configs = {name: model_config(section, vocab_size) for name, section in sections.items()}
    if match:
        reference = next(iter(configs))
        target = count_parameters(configs[reference])
        for name, section in sections.items():
            if name != reference and "intermediate_size" not in (section or {}):
                configs[name] = match_parameters(configs[name], target)
    return configs


def print_task_comparison(results: list[dict[str, Any]]) -> None:
    """The side-by-side table of a task fine-tuning comparison."""
    tasks = list(results[0]["accuracy"])
    head = f"{'model':<14}{'params':>9}{'train tok/s':>13}{'val loss':>10}"
    head += "".join(f"{t:>7}" for t in tasks)
    print("\nanswer accuracy at the training length (held-out prose)\n" + head + "\n"
          + "-" * len(head))
    for r in results:
        val = r["train"].get("final_val_loss")
        row = (f"{r['name']:<14}{r['parameters'] / 1e6:>8.2f}M"
               f"{r['train']['tokens_per_s']:>13.0f}"
               f"{'-' if val is None else format(val, '.4f'):>10}")
        print(row + "".join(f"{r['accuracy'][t]:>7.2f}" for t in tasks))


def print_comparison(results: list[dict[str, Any]], split: str) -> None:
    """The side-by-side table of the main job, then each model's sample."""
    lengths = [r["context_length"] for r in results[0]["eval"]]
    head = f"{'model':<14}{'params':>9}{'train tok/s':>13}{'val ppl':>9}"
    head += "".join(f"{'bpb@' + str(n):>11}" for n in lengths)
    print(f"\n{split} bits-per-byte at each context length (tokens); val ppl at the end of "
          "training\n" + head + "\n" + "-" * len(head))
    for r in results:
        val = r["train"].get("final_val_loss")
        ppl = f"{math.exp(val):.2f}" if val is not None else "-"
        row = (f"{r['name']:<14}{r['parameters'] / 1e6:>8.2f}M"
               f"{r['train']['tokens_per_s']:>13.0f}{ppl:>9}")
        print(row + "".join(f"{e['bits_per_byte']:>11.4f}" for e in r["eval"]))
    for r in results:
        print(f"\n-- sample from {r['name']} (temperature 0.8, top-k 50):\n{r['sample']}")
