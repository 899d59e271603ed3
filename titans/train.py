"""Training: one readable loop from setup to checkpoint, single-process or data parallel.

``train`` reads top to bottom: setup (devices, seeds, resume), data (a
:class:`titans.data.batches.BatchSource`, a pure function of the step), model, optimizer (AdamW,
warmup + cosine), the loop (gradient accumulation, clipping), evaluation and checkpoints. A run
resumed from its checkpoint continues bit for bit like one that was never interrupted: the
batches depend only on the step, and the checkpoint holds the weights, the optimizer state and
every RNG state.

Everything goes into the run directory ``out_dir`` (its files: :mod:`titans.runs`): the
checkpoint (weights, configs and the trainer state: optimizer, schedule, RNG states, step, tokens
seen) and the metrics log, one JSON record per logged step and per evaluation.

A training record holds ``step``, ``tokens``, ``loss``, ``lr``, ``grad_norm`` (before clipping),
``tokens_per_s`` and ``elapsed`` (s), and for models with a neural memory its health in that step
(:class:`titans.models.health.MemoryHealth`: maxima over the step's forward passes):
``memory_weight_norm_max`` (largest Frobenius norm of a memory weight matrix), ``memory_lr_max``
(largest inner learning rate theta) and ``memory_momentum_max`` (largest momentum eta). An
evaluation record holds ``step``, ``tokens``, ``val_loss`` and ``elapsed``. Every step checks the
loss and the gradient norm: if either is not finite, training stops with a one-line
``FloatingPointError`` naming the cause (and the first parameter with a non-finite gradient)
before the optimizer takes the step, so no diverged weights are saved.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from titans import distributed, runs
from titans.checks import check_bool, check_choice, check_int, check_number
from titans.config_files import DataConfig
from titans.data.batches import BatchSource, as_batch_source
from titans.distributed import DistEnv
from titans.models import no_weight_decay
from titans.models.config import TitansConfig
from titans.models.health import LR_KEY, MOMENTUM_KEY, WEIGHT_NORM_KEY, MemoryHealth
from titans.models.lm import TitansLM
from titans.runtime import RuntimeConfig, apply_runtime
from titans.tracking import TrainingLog, check_trackers_installed

DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run, validated on construction (``ValueError`` naming the
    field). ``batch_size`` is per process and micro-batch: an optimizer step sees
    ``batch_size * grad_accum * world_size`` sequences of ``seq_len`` tokens. Training stops after
    ``max_steps`` optimizer steps or ``max_tokens`` tokens, whichever comes first.
    ``grad_clip`` 0 disables clipping (the gradient norm is still reported). ``dtype`` "auto" is
    float32 on CPU and bfloat16 autocast on CUDA (weights and optimizer stay float32).
    ``init_from``: a run directory whose saved weights the model starts from instead of a fresh
    initialisation (fine-tuning, or the next stage of a length curriculum); its model config must
    equal this run's. Only the weights are taken: optimizer, schedule and data start afresh."""

    out_dir: str = "runs/default"
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    max_tokens: int | None = None
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True
    init_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)  # keep asdict() JSON-serialisable
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"TrainConfig.out_dir must be a non-empty path, got {self.out_dir!r}")
        # A sequence of one token has no next token to predict: no loss, nothing to train.
        check_int("TrainConfig.seq_len", self.seq_len, 2)
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every",
                     "eval_batches", "save_every", "log_every"):
            check_int(f"TrainConfig.{name}", getattr(self, name), 1)
        for name in ("warmup_steps", "seed"):
            check_int(f"TrainConfig.{name}", getattr(self, name), 0)
        check_int("TrainConfig.max_tokens", self.max_tokens, 1, optional=True)
        check_number("TrainConfig.lr", self.lr, "> 0", lambda v: v > 0)
        check_number("TrainConfig.min_lr_ratio", self.min_lr_ratio, "in [0, 1]",
                     lambda v: 0 <= v <= 1)
        check_number("TrainConfig.weight_decay", self.weight_decay, ">= 0", lambda v: v >= 0)
        check_number("TrainConfig.grad_clip", self.grad_clip, ">= 0", lambda v: v >= 0)
        for name in ("beta1", "beta2"):
            check_number(f"TrainConfig.{name}", getattr(self, name), "in [0, 1)",
                         lambda v: 0 <= v < 1)
        for name in ("tensorboard", "wandb", "progress"):
            check_bool(f"TrainConfig.{name}", getattr(self, name))
        check_choice("TrainConfig.dtype", self.dtype, DTYPES)
        if isinstance(self.init_from, os.PathLike):
            self.init_from = os.fspath(self.init_from)
        if self.init_from is not None and (not isinstance(self.init_from, str)
                                           or not self.init_from):
            raise ValueError(f"TrainConfig.init_from must be a run directory or None, got "
                             f"{self.init_from!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(
                    f"TrainConfig.device must be 'auto' or a torch device such as 'cpu', 'cuda', "
                    f"'cuda:1', got {self.device!r}"
                ) from e


