"""Tests of the training loop: config, optimizer groups, schedule, checkpoints, exact resume
after SIGKILL, and data parallelism under torchrun."""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

import titans.runs
import titans.train
from titans import TitansConfig, TitansLM
from titans.data.batches import get_batch
from titans.models.health import HEALTH_KEYS, MemoryHealth
from titans.runs import STAGING_DIR, load_checkpoint, read_metrics
from titans.runtime import RuntimeConfig
from titans.train import TrainConfig, lr_multiplier, param_groups, total_steps, train

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = Path(__file__).with_name("train_worker.py")
VOCAB = 64


def tiny_model_config(**overrides: Any) -> TitansConfig:
    return TitansConfig(variant="mac", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_heads=2, segment_len=16, chunk_size=4, **overrides)


def tiny_train_config(out_dir: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(out_dir=str(out_dir), seq_len=32, batch_size=4, max_steps=4,
                                  warmup_steps=1, save_every=2, eval_every=2, eval_batches=2,
                                  log_every=1, progress=False)
    return TrainConfig(**{**values, **overrides})


def synthetic_tokens(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def saved_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(out_dir / "model.safetensors")


# ---------------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq_len", 0), ("seq_len", 1), ("batch_size", -1), ("grad_accum", 1.5), ("max_steps", 0),
     ("max_tokens", 0), ("lr", 0.0), ("lr", True), ("min_lr_ratio", 1.5), ("warmup_steps", -1),
     ("lr", float("inf")), ("weight_decay", -0.1), ("beta1", 1.0), ("beta2", -0.1),
     ("grad_clip", -1.0),
     ("eval_every", 0), ("eval_batches", 0), ("save_every", 0), ("log_every", 0), ("seed", -1),
     ("device", "gpu7"), ("dtype", "float16"), ("tensorboard", 1), ("progress", "yes"),
     ("out_dir", ""), ("init_from", ""), ("init_from", 3)],
)
def test_train_config_rejects_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{field} "):
        TrainConfig(**{field: value})


def test_train_config_accepts_paths_and_stays_serialisable(tmp_path: Path) -> None:
    cfg = TrainConfig(out_dir=tmp_path / "run", max_tokens=10)  # type: ignore[arg-type]
    assert cfg.out_dir == str(tmp_path / "run")
    assert json.loads(json.dumps(asdict(cfg)))["out_dir"] == str(tmp_path / "run")


def test_total_steps_stops_at_max_tokens_or_max_steps() -> None:
    cfg = TrainConfig(seq_len=8, batch_size=2, grad_accum=2, max_steps=100, max_tokens=330)
    assert total_steps(cfg) == 11  # 32 tokens per step: the 11th step passes 330
    assert total_steps(cfg, world_size=2) == 6
    assert total_steps(TrainConfig(max_steps=3, max_tokens=10**9)) == 3


# ---------------------------------------------------------------------------- optimizer, schedule


def test_param_groups_decay_matrices_only() -> None:
    model = TitansLM(tiny_model_config())
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    decayed = set(decay["param_names"])
    assert "layers.0.mixer.attn.q_proj.weight" in decayed
    assert "layers.1.mlp.down_proj.weight" in decayed
    assert "layers.0.mixer.memory.conv.weight" in decayed
    assert not any(n.endswith(("bias", "norm.weight", ".persistent")) or "memory_init" in n
                   for n in decayed)
    assert "embed_tokens.weight" in no_decay["param_names"]
    assert "layers.0.mixer.memory.gate_proj.bias" in no_decay["param_names"]
    # The tied LM head is the embedding: listed once, every parameter in exactly one group.
    names = decay["param_names"] + no_decay["param_names"]
    assert "lm_head.weight" not in names and len(names) == len(set(names))
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == (
        model.num_parameters()
    )
    untied = param_groups(TitansLM(tiny_model_config(tie_word_embeddings=False)), 0.1)
    assert "lm_head.weight" in untied[0]["param_names"]


