"""How a model runs, apart from what it computes: compilation, activation checkpointing of the
neural memory, the attention's block size and how training is spread over processes.

These knobs trade speed against memory and leave the results as they are (up to float rounding:
under ``torch.compile``, and in sliding-window attention, whose blocks regroup the keys), so they
are not part of the model config (:class:`TitansConfig`): a run can be resumed with other values.
They are applied to a built model from outside, by :func:`apply_runtime`; the layers keep them as
plain attributes (``NeuralMemory.checkpoint_chunks`` and ``compile_step``,
``Attention.block_size``), and a model built without a runtime has ``RuntimeConfig()``'s values, the
layers' defaults. The data-parallel strategy is applied by the training loop
(:func:`titans.distributed.parallelize`).

In a config file they are the ``runtime`` section; a run directory keeps them next to the model
config (:mod:`titans.runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from titans.checks import check_choice, check_int
from titans.layers.attention import Attention
from titans.layers.memory import NeuralMemory

# "none": eager; "memory": torch.compile the neural memory's per-chunk step (one small graph,
# compiled once); "model": torch.compile the whole model a training step runs.
COMPILE_MODES = ("none", "memory", "model")
# Data parallelism under torchrun. "ddp": every process holds the whole model and optimizer state;
# "fsdp": FSDP2 shards weights, gradients and optimizer state over the processes.
DATA_PARALLEL_MODES = ("ddp", "fsdp")

# Where the knobs were before they had a section of their own (section -> key -> the runtime
# setting it became), so that a config file setting one there is told where it went. A run
# directory written then still loads: :func:`runtime_of_former_config`.
FORMER_KEYS: dict[str, dict[str, str]] = {
    "model": {"attention_block_size": "attention_block_size",
              "memory_checkpoint_chunks": "memory_checkpoint_chunks",
              "compile_memory": "compile: memory"},
    "train": {"compile": "compile: model"},
}


@dataclass
class RuntimeConfig:
    """The run-time knobs, validated on construction (``ValueError`` naming the field).

    compile: one of :data:`COMPILE_MODES`. "model" compiles the module that training runs;
        evaluations stream pieces whose state position changes every call, which would recompile
        a whole compiled model each time, so they run the layers as "none" does.
    memory_checkpoint_chunks: in training, the neural memory recomputes groups of this many
        chunks in the backward pass instead of keeping every chunk's memory weights (None keeps
        them all: more memory, one forward less).
    attention_block_size: at most this many queries per attention block (memory
        O(T * (block_size + window))).
    data_parallel: one of :data:`DATA_PARALLEL_MODES`, how a run of several processes
        (torchrun) trains: "ddp" replicates the model, "fsdp" shards it
        (:func:`titans.distributed.parallelize`). A single process ignores it, and checkpoints
        are the same either way.
    """

    compile: str = "none"
    memory_checkpoint_chunks: int | None = 16
    attention_block_size: int = 512
    data_parallel: str = "ddp"

    def __post_init__(self) -> None:
        check_choice("RuntimeConfig.compile", self.compile, COMPILE_MODES)
        check_int("RuntimeConfig.memory_checkpoint_chunks", self.memory_checkpoint_chunks, 1,
                  optional=True)
        check_int("RuntimeConfig.attention_block_size", self.attention_block_size, 1)
        check_choice("RuntimeConfig.data_parallel", self.data_parallel, DATA_PARALLEL_MODES)


def configure_layers(model: nn.Module, runtime: RuntimeConfig) -> None:
    """Set the knobs of every neural memory and attention layer inside ``model``, in place:
    everything of ``runtime`` but the whole-model compilation."""
    if not isinstance(runtime, RuntimeConfig):
        raise ValueError(f"runtime must be a RuntimeConfig, got {type(runtime).__name__}")
    for module in model.modules():
        if isinstance(module, NeuralMemory):
            module.checkpoint_chunks = runtime.memory_checkpoint_chunks
            module.compile_step = runtime.compile == "memory"
        elif isinstance(module, Attention):
            module.block_size = runtime.attention_block_size


def apply_runtime(model: nn.Module, runtime: RuntimeConfig) -> nn.Module:
    """Configure ``model``'s layers for ``runtime`` (:func:`configure_layers`) and return the
    module to run: ``torch.compile(model)`` with ``compile="model"``, else ``model`` itself. The
    compiled module shares the parameters, and ``model`` stays the one whose weights are saved.
    """
    configure_layers(model, runtime)
    return torch.compile(model) if runtime.compile == "model" else model


def runtime_of_former_config(
    model_values: dict[str, Any], train_values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], RuntimeConfig]:
    """The model and train config values of a run written before the runtime section, without
    the knobs (:data:`FORMER_KEYS`), and the runtime the knobs amount to. The two compile
    switches map onto one mode: the whole model's (``train.compile``) wins, since compiling the
    whole model covers the memory's step too."""
    model_values, train_values = dict(model_values), dict(train_values)
    compile_memory = model_values.pop("compile_memory", False)
    compile_model = train_values.pop("compile", False)
    mode = "model" if compile_model else "memory" if compile_memory else "none"
    # The other knobs kept their names.
    knobs = {f.name: model_values.pop(f.name) for f in fields(RuntimeConfig)
             if f.name in model_values}
    return model_values, train_values, RuntimeConfig(compile=mode, **knobs)
