"""The ``titans`` command: train, eval, generate, info, and compare (the README's main job).

    titans train --config configs/mac-small.yaml --set train.max_steps=200 --out runs/mac
    titans train --config configs/mac-small.yaml --out runs/mac --resume
    titans eval --run runs/mac --context-lengths 512 2048
    titans eval niah --run runs/long-context/mac runs/long-context/swa --quick
    titans eval babi --run runs/long-context/mac --lengths 256 4096 --out babi.json
    titans generate --run runs/mac --prompt "Fellow-Citizens" --max-new-tokens 80
    titans info --config configs/mac-small.yaml
    titans compare --config configs/main.yaml

Errors in configs, data or arguments print one line and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from titans.config_files import (
    DataConfig,
    EvalConfig,
    TaskConfig,
    apply_overrides,
    build_dataclass,
    check_sections,
    model_config,
    read_config_file,
)
from titans.io import atomic_save_json, safe_filename
from titans.models import TitansConfig, count_parameters, match_parameters

DATA_FILE = "data.json"  # a run's data config, next to its checkpoint


def _load(args: argparse.Namespace, sections: tuple[str, ...]) -> dict[str, Any]:
    values = read_config_file(args.config) if args.config else {}
    values = apply_overrides(values, args.set or [])
    check_sections(values, sections)
    return values


def _source_name(source: str) -> str:
    """A cache-safe name for a data source: its base name and a short hash of where it is."""
    if source.startswith("hf:"):
        stem = source[3:]
    else:
        path = Path(source).expanduser().resolve()
        source, stem = str(path), path.stem
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return f"{safe_filename(stem)}-{digest}"


def load_corpus(data: DataConfig) -> tuple[Any, Any]:
    """The data config's corpus (split by document) and tokenizer (both cached)."""
    from titans.data import corpus_from_documents, default_corpus, load_documents, load_tokenizer

    if data.source == "default":
        corpus = default_corpus()
    else:
        docs = load_documents(data.source, data.text_field)
        corpus = corpus_from_documents(_source_name(data.source), docs)
    return corpus, load_tokenizer(data.tokenizer, corpus)


def prepare(data: DataConfig) -> tuple[Any, dict[str, Any]]:
    """Corpus -> tokenizer -> packed token files for train/validation/test (all cached)."""
    from titans.data import prepare_data

    corpus, tokenizer = load_corpus(data)
    return tokenizer, prepare_data(corpus, tokenizer)


def _vocab_size(data: DataConfig) -> int:
    """The tokenizer's vocabulary size, without training it when the spec says it."""
    match = re.fullmatch(r"bpe(?::(\d+))?", data.tokenizer)
    if match:
        return int(match.group(1) or 8192)
    return prepare(data)[0].vocab_size


def _context_lengths(eval_cfg: EvalConfig, seq_len: int, given: list[int] | None) -> list[int]:
    return given or [m * seq_len for m in eval_cfg.context_multipliers]


def _print_eval(rows: list[dict]) -> None:
    print(f"{'context':>8}{'tokens':>10}{'nll':>9}{'ppl':>10}{'bits/byte':>11}")
    for r in rows:
        print(f"{r['context_length']:>8}{r['tokens']:>10}{r['nll']:>9.4f}{r['ppl']:>10.2f}"
              f"{r['bits_per_byte']:>11.4f}")


def cmd_train(args: argparse.Namespace) -> None:
    from titans.train import TrainConfig, train

    values = _load(args, ("model", "train", "data", "eval"))
    data = build_dataclass(DataConfig, values.get("data"), "data")
    tokenizer, files = prepare(data)
    model_cfg = model_config(values.get("model"), tokenizer.vocab_size)
    train_values = dict(values.get("train") or {})
    if args.out:
        train_values["out_dir"] = args.out
    train_cfg = build_dataclass(TrainConfig, train_values, "train")
    atomic_save_json(dataclasses.asdict(data), Path(train_cfg.out_dir) / DATA_FILE)
    summary = train(model_cfg, train_cfg, files["train"].tokens, files["validation"].tokens,
                    resume=args.resume)
    print(json.dumps(summary, indent=2))