def test_lr_schedule_warms_up_then_decays_to_min() -> None:
    factors = [lr_multiplier(s, 4, 20, 0.1) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert factors[12] == pytest.approx(0.55)  # cosine midpoint
    assert lr_multiplier(0, 0, 10, 0.0) == 1.0


# ------------------------------------------------------------------------- training, checkpoints


def test_training_lowers_the_loss_and_writes_a_checkpoint(tmp_path: Path) -> None:
    # A stream that repeats one short pattern is easy to learn in a few steps.
    tokens = np.tile(np.arange(8, dtype=np.uint16), 600)
    cfg = tiny_train_config(tmp_path / "run", max_steps=8, save_every=4, eval_every=4, lr=1e-2)
    summary = train(tiny_model_config(), cfg, tokens, tokens)

    assert summary["steps"] == 8 and summary["tokens"] == 8 * 4 * 32
    assert summary["num_parameters"] == TitansLM(tiny_model_config()).num_parameters()
    assert summary["tokens_per_s"] > 0 and summary["wall_time"] > 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    val_records = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert [r["step"] for r in val_records] == [4, 8]
    assert train_records[-1]["loss"] < train_records[0]["loss"] - 0.5
    assert summary["final_train_loss"] == train_records[-1]["loss"]
    assert summary["final_val_loss"] == val_records[-1]["val_loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in val_records)
    assert set(train_records[0]) == {"step", "tokens", "loss", "lr", "grad_norm",
                                     "tokens_per_s", "elapsed", *HEALTH_KEYS}

    model, config = load_checkpoint(tmp_path / "run")
    assert config == {"model": tiny_model_config().to_dict(), "train": asdict(cfg),
                      "runtime": asdict(RuntimeConfig())}
    assert model.lm_head.weight is model.embed_tokens.weight  # re-tied, stored once
    assert "lm_head.weight" not in saved_weights(tmp_path / "run")
    with torch.no_grad():  # the checkpoint holds the final weights: it scores the last eval
        val_loss = sum(float(model(b, labels=b).loss) for b in (get_batch(tokens, 32, 4, i, 0)
                                                                 for i in range(2))) / 2
    assert val_loss == pytest.approx(summary["final_val_loss"], abs=1e-5)


def test_init_from_starts_from_another_runs_weights(tmp_path: Path) -> None:
    """init_from loads a finished run's weights (a curriculum's next stage, here at another
    sequence length); only a run of the same model config is accepted."""
    tokens = synthetic_tokens(20_000, seed=3)
    train(tiny_model_config(), tiny_train_config(tmp_path / "a", max_steps=2), tokens)
    first = saved_weights(tmp_path / "a")
    # A learning rate too small to move any weight: the second run saves what it loaded.
    cfg = tiny_train_config(tmp_path / "b", seq_len=48, max_steps=1, lr=1e-30, warmup_steps=0,
                            init_from=str(tmp_path / "a"))
    train(tiny_model_config(), cfg, tokens)
    second = saved_weights(tmp_path / "b")
    assert first.keys() == second.keys()
    for name, weight in first.items():
        torch.testing.assert_close(second[name], weight, rtol=0, atol=1e-12)
    train(tiny_model_config(), tiny_train_config(tmp_path / "c", seq_len=48, max_steps=1,
                                                 lr=1e-30, warmup_steps=0), tokens)
    assert not torch.equal(saved_weights(tmp_path / "c")["embed_tokens.weight"],
                           first["embed_tokens.weight"])
    other = tiny_model_config(mac_memory_input="attention")
    with pytest.raises(ValueError, match=r"holds another model \(differs in \['mac_memory_input'"):
        train(other, tiny_train_config(tmp_path / "d", init_from=str(tmp_path / "a")), tokens)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_model_config(), tiny_train_config(tmp_path / "e", init_from=str(tmp_path)),
              tokens)
    # An option that only another variant reads does not make another model.
    lmm = tiny_model_config().replace(variant="lmm")
    train(lmm, tiny_train_config(tmp_path / "f", max_steps=1), tokens)
    train(lmm.replace(mal_memory_skip=False),
          tiny_train_config(tmp_path / "g", max_steps=1, init_from=str(tmp_path / "f")), tokens)


def test_a_batch_source_supplies_inputs_and_labels(tmp_path: Path) -> None:
    """A callable source replaces the token stream: its labels are what is scored (here only
    the last position of each row), for training and validation alike."""
    calls = []

    def source(seq_len: int, batch_size: int, step: int, seed: int, rank: int,
               world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(step)
        g = torch.Generator().manual_seed(seed * 1000 + step)
        ids = torch.randint(0, VOCAB, (batch_size, seq_len), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        return ids, labels

    cfg = tiny_train_config(tmp_path / "run", max_steps=2, eval_every=2, eval_batches=1)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building its model
    initial = TitansLM(tiny_model_config())
    summary = train(tiny_model_config(), cfg, source, source)
    assert calls[:2] == [0, 1] and calls[-1] == 0  # training batches 0, 1; validation batch 0
    ids, labels = source(cfg.seq_len, cfg.batch_size, 0, cfg.seed, 0, 1)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(initial(ids).logits[:, -2], ids[:, -1])
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(float(expected), abs=1e-5)
    model, _ = load_checkpoint(tmp_path / "run")
    with torch.no_grad():
        val = float(model(ids, labels=labels).loss)
    assert summary["final_val_loss"] == pytest.approx(val, abs=1e-5)


def test_grad_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    tokens = synthetic_tokens(4000, seed=0)
    model_config = tiny_model_config(tie_word_embeddings=False)
    train(model_config, tiny_train_config(tmp_path / "a", max_steps=3, batch_size=4), tokens)
    train(model_config, tiny_train_config(tmp_path / "b", max_steps=3, batch_size=2,
                                          grad_accum=2), tokens)
    # AdamW and clipping hide a constant gradient scale, so compare the reported loss and
    # gradient norm too: they expose a wrongly scaled accumulated loss.
    for ra, rb in zip(read_metrics(tmp_path / "a" / "metrics.jsonl"),
                      read_metrics(tmp_path / "b" / "metrics.jsonl"), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
    a, b = saved_weights(tmp_path / "a"), saved_weights(tmp_path / "b")
    assert a.keys() == b.keys() and "lm_head.weight" in a
    for name in a:  # equal up to float summation order, which Adam amplifies to ~1e-6
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_resume_errors(tmp_path: Path) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    cfg = tiny_train_config(tmp_path / "run", max_steps=2, eval_every=100)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_model_config(), cfg, tokens, resume=True)
    train(tiny_model_config(), cfg, tokens)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(tiny_model_config(), cfg, tokens)
    with pytest.raises(ValueError, match=r"another model config.*hidden_size"):
        train(tiny_model_config().replace(hidden_size=64), cfg, tokens, resume=True)
    with pytest.raises(ValueError, match=r"other training settings.*lr"):
        train(tiny_model_config(), tiny_train_config(tmp_path / "run", lr=1.0), tokens,
              resume=True)
    # Extending a finished run is allowed: the schedule follows the new length.
    summary = train(tiny_model_config(), tiny_train_config(tmp_path / "run", max_steps=3,
                                                           eval_every=100), tokens, resume=True)
    assert summary["steps"] == 3 and summary["tokens_per_s"] > 0  # a session of one step
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def assert_same_training(run: Path, other: Path) -> None:
    """Bit for bit the same weights and the same logged values."""
    weights, other_weights = saved_weights(run), saved_weights(other)
    assert weights.keys() == other_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], other_weights[name]), name

    def values(path: Path) -> list[tuple]:
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("val_loss"))
                for r in read_metrics(path / "metrics.jsonl")]

    assert values(run) == values(other)


