"""titans.runtime: RuntimeConfig's validation; apply_runtime sets every layer's knobs (a model
built without it has the defaults) and compiles the whole model on request; the knobs leave the
numbers as they are; a former config's knobs become a runtime; the model and train configs no
longer take them. (Runs: tests/test_runs.py, tests/test_train.py, tests/test_cli.py; FSDP
training: tests/test_fsdp.py.)"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
import torch

from titans import RuntimeConfig, TitansConfig, TitansLM, apply_runtime
from titans.layers import NeuralMemory
from titans.layers.attention import Attention
from titans.models import VARIANTS
from titans.runtime import (
    COMPILE_MODES,
    DATA_PARALLEL_MODES,
    configure_layers,
    runtime_of_former_config,
)
from titans.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def knobs(model: torch.nn.Module) -> set[tuple[str, Any]]:
    """The knob values found on the model's layers."""
    found: set[tuple[str, Any]] = set()
    for module in model.modules():
        if isinstance(module, NeuralMemory):
            found |= {("checkpoint_chunks", module.checkpoint_chunks),
                      ("compile_step", module.compile_step)}
        elif isinstance(module, Attention):
            found.add(("block_size", module.block_size))
    return found


def expected_knobs(variant: str, runtime: RuntimeConfig) -> set[tuple[str, Any]]:
    memory = {("checkpoint_chunks", runtime.memory_checkpoint_chunks),
              ("compile_step", runtime.compile == "memory")}
    attention = {("block_size", runtime.attention_block_size)}
    return ((memory if VARIANTS[variant].has_memory else set())
            | (attention if variant != "lmm" else set()))


# ---------------------------------------------------------------- RuntimeConfig


def test_defaults_and_json_round_trip():
    assert RuntimeConfig() == RuntimeConfig(compile="none", memory_checkpoint_chunks=16,
                                            attention_block_size=512, data_parallel="ddp")
    for runtime in (RuntimeConfig(), RuntimeConfig("model", None, 7, "fsdp")):
        values = json.loads(json.dumps(dataclasses.asdict(runtime)))
        assert RuntimeConfig(**values) == runtime
    assert RuntimeConfig(memory_checkpoint_chunks=None).memory_checkpoint_chunks is None


@pytest.mark.parametrize("bad", [True, False, None, 1, "", "eager", "Memory", "all"])
def test_compile_is_one_of_the_modes(bad):
    with pytest.raises(ValueError, match=re.escape(f"RuntimeConfig.compile must be one of "
                                                   f"{COMPILE_MODES}, got {bad!r}")):
        RuntimeConfig(compile=bad)
    for mode in COMPILE_MODES:
        assert RuntimeConfig(compile=mode).compile == mode


@pytest.mark.parametrize("bad", [None, True, 1, "", "DDP", "fsdp2", "zero3", ["fsdp"]])
def test_data_parallel_is_ddp_or_fsdp(bad):
    with pytest.raises(ValueError, match=re.escape(f"RuntimeConfig.data_parallel must be one of "
                                                   f"{DATA_PARALLEL_MODES}, got {bad!r}")):
        RuntimeConfig(data_parallel=bad)
    assert DATA_PARALLEL_MODES == ("ddp", "fsdp")
    for mode in DATA_PARALLEL_MODES:
        assert RuntimeConfig(data_parallel=mode).data_parallel == mode


@pytest.mark.parametrize("field", ["memory_checkpoint_chunks", "attention_block_size"])
@pytest.mark.parametrize("bad", [0, -1, -16, 2.0, "4", True, False])
def test_counts_reject_non_positive_non_int_and_bool(field, bad):
    with pytest.raises(ValueError, match=rf"RuntimeConfig\.{field} must be (None or )?an int >= 1"):
        RuntimeConfig(**{field: bad})


