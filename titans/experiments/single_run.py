"""One run directory at a time: train it from a config file's sections (``titans train``),
measure its perplexity (``titans eval``), sample from it (``titans generate``); and describe a
model config with its parameter count (``titans info``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from titans import runs
from titans.config_files import DataConfig, EvalConfig, build_dataclass, model_config
from titans.data.packing import TokenFile
from titans.data.pipeline import prepare, vocab_size
from titans.data.tokenizer import Tokenizer
from titans.evals import evaluate_perplexity, generate_text
from titans.models import TitansConfig, TitansLM, count_parameters
from titans.runtime import RuntimeConfig
from titans.train import TrainConfig, train


def train_run(values: dict[str, Any], out: str | None, resume: bool) -> dict[str, Any]:
    """Train the model of a config file's sections (``model``, ``train``, ``data``, ``runtime``)
    into ``out`` (None: ``train.out_dir``), recording the data config in the run; ``resume``
    continues the run there. Prints and returns the training summary (:func:`titans.train.train`).
    """
    data = build_dataclass(DataConfig, values.get("data"), "data")
    tokenizer, files = prepare(data)
    model_cfg = model_config(values.get("model"), tokenizer.vocab_size)
    train_values = dict(values.get("train") or {})
    if out:
        train_values["out_dir"] = out
    train_cfg = build_dataclass(TrainConfig, train_values, "train")
    runtime = build_dataclass(RuntimeConfig, values.get("runtime"), "runtime")
    summary = train(model_cfg, train_cfg, files["train"].tokens, files["validation"].tokens,
                    resume=resume, runtime=runtime, data=data)
    print(json.dumps(summary, indent=2))
    return summary


def resume_hint(values: dict[str, Any], out: str | None) -> str:
    """What an interrupted ``titans train`` of these config sections leaves to resume: the step
    of the checkpoint in its run directory, or that there is none yet."""
    out_dir = Path(out or (values.get("train") or {}).get("out_dir") or TrainConfig.out_dir)
    if not runs.has_checkpoint(out_dir):
        return f"no checkpoint in {out_dir} yet: nothing to resume"
    return (f"--resume continues from the checkpoint of step {runs.saved_step(out_dir)} in "
            f"{out_dir}")


def load_run(run: str | Path) -> tuple[TitansLM, dict[str, Any], Tokenizer, dict[str, TokenFile]]:
    """A trained run: model, its saved configs, tokenizer and token files."""
    model, saved = runs.load_checkpoint(run)
    tokenizer, files = prepare(runs.read_data_config(run))
    return model, saved, tokenizer, files


def context_lengths(eval_cfg: EvalConfig, seq_len: int, given: list[int] | None) -> list[int]:
    """The context lengths to evaluate: ``given``, else the config's multiples of ``seq_len``."""
    return given or [m * seq_len for m in eval_cfg.context_multipliers]


def evaluate_run(
    run: str | Path, split: str, lengths: list[int] | None, max_tokens: int
) -> list[dict[str, Any]]:
    """Perplexity and bits-per-byte of a run on ``split`` at each context length (None: 1x and
    4x its training length), ``max_tokens`` scored tokens per length; prints the table and keeps
    the rows in the run (``eval.json``)."""
    model, saved, tokenizer, files = load_run(run)
    eval_cfg = EvalConfig(split=split, max_tokens=max_tokens)
    lengths = context_lengths(eval_cfg, saved["train"]["seq_len"], lengths)
    rows = evaluate_perplexity(model, files[split].tokens, lengths, decode=tokenizer.decode,
                               max_tokens=eval_cfg.max_tokens, piece_len=eval_cfg.piece_len)
    runs.save_eval_results(run, split, rows)  # first: a failed write must not look like success
    print_perplexity(rows)
    return rows


def print_perplexity(rows: list[dict[str, Any]]) -> None:
    """The table of :func:`titans.evals.evaluate_perplexity`'s rows, one line per length."""
    print(f"{'context':>8}{'tokens':>10}{'nll':>9}{'ppl':>10}{'bits/byte':>11}")
    for r in rows:
        print(f"{r['context_length']:>8}{r['tokens']:>10}{r['nll']:>9.4f}{r['ppl']:>10.2f}"
              f"{r['bits_per_byte']:>11.4f}")


def sample_run(
    run: str | Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
) -> str:
    """Print and return ``prompt`` continued by the run's model
    (:func:`titans.evals.generate_text`)."""
    model, _, tokenizer, _ = load_run(run)
    text = prompt + generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k,
                                  top_p, seed)
    print(text)
    return text


def run_model_config(run: str | Path) -> TitansConfig:
    """The model config of a trained run."""
    return TitansConfig.from_dict(runs.read_config(run)["model"])


def configured_model(values: dict[str, Any], preset: str | None,
                     variant: str | None) -> TitansConfig:
    """The model config of a config file's sections, ``preset`` and ``variant`` (when given)
    overriding its model section, for its data config's vocabulary."""
    model_values = dict(values.get("model") or {})
    if preset:
        model_values["preset"] = preset
    if variant:
        model_values["variant"] = variant
    data = build_dataclass(DataConfig, values.get("data"), "data")
    return model_config(model_values, vocab_size(data))


def describe_model(cfg: TitansConfig) -> None:
    """Print a model config as JSON and its parameter count."""
    print(json.dumps(cfg.to_dict(), indent=2))
    total, body = count_parameters(cfg), count_parameters(cfg, exclude_embeddings=True)
    print(f"parameters: {total:,} ({body:,} without embeddings)")
