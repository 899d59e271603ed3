"""The ``titans`` command: train, eval, generate, info, export, and compare (the README's main job).

    titans train --config configs/mac-small.yaml --set train.max_steps=200 --out runs/mac
    titans train --config configs/mac-small.yaml --out runs/mac --resume
    titans eval --run runs/mac --context-lengths 512 2048
    titans eval niah --run runs/long-context/mac runs/long-context/swa --quick
    titans eval babi --run runs/long-context/mac --lengths 256 4096 --out babi.json
    titans eval zeroshot --run runs/mac runs/transformer --limit 200
    titans generate --run runs/mac --prompt "Fellow-Citizens" --max-new-tokens 80
    titans info --config configs/mac-small.yaml
    titans export --run runs/mac --out exported/mac
    titans compare --config configs/main.yaml
    titans forecast train --config configs/forecast.yaml --out runs/forecast
    titans forecast eval --run runs/forecast
    titans dna --config configs/dna.yaml --out runs/dna

This module parses the command line and dispatches; what each command runs is in
:mod:`titans.experiments`. Errors in configs, data, files or arguments print one line and exit
with status 2 (no traceback); Ctrl-C prints one line (for a training run: the checkpoint a
``--resume`` continues from) and exits with status 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from titans.config_files import COMPARE_SECTIONS, EVAL_SPLITS, RUN_SECTIONS, EvalConfig, load_values
from titans.data import DataUnavailableError
from titans.evals.long_context import BATCH_SIZE, MAX_FULL_ATTENTION, PIECE_LEN
from titans.evals.zeroshot import ZEROSHOT_TASKS
from titans.experiments import single_run
from titans.experiments.compare import compare
from titans.experiments.dna import BENCHMARK_PREFIX, DNA_SECTIONS, run_dna
from titans.experiments.forecast import FORECAST_SECTIONS, evaluate_forecasts, train_forecasts
from titans.experiments.long_context import TASK_EVAL, evaluate_runs
from titans.experiments.zeroshot import evaluate_zeroshot_runs
from titans.models import PRESETS, VARIANTS, TitansConfig


class Interrupted(Exception):
    """Ctrl-C, with what it left behind (e.g. the checkpoint a resume continues from)."""


def cmd_train(args: argparse.Namespace) -> None:
    values = load_values(args.config, args.set, RUN_SECTIONS)
    try:
        single_run.train_run(values, args.out, args.resume)
    except KeyboardInterrupt:
        raise Interrupted(single_run.resume_hint(values, args.out)) from None


def cmd_eval(args: argparse.Namespace) -> None:
    """``titans eval``: perplexity of one run, or long-context or zero-shot task accuracy of
    several."""
    if args.kind == "zeroshot":
        evaluate_zeroshot_runs(args.run, tasks=args.tasks, limit=args.limit,
                               batch_size=args.batch_size, piece_len=args.piece_len, out=args.out)
    elif args.kind != "perplexity":
        evaluate_runs(args.kind, args.run, tasks=args.tasks, lengths=args.lengths,
                      depths=args.depths, items=args.items, quick=args.quick, seed=args.seed,
                      batch_size=args.batch_size, piece_len=args.piece_len,
                      max_full_attention=args.max_full_attention, out=args.out, plots=args.plots)
    elif len(args.run) != 1:
        raise ValueError("perplexity evaluation takes one --run")
    else:
        single_run.evaluate_run(args.run[0], args.split, args.context_lengths, args.max_tokens)


def cmd_generate(args: argparse.Namespace) -> None:
    single_run.sample_run(args.run, args.prompt, args.max_new_tokens, args.temperature,
                          args.top_k, args.top_p, args.seed)


def cmd_info(args: argparse.Namespace) -> None:
    if args.run:
        cfg = single_run.run_model_config(args.run)
    elif args.preset and not args.config:  # a preset as it is, its own vocabulary included
        cfg = TitansConfig.from_preset(args.preset, args.variant or "mac")
    else:
        values = load_values(args.config, args.set, RUN_SECTIONS)
        cfg = single_run.configured_model(values, args.preset, args.variant)
    single_run.describe_model(cfg)


def cmd_export(args: argparse.Namespace) -> None:
    try:
        from titans.hf import export_run
    except ImportError as e:
        raise ValueError(f"titans export needs transformers ({e}): pip install -e \".[hf]\""
                         ) from None
    print(f"exported {args.run} to {export_run(args.run, args.out)}")


def cmd_compare(args: argparse.Namespace) -> None:
    values = load_values(args.config, args.set, COMPARE_SECTIONS)
    try:
        compare(values, Path(args.out), args.resume)
    except KeyboardInterrupt:
        raise Interrupted(f"--resume continues the runs in {args.out} from their checkpoints"
                          ) from None


def cmd_forecast(args: argparse.Namespace) -> None:
    if args.action == "train":
        train_forecasts(load_values(args.config, args.set, FORECAST_SECTIONS), args.out)
    else:
        evaluate_forecasts(args.run)


def cmd_dna(args: argparse.Namespace) -> None:
    overrides = list(args.set or [])
    if args.benchmark:
        overrides.append(f"task.source={BENCHMARK_PREFIX}{args.benchmark}")
    values = load_values(args.config, overrides, DNA_SECTIONS)
    try:
        run_dna(values, Path(args.out), args.resume)
    except KeyboardInterrupt:
        raise Interrupted(f"--resume continues the runs in {args.out} from their checkpoints"
                          ) from None


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
        "eval", help="perplexity of a run, or long-context (niah, babi) or zero-shot accuracy of "
                     "runs")
    p.add_argument("kind", nargs="?", default="perplexity",
                   choices=["perplexity", *TASK_EVAL, "zeroshot"],
                   help="perplexity (default); niah: S-NIAH-1/2/3; babi: bAbI qa1-qa5 in prose; "
                        "zeroshot: the paper's Table 1 suite (LAMBADA, PIQA, HellaSwag, "
                        "WinoGrande, ARC-e/c, SIQA, BoolQ) with lm-eval's prompts and metrics")
    p.add_argument("--run", required=True, nargs="+",
                   help="run directory (niah/babi/zeroshot: one or more, compared side by side)")
    p.add_argument("--split", default=EvalConfig.split, choices=EVAL_SPLITS)
    p.add_argument("--context-lengths", type=int, nargs="+",
                   help="tokens per evaluated context (default: 1x and 4x the training length)")
    p.add_argument("--max-tokens", type=int, default=EvalConfig.max_tokens,
                   help="scored tokens per length")
    tasks = p.add_argument_group("niah / babi")
    tasks.add_argument("--tasks", nargs="+", help="subset of " + " / ".join(
        [*(" ".join(kind["tasks"]) for kind in TASK_EVAL.values()), " ".join(ZEROSHOT_TASKS)]))
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
    tasks.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help="items streamed side by side")
    tasks.add_argument("--piece-len", type=int, default=PIECE_LEN,
                       help="tokens per streamed piece")
    tasks.add_argument("--max-full-attention", type=int, default=MAX_FULL_ATTENTION,
                       help="longest context run for the full-attention baseline (its KV cache "
                            "grows with the context)")
    tasks.add_argument("--out", help="JSON results (default: ./niah.json or ./babi.json; "
                                     "zeroshot: zeroshot.json in each run)")
    tasks.add_argument("--plots", help="directory for the heatmaps and accuracy-vs-length PNGs")
    zeroshot = p.add_argument_group("zeroshot (also --tasks, --batch-size, --piece-len, --out)")
    zeroshot.add_argument("--limit", type=int,
                          help="first N documents of each task (default: all), as lm-eval's "
                               "--limit")
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
    p.add_argument("--preset", help=", ".join(PRESETS))
    p.add_argument("--variant", help="; ".join(f"{name}: {spec.description}"
                                              for name, spec in VARIANTS.items()))
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="a run as a Hugging Face directory (AutoModelForCausalLM)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", required=True, help="new directory to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="train models side by side (the README's main job)")
    config_args(p)
    p.add_argument("--out", default="runs/main", help="directory for the runs and the report")
    p.add_argument("--resume", action="store_true",
                   help="continue (or just re-evaluate) runs already in --out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("forecast", help="long-term time-series forecasting (paper Table 3)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("train", help="train the configured models at every horizon")
    config_args(q)
    q.add_argument("--out", required=True, help="run directory (a re-run skips finished models)")
    q = actions.add_parser("eval", help="re-evaluate a run's saved models on the test split")
    q.add_argument("--run", required=True, help="run directory of `titans forecast train`")
    p.set_defaults(func=cmd_forecast)

    p = sub.add_parser("dna", help="nucleotide LMs pre-trained, fine-tuned as classifiers and "
                                   "scored (paper Table 4)")
    config_args(p)
    p.add_argument("--out", default="runs/dna", help="directory for the runs and the report")
    p.add_argument("--benchmark", metavar="FOLDER",
                   help="classify a GenomicsBenchmarks data set folder (<dataset>/train|test/"
                        "<class>/*.txt) instead of the config's task")
    p.add_argument("--resume", action="store_true",
                   help="continue runs in --out and reuse its finished stages")
    p.set_defaults(func=cmd_dna)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, DataUnavailableError, OSError, FloatingPointError) as e:
        # OSError: files (missing, in use, a full disk, no permission); FloatingPointError:
        # training diverged (the message says how).
        print(f"titans {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        detail = f": {e}" if isinstance(e, Interrupted) else ""
        print(f"titans {args.command}: interrupted{detail}", file=sys.stderr)
        sys.exit(130)  # the shell's status for a SIGINT


if __name__ == "__main__":
    main()