def _load_run(run: str) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """A trained run: model, its saved configs, tokenizer and token files."""
    from titans.runs import load_checkpoint

    model, saved = load_checkpoint(run)
    data_file = Path(run) / DATA_FILE
    if not data_file.is_file():
        raise ValueError(f"{run} has no {DATA_FILE}: was it trained with `titans train`?")
    data = DataConfig(**json.loads(data_file.read_text()))
    tokenizer, files = prepare(data)
    return model, saved, tokenizer, files


def cmd_eval(args: argparse.Namespace) -> None:
    """``titans eval``: perplexity of one run, or long-context task accuracy of several."""
    if args.kind != "perplexity":
        cmd_eval_tasks(args)
        return
    from titans.evals import evaluate_perplexity

    if len(args.run) != 1:
        raise ValueError("perplexity evaluation takes one --run")
    run = args.run[0]
    model, saved, tokenizer, files = _load_run(run)
    eval_cfg = EvalConfig(split=args.split, max_tokens=args.max_tokens)
    lengths = _context_lengths(eval_cfg, saved["train"]["seq_len"], args.context_lengths)
    rows = evaluate_perplexity(model, files[args.split].tokens, lengths, decode=tokenizer.decode,
                               max_tokens=eval_cfg.max_tokens, piece_len=eval_cfg.piece_len)
    _print_eval(rows)
    atomic_save_json({"split": args.split, "results": rows}, Path(run) / "eval.json")


# Defaults of `titans eval niah|babi`: full and --quick settings.
TASK_EVAL = {
    "niah": {"tasks": ["niah1", "niah2", "niah3"], "depths": [0.0, 0.25, 0.5, 0.75, 1.0],
             "multipliers": [1, 4, 16, 64], "items": 4},
    "babi": {"tasks": ["qa1", "qa2", "qa3", "qa4", "qa5"], "depths": None,
             "multipliers": [1, 4, 16, 64], "items": 8},
}
QUICK = {"multipliers": [1, 4], "items": 2, "niah_depths": [0.0, 0.5, 1.0]}


def cmd_eval_tasks(args: argparse.Namespace) -> None:
    """``titans eval niah|babi``: accuracy per (task, length, depth) of each run, streamed with
    carried state; JSON written after every model, plots on request."""
    from titans.evals.long_context import evaluate_task
    from titans.plots import plot_accuracy_vs_length, plot_niah_heatmap
    from titans.runs import load_checkpoint

    start = time.perf_counter()
    defaults = TASK_EVAL[args.kind]
    tasks = args.tasks or defaults["tasks"]
    wrong = [t for t in tasks if t not in defaults["tasks"]]
    if wrong:
        raise ValueError(f"titans eval {args.kind} runs {defaults['tasks']}, not {wrong}")
    depths = defaults["depths"]
    if depths is not None:
        depths = args.depths or (QUICK["niah_depths"] if args.quick else depths)
        if any(not 0 <= d <= 1 for d in depths):
            raise ValueError(f"--depths must lie in [0, 1], got {depths}")
    elif args.depths:
        raise ValueError("bAbI facts are scattered through the prose: --depths is for niah")
    items = args.items or (QUICK["items"] if args.quick else defaults["items"])
    names = [Path(run).name for run in args.run]
    if len(set(names)) != len(names):
        raise ValueError(f"runs must have distinct directory names, got {names}")
    out = Path(args.out or f"{args.kind}.json")

    generators: dict[str, Any] = {}  # one per data config (tokenizer and held-out prose)
    report: dict[str, Any] = {
        "kind": args.kind, "tasks": tasks, "depths": depths, "items": items, "seed": args.seed,
        "quick": args.quick, "machine": _machine(), "models": {},
    }
    for run, name in zip(args.run, names, strict=True):
        data_file = Path(run) / DATA_FILE
        if not data_file.is_file():
            raise ValueError(f"{run} has no {DATA_FILE}: was it trained with `titans train` or "
                             "`titans compare`?")
        data = DataConfig(**json.loads(data_file.read_text()))
        key = json.dumps(dataclasses.asdict(data), sort_keys=True)
        if key not in generators:
            generators[key] = _task_generators(data, ("test",))[1]["test"]
        model, saved = load_checkpoint(run)
        seq_len = saved["train"]["seq_len"]
        multipliers = QUICK["multipliers"] if args.quick else defaults["multipliers"]
        lengths = args.lengths or [m * seq_len for m in multipliers]
        rows = []
        for task in tasks:
            rows += evaluate_task(model, generators[key], task, lengths, depths, items, args.seed,
                                  args.batch_size, args.piece_len, args.max_full_attention)
            _print_task_rows(name, task, [r for r in rows if r["task"] == task])
        report["models"][name] = {"run": str(run), "variant": model.config.variant,
                                  "parameters": model.num_parameters(), "rows": rows}
        report["wall_time_s"] = time.perf_counter() - start
        atomic_save_json(report, out)  # after every model: a long run keeps what it measured
    if args.plots:
        plots = Path(args.plots)
        for task in tasks:
            curves = {name: [r for r in m["rows"] if r["task"] == task]
                      for name, m in report["models"].items()}
            plot_accuracy_vs_length(curves, plots / f"{task}-accuracy-vs-length.png",
                                    title=f"{task}: accuracy against context length")
            if depths is not None:
                for name, rows in curves.items():
                    plot_niah_heatmap(rows, plots / f"{task}-{name}.png", title=f"{task}, {name}")
    print(f"results: {out}" + (f"; plots: {args.plots}" if args.plots else "")
          + f"; {report['wall_time_s'] / 60:.1f} min")


