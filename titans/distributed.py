"""Data-parallel helpers for training: the model code stays single-device, distribution lives here.

A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) joins a
process group (gloo on CPU, NCCL on CUDA); every other run is a world of one process and these
helpers are no-ops, so the training loop reads the same either way.

Two strategies (``RuntimeConfig.data_parallel``, applied by :func:`parallelize`): DDP replicates
the model and averages gradients; FSDP2 (``fully_shard``) shards weights, gradients and optimizer
state over the processes. Either way a checkpoint holds what a single process would save
(:func:`checkpoint_state`, :func:`load_optimizer_state`), so a run may resume under the other
strategy or in one process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from titans.checks import check_choice
from titans.runtime import DATA_PARALLEL_MODES

try:  # public from torch 2.6 on; with an older torch, parallelize refuses "fsdp"
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import DTensor

    _SHARDED_MODULE: tuple[type, ...] = (FSDPModule,)
    _SHARDED_TENSOR: tuple[type, ...] = (DTensor,)
except ImportError:  # nothing is ever sharded: isinstance(x, ()) is False
    _SHARDED_MODULE = _SHARDED_TENSOR = ()


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


def any_process(flags: Tensor, env: DistEnv) -> Tensor:
    """Element-wise logical OR of the bool tensor ``flags`` over all processes (the flags
    themselves in a world of one). Every process must call it."""
    if not env.is_distributed:
        return flags
    flags = flags.to(torch.int32)  # every backend reduces int32, not all of them bool
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.bool()


# --------------------------------------------------------------------------------------------
# Data-parallel strategies


def parallelize(module: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """Spread ``module`` (a :class:`titans.models.TitansLM`, or ``torch.compile``'s wrapper of
    one) over the run's processes and return the module a training step runs.

    strategy: ``"ddp"``: ``DistributedDataParallel`` around ``module`` (every process holds the
    whole model; the gradients are averaged in the backward pass). ``"fsdp"``: FSDP2 applied in
    place from outside the model, torchtitan style: every block of ``model.layers`` is one
    ``fully_shard`` unit and the root unit holds the rest (the embedding, which a tied LM head
    shares, the final norm, an untied head). Each parameter becomes a ``DTensor`` sharded along
    its first dim, its gradient too, so the optimizer built on them keeps only this process's
    shard of its state; a unit's weights are all-gathered for its forward and backward passes and
    freed after them, and its gradients are reduce-scattered (averaged). Returns ``module``
    itself, whose parameters are now new objects: build the optimizer afterwards.

    A world of one process gets ``module`` unchanged, whatever the strategy.
    """
    check_choice("strategy", strategy, DATA_PARALLEL_MODES)
    if not env.is_distributed:
        return module
    if strategy == "ddp":
        return DistributedDataParallel(
            module, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if not _SHARDED_MODULE:
        raise ValueError(f"runtime.data_parallel 'fsdp' needs torch >= 2.6 (FSDP2), this is "
                         f"torch {torch.__version__}: use 'ddp' or upgrade torch")
    # Under torch.compile, shard the module it wraps: tracing happens at the first call, which
    # then sees the sharded module.
    model = getattr(module, "_orig_mod", module)
    # fully_shard replaces every parameter by a new object; the tags the layers put on theirs
    # (titans.layers.tags: which matrices AdamW must not decay) are carried over by name.
    tags = {name: dict(vars(param)) for name, param in model.named_parameters()}
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
        # TitansLM.forward builds every layer's initial state (the memory's learned initial
        # weights; MAG and MAL prime their memory on the persistent tokens) before it runs the
        # layers, so outside the block's forward, where its weights are sharded: FSDP gathers
        # them for that call as well. The gradient that reaches them through that state comes
        # after the block's own backward, and FSDP reduce-scatters it in a second pass of its
        # backward hooks (tests/test_fsdp.py checks the gradients against one process).
        register_fsdp_forward_method(block, "init_state")
    fully_shard(model, mesh=mesh)
    for name, param in model.named_parameters():
        for key, value in tags[name].items():
            setattr(param, key, value)
    # A block returns its state next to its output, and the state holds views (the memory's
    # initial weights broadcast over the batch); FSDP warns that an in-place change of a
    # returned view would bypass its backward hook. The model changes no state in place: it
    # builds each new state out of place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view")
    return module


def _sharded(module: nn.Module) -> bool:
    """Whether ``module`` (or the module ``torch.compile`` wraps) is sharded by FSDP2."""
    return isinstance(getattr(module, "_orig_mod", module), _SHARDED_MODULE)


@contextmanager
def no_gradient_sync(module: nn.Module) -> Iterator[None]:
    """The backward passes inside keep their gradients on this process, summed into the earlier
    ones, instead of reducing them over the processes: for every micro-batch of an optimizer step
    but the last, whose backward then reduces the sum once.

    DDP: its ``no_sync()``. FSDP: ``set_requires_gradient_sync(False)``: each unit keeps its
    gradients unsharded (as much memory as DDP's) until the last micro-batch reduce-scatters them.
    Any other module: nothing to hold back.
    """
    if isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif _sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def local_part(tensor: Tensor) -> Tensor:
    """This process's shard of a tensor FSDP shards (a ``DTensor``), else ``tensor`` itself."""
    return tensor.to_local() if isinstance(tensor, _SHARDED_TENSOR) else tensor


def full_value(tensor: Tensor) -> Tensor:
    """The whole value of a ``DTensor`` (a collective: every process must call it), e.g. the norm
    of sharded gradients, which is partial on each process; any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, _SHARDED_TENSOR) else tensor


# --------------------------------------------------------------------------------------------
# Checkpoints: what one process would save, whatever the strategy


def checkpoint_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The model's weights (its ``state_dict()``) and the optimizer's ``state_dict()`` as a
    single process holds them, on the main process; None on the others.

    A model sharded by :func:`parallelize` is gathered: a collective, so every process must call
    this. The weights and optimizer state come whole and on the CPU
    (``torch.distributed.checkpoint.state_dict``, ``full_state_dict``), and the optimizer state,
    which that API keys by parameter name, is keyed back by index
    (``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``, the indices
    as ``param_names`` orders them), so the files equal a single process's.
    """
    if not _sharded(model):
        return (model.state_dict(), optimizer.state_dict()) if env.is_main else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not env.is_main:  # cpu_offload leaves the other processes empty dicts
        return None
    groups = optimizer.state_dict()["param_groups"]  # indices and hyperparameters, no tensors
    index = {name: i for group in groups
             for i, name in zip(group["params"], group["param_names"], strict=True)}
    return weights, {"state": {index[name]: state for name, state in by_name["state"].items()},
                     "param_groups": groups}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load ``state``, an optimizer ``state_dict()`` as a single process saves it (see
    :func:`checkpoint_state`), into ``optimizer``, whose parameters are ``model``'s. Under FSDP
    every process calls this with the whole state, and keeps its shard of it."""
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    # The saved indices count the parameters in the order of their groups; this optimizer has
    # the same groups (the same model config), which name them.
    name = {i: param_name for saved, group in zip(state["param_groups"], optimizer.param_groups,
                                                  strict=True)
            for i, param_name in zip(saved["params"], group["param_names"], strict=True)}
    by_name = {"state": {name[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [name[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name,
                             options=StateDictOptions(full_state_dict=True))