def test_the_attention_block_size_is_never_none():
    with pytest.raises(ValueError, match=r"RuntimeConfig\.attention_block_size must be an int "
                                         r">= 1, got None"):
        RuntimeConfig(attention_block_size=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- apply_runtime


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_model_built_without_a_runtime_has_the_default_knobs(variant):
    """RuntimeConfig() describes the layers' own defaults: applying it changes nothing."""
    model = TitansLM(TitansConfig.from_preset("tiny", variant))
    assert knobs(model) == expected_knobs(variant, RuntimeConfig())


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_runtime_sets_every_layer_and_returns_the_model(variant):
    model = TitansLM(TitansConfig.from_preset("tiny", variant))
    for runtime in (RuntimeConfig("memory", None, 3), RuntimeConfig("none", 2, 40)):
        assert apply_runtime(model, runtime) is model
        assert knobs(model) == expected_knobs(variant, runtime)


def test_compile_model_wraps_the_same_module_and_compiles_no_step():
    """"model" returns a compiled module around the model itself (no copy of the weights); the
    memory's own step is not compiled a second time inside it."""
    model = TitansLM(TitansConfig.from_preset("tiny", "mac"))
    compiled = apply_runtime(model, RuntimeConfig(compile="model"))
    assert compiled is not model and compiled._orig_mod is model
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]
    assert knobs(model) == expected_knobs("mac", RuntimeConfig())


def test_configure_layers_never_compiles_and_checks_its_argument():
    model = TitansLM(TitansConfig.from_preset("tiny", "mag"))
    assert configure_layers(model, RuntimeConfig(compile="model", attention_block_size=9)) is None
    assert knobs(model) == expected_knobs("mag", RuntimeConfig(attention_block_size=9))
    with pytest.raises(ValueError, match="runtime must be a RuntimeConfig, got dict"):
        apply_runtime(model, {"compile": "none"})  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_knobs_leave_loss_and_gradients_as_they_are(variant):
    """Checkpointing recomputes the same chunks: the same bits. Other attention blocks regroup
    the queries (and, with a window, the keys each block sees): the same up to rounding."""
    cfg = TitansConfig.from_preset("tiny", variant)
    ids = torch.randint(0, cfg.vocab_size, (2, 70), generator=torch.Generator().manual_seed(0))

    def loss_and_grads(runtime: RuntimeConfig) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = apply_runtime(TitansLM(cfg), runtime)
        loss = model(ids, labels=ids).loss
        loss.backward()
        return [loss.detach(), *(p.grad for p in model.parameters())]

    base = loss_and_grads(RuntimeConfig())
    for chunks in (None, 1, 3):
        got = loss_and_grads(RuntimeConfig(memory_checkpoint_chunks=chunks))
        assert all(torch.equal(a, b) for a, b in zip(got, base, strict=True)), chunks
    for block in (3, 16):
        got = loss_and_grads(RuntimeConfig(attention_block_size=block))
        for a, b in zip(got, base, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the knobs' former places


@pytest.mark.parametrize(("compile_memory", "compile_model", "mode"), [
    (False, False, "none"), (True, False, "memory"), (False, True, "model"), (True, True, "model"),
])
def test_a_former_config_becomes_a_runtime(compile_memory, compile_model, mode):
    """The former model keys move out of the model values, train.compile out of the train
    values; the inputs are left as they were."""
    model = {**TitansConfig().to_dict(), "attention_block_size": 64,
             "memory_checkpoint_chunks": None, "compile_memory": compile_memory}
    train = {"lr": 0.1, "compile": compile_model}
    before = (dict(model), dict(train))
    model_values, train_values, runtime = runtime_of_former_config(model, train)
    assert runtime == RuntimeConfig(compile=mode, memory_checkpoint_chunks=None,
                                    attention_block_size=64)
    assert model_values == TitansConfig().to_dict() and train_values == {"lr": 0.1}
    assert (model, train) == before


def test_a_former_config_without_the_knobs_has_the_default_runtime():
    assert runtime_of_former_config({"variant": "mac"}, {}) == ({"variant": "mac"}, {},
                                                                 RuntimeConfig())


@pytest.mark.parametrize("key", ["attention_block_size", "memory_checkpoint_chunks",
                                 "compile_memory"])
def test_the_model_config_takes_no_knob(key):
    with pytest.raises(ValueError, match=rf"unknown TitansConfig keys \['{key}'\]"):
        TitansConfig.from_dict({key: 1})


def test_the_train_config_takes_no_compile_switch():
    assert "compile" not in {f.name for f in dataclasses.fields(TrainConfig)}
