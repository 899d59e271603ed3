"""The run directory: what a run keeps on disk, written and read back here and nowhere else.

A run directory (``TrainConfig.out_dir``) holds:

- ``model.safetensors``: the weights (a tied LM head is stored once, as the embedding);
- ``config.json``: ``{"model": TitansConfig fields, "train": TrainConfig fields, "runtime":
  RuntimeConfig fields}`` (the runtime apart from the model: a run may resume with another one);
- ``trainer.pt``: what resuming needs besides the weights (progress, optimizer, schedule, every
  RNG's state; see :func:`titans.train.train`);
- ``metrics.jsonl``: one JSON record per logged training step and per evaluation;
- ``data.json``: the data config (``DataConfig`` fields) the run was trained on, with local
  paths made absolute, so that later commands, from any directory, find the same documents and
  tokenizer; written by :func:`titans.train.train` once it holds the run (given ``data``);
- ``eval.json``: the last ``titans eval`` (perplexity) of the run;
- ``tensorboard/``: TensorBoard events, when enabled.

A training process holds the run directory (:func:`run_lock`) from start to end, so a second
one on the same directory is refused instead of interleaving its metrics and checkpoints.

The first three files are the checkpoint. They are saved together: written into a staging
directory and then moved in, so a crash at any point leaves either the previous checkpoint or a
complete new one that :func:`commit_checkpoint` finishes moving in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from titans.config_files import DataConfig, build_dataclass
from titans.data.dna_tasks import DNA_PREFIX
from titans.data.sources import DEFAULT_SOURCE, HF_PREFIX
from titans.io import atomic_save_json, atomic_write
from titans.models.config import TitansConfig
from titans.models.lm import TitansLM
from titans.runtime import RuntimeConfig, configure_layers, runtime_of_former_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINER_FILE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
DATA_FILE = "data.json"
# Model config fields added with a default other than the behaviour before them: a run saved
# earlier has no such key and was built with this value (MAC's memory learned from the attention
# output y, MAL's output was the attention's alone).
FORMER_MODEL_DEFAULTS = {"mac_memory_input": "attention", "mal_memory_skip": False}
EVAL_FILE = "eval.json"
TENSORBOARD_DIR = "tensorboard"
# What to do about a damaged checkpoint file.
CHECKPOINT_REMEDY = (f"restore the run's checkpoint ({WEIGHTS_FILE}, {CONFIG_FILE}, "
                     f"{TRAINER_FILE}) from a copy, or train it again")
# A checkpoint is three files, so it is first written here and then moved into the run
# directory; see ``commit_checkpoint``.
STAGING_DIR = ".checkpoint-staging"


# --------------------------------------------------------------------------------------------
# Who may write a run


class RunInUseError(FileExistsError):
    """Another process holds the run directory (it is training into it)."""


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir`` (created if missing) for one writer until the block ends; raise
    :class:`RunInUseError` at once if another process holds it.

    The lock is the OS's advisory lock on the directory itself (``flock``), which the kernel
    drops when its holder dies, even by SIGKILL: a crashed run never leaves a stale lock, and
    taking the lock writes nothing into the run. Windows, which cannot lock a directory, locks a
    ``.lock`` file in it instead.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    fd = os.open(out_dir, os.O_RDONLY) if fcntl else os.open(out_dir / ".lock",
                                                              os.O_RDWR | os.O_CREAT)
    try:
        try:
            if fcntl:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise RunInUseError(
                f"{out_dir} is in use: another process is training into it; wait for it to "
                "end or choose another out_dir (--out)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------------------------
# Checkpoints


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint (its ``trainer.pt``, moved in last)."""
    return (Path(out_dir) / TRAINER_FILE).is_file()


def save_checkpoint(
    out_dir: Path,
    model: TitansLM,
    train_config: dict[str, Any],
    runtime: RuntimeConfig,
    trainer_state: dict[str, Any],
    weights: dict[str, Tensor] | None = None,
) -> None:
    """Write the weights, ``config.json`` (the model's config, ``train_config``, the
    TrainConfig's fields, and ``runtime``) and ``trainer_state`` (saved with ``torch.save``; its
    ``"step"`` also goes into the weights' metadata) into ``out_dir`` as one atomic unit.
    weights: the model's whole state dict when ``model`` does not hold it (a model sharded over
    processes, gathered by :func:`titans.distributed.checkpoint_state`); None:
    ``model.state_dict()``.

    The three files are written (each atomically) into a staging directory, ``trainer.pt``
    last, and then moved into ``out_dir``; a crash at any point leaves either the previous
    checkpoint or, once the staging is complete, one that the next run finishes moving in.
    """
    staging = out_dir / STAGING_DIR
    try:
        shutil.rmtree(staging, ignore_errors=True)  # debris of a save that failed earlier
        staging.mkdir(parents=True)
        with atomic_write(staging / WEIGHTS_FILE) as f:
            f.write(safetensors.torch.save(_weights(model, weights),
                                           metadata={"step": str(trainer_state["step"])}))
        atomic_save_json({"model": model.config.to_dict(), "train": train_config,
                          "runtime": dataclasses.asdict(runtime)}, staging / CONFIG_FILE)
        # Serialised in memory first: torch.save writing into a full disk reports a bare
        # "unexpected pos" RuntimeError, a plain write the OSError that names the cause.
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        with atomic_write(staging / TRAINER_FILE) as f:
            f.write(buffer.getbuffer())
    except BaseException as e:  # a full disk, Ctrl-C: the earlier checkpoint stays as it was
        shutil.rmtree(staging, ignore_errors=True)  # frees what the failed save took
        if not isinstance(e, OSError):
            raise
        kept = (f"the checkpoint of step {saved_step(out_dir)} is kept"
                if has_checkpoint(out_dir) else "no earlier checkpoint")
        raise OSError(e.errno, f"saving the checkpoint of step {trainer_state['step']} into "
                               f"{out_dir} failed: {e.strerror or e} ({kept})") from None
    commit_checkpoint(out_dir)