def test_resume_with_other_runtime_knobs_continues_exactly(tmp_path: Path) -> None:
    """The runtime is no part of the resume check, and it is saved apart from the model config.
    Checkpointing recomputes the same chunks and MAC's attention blocks regroup only queries, so
    this run continues bit for bit (tests/test_runtime.py)."""
    tokens = synthetic_tokens(4000, seed=0)
    train(tiny_model_config(), tiny_train_config(tmp_path / "full"), tokens, tokens)
    resumed = tmp_path / "resumed"
    train(tiny_model_config(), tiny_train_config(resumed, max_steps=2), tokens, tokens)
    other = RuntimeConfig(memory_checkpoint_chunks=1, attention_block_size=4)
    summary = train(tiny_model_config(), tiny_train_config(resumed), tokens, tokens, resume=True,
                    runtime=other)
    assert summary["steps"] == 4
    assert_same_training(resumed, tmp_path / "full")
    saved = titans.runs.read_config(resumed)
    assert saved["runtime"] == asdict(other) and saved["model"] == tiny_model_config().to_dict()


def test_a_run_from_before_the_runtime_section_resumes_exactly(tmp_path: Path) -> None:
    """A run directory whose config.json keeps the knobs in the model config (and the compile
    switch in train), as runs did before the runtime section, resumes; its next checkpoint has
    a runtime section."""
    tokens = synthetic_tokens(4000, seed=0)
    train(tiny_model_config(), tiny_train_config(tmp_path / "full"), tokens, tokens)
    former = tmp_path / "former"
    train(tiny_model_config(), tiny_train_config(former, max_steps=2), tokens, tokens)
    config = json.loads((former / "config.json").read_text())
    config["model"].update(attention_block_size=8, memory_checkpoint_chunks=2,
                           compile_memory=False)
    config["train"]["compile"] = False
    del config["runtime"]
    (former / "config.json").write_text(json.dumps(config))
    assert train(tiny_model_config(), tiny_train_config(former), tokens, tokens,
                 resume=True)["steps"] == 4
    assert_same_training(former, tmp_path / "full")
    saved = json.loads((former / "config.json").read_text())
    assert saved["runtime"] == asdict(RuntimeConfig()) and "compile" not in saved["train"]
    assert saved["model"] == tiny_model_config().to_dict()


