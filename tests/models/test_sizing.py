"""Parameter counting on the meta device and size matching between variants."""

import pytest

from titans import TitansConfig, TitansLM
from titans.models import count_parameters, match_parameters


def test_count_parameters_equals_a_built_model():
    cfg = TitansConfig.from_preset("tiny", "mag")
    assert count_parameters(cfg) == TitansLM(cfg).num_parameters()
    assert count_parameters(cfg, exclude_embeddings=True) == TitansLM(cfg).num_parameters(True)


@pytest.mark.parametrize("preset", ["tiny", "small", "340M"])
def test_match_parameters_brings_the_baseline_to_the_memory_model_size(preset):
    """The transformer's MLP is widened until its count is within one MLP step of MAC's."""
    mac = TitansConfig.from_preset(preset, "mac")
    target = count_parameters(mac)
    matched = match_parameters(TitansConfig.from_preset(preset, "transformer"), target)
    step = 3 * mac.hidden_size * mac.num_hidden_layers * 8
    assert abs(count_parameters(matched) - target) <= step / 2
    assert matched.intermediate_size % 8 == 0 and matched.variant == "transformer"


def test_match_parameters_rejects_unreachable_targets():
    with pytest.raises(ValueError, match="narrowest MLP"):
        match_parameters(TitansConfig.from_preset("tiny", "transformer"), 1000)
