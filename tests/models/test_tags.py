"""Parameters and projections tag themselves: for every variant the tagged sets are exactly the
sets the name rules selected before the tags (the rules are restated here), and the
initialisation that reads the tags is bit-identical to the one that matched names."""

import math

import pytest
import torch
from torch import nn

from titans import TitansConfig, TitansLM
from titans.models import ABLATIONS, VARIANTS, is_residual_projection, no_weight_decay

# The name rules of titans.train.param_groups and TitansLM._init_weights before the tags.
NAMED_RESIDUAL_PROJECTIONS = ("mixer.attn.o_proj", "mixer.memory.o_proj", "mlp.down_proj")


def named_no_decay(model: nn.Module) -> set[str]:
    return {
        name for name, param in model.named_parameters()
        if param.ndim < 2 or name == "embed_tokens.weight" or name.endswith(".persistent")
        or ".memory_init." in name or ".memory_norm_" in name
    }


def named_init_weights(self: TitansLM) -> None:
    std = self.config.initializer_range
    nn.init.normal_(self.embed_tokens.weight, std=std)
    for name, module in self.named_modules():
        if isinstance(module, nn.Linear):
            residual = name.endswith(NAMED_RESIDUAL_PROJECTIONS)
            scale = 1 / math.sqrt(2 * self.config.num_hidden_layers) if residual else 1.0
            nn.init.normal_(module.weight, std=std * scale)


def config(variant, **overrides):
    """A small model of every variant with three layers (residual scale 1/sqrt(6))."""
    values = dict(variant=variant, vocab_size=37, hidden_size=32, num_hidden_layers=3,
                  num_heads=2, segment_len=8, window_size=6, chunk_size=4, memory_expansion=2)
    return TitansConfig(**{**values, **overrides})


CASES = [(v, {}) for v in VARIANTS] + [(v, {"tie_word_embeddings": False}) for v in VARIANTS] + [
    ("mac", ABLATIONS["linear_memory"]), ("mag", ABLATIONS["no_persistent"]),
    ("mal", ABLATIONS["no_conv"]),
]
IDS = [f"{v}-{'-'.join(f'{k}={x}' for k, x in o.items()) or 'default'}" for v, o in CASES]


@pytest.mark.parametrize(("variant", "overrides"), CASES, ids=IDS)
def test_tagged_sets_equal_the_named_sets(variant, overrides):
    """No weight decay: vectors, the embedding (the head too when tied), persistent tokens, the
    memory's initial weights and residual-norm parameters; an untied head decays. Residual
    projections: attention and memory o_proj, the MLP's down_proj. Tags survive ``.to()``."""
    model = TitansLM(config(variant, **overrides))
    for dtype in (torch.float32, torch.float64):
        model = model.to(dtype)
        params = dict(model.named_parameters())
        assert {n for n, p in params.items() if no_weight_decay(p)} == named_no_decay(model)
        tagged = {n for n, m in model.named_modules() if is_residual_projection(m)}
        named = {n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and n.endswith(NAMED_RESIDUAL_PROJECTIONS)}
        assert tagged == named and len(named) >= model.config.num_hidden_layers
        assert no_weight_decay(model.lm_head.weight) == model.config.tie_word_embeddings


@pytest.mark.parametrize(("variant", "overrides"), CASES, ids=IDS)
def test_initialisation_is_bit_identical_to_the_name_rule(variant, overrides, monkeypatch):
    cfg = config(variant, **overrides)
    torch.manual_seed(0)
    tagged = TitansLM(cfg).state_dict()
    monkeypatch.setattr(TitansLM, "_init_weights", named_init_weights)
    torch.manual_seed(0)
    named = TitansLM(cfg).state_dict()
    assert list(tagged) == list(named)
    for name in named:
        assert torch.equal(tagged[name], named[name]), name