def test_crash_mid_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    out = tmp_path / "run"
    train(tiny_model_config(), tiny_train_config(out, max_steps=2), tokens)
    before = saved_weights(out)
    saves = []

    def crashing_save(obj: Any, f: Any) -> None:  # trainer.pt is the last file of a save
        saves.append(obj["step"])
        raise KeyboardInterrupt

    monkeypatch.setattr(titans.runs.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_config(), tiny_train_config(out, max_steps=4), tokens, resume=True)
    monkeypatch.undo()
    assert saves == [4]  # weights of step 4 were already written, but only into the staging
    after = saved_weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.load(out / "trainer.pt", weights_only=True)["step"] == 2
    # The next run discards the incomplete staging and resumes from step 2.
    assert train(tiny_model_config(), tiny_train_config(out, max_steps=4), tokens,
                 resume=True)["steps"] == 4
    assert not (out / STAGING_DIR).exists()


def test_complete_staging_is_rolled_forward(tmp_path: Path) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    out = tmp_path / "run"
    train(tiny_model_config(), tiny_train_config(out, max_steps=2, save_every=1), tokens)
    # Simulate a crash after the weights were moved in but before trainer.pt was.
    staging = out / STAGING_DIR
    staging.mkdir()
    (out / "trainer.pt").rename(staging / "trainer.pt")
    trainer = torch.load(staging / "trainer.pt", weights_only=True)
    trainer["step"] = 7  # recognisable
    torch.save(trainer, staging / "trainer.pt")
    with pytest.raises(ValueError, match="training settings"):  # rolls forward, then checks
        train(tiny_model_config(), tiny_train_config(out, max_steps=8, lr=1.0), tokens,
              resume=True)
    assert not staging.exists()
    assert torch.load(out / "trainer.pt", weights_only=True)["step"] == 7


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_missing_tracker_package_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker: str
) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # as if the package were not installed
    with pytest.raises(ImportError, match=rf"titans-lm\[{tracker}\]"):
        train(tiny_model_config(), tiny_train_config(tmp_path / "run", **{tracker: True}),
              synthetic_tokens(2000, seed=0))
    assert not (tmp_path / "run" / "trainer.pt").exists()


