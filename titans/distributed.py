"""Data-parallel helpers for training: the model code stays single-device, distribution lives here.

A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) joins a
process group (gloo on CPU, NCCL on CUDA); every other run is a world of one process and these
helpers are no-ops, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run.

    rank: global index of the process (0 logs and saves); world_size: number of processes;
    device: where this process computes; owns_group: this process group was created by
    :func:`setup` and must be destroyed by :func:`teardown`.
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA if available, else CPU. A bare ``"cuda"`` under torchrun becomes this
    process's GPU ``cuda:<LOCAL_RANK>``, so every rank gets its own device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def setup(device: str) -> DistEnv:
    """Join the torchrun process group if there is one (or use an already initialised group).

    device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``...; see :func:`resolve_device`.
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistEnv(dist.get_rank(), dist.get_world_size(), resolve_device(device, local_rank))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return DistEnv(0, 1, resolve_device(device))
    if "RANK" not in os.environ or "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but RANK / LOCAL_RANK are not set: launch multi-process "
            "training with torchrun (python -m torch.distributed.run --nproc_per_node N ...)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), resolved, owns_group=True)


def teardown(env: DistEnv) -> None:
    """Leave the process group if :func:`setup` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: Tensor, env: DistEnv) -> Tensor:
    """The mean of ``value`` (any shape) over all processes; the value itself in a world of one."""
    if not env.is_distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def barrier(env: DistEnv) -> None:
    """Wait for every process (e.g. until rank 0 has repaired the checkpoint others will read)."""
    if env.is_distributed:
        dist.barrier()
