"""Run ``titans.train.train`` once or more from a JSON spec, under torchrun or in a process of its
own (tests/test_fsdp.py).

Spec keys: ``train_tokens`` / ``val_tokens`` (.npy paths) and ``runs``, a list run in order,
each with ``model`` (TitansConfig fields), ``train`` (TrainConfig fields), ``runtime``
(RuntimeConfig fields), ``resume`` (bool), ``poison`` (bool: the final norm's weight gets a
gradient whose last element is inf, see :func:`poisoned_model`) and ``result`` (where rank 0
writes ``{"summary": ...}``, or ``{"error": ...}`` with the message of a ``FloatingPointError``).

Under torchrun the processes join one process group for all the runs, which ``train`` then uses
as it is.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

import titans.train
from titans import TitansConfig, TitansLM
from titans.io import atomic_save_json
from titans.runtime import RuntimeConfig
from titans.train import TrainConfig, train


class _InfInLastElement(torch.autograd.Function):
    """The identity, whose backward writes inf into the last element of the gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return tensor.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad.view(-1)[-1] = math.inf
        return grad


def poisoned_model(config: TitansConfig) -> TitansLM:
    """A TitansLM whose final norm's weight [hidden] gets a gradient with inf in its last element
    only: no other gradient and not the loss. Sharded over processes along its dim, that element
    is in the last process's shard alone."""
    model = TitansLM(config)
    norm = model.norm

    def forward(x: Tensor) -> Tensor:  # RMSNorm.forward in float32, the weight poisoned
        weight = _InfInLastElement.apply(norm.weight)
        return F.rms_norm(x, norm.normalized_shape, weight, norm.eps)

    norm.forward = forward
    return model


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # One thread: bitwise-reproducible CPU kernels, and no oversubscription of the test machine.
    torch.set_num_threads(1)
    train_tokens, val_tokens = np.load(spec["train_tokens"]), np.load(spec["val_tokens"])
    under_torchrun = "WORLD_SIZE" in os.environ
    if under_torchrun:
        dist.init_process_group("gloo")
    try:
        for run in spec["runs"]:
            # The training loop looks the model class up when it builds the model.
            titans.train.TitansLM = poisoned_model if run.get("poison") else TitansLM
            result: dict[str, Any]
            try:
                result = {"summary": train(
                    TitansConfig.from_dict(run["model"]), TrainConfig(**run["train"]),
                    train_tokens, val_tokens, resume=run.get("resume", False),
                    runtime=RuntimeConfig(**run["runtime"]),
                )}
            except FloatingPointError as e:  # every process stops alike: the test reads why
                result = {"error": str(e)}
            if not under_torchrun or dist.get_rank() == 0:
                atomic_save_json(result, run["result"])
    finally:
        if under_torchrun:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