def test_metrics_carry_the_memory_health(tmp_path: Path) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    cfg = tiny_train_config(tmp_path / "mac", max_steps=2)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building its model
    initial = TitansLM(tiny_model_config())
    batch = get_batch(tokens, cfg.seq_len, cfg.batch_size, 0, cfg.seed)
    with MemoryHealth(initial) as health:  # what the first step's forward sees
        initial(batch, labels=batch, return_logits=False)
    expected = health.summary()
    train(tiny_model_config(), cfg, tokens)
    records = [r for r in read_metrics(tmp_path / "mac" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    for key in HEALTH_KEYS:
        assert records[0][key] == pytest.approx(expected[key], rel=1e-6), key
    for r in records:
        assert 0 < r["memory_lr_max"] <= tiny_model_config().memory_max_lr
        assert 0 < r["memory_momentum_max"] < 1 and r["memory_weight_norm_max"] > 0

    # A model without neural memory logs none of them.
    train(transformer_config(), tiny_train_config(tmp_path / "tf", max_steps=2), tokens)
    record = read_metrics(tmp_path / "tf" / "metrics.jsonl")[0]
    assert "grad_norm" in record and not set(HEALTH_KEYS) & set(record)


def transformer_config() -> TitansConfig:
    return TitansConfig(variant="transformer", vocab_size=VOCAB, hidden_size=32,
                        num_hidden_layers=2, num_heads=2)


def poison_from_step(monkeypatch: pytest.MonkeyPatch, step: int, grads: tuple[str, ...] = (),
                     loss: bool = False) -> None:
    """Make train() build models whose gradients of the parameters ``grads`` get one inf
    element, or whose loss becomes nan (the final norm's output), from training step ``step``
    (1-based) on."""

    def build(config: TitansConfig) -> TitansLM:
        model = TitansLM(config)
        params = dict(model.named_parameters())
        for name in grads:
            seen = itertools.count(1)

            def poison(grad: torch.Tensor, seen: Any = seen) -> torch.Tensor:
                if next(seen) < step:
                    return grad
                grad = grad.clone()
                grad.view(-1)[0] = math.inf
                return grad

            params[name].register_hook(poison)
        if loss:
            forwards = itertools.count(1)
            model.norm.register_forward_hook(
                lambda module, args, out: out * math.nan if next(forwards) >= step else out
            )
        return model

    monkeypatch.setattr(titans.train, "TitansLM", build)


def test_a_non_finite_gradient_stops_training_naming_the_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    # Two poisoned gradients: the message names the first in named_parameters() order.
    poison_from_step(monkeypatch, 3,
                     grads=("norm.weight", "layers.1.mixer.memory.gate_proj.weight"))
    with pytest.raises(FloatingPointError) as info:
        train(tiny_model_config(), tiny_train_config(out, max_steps=6, save_every=2),
              synthetic_tokens(2000, seed=0))
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    assert message.startswith(
        "training diverged at step 3: the gradient is non-finite (norm inf; first non-finite "
        "gradient: layers.1.mixer.memory.gate_proj.weight) while the loss is finite ("
    )
    number = r"\d[\d.e+-]*"
    assert re.search(rf"memory in that step: weight norm max {number}, theta max 0\.\d+, "
                     rf"eta max 0\.\d+; ", message), message
    assert f"the checkpoint in {out} is from step 2, before the divergence" in message
    # Nothing of step 3 was saved or logged; the checkpoint of step 2 is intact.
    assert torch.load(out / "trainer.pt", weights_only=True)["step"] == 2
    assert all(torch.isfinite(w).all() for w in saved_weights(out).values())
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_a_non_finite_loss_stops_training_before_any_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    poison_from_step(monkeypatch, 2, loss=True)
    with pytest.raises(FloatingPointError) as info:  # a model without memory: no health values
        train(transformer_config(), tiny_train_config(out, max_steps=4, save_every=2),
              synthetic_tokens(2000, seed=0))
    message = str(info.value)
    assert message.startswith("training diverged at step 2: the loss is non-finite (nan); "
                              "the gradient is non-finite (norm nan; first non-finite gradient: "
                              "embed_tokens.weight)")
    assert "memory" not in message and f"no checkpoint was saved in {out}" in message
    assert not (out / "trainer.pt").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]


def test_divergence_stops_before_saving(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path / "run", lr=1e30, max_steps=3, save_every=2)
    with pytest.raises(FloatingPointError, match=r"diverged at step \d: the (loss|gradient) is "
                                                 r"non-finite.*memory in that step"):
        train(tiny_model_config(), cfg, synthetic_tokens(2000, seed=0))
    assert not (tmp_path / "run" / "trainer.pt").exists()


def test_bfloat16_autocast_on_cpu_keeps_float32_weights(tmp_path: Path) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    runs = {dtype: train(tiny_model_config(), tiny_train_config(tmp_path / dtype, dtype=dtype,
                                                                max_steps=2), tokens, tokens)
            for dtype in ("float32", "bfloat16")}
    assert runs["bfloat16"]["final_val_loss"] == pytest.approx(runs["float32"]["final_val_loss"],
                                                               abs=0.02)
    assert all(t.dtype == torch.float32 for t in saved_weights(tmp_path / "bfloat16").values())


@pytest.mark.slow  # compilation takes minutes on a small CPU
def test_compiled_model_trains_like_eager(tmp_path: Path) -> None:
    tokens = synthetic_tokens(2000, seed=0)
    runs = {mode: train(tiny_model_config(), tiny_train_config(tmp_path / mode, max_steps=2),
                        tokens, tokens, runtime=RuntimeConfig(compile=mode))
            for mode in ("none", "model")}
    assert runs["model"]["final_val_loss"] == pytest.approx(runs["none"]["final_val_loss"],
                                                            abs=1e-4)
    # The saved names are the module's own, not the compiled wrapper's (``_orig_mod.``).
    assert saved_weights(tmp_path / "model").keys() == saved_weights(tmp_path / "none").keys()


# ------------------------------------------------------------------------ processes of their own


def write_spec(tmp_path: Path, name: str, train_values: dict[str, Any], **extra: Any) -> Path:
    spec = {"model": tiny_model_config().to_dict(), "train": train_values,
            "train_tokens": str(tmp_path / "train.npy"), "val_tokens": str(tmp_path / "val.npy"),
            "summary": str(tmp_path / f"{name}-summary.json"), **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def save_tokens(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", synthetic_tokens(20000, seed=0))
    np.save(tmp_path / "val.npy", synthetic_tokens(3000, seed=1))


def run_worker(spec: Path, timeout: float = 120) -> None:
    result = subprocess.run([sys.executable, str(WORKER), str(spec)], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow  # a subprocess training run (>7 s)
def test_resume_after_sigkill_is_exact(tmp_path: Path) -> None:
    save_tokens(tmp_path)
    base = asdict(tiny_train_config(tmp_path / "full", max_steps=12, save_every=4, eval_every=6,
                                    log_every=2))
    full_spec = write_spec(tmp_path, "full", base)
    killed_train = {**base, "out_dir": str(tmp_path / "killed")}
    killed_spec = write_spec(tmp_path, "killed", killed_train, step_delay=0.25)
    resume_spec = write_spec(tmp_path, "resume", killed_train, resume=True)

    # The uninterrupted run and the run to kill side by side (one core each).
    full = subprocess.Popen([sys.executable, str(WORKER), str(full_spec)],
                            stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, str(WORKER), str(killed_spec)],
                              stderr=subprocess.PIPE, text=True)
    # Kill once the step-4 checkpoint exists and a later step was logged: the resumed run must
    # drop that record rather than log the step twice.
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not ((tmp_path / "killed" / "trainer.pt").exists()
               and any(r["step"] > 4 for r in read_metrics(metrics))):
        assert killed.poll() is None, killed.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint written in 120 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    killed_at = torch.load(tmp_path / "killed" / "trainer.pt", weights_only=True)["step"]
    assert killed_at in (4, 8)
    assert max(r["step"] for r in read_metrics(metrics)) > killed_at
    assert full.wait(timeout=120) == 0, full.communicate()[1][-4000:]

    run_worker(resume_spec)
    full_weights, resumed_weights = saved_weights(tmp_path / "full"), saved_weights(
        tmp_path / "killed"
    )
    assert full_weights.keys() == resumed_weights.keys()
    for name in full_weights:
        assert torch.equal(full_weights[name], resumed_weights[name]), name

    # The metrics continue without duplicates, with the same values as the uninterrupted run.
    def values(run: str) -> list[tuple]:
        records = read_metrics(tmp_path / run / "metrics.jsonl")
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("lr"), r.get("val_loss"),
                 *(r.get(k) for k in HEALTH_KEYS)) for r in records]

    assert values("killed") == values("full")
    assert [v[0] for v in values("full")] == [2, 4, 6, 6, 8, 10, 12, 12]
    full_summary = json.loads((tmp_path / "full-summary.json").read_text())
    resumed_summary = json.loads((tmp_path / "resume-summary.json").read_text())
    for key in ("steps", "tokens", "final_train_loss", "final_val_loss", "best_val_loss"):
        assert resumed_summary[key] == full_summary[key], key


@pytest.mark.slow  # a subprocess training run (>7 s)
def test_torchrun_data_parallel_matches_one_process(tmp_path: Path) -> None:
    save_tokens(tmp_path)
    common = dict(max_steps=3, grad_accum=2, save_every=2, eval_every=2, eval_batches=2)
    ddp_train = asdict(tiny_train_config(tmp_path / "ddp", batch_size=2, **common))
    spec = write_spec(tmp_path, "ddp", ddp_train)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(spec)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    single = train(tiny_model_config(), tiny_train_config(tmp_path / "one", batch_size=4,
                                                          **common),
                   np.load(tmp_path / "train.npy"), np.load(tmp_path / "val.npy"))
    ddp_weights, single_weights = saved_weights(tmp_path / "ddp"), saved_weights(tmp_path / "one")
    # The two runs sum the same gradients in another float32 order, and AdamW divides by
    # sqrt(v), which magnifies that rounding in near-zero entries (seen: 1.7e-6 after 3 steps);
    # a wrong reduction would move weights by ~lr = 3e-3.
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=0, atol=1e-5,
                                   msg=name)
    # Rank 0 alone logged: one record per step; losses are the global batch's.
    ddp_records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    single_records = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in ddp_records] == [r["step"] for r in single_records]
    for a, b in zip(ddp_records, single_records, strict=True):
        assert a["tokens"] == b["tokens"]
        key = "loss" if "loss" in a else "val_loss"
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    ddp_summary = json.loads((tmp_path / "ddp-summary.json").read_text())
    assert ddp_summary["final_val_loss"] == pytest.approx(single["final_val_loss"], abs=1e-5)
