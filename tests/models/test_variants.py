"""The variant registry: the built-in variants' traits, and a new variant added by this module
alone (a causal cumulative mean as the token mixer) that gets a config, a model, training (a
model's step and the training loop with its parameter groups), exact streaming and the
long-context task evaluation without any change to the package."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from titans import TitansConfig, TitansLM
from titans.data import train_bpe
from titans.evals.long_context import evaluate_task
from titans.evals.tasks import FILLER, TaskGenerator
from titans.models import VARIANTS, VariantSpec, register_variant, unregister_variant
from titans.runs import load_checkpoint
from titans.train import TrainConfig, param_groups, train

BUILTIN_TRAITS = {  # name: (has_memory, persistent_tokens, sliding_window, segmented, state_grows)
    "mac": (True, True, False, True, False),
    "mag": (True, True, True, False, False),
    "mal": (True, True, True, False, False),
    "lmm": (True, False, False, False, False),
    "transformer": (False, False, False, False, True),
    "swa": (False, False, True, False, False),
}


@dataclass
class MeanState:
    """total: [B, hidden], the sum of every mixer input so far."""

    total: Tensor

    def detach(self) -> MeanState:
        return MeanState(self.total.detach())


class CumulativeMeanMixer(nn.Module):
    """y_t = W (x_1 + ... + x_t) / t: causal, with the running sum as its state."""

    def __init__(self, cfg: TitansConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def init_state(self, batch_size: int) -> MeanState:
        return MeanState(self.proj.weight.new_zeros(batch_size, self.proj.in_features))

    def forward(self, x: Tensor, start: int, state: MeanState) -> tuple[Tensor, MeanState]:
        """x: [B, T, hidden] at stream positions start .. start + T - 1 -> [B, T, hidden]."""
        sums = state.total[:, None] + x.cumsum(1)
        counts = torch.arange(start + 1, start + x.shape[1] + 1, dtype=x.dtype, device=x.device)
        return self.proj(sums / counts[:, None]), MeanState(state.total + x.sum(1))


@pytest.fixture
def toy() -> Iterator[VariantSpec]:
    """The "toy" variant, registered for one test and removed after it."""
    spec = register_variant(VariantSpec("toy", CumulativeMeanMixer, "causal cumulative mean"))
    yield spec
    unregister_variant("toy")


def toy_model(dtype: torch.dtype = torch.float64) -> TitansLM:
    torch.manual_seed(0)
    cfg = TitansConfig(variant="toy", vocab_size=29, hidden_size=16, num_hidden_layers=2,
                       num_heads=2)
    return TitansLM(cfg).to(dtype)


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_builtin_variants_and_their_traits():
    """VARIANTS iterates over the names in their order; every spec carries its traits."""
    assert list(VARIANTS) == list(BUILTIN_TRAITS)
    for name, traits in BUILTIN_TRAITS.items():
        spec = VARIANTS[name]
        assert spec.name == name
        assert (spec.has_memory, spec.persistent_tokens, spec.sliding_window, spec.segmented,
                spec.state_grows) == traits
    assert VARIANTS["transformer"].mixer is VARIANTS["swa"].mixer  # one mixer, two windows


def test_registry_errors_and_read_only_view(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_variant(VariantSpec("toy", CumulativeMeanMixer, "again"))
    with pytest.raises(ValueError, match="non-empty str"):
        register_variant(VariantSpec("", CumulativeMeanMixer, "nameless"))
    with pytest.raises(ValueError, match="variant must be one of"):
        unregister_variant("nope")
    with pytest.raises(TypeError):
        VARIANTS["other"] = toy  # type: ignore[index]
    assert list(VARIANTS)[-1] == "toy"


def test_unregistered_variant_is_no_longer_valid():
    register_variant(VariantSpec("gone", CumulativeMeanMixer, "removed below"))
    try:
        assert TitansConfig(variant="gone").variant == "gone"
    finally:
        unregister_variant("gone")
    assert "gone" not in VARIANTS
    with pytest.raises(ValueError, match="variant must be one of"):
        TitansConfig(variant="gone")


def test_toy_variant_configures_trains_and_keeps_a_bounded_state(toy):
    """Config defaults follow the spec; forward + backward reach every parameter; the state is
    the mixer's and does not grow."""
    cfg = TitansConfig.from_preset("tiny", "toy")
    assert not cfg.has_memory and cfg.num_persistent_tokens == 0
    with pytest.raises(ValueError, match="num_persistent_tokens"):
        cfg.replace(num_persistent_tokens=2)
    model = toy_model(torch.float32)
    ids = torch.randint(0, 29, (2, 24), generator=torch.Generator().manual_seed(1))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(isinstance(s, MeanState) for s in out.state.layers)
    with torch.no_grad():
        later = model(ids, out.state.detach()).state
    assert later.num_bytes() == out.state.num_bytes()


