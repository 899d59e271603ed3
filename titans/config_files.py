"""Run configuration files (YAML or TOML) mapped onto the typed config dataclasses.

A file has sections ``model`` (TitansConfig fields, plus ``preset``), ``train`` (TrainConfig),
``data`` (DataConfig), ``eval`` (EvalConfig) and ``runtime`` (RuntimeConfig: compilation,
checkpointing, attention block size; free to change when resuming); the comparison job has
``models`` (name -> model section) instead of ``model``, plus ``match_parameters`` and ``sample``,
and optionally ``task`` (TaskConfig: fine-tune on long-context tasks instead of language
modelling). Command-line ``--set section.key=value`` overrides any value; values are parsed as
YAML (``3e-3``, ``true``, ``[512, 2048]``). Unknown sections or keys are errors that list the
valid ones.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from titans.checks import check_bool, check_choice, check_int, check_ints, check_numbers
from titans.data.sources import DEFAULT_SOURCE
from titans.data.tokenizer import DEFAULT_TOKENIZER
from titans.evals.tasks import TASKS, check_task_mix
from titans.models.config import TitansConfig
from titans.runtime import FORMER_KEYS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The sections of one run's config file, and of the comparison job's.
RUN_SECTIONS = ("model", "train", "data", "eval", "runtime")
COMPARE_SECTIONS = ("models", "match_parameters", "train", "data", "eval", "sample", "task",
                    "runtime", "recall")
# The sections whose value is a mapping of keys (the others hold one value).
MAPPING_SECTIONS = frozenset(("model", "models", "train", "data", "eval", "runtime", "sample",
                              "task", "recall"))
# The recall section of a comparison (titans.experiments.compare): a task comparison of its own.
RECALL_SECTIONS = ("models", "match_parameters", "train", "task", "multipliers")
# The held-out splits an evaluation may score.
EVAL_SPLITS = ("validation", "test")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """``text`` parsed as YAML; ``ValueError`` naming ``where`` and the problem's line if it is
    not valid YAML."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{where} is not valid YAML{line}: {problem}") from None


@dataclass
class DataConfig:
    """Where the text comes from and how it is tokenized (see ``titans.data``)."""

    # "default" (the embedded corpus), a file, folder, .jsonl or .parquet, hf:<name>, or
    # dna:<name> (a DNA corpus, titans.data.dna_tasks)
    source: str = DEFAULT_SOURCE
    # "bpe[:vocab]" (trained on the corpus), a tokenizer.json, a SentencePiece .model,
    # "mistral", "nucleotide" (one token per base, titans.data.dna)
    tokenizer: str = DEFAULT_TOKENIZER
    text_field: str = "text"  # JSONL / Parquet / HF column holding the text

    def __post_init__(self) -> None:
        for name in ("source", "tokenizer", "text_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"data.{name} must be a non-empty string")


@dataclass
class EvalConfig:
    """Held-out evaluation: perplexity and bits-per-byte at multiples of the training length."""

    context_multipliers: list[int] = field(default_factory=lambda: [1, 4])
    max_tokens: int = 65536  # scored tokens per context length (whole windows)
    piece_len: int = 1024  # tokens per streamed piece
    split: str = "test"

    def __post_init__(self) -> None:
        check_ints("eval.context_multipliers", self.context_multipliers, 1)
        for name in ("max_tokens", "piece_len"):
            check_int(f"eval.{name}", getattr(self, name), 1)
        check_choice("eval.split", self.split, EVAL_SPLITS)


@dataclass
class TaskConfig:
    """Fine-tuning on long-context tasks instead of language modelling (``titans.evals.tasks``):
    training rows are task items of ``train.seq_len`` tokens over training-split prose, scored on
    the answer (or everywhere with ``score_context``); after training, the answer accuracy at the
    training length is measured on held-out prose at ``eval_depths`` with ``eval_items`` items."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    weights: list[float] | None = None  # relative frequency of each task (None: uniform)
    score_context: bool = False
    eval_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    eval_items: int = 8

    def __post_init__(self) -> None:
        check_task_mix(self.tasks, self.weights, "task.")
        check_bool("task.score_context", self.score_context)
        check_numbers("task.eval_depths", self.eval_depths, "in [0, 1]", lambda d: 0 <= d <= 1)
        check_int("task.eval_items", self.eval_items, 1)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a .yaml/.yml or .toml file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        values = parse_yaml(path.read_text(), f"config file {path}") or {}
    elif path.suffix == ".toml":
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (dotted paths of any depth) to a nested dict."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
        node[leaf] = parse_yaml(raw, f"--set {item!r}: the value")
    return values


def build_dataclass(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    """``cls(**values)`` with a clear error for unknown keys."""
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"section {section!r} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys in {section!r}: {unknown}; valid keys: {sorted(known)}")
    return cls(**values)


def model_config(values: dict[str, Any] | None, vocab_size: int) -> TitansConfig:
    """A model section (optionally naming a ``preset``) -> TitansConfig for a tokenizer's vocab.

    ``vocab_size`` defaults to the tokenizer's; a smaller explicit value is an error (ids would
    fall outside the embedding), a larger one is allowed (e.g. padded to a multiple of 64).
    """
    values = dict(values or {})
    preset = values.pop("preset", None)
    values.setdefault("vocab_size", vocab_size)
    if values["vocab_size"] < vocab_size:
        raise ValueError(
            f"model.vocab_size {values['vocab_size']} is smaller than the tokenizer's {vocab_size}"
        )
    if preset is None:
        return TitansConfig.from_dict(values)
    return TitansConfig.from_preset(preset, values.pop("variant", "mac"), **values)


def check_sections(values: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Only ``allowed`` sections, and each one that holds keys a mapping (a ``model: 5`` would
    otherwise fail deep inside with a TypeError)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; valid sections: {list(allowed)}")
    for name in set(values) & MAPPING_SECTIONS:
        if values[name] is not None and not isinstance(values[name], dict):
            raise ValueError(f"config section {name!r} must be a mapping of keys, got "
                             f"{values[name]!r}")


def check_former_keys(values: dict[str, Any]) -> None:
    """Name the runtime setting that replaced a key of the model sections or of ``train``
    (:data:`titans.runtime.FORMER_KEYS`), rather than just calling the key unknown."""
    models = values.get("models")
    sections = [("model", "model", values.get("model")), ("train", "train", values.get("train"))]
    if isinstance(models, dict):
        sections += [("model", f"models.{name}", section) for name, section in models.items()]
    for kind, where, section in sections:
        if not isinstance(section, dict):
            continue
        for key, setting in FORMER_KEYS[kind].items():
            if key in section:
                raise ValueError(f"{where}.{key} has moved to the runtime section: "
                                 f"runtime.{setting}")


def load_values(
    path: str | Path | None, overrides: list[str] | None, sections: tuple[str, ...]
) -> dict[str, Any]:
    """The sections of the config file at ``path`` (none: empty) with the ``--set`` overrides
    applied, checked against the ``sections`` a command accepts (e.g. :data:`RUN_SECTIONS`)."""
    values = read_config_file(path) if path else {}
    values = apply_overrides(values, overrides or [])
    check_sections(values, sections)
    check_former_keys(values)
    return values