def saved_step(out_dir: str | Path) -> int:
    """The step of the checkpoint in ``out_dir``, read from its weights' metadata (cheap)."""
    with safetensors.safe_open(Path(out_dir) / WEIGHTS_FILE, "pt") as f:
        return int(f.metadata()["step"])


def commit_checkpoint(out_dir: Path) -> None:
    """Move a complete staged checkpoint into ``out_dir``, or discard an incomplete one.

    The staging is complete once it holds ``trainer.pt`` (written last, atomically), which is
    also moved last: so this can be re-run after a crash at any point of it. Only the training
    process may call it: a reader may run while a save is under way.
    """
    staging = out_dir / STAGING_DIR
    if not staging.exists():
        return
    if (staging / TRAINER_FILE).exists():
        for name in (WEIGHTS_FILE, CONFIG_FILE, TRAINER_FILE):
            if (staging / name).exists():  # absent: already moved before a crash
                os.replace(staging / name, out_dir / name)
    shutil.rmtree(staging)


def _weights(model: TitansLM, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The state dict (``state``, or ``model``'s) for safetensors, which refuses shared tensors:
    a tied LM head is the embedding matrix, stored once (as ``embed_tokens.weight``)."""
    state = dict(model.state_dict() if state is None else state)
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def damaged(path: Path, reason: object, remedy: str = CHECKPOINT_REMEDY) -> ValueError:
    """The one-line error for a run file that cannot be read: which file, why, what to do."""
    reason = " ".join(str(reason).split())[:200]  # one line, whatever the library said
    return ValueError(f"{path} is damaged ({reason}): {remedy}")


def load_weights(model: TitansLM, out_dir: Path) -> None:
    """Load the checkpoint's weights into ``model`` in place. The model's constructor ties the LM
    head to the embedding and loading copies into the existing tensors, so the tie survives.

    ``ValueError`` if the file cannot be read, does not fit the model, or holds a non-finite
    value (a model that would only ever output NaN)."""
    path = Path(out_dir) / WEIGHTS_FILE
    try:
        state = safetensors.torch.load_file(path, device=str(next(model.parameters()).device))
    except (safetensors.SafetensorError, OSError) as e:
        raise damaged(path, e) from None
    bad = next((name for name, t in state.items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise damaged(path, f"{bad} holds NaN or infinite values")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{path} does not match the model: {' '.join(str(e).split())[:300]}"
                         ) from None
    expected_missing = ["lm_head.weight"] if model.config.tie_word_embeddings else []
    if sorted(missing) != expected_missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(set(missing) - {*expected_missing})}"
            f", unexpected {sorted(unexpected)}"
        )


def read_config(out_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json (``{"model": ..., "train": ..., "runtime": ...}``);
    ``FileNotFoundError`` if ``out_dir`` holds no complete checkpoint. Read-only: a reader may run
    while a training process is saving, so only training itself repairs an interrupted save
    (:func:`commit_checkpoint`).

    A config.json written before the runtime section kept its knobs in the model and train
    configs; they are read into the runtime (:func:`titans.runtime.runtime_of_former_config`).
    """
    out_dir = Path(out_dir)
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, TRAINER_FILE) if not (out_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"no checkpoint in {out_dir}: missing {', '.join(missing)} (a run writes them every "
            "save_every steps and at its end)"
        )
    path = out_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # not UTF-8 or not JSON
        raise damaged(path, e) from None
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict)
            and isinstance(config.get("train"), dict)):
        raise damaged(path, "no model and train sections")
    if "runtime" not in config:
        model, train, runtime = runtime_of_former_config(config["model"], config["train"])
        config = {"model": model, "train": train, "runtime": dataclasses.asdict(runtime)}
    # Fields whose default is not what runs saved before the field existed were built with.
    for name, former in FORMER_MODEL_DEFAULTS.items():
        config["model"].setdefault(name, former)
    return config