def test_toy_variant_one_pass_equals_pieces_and_token_by_token_decode(
        toy, check_stream_equivalences):
    """Logits of one pass == random pieces with carried state == prefill + one token at a time."""
    model = toy_model()
    ids = torch.randint(0, 29, (2, 31), generator=torch.Generator().manual_seed(2))
    check_stream_equivalences(model, ids, prefill=10)


def test_toy_variant_is_causal(toy):
    """Changing token j changes no logit before j, and does change later ones."""
    model = toy_model()
    ids = torch.randint(0, 29, (1, 20), generator=torch.Generator().manual_seed(3))
    base = model(ids).logits
    for j in (0, 7, 19):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 29
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert (logits[:, j:] - base[:, j:]).abs().max() > 1e-6


def test_toy_variant_trains_through_the_training_loop(toy, tmp_path):
    """titans.train builds, optimizes, checkpoints and evaluates the toy: its projection is
    decayed like any matrix, the embedding is not (its tag), and no memory health is logged."""
    cfg = TitansConfig(variant="toy", vocab_size=29, hidden_size=16, num_hidden_layers=2,
                       num_heads=2)
    decayed, not_decayed = (set(group["param_names"])
                            for group in param_groups(TitansLM(cfg), weight_decay=0.1))
    assert {"layers.0.mixer.proj.weight", "layers.1.mixer.proj.weight"} <= decayed
    assert {"embed_tokens.weight", "layers.0.mixer_norm.weight"} <= not_decayed
    tokens = np.random.default_rng(0).integers(0, 29, 3000).astype(np.uint16)
    run = tmp_path / "toy"
    summary = train(cfg, TrainConfig(out_dir=str(run), seq_len=16, batch_size=2, max_steps=3,
                                     warmup_steps=1, eval_every=3, eval_batches=1, save_every=3,
                                     log_every=1, progress=False), tokens, tokens)
    assert summary["steps"] == 3
    assert math.isfinite(summary["final_train_loss"]) and math.isfinite(summary["final_val_loss"])
    torch.manual_seed(0)  # train() seeds the same way before building its model
    initial = TitansLM(cfg)
    trained, saved = load_checkpoint(run)
    assert saved["model"]["variant"] == "toy"
    assert not torch.equal(trained.layers[0].mixer.proj.weight, initial.layers[0].mixer.proj.weight)


@pytest.fixture
def growing_toy(toy) -> Iterator[VariantSpec]:
    """The toy mixer declared with a state that grows with the stream (as full attention's)."""
    spec = register_variant(VariantSpec("growing_toy", CumulativeMeanMixer, "says it grows",
                                        state_grows=True))
    yield spec
    unregister_variant("growing_toy")


def test_toy_variant_goes_through_the_long_context_evaluation(growing_toy, tmp_path):
    """evaluate_task streams the toy over long contexts and decodes its answers; whether a length
    is run past max_full_attention_length is the registry's state_grows trait, not a name."""
    tokenizer = train_bpe([" ".join(FILLER)] * 4, 300, tmp_path / "bpe.json")
    generator = TaskGenerator(tokenizer, [" ".join(FILLER)] * 8)
    rows = {}
    for variant in ("toy", "growing_toy"):
        torch.manual_seed(0)
        model = TitansLM(TitansConfig(variant=variant, vocab_size=tokenizer.vocab_size,
                                      hidden_size=16, num_hidden_layers=2, num_heads=2))
        rows[variant] = evaluate_task(model, generator, "niah1", [160, 320], [0.0, 1.0],
                                      num_items=2, batch_size=2, piece_len=64,
                                      max_full_attention_length=200)
    assert [(r["length"], r["depth"]) for r in rows["toy"]] == [
        (160, 0.0), (160, 1.0), (320, 0.0), (320, 1.0)]
    for r in rows["toy"]:
        assert r["skipped"] is None and r["items"] == 2 and len(r["predictions"]) == 2
        assert r["accuracy"] == r["correct"] / 2

    def untimed(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in ("tokens_per_s", "peak_memory_mib")}

    # Up to 200 tokens the same model under another name gives the same rows; beyond, not run.
    short, long = rows["growing_toy"][:2], rows["growing_toy"][2:]
    assert [untimed(r) for r in short] == [untimed(r) for r in rows["toy"][:2]]
    assert all(r["accuracy"] is None and "KV cache grows" in r["skipped"] for r in long)
