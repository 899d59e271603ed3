"""MemoryHealth: the recorded maxima equal a direct computation over every memory call, gates
as the memory used them; nothing for models without memory; hooks always removed."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import titans.layers.memory as memory_module
from titans.layers.memory import NeuralMemory, NeuralMemoryState
from titans.models.config import TitansConfig
from titans.models.health import HEALTH_KEYS, MemoryHealth
from titans.models.lm import TitansLM

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(variant: str, seed: int = 0, **overrides: Any) -> TitansLM:
    torch.manual_seed(seed)
    return TitansLM(TitansConfig.from_preset("tiny", variant, **overrides))


def token_ids(seed: int, batch: int = 2, length: int = 80) -> Tensor:
    # 80 tokens: several MAC segments (32) and memory chunks (8), and a partial chunk.
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("variant", ["mac", "lmm"])
def test_recorded_values_equal_a_direct_computation(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(variant)
    ids = token_ids(0)
    with torch.no_grad():
        plain_logits = model(ids).logits

    # Spy on every memory call (its returned state) and on the gates the memory op really used.
    states: list[NeuralMemoryState] = []
    gates: list[tuple[Tensor, Tensor]] = []
    forward, op = NeuralMemory.forward, memory_module.memory_chunked

    def forward_spy(self: NeuralMemory, x: Tensor, state: Any = None) -> Any:
        y, new_state = forward(self, x, state)
        states.append(new_state)
        return y, new_state

    def op_spy(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, eta: Tensor, *args: Any,
               **kwargs: Any) -> Any:
        if lr.numel():
            gates.append((lr.detach(), eta.detach()))
        return op(q, k, v, lr, eta, *args, **kwargs)

    monkeypatch.setattr(NeuralMemory, "forward", forward_spy)
    monkeypatch.setattr(memory_module, "memory_chunked", op_spy)

    with MemoryHealth(model) as health:
        out = model(ids, labels=ids)
    assert len(health.memories) == 2
    assert len(states) > 2 if variant == "mac" else len(states) == 2  # MAC: calls per segment
    expected_norm = max(
        float(w.detach().double().square().sum((-2, -1)).sqrt().max())
        for s in states for w in s.current.weights
    )
    expected_lr = max(float(lr.max()) for lr, _ in gates)
    expected_eta = max(float(eta.max()) for _, eta in gates)

    summary = health.summary()
    assert list(summary) == list(HEALTH_KEYS)
    assert summary["memory_weight_norm_max"] == pytest.approx(expected_norm, rel=1e-6)
    assert summary["memory_lr_max"] == expected_lr
    assert summary["memory_momentum_max"] == expected_eta
    assert 0 < expected_lr <= model.config.memory_max_lr and 0 < expected_eta < 1
    # 0-d tensors outside the graph; recording changes neither the outputs nor the gradients.
    for value in (health.weight_norm, health.lr, health.momentum):
        assert value is not None and value.dim() == 0 and not value.requires_grad
    torch.testing.assert_close(out.logits, plain_logits, rtol=0, atol=0)
    out.loss.backward()
    assert hook_count(model) == 0


def test_values_accumulate_over_blocks_until_reset() -> None:
    model = tiny_model("mag")
    single = []
    for seed in (1, 2):
        with torch.no_grad(), MemoryHealth(model) as health:
            model(token_ids(seed))
        single.append(health.summary())
    health = MemoryHealth(model)
    for seed in (1, 2):  # e.g. the micro-batches of one optimizer step
        with torch.no_grad(), health:
            model(token_ids(seed))
    assert health.summary() == {k: max(s[k] for s in single) for k in HEALTH_KEYS}
    health.reset()
    assert health.summary() == {} and health.weight_norm is None


def test_without_momentum_eta_is_zero() -> None:
    model = tiny_model("mag", use_momentum=False, memory_max_lr=0.02)
    with torch.no_grad(), MemoryHealth(model) as health:
        model(token_ids(0))
    summary = health.summary()
    assert summary["memory_momentum_max"] == 0.0
    assert 0 < summary["memory_lr_max"] <= 0.02


def test_non_finite_memory_weights_show_as_nan() -> None:
    model = tiny_model("lmm")
    with torch.no_grad():
        memory = [m for m in model.modules() if isinstance(m, NeuralMemory)][-1]
        memory.memory_init[0][0, 0, 0] = math.inf
        with MemoryHealth(model) as health:
            model(token_ids(0))
    assert not math.isfinite(health.summary()["memory_weight_norm_max"])


@pytest.mark.parametrize("variant", ["transformer", "swa"])
def test_models_without_memory_record_nothing(variant: str) -> None:
    model = tiny_model(variant)
    with torch.no_grad(), MemoryHealth(model) as health:
        model(token_ids(0))
    assert not health.has_memory and health.summary() == {}
    assert hook_count(model) == 0


def test_hooks_are_removed_on_exit_and_on_error() -> None:
    model = tiny_model("mac")
    health = MemoryHealth(model)
    with health:
        assert hook_count(model) == 2
        with pytest.raises(RuntimeError, match="already recording"):
            health.__enter__()
    assert hook_count(model) == 0
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), health:
        model(token_ids(0))
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a step
    assert hook_count(model) == 0
    assert health.summary() != {}
    health.reset()
    with torch.no_grad():
        model(token_ids(0))  # runs unrecorded now
    assert health.summary() == {}