def _print_task_rows(name: str, task: str, rows: list[dict]) -> None:
    """One line per length: accuracy over all depths, throughput and peak memory."""
    from titans.plots import format_length

    for length in sorted({r["length"] for r in rows}):
        here = [r for r in rows if r["length"] == length]
        if here[0]["accuracy"] is None:
            print(f"{name:<12}{task:<6}{format_length(length):>6}  not run: {here[0]['skipped']}")
            continue
        accuracy = sum(r["correct"] for r in here) / sum(r["items"] for r in here)
        print(f"{name:<12}{task:<6}{format_length(length):>6}  accuracy {accuracy:5.2f}  "
              f"{here[0]['tokens_per_s']:8.0f} tok/s  peak {here[0]['peak_memory_mib']:7.0f} MiB",
              flush=True)


def _machine() -> dict[str, Any]:
    """Where a result was measured."""
    import torch

    from titans.machine import describe_machine

    return {**describe_machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def cmd_generate(args: argparse.Namespace) -> None:
    from titans.evals import generate_text

    model, _, tokenizer, _ = _load_run(args.run)
    print(args.prompt + generate_text(model, tokenizer, args.prompt, args.max_new_tokens,
                                      args.temperature, args.top_k, args.top_p, args.seed))


def cmd_info(args: argparse.Namespace) -> None:
    if args.run:
        saved = json.loads((Path(args.run) / "config.json").read_text())
        cfg = TitansConfig.from_dict(saved["model"])
    elif args.preset and not args.config:  # a preset as it is, its own vocabulary included
        cfg = TitansConfig.from_preset(args.preset, args.variant or "mac")
    else:
        values = _load(args, ("model", "train", "data", "eval"))
        model_values = dict(values.get("model") or {})
        if args.preset:
            model_values["preset"] = args.preset
        if args.variant:
            model_values["variant"] = args.variant
        data = build_dataclass(DataConfig, values.get("data"), "data")
        cfg = model_config(model_values, _vocab_size(data))
    print(json.dumps(cfg.to_dict(), indent=2))
    total, body = count_parameters(cfg), count_parameters(cfg, exclude_embeddings=True)
    print(f"parameters: {total:,} ({body:,} without embeddings)")


def cmd_compare(args: argparse.Namespace) -> None:
    """Train several models on the same data and token budget, evaluate, tabulate, plot.

    With a ``task`` section the models are fine-tuned on long-context tasks instead of language
    modelling, and evaluated by answer accuracy at the training length."""
    from titans.evals import evaluate_perplexity, generate_text
    from titans.evals.tasks import TaskBatches
    from titans.plots import plot_loss_curves
    from titans.runs import TRAINER_FILE, load_checkpoint, read_metrics
    from titans.train import TrainConfig, train

    start = time.perf_counter()
    values = _load(args, ("models", "match_parameters", "train", "data", "eval", "sample",
                          "task"))
    if not isinstance(values.get("models"), dict) or not values["models"]:
        raise ValueError("compare needs a 'models' section: name -> model settings")
    data = build_dataclass(DataConfig, values.get("data"), "data")
    eval_cfg = build_dataclass(EvalConfig, values.get("eval"), "eval")
    task_cfg = build_dataclass(TaskConfig, values["task"], "task") if "task" in values else None
    sample = {"prompt": "Fellow-Citizens of the Senate and House of Representatives:",
              "max_new_tokens": 60, **(values.get("sample") or {})}
    out = Path(args.out)
    if task_cfg is None:
        tokenizer, files = prepare(data)
        train_data, val_data = files["train"].tokens, files["validation"].tokens
        print(f"data ready: {len(files['train']):,} training tokens "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    else:
        tokenizer, generators = _task_generators(data)
        train_data, val_data = (
            TaskBatches(generators[split], task_cfg.tasks, task_cfg.weights,
                        task_cfg.score_context) for split in ("train", "validation"))
        print(f"task data ready: {', '.join(task_cfg.tasks)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    configs: dict[str, TitansConfig] = {}
    for name, section in values["models"].items():
        configs[name] = model_config(section, tokenizer.vocab_size)
    if values.get("match_parameters", True):
        reference = next(iter(configs))
        target = count_parameters(configs[reference])
        for name, section in values["models"].items():
            if name != reference and "intermediate_size" not in (section or {}):
                configs[name] = match_parameters(configs[name], target)

    results = []
    for name, cfg in configs.items():
        train_cfg = build_dataclass(
            TrainConfig, {**(values.get("train") or {}), "out_dir": str(out / name)}, "train")
        print(f"\n== {name}: {cfg.variant}, {count_parameters(cfg):,} parameters", flush=True)
        atomic_save_json(dataclasses.asdict(data), out / name / DATA_FILE)
        resume = args.resume and (out / name / TRAINER_FILE).is_file()
        summary = train(cfg, train_cfg, train_data, val_data, resume=resume)
        if not summary.get("tokens_per_s"):
            # A resumed run that had already finished trained nothing in this session.
            speeds = [r["tokens_per_s"] for r in read_metrics(out / name / "metrics.jsonl")
                      if "tokens_per_s" in r][1:]
            summary["tokens_per_s"] = sum(speeds) / len(speeds) if speeds else float("nan")
        model, _ = load_checkpoint(out / name)
        result = {"name": name, "variant": cfg.variant, "parameters": count_parameters(cfg),
                  "train": summary}
        if task_cfg is None:
            lengths = _context_lengths(eval_cfg, train_cfg.seq_len, None)
            result["eval"] = evaluate_perplexity(
                model, files[eval_cfg.split].tokens, lengths, decode=tokenizer.decode,
                max_tokens=eval_cfg.max_tokens, piece_len=eval_cfg.piece_len)
            _print_eval(result["eval"])
            text = generate_text(model, tokenizer, sample["prompt"], sample["max_new_tokens"])
            result["sample"] = sample["prompt"] + text
        else:
            result["accuracy"] = _task_accuracy(model, generators["test"], task_cfg,
                                                train_cfg.seq_len)
            print("accuracy at the training length: " + ", ".join(
                f"{t} {a:.2f}" for t, a in result["accuracy"].items()), flush=True)
        results.append(result)

    plot_loss_curves({r["name"]: out / r["name"] / "metrics.jsonl" for r in results},
                     out / "loss_curves.png",
                     title="training on the default corpus" if task_cfg is None else
                     "fine-tuning on long-context tasks (loss on the answers)")
    report = {"data": dataclasses.asdict(data), "results": results,
              "wall_time_s": time.perf_counter() - start}
    if task_cfg is not None:
        report["task"] = dataclasses.asdict(task_cfg)
    atomic_save_json(report, out / "results.json")
    if task_cfg is None:
        print_comparison(results, eval_cfg.split)
    else:
        print_task_comparison(results)
    print(f"\nloss curves: {out / 'loss_curves.png'}; results: {out / 'results.json'}; "
          f"total {report['wall_time_s'] / 60:.1f} min")


def _task_generators(data: DataConfig, which: tuple[str, ...] = ("train", "validation", "test")
                     ) -> tuple[Any, dict[str, Any]]:
    """Tokenizer and task generators over the corpus's prose: ``train`` (training split, for
    fine-tuning), ``validation`` (its loss during training) and ``test`` (validation + test
    documents: the held-out prose every evaluation item is cut from)."""
    from titans.evals.tasks import TaskGenerator

    corpus, tokenizer = load_corpus(data)
    documents = {"train": ("train",), "validation": ("validation",),
                 "test": ("validation", "test")}
    return tokenizer, {name: TaskGenerator(tokenizer, [d.text for split in documents[name]
                                                       for d in corpus.split(split)])
                       for name in which}


def _task_accuracy(model: Any, generator: Any, task_cfg: TaskConfig, length: int
                   ) -> dict[str, float]:
    """Answer accuracy per task at one context length, over depths and items (held-out prose)."""
    from titans.evals.long_context import evaluate_task
    from titans.evals.tasks import NEEDLE_TASKS

    accuracy = {}
    for task in task_cfg.tasks:
        depths = task_cfg.eval_depths if task in NEEDLE_TASKS else None
        rows = evaluate_task(model, generator, task, [length], depths, task_cfg.eval_items)
        accuracy[task] = sum(r["correct"] for r in rows) / sum(r["items"] for r in rows)
    return accuracy


def print_task_comparison(results: list[dict]) -> None:
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


def print_comparison(results: list[dict], split: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titans", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML or TOML config file (see configs/)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")

    p = sub.add_parser("train", help="train a model")
    config_args(p)
    p.add_argument("--out", help="run directory (overrides train.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="perplexity of a run, or long-context accuracy (niah, babi) of runs")
    p.add_argument("kind", nargs="?", default="perplexity", choices=["perplexity", "niah", "babi"],
                   help="perplexity (default); niah: S-NIAH-1/2/3; babi: bAbI qa1-qa5 in prose")
    p.add_argument("--run", required=True, nargs="+",
                   help="run directory (niah/babi: one or more, compared side by side)")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--context-lengths", type=int, nargs="+",
                   help="tokens per evaluated context (default: 1x and 4x the training length)")
    p.add_argument("--max-tokens", type=int, default=65536, help="scored tokens per length")
    tasks = p.add_argument_group("niah / babi")
    tasks.add_argument("--tasks", nargs="+", help="subset of niah1 niah2 niah3 / qa1 .. qa5")
    tasks.add_argument("--lengths", type=int, nargs="+",
                       help="context lengths in tokens (default: 1x, 4x, 16x, 64x the training "
                            "length; --quick: 1x, 4x)")
    tasks.add_argument("--depths", type=float, nargs="+",
                       help="niah needle depths in [0, 1] (default: 0 .25 .5 .75 1; --quick: "
                            "0 .5 1)")
    tasks.add_argument("--items", type=int, help="items per (length, depth) (default: niah 4, "
                                                 "babi 8; --quick: 2)")
    tasks.add_argument("--quick", action="store_true", help="a few minutes: small lengths, "
                                                           "fewer depths and items")
    tasks.add_argument("--seed", type=int, default=0, help="which items (same for every model)")
    tasks.add_argument("--batch-size", type=int, default=8, help="items streamed side by side")
    tasks.add_argument("--piece-len", type=int, default=2048, help="tokens per streamed piece")
    tasks.add_argument("--max-full-attention", type=int, default=65536,
                       help="longest context run for the full-attention baseline (its KV cache "
                            "grows with the context)")
    tasks.add_argument("--out", help="JSON results (default: ./niah.json or ./babi.json)")
    tasks.add_argument("--plots", help="directory for the heatmaps and accuracy-vs-length PNGs")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a trained run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="a config and its parameter count")
    config_args(p)
    p.add_argument("--run", help="a trained run instead of a config")
    p.add_argument("--preset", help="tiny, small, 170M, 340M, 760M, 1.3B")
    p.add_argument("--variant", help="mac, mag, mal, lmm, transformer, swa")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compare", help="train models side by side (the README's main job)")
    config_args(p)
    p.add_argument("--out", default="runs/main", help="directory for the runs and the report")
    p.add_argument("--resume", action="store_true",
                   help="continue (or just re-evaluate) runs already in --out")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from titans.data import DataUnavailableError

    try:
        args.func(args)
    except (ValueError, DataUnavailableError, FileNotFoundError, FileExistsError,
            FloatingPointError) as e:  # FloatingPointError: training diverged (message says how)
        print(f"titans {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
