"""Health signals of the neural memory while training: how large its weights grow and how hard
its data-dependent gates push (paper §3.1: inner learning rate theta, momentum eta).

A deep memory that diverges shows it here before the loss does: its fast weights grow without
bound when theta is too large for the keys' scale or eta keeps the surprise going. The
training loop (:func:`titans.train.train`) records these values at every step, logs them next to
the gradient norm and names them when a run diverges.

    with MemoryHealth(model) as health:
        loss = model(input_ids, labels=labels).loss
    health.summary()  # {"memory_weight_norm_max": 3.1, "memory_lr_max": 0.06, ...}
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from titans.layers.memory import NeuralMemory, NeuralMemoryState

# The keys of :meth:`MemoryHealth.summary` (and of the training metrics that carry them).
WEIGHT_NORM_KEY = "memory_weight_norm_max"
LR_KEY = "memory_lr_max"
MOMENTUM_KEY = "memory_momentum_max"
HEALTH_KEYS = (WEIGHT_NORM_KEY, LR_KEY, MOMENTUM_KEY)


class MemoryHealth:
    """Records the neural memory's health over the forward calls made while it is entered.

    Entering registers a forward hook on every :class:`NeuralMemory` in ``model`` (the model may
    hold none: then nothing is recorded); leaving removes them, also when the body raised. Over
    every call of every memory layer while entered it keeps the maximum of:

    - ``weight_norm``: the Frobenius norm of any weight matrix of the running memory the layer
      returns, after its last token (``output[1].current.weights``, each [B, H, d_in, d_out]:
      the norm over the last two dims, the maximum over layers, matrices, batch rows and heads);
    - ``lr``: the inner learning rate theta ([B, T, H] per call, in [0, max_lr]);
    - ``momentum``: the momentum eta ([B, T, H] per call, in [0, 1]; 0 without momentum).

    theta and eta are recomputed from the hook's input x by the layer's own gate computation
    (one small Linear per call). Each value is a 0-d float32 tensor on the model's device,
    computed under ``torch.no_grad()`` and never read on the host inside a hook, so recording
    adds no device synchronisation and nothing to the autograd graph; ``None`` until a memory
    layer has run. A non-finite value (nan, inf) propagates into the maximum.

    Values accumulate over successive ``with`` blocks (e.g. the micro-batches of one optimizer
    step) until :meth:`reset`. ``model`` may be wrapped (``DistributedDataParallel``,
    ``torch.compile``): the hooks are on the wrapped layers, and the recorder holds what they
    see — under DDP the values of this process's batch only; under ``torch.compile`` the hooks
    are traced into the compiled graph (registering them afresh each step does not recompile).
    """

    def __init__(self, model: nn.Module) -> None:
        self.memories: list[NeuralMemory] = [
            m for m in model.modules() if isinstance(m, NeuralMemory)
        ]
        self.weight_norm: Tensor | None = None
        self.lr: Tensor | None = None
        self.momentum: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    @property
    def has_memory(self) -> bool:
        """Whether the model holds any neural memory layer."""
        return bool(self.memories)

    def reset(self) -> None:
        """Forget the recorded values (the hooks stay as they are)."""
        self.weight_norm = self.lr = self.momentum = None

    def __enter__(self) -> MemoryHealth:
        if self._handles:
            raise RuntimeError("MemoryHealth is already recording; it cannot be entered twice")
        self._handles = [
            m.register_forward_hook(self._record, with_kwargs=True) for m in self.memories
        ]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(
        self,
        module: NeuralMemory,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: tuple[Tensor, NeuralMemoryState],
    ) -> None:
        """Forward hook of one memory layer: x [B, T, hidden] in, (y, state) out."""
        x: Tensor = args[0] if args else kwargs["x"]
        with torch.no_grad():
            weight_norm = torch.stack([
                torch.linalg.matrix_norm(w.float()).amax()  # [B, H, d_in, d_out] -> [B, H] -> max
                for w in output[1].current.weights
            ]).amax()
            self.weight_norm = _running_max(self.weight_norm, weight_norm)
            if x.shape[1]:  # a call on no tokens has no gates
                lr, eta, _ = module.gates(x)  # each [B, T, H], float32
                self.lr = _running_max(self.lr, lr.float().amax())
                self.momentum = _running_max(self.momentum, eta.float().amax())

    def summary(self) -> dict[str, float]:
        """The recorded maxima as python floats (one device synchronisation):
        ``{"memory_weight_norm_max", "memory_lr_max", "memory_momentum_max"}``, or ``{}`` when
        nothing was recorded (a model without neural memory, such as the transformer and swa
        baselines, or no forward call yet)."""
        values = {WEIGHT_NORM_KEY: self.weight_norm, LR_KEY: self.lr,
                  MOMENTUM_KEY: self.momentum}
        present = {k: v for k, v in values.items() if v is not None}
        if not present:
            return {}
        read = torch.stack(list(present.values())).tolist()
        return dict(zip(present, read, strict=True))


def _running_max(current: Tensor | None, value: Tensor) -> Tensor:
    """max(current, value) as a 0-d tensor; nan in either gives nan."""
    return value if current is None else torch.maximum(current, value)