def read_trainer_state(out_dir: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer.pt``, as :func:`save_checkpoint` was given it (on the CPU)."""
    path = out_dir / TRAINER_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise damaged(path, e) from None


def load_checkpoint(
    out_dir: str | Path, runtime: RuntimeConfig | None = None
) -> tuple[TitansLM, dict[str, Any]]:
    """The model saved in ``out_dir`` (on CPU, in eval mode), its layers configured for
    ``runtime`` (None: the run's own; see :func:`titans.runtime.configure_layers`), and its
    config dict ``{"model": TitansConfig fields, "train": TrainConfig fields, "runtime":
    RuntimeConfig fields}`` as saved."""
    out_dir = Path(out_dir)
    config = read_config(out_dir)
    model = TitansLM(TitansConfig.from_dict(config["model"]))
    load_weights(model, out_dir)
    configure_layers(model, RuntimeConfig(**config["runtime"]) if runtime is None else runtime)
    return model.eval(), config


def rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.copy()), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every RNG from :func:`rng_state`'s record (the CUDA devices present here)."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, key.numpy(), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        count = min(len(state["cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(state["cuda"][:count])


# --------------------------------------------------------------------------------------------
# Metrics


class MetricsLog:
    """A run's ``metrics.jsonl``: one JSON record per line, appended as training goes.

    On (re)start, records after step ``keep_until`` are dropped (and a line cut by a crash), so a
    resumed run continues the file without duplicate steps.
    """

    def __init__(self, out_dir: Path, keep_until: int) -> None:
        self.path = out_dir / METRICS_FILE
        kept = [r for r in read_metrics(self.path) if r["step"] <= keep_until]
        with atomic_write(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a dict with at least ``"step"``)."""
        # Appending a line is not atomic, but a crash can only cut the last line, which the next
        # start drops; rewriting the whole file per record would cost O(records) each time.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (empty if it does not exist). Its last line may have
    been cut by a crash and is then skipped; any other line that is not a record (a JSON object
    with an int ``"step"``) raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # not UTF-8 or not JSON
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif number < len(lines):
            raise damaged(path, f"line {number} is not a metrics record: {line[:60]!r}",
                          "delete that line (the run's checkpoint is unaffected)")
    return records


# --------------------------------------------------------------------------------------------
# What the commands keep next to the checkpoint


def absolute_data_config(data: DataConfig) -> DataConfig:
    """``data`` with its local paths (a document source, a tokenizer file) made absolute: a
    relative path means another corpus when a run is evaluated from another directory. Named
    sources (``default``, ``hf:...``, ``dna:...``) stay as they are."""
    source, tokenizer = data.source, data.tokenizer
    if source != DEFAULT_SOURCE and not source.startswith((HF_PREFIX, DNA_PREFIX)):
        source = str(Path(source).expanduser().resolve())
    if tokenizer.endswith((".json", ".model")):
        tokenizer = str(Path(tokenizer).expanduser().resolve())
    return dataclasses.replace(data, source=source, tokenizer=tokenizer)


def save_data_config(out_dir: str | Path, data: DataConfig, resume: bool = False) -> None:
    """Record the data config a run is trained on (``data.json``, local paths absolute). With
    ``resume``, a recorded config must be the same one: ``ValueError`` (writing nothing) if the
    run was trained on other data, which the resumed run and every later evaluation would
    silently mix up."""
    data = absolute_data_config(data)
    path = Path(out_dir) / DATA_FILE
    if resume and path.is_file():
        recorded = absolute_data_config(read_data_config(out_dir))
        if recorded != data:
            raise ValueError(
                f"{out_dir} was trained on {dataclasses.asdict(recorded)} ({path}); resuming it "
                f"with {dataclasses.asdict(data)} would mix two corpora: resume with the data "
                "config it was trained on"
            )
    atomic_save_json(dataclasses.asdict(data), path)


def read_data_config(out_dir: str | Path) -> DataConfig:
    """The data config a run was trained on; ``ValueError`` if it has none."""
    path = Path(out_dir) / DATA_FILE
    if not path.is_file():
        raise ValueError(f"{out_dir} has no {DATA_FILE}: was it trained with `titans train` or "
                         "`titans compare`?")
    try:
        return build_dataclass(DataConfig, json.loads(path.read_text(encoding="utf-8")), "data")
    except (ValueError, TypeError) as e:  # not JSON, not UTF-8, not a mapping, unknown keys
        raise ValueError(f"{path} is damaged ({e}): restore it (it records the data config the "
                         "run was trained on) or retrain") from None


def save_eval_results(out_dir: str | Path, split: str, rows: list[dict[str, Any]]) -> None:
    """Record a perplexity evaluation of the run (``eval.json``): the split and one row per
    context length (:func:`titans.evals.evaluate_perplexity`)."""
    atomic_save_json({"split": split, "results": rows}, Path(out_dir) / EVAL_FILE)