# --------------------------------------------------------------------------------------------
# Optimizer and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only.

    Decayed: every weight with ndim >= 2 that maps activations to activations (linear layers,
    the memory's depthwise conv, an untied LM head). Not decayed: norms and biases (ndim 1; this
    includes the memory's gate biases, which set the initial theta, eta and alpha), and the
    parameters their modules tag as values rather than maps (``titans.layers.tags``): the token
    embedding (with tied embeddings it is also the LM head), the persistent tokens, and the neural
    memory's initial weights and norm, the starting state of the inner learner — its own forget
    gate already governs how its weights shrink, and pulling that start towards zero would push
    the memory towards a constant function. Shared parameters (the tied head) are listed once.
    """
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(param) else decay).append((name, param))
    return [
        {"params": [p for _, p in group], "param_names": [n for n, _ in group], "weight_decay": wd}
        for group, wd in ((decay, weight_decay), (no_decay, 0.0))
    ]


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps`` steps, then cosine decay from 1 to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def total_steps(config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps of a run: ``max_steps``, or fewer if ``max_tokens`` is reached first."""
    if config.max_tokens is None:
        return config.max_steps
    tokens_per_step = config.seq_len * config.batch_size * config.grad_accum * world_size
    return min(config.max_steps, math.ceil(config.max_tokens / tokens_per_step))


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class _Progress:
    """What a checkpoint records about the run besides weights and optimizer state."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen, over all processes
    elapsed: float = 0.0  # wall time of the run so far, over all sessions (s)
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None


def train(
    model_config: TitansConfig,
    train_config: TrainConfig,
    train_tokens: np.ndarray | BatchSource,
    val_tokens: np.ndarray | BatchSource | None = None,
    resume: bool = False,
    runtime: RuntimeConfig | None = None,
    data: DataConfig | None = None,
) -> dict[str, Any]:
    """Train a :class:`TitansLM` on a token stream, checkpointing and logging into out_dir.

    train_tokens / val_tokens: 1-D integer arrays (e.g. a ``TokenFile``'s memmap), cut by
    :func:`titans.data.batches.get_batch` and scored at every position, or a
    :class:`BatchSource` (e.g. task items scored only at their answers); without val_tokens
    there is no evaluation. resume: continue exactly from the checkpoint in out_dir
    (``FileNotFoundError`` if there is none, ``ValueError`` if it was trained with another model
    config, sequence length, global batch or optimizer hyperparameters; ``max_steps`` and
    ``max_tokens`` may change, to extend a run). Without resume, an out_dir that already holds a
    checkpoint is refused (``FileExistsError``) rather than overwritten. runtime: how the model
    runs (compilation, the memory's checkpointing, the attention's block size; None:
    ``RuntimeConfig()``); it is saved with the checkpoint but may change on resume, since it
    leaves the results as they are (up to float rounding). data: the data config the tokens
    come from, recorded in the run (``data.json``, see :func:`titans.runs.save_data_config`)
    once the run is claimed, so that a refused run changes nothing; on resume it must be the
    recorded one (``ValueError``).

    The training process holds out_dir for its whole duration (:func:`titans.runs.run_lock`):
    a second one on the same directory gets :class:`titans.runs.RunInUseError` at once.

    Every ``log_every`` steps a record goes to ``metrics.jsonl`` (and TensorBoard / W&B when
    enabled; see :mod:`titans.tracking`): ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
    ``elapsed`` and, for a model with a neural memory, ``memory_weight_norm_max``,
    ``memory_lr_max`` and ``memory_momentum_max`` (see the module docstring); the progress bar
    shows the last three as ``|W|``, ``theta`` and ``mom``. A non-finite loss or gradient norm
    at any step raises ``FloatingPointError`` naming the step, the cause, the first parameter
    with a non-finite gradient, the memory's health and the step of the checkpoint left in
    out_dir.

    Under ``torchrun`` every process calls this; they train data-parallel, replicated (DDP) or
    sharded (FSDP) as ``runtime.data_parallel`` says (:func:`titans.distributed.parallelize`), and
    only rank 0 logs and saves (the memory health it logs is of its own batches); the checkpoint
    is the one a single process would write, so a run may resume with another strategy or
    number of processes (the same global batch). Returns the summary
    ``{"steps", "tokens", "final_train_loss", "final_val_loss", "best_val_loss", "tokens_per_s"
    (training throughput of this session without its first step), "num_parameters", "wall_time"
    (s, all sessions), "out_dir"}``.
    """
    if not isinstance(model_config, TitansConfig):
        raise ValueError(f"model_config must be a TitansConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    runtime = RuntimeConfig() if runtime is None else runtime
    if not isinstance(runtime, RuntimeConfig):
        raise ValueError(f"runtime must be a RuntimeConfig, got {type(runtime).__name__}")
    train_source = as_batch_source("train_tokens", train_tokens, train_config.seq_len)
    val_source = None
    if val_tokens is not None:
        val_source = as_batch_source("val_tokens", val_tokens, train_config.seq_len)
    env = distributed.setup(train_config.device)
    try:
        # Only the main process writes the run, so only it holds the run directory.
        with (runs.run_lock(train_config.out_dir) if env.is_main
              else nullcontext()):
            return _train(model_config, train_config, runtime, train_source, val_source,
                          resume, env, data)
    finally:
        distributed.teardown(env)


def _train(
    model_config: TitansConfig,
    cfg: TrainConfig,
    runtime: RuntimeConfig,
    train_source: BatchSource,
    val_source: BatchSource | None,
    resume: bool,
    env: DistEnv,
    data: DataConfig | None,
) -> dict[str, Any]:
    # ---- setup
    session_start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    num_steps = total_steps(cfg, env.world_size)
    tokens_per_step = cfg.seq_len * cfg.batch_size * cfg.grad_accum * env.world_size
    _seed_everything(cfg.seed)
    amp_dtype = _amp_dtype(cfg.dtype, env.device)
    check_trackers_installed(cfg)  # fail before any work if an enabled tracker is missing
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.commit_checkpoint(out_dir)  # finish (or discard) a save that a crash interrupted
    distributed.barrier(env)  # the others read the checkpoint only once it is whole
    if not resume and runs.has_checkpoint(out_dir):
        raise FileExistsError(
            f"{out_dir} already holds a checkpoint: pass resume=True (--resume on the command "
            "line) to continue it, or choose another out_dir"
        )
    if env.is_main and data is not None:
        runs.save_data_config(out_dir, data, resume)

    # ---- model (the seed makes the initial weights identical on every process)
    model = TitansLM(model_config).to(env.device)
    if cfg.init_from is not None and not resume:  # a resumed run has its own weights
        _init_from(model, model_config, Path(cfg.init_from))
    # ---- resume: the weights now, into the whole model (FSDP then shards them); the rest of
    # the trainer state once the optimizer exists
    trainer = _resume_weights(out_dir, model_config, cfg, env.world_size, model) if resume else None

    # Configure (and maybe compile), then spread over the processes: DDP wraps the module,
    # FSDP shards `model` in place. `model` stays the module whose weights are saved.
    step_model = apply_runtime(model, runtime)
    eval_model = step_model
    step_model = distributed.parallelize(step_model, env, runtime.data_parallel)

    # ---- optimizer: on the parameters as parallelize left them (FSDP's are new objects)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
        # Fused kernels on CUDA; elsewhere PyTorch's default (foreach) implementation.
        fused=True if env.device.type == "cuda" else None,
    )

    # ---- resume: optimizer, RNG states and progress from out_dir
    progress = _Progress()
    if trainer is not None:
        distributed.load_optimizer_state(model, optimizer, trainer["optimizer"])
        runs.set_rng_state(trainer["rng"])
        progress = _Progress(**{f.name: trainer[f.name] for f in dataclasses.fields(_Progress)})
    first_step, earlier_sessions = progress.step, progress.elapsed
    saved_step = progress.step if resume else None  # the step of the checkpoint in out_dir

    def elapsed() -> float:  # wall time of the run: earlier sessions plus this one
        return earlier_sessions + time.perf_counter() - session_start

    # ---- logging: metrics.jsonl, trackers, progress (rank 0)
    log = TrainingLog(cfg, model_config, runtime, progress.step, num_steps, enabled=env.is_main)

    # ---- loop
    window_tokens, window_time = 0, 0.0  # for tokens/s of each logged window
    # This session's time in training steps: all of them, and without the first one, which pays
    # for warm-up (and compilation).
    train_time, warm_train_time = 0.0, 0.0
    while progress.step < num_steps:
        step_start = time.perf_counter()
        lr = cfg.lr * lr_multiplier(progress.step, cfg.warmup_steps, num_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr

        train_loss, health = _accumulate_gradients(step_model, train_source, progress.step, cfg,
                                                   env, amp_dtype)
        with_grad = [p for p in model.parameters() if p.grad is not None]
        # The same on every process: DDP averaged the gradients, FSDP's shards add up to it.
        grad_norm = _grad_norm(with_grad)
        # One read of the device per step: a non-finite loss or gradient stops the run before
        # the optimizer steps, so diverged weights are never taken, let alone saved.
        if not bool(torch.isfinite(train_loss) & torch.isfinite(grad_norm)):
            raise FloatingPointError(_divergence_message(
                progress.step + 1, train_loss, grad_norm, model, health, out_dir, saved_step, env
            ))
        if cfg.grad_clip:  # 0 = off: the norm is still reported
            _clip_grads(with_grad, cfg.grad_clip, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.tokens += tokens_per_step
        last_step = progress.step == num_steps
        log_now = progress.step % cfg.log_every == 0 or last_step
        save_now = progress.step % cfg.save_every == 0 or last_step
        if log_now or save_now:
            progress.final_train_loss = train_loss.item()
        step_time = time.perf_counter() - step_start
        window_tokens, window_time = window_tokens + tokens_per_step, window_time + step_time
        train_time += step_time
        if progress.step > first_step + 1:
            warm_train_time += step_time

        if log_now:
            record = {
                "step": progress.step, "tokens": progress.tokens,
                "loss": progress.final_train_loss, "lr": lr, "grad_norm": grad_norm.item(),
                **health.summary(),  # memory models only: see MemoryHealth
                "tokens_per_s": window_tokens / window_time, "elapsed": elapsed(),
            }
            window_tokens, window_time = 0, 0.0
            eta = (num_steps - progress.step) * train_time / (progress.step - first_step)
            log.train_record(record, eta)
        log.step_done()

        # ---- eval
        if val_source is not None and (progress.step % cfg.eval_every == 0 or last_step):
            val_loss = _evaluate(eval_model, val_source, cfg, env, amp_dtype)
            progress.final_val_loss = val_loss
            if progress.best_val_loss is None or val_loss < progress.best_val_loss:
                progress.best_val_loss = val_loss
            log.eval_record({"step": progress.step, "tokens": progress.tokens,
                             "val_loss": val_loss, "elapsed": elapsed()})

        # ---- checkpoint: gathered from every process under FSDP, written by rank 0
        if save_now:
            state = distributed.checkpoint_state(model, optimizer, env)
            if state is not None:
                weights, optimizer_state = state
                saved = dataclasses.replace(progress, elapsed=elapsed())
                _save_checkpoint(out_dir, model, weights, cfg, runtime, optimizer_state, saved,
                                 num_steps, env.world_size)
            saved_step = progress.step
            distributed.barrier(env)

    log.close()
    progress.elapsed = elapsed()
    steps_run = progress.step - first_step
    tokens_per_s = None
    if steps_run > 1:
        tokens_per_s = (steps_run - 1) * tokens_per_step / warm_train_time
    elif steps_run == 1:  # a session of one step: its time is all there is
        tokens_per_s = tokens_per_step / train_time
    return {
        "steps": progress.step,
        "tokens": progress.tokens,
        "final_train_loss": progress.final_train_loss,
        "final_val_loss": progress.final_val_loss,
        "best_val_loss": progress.best_val_loss,
        "tokens_per_s": tokens_per_s,
        "num_parameters": model.num_parameters(),
        "wall_time": progress.elapsed,
        "out_dir": str(out_dir),
    }


def _accumulate_gradients(
    step_model: nn.Module,
    source: BatchSource,
    step: int,
    cfg: TrainConfig,
    env: DistEnv,
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, MemoryHealth]:
    """Forward and backward passes of optimizer step ``step``'s ``cfg.grad_accum`` micro-batches
    (gradients summed into the parameters, averaged over processes by DDP or FSDP in the last
    micro-batch's backward). Returns the step's mean loss over all processes (0-d, on the
    device) and the memory's health over its forward passes."""
    loss_sum = torch.zeros((), device=env.device)
    health = MemoryHealth(step_model)
    for micro in range(cfg.grad_accum):
        batch, labels = (t.to(env.device) for t in source(
            cfg.seq_len, cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed, env.rank,
            env.world_size,
        ))
        # Gradients are reduced over processes only in the last micro-batch's backward.
        last_micro = micro == cfg.grad_accum - 1
        with nullcontext() if last_micro else distributed.no_gradient_sync(step_model):
            with health, torch.autocast(env.device.type, amp_dtype,
                                        enabled=amp_dtype is not None):
                loss = step_model(batch, labels=labels, return_logits=False).loss
                loss = loss / cfg.grad_accum
            loss.backward()
        loss_sum += loss.detach()
    return distributed.all_reduce_mean(loss_sum, env), health


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    source: BatchSource,
    cfg: TrainConfig,
    env: DistEnv,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss on ``cfg.eval_batches`` batches of ``source``, in eval mode.

    The batches are always batches 0..eval_batches-1 (independent of training progress), so
    every evaluation of a run scores the same sequences; each process scores its rows and the mean
    is taken over all of them.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=env.device)
    for i in range(cfg.eval_batches):
        batch, labels = (t.to(env.device) for t in source(
            cfg.seq_len, cfg.batch_size, i, cfg.seed, env.rank, env.world_size
        ))
        with torch.autocast(env.device.type, amp_dtype, enabled=amp_dtype is not None):
            total += model(batch, labels=labels, return_logits=False).loss.float()
    model.train(was_training)
    return distributed.all_reduce_mean(total / cfg.eval_batches, env).item()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _amp_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# ``clip_grad_norm_`` in two halves, so that the norm is checked before any gradient is scaled
# (scaling by a non-finite norm would make every gradient nan and hide where the trouble began).


def _grad_norm(params: list[nn.Parameter]) -> Tensor:
    """The 2-norm of the gradients of ``params`` together (0-d), as ``clip_grad_norm_`` has it.
    FSDP's gradients are shards (DTensors): their norm comes out partial, and its full value,
    the norm of the whole gradient, is reduced over the processes (every process calls this)."""
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6
        return distributed.full_value(nn.utils.get_total_norm(grads))
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _clip_grads(params: list[nn.Parameter], max_norm: float, total_norm: Tensor) -> None:
    """Scale the gradients of ``params`` in place to a total norm of at most ``max_norm``
    (``total_norm``: a plain tensor, the same on every process; FSDP's shards scale alike)."""
    if hasattr(nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6
        nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
        return
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale.to(p.grad.device))


def _first_nonfinite_grad(model: nn.Module, env: DistEnv) -> str | None:
    """The name of the first parameter (in ``named_parameters()`` order) whose gradient holds a
    nan or inf, or None. Under FSDP each process sees its shards: their flags are combined over
    the processes (every process calls this)."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    bad = torch.stack([~torch.isfinite(distributed.local_part(g)).all() for _, g in named])
    bad = distributed.any_process(bad, env).tolist()
    return next((name for (name, _), flag in zip(named, bad, strict=True) if flag), None)


def _divergence_message(
    step: int,
    loss: Tensor,
    grad_norm: Tensor,
    model: nn.Module,
    health: MemoryHealth,
    out_dir: Path,
    saved_step: int | None,
    env: DistEnv,
) -> str:
    """One line on a step whose loss or gradient is not finite: which of them, the first
    parameter with a non-finite gradient, the memory's health in that step (memory models) and
    what ``out_dir`` holds (never the diverged weights). Every process calls this (the loss and
    the gradient norm are the same on all)."""
    loss_value, norm_value = loss.item(), grad_norm.item()
    if math.isfinite(norm_value):
        grad = f"the gradient is finite (norm {norm_value:.4g})"
    else:
        name = _first_nonfinite_grad(model, env)
        where = (f"first non-finite gradient: {name}" if name is not None
                 else "every gradient is finite but their norm overflows")
        grad = f"the gradient is non-finite (norm {norm_value}; {where})"
    if not math.isfinite(loss_value):
        cause = f"the loss is non-finite ({loss_value}); {grad}"
    else:
        cause = f"{grad} while the loss is finite ({loss_value:.4f})"
    values = health.summary()
    memory = ""
    if values:
        memory = (f"; memory in that step: weight norm max {values[WEIGHT_NORM_KEY]:.4g}, "
                  f"theta max {values.get(LR_KEY, math.nan):.4g}, "
                  f"eta max {values.get(MOMENTUM_KEY, math.nan):.4g}")
    saved = (f"the checkpoint in {out_dir} is from step {saved_step}, before the divergence"
             if saved_step is not None else f"no checkpoint was saved in {out_dir}")
    return (f"training diverged at step {step}: {cause}{memory}; {saved} (try a lower lr or a "
            "longer warmup)")


# --------------------------------------------------------------------------------------------
# Checkpoints (the files: titans.runs)


def _save_checkpoint(
    out_dir: Path,
    model: TitansLM,
    weights: dict[str, Tensor],
    train_config: TrainConfig,
    runtime: RuntimeConfig,
    optimizer_state: dict[str, Any],
    progress: _Progress,
    num_steps: int,
    world_size: int,
) -> None:
    """Save ``weights`` (``model``'s whole state dict), the configs and the trainer state: the
    progress, ``optimizer_state`` (the optimizer's whole ``state_dict()``), the schedule's
    parameters and every RNG's state (see :func:`titans.runs.save_checkpoint`)."""
    trainer_state = {
        **asdict(progress),
        "world_size": world_size,
        "optimizer": optimizer_state,
        # The schedule is a pure function of the step; this records its parameters.
        "scheduler": {"kind": "warmup_cosine", "lr": train_config.lr, "total_steps": num_steps,
                      "warmup_steps": train_config.warmup_steps,
                      "min_lr_ratio": train_config.min_lr_ratio},
        "rng": runs.rng_state(),
    }
    runs.save_checkpoint(out_dir, model, asdict(train_config), runtime, trainer_state, weights)


# A resumed run must follow the same trajectory as the interrupted one, so these must match (and
# the model config). The runtime need not: it changes how fast the steps run, not what they do.
def _init_from(model: TitansLM, model_config: TitansConfig, run: Path) -> None:
    """Load the weights of the checkpoint in ``run`` into ``model`` (same model config)."""
    saved = TitansConfig.from_dict(runs.read_config(run)["model"])
    changed = sorted(saved.model_differences(model_config))
    if changed:
        raise ValueError(f"TrainConfig.init_from: {run} holds another model (differs in "
                         f"{changed}); its weights cannot start this one")
    runs.load_weights(model, run)


_RESUME_FIELDS = ("seq_len", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "beta1",
                  "beta2", "grad_clip", "seed")


def _resume_weights(
    out_dir: Path,
    model_config: TitansConfig,
    cfg: TrainConfig,
    world_size: int,
    model: TitansLM,
) -> dict[str, Any]:
    """Check that ``out_dir``'s checkpoint can be continued with these configs, load its
    weights into ``model`` and return its trainer state (progress, optimizer, RNG states)."""
    saved = runs.read_config(out_dir)
    diff = TitansConfig.from_dict(saved["model"]).model_differences(model_config)
    if diff:
        raise ValueError(
            f"the checkpoint in {out_dir} is of another model config ((saved, requested): {diff})"
        )
    trainer = runs.read_trainer_state(out_dir)
    saved_train = saved["train"]
    diff = {k: (saved_train[k], getattr(cfg, k)) for k in _RESUME_FIELDS
            if saved_train[k] != getattr(cfg, k)}
    saved_batch = saved_train["batch_size"] * saved_train["grad_accum"] * trainer["world_size"]
    batch = cfg.batch_size * cfg.grad_accum * world_size
    if saved_batch != batch:  # re-sharding the same global batch over processes is fine
        diff["sequences per step"] = (saved_batch, batch)
    if diff:
        raise ValueError(
            f"cannot resume {out_dir} exactly with other training settings ((saved, requested): "
            f"{diff}); start a new run in another out_dir instead"
        )
    runs.load_weights(model, out_dir)
    return trainer
