"""Configs, the Titans blocks and the causal language model of every Titans variant and
baseline."""

from titans.layers.tags import is_residual_projection, no_weight_decay
from titans.models.blocks import (
    VARIANTS,
    HybridState,
    LayerState,
    MACState,
    OutputGate,
    TitansBlock,
    VariantSpec,
    register_variant,
    unregister_variant,
    variant_spec,
)
from titans.models.config import ABLATIONS, PRESETS, TitansConfig
from titans.models.health import MemoryHealth
from titans.models.lm import TitansLM, TitansOutput, TitansState, sample_next_token
from titans.models.sizing import count_parameters, match_parameters

__all__ = [
    "ABLATIONS", "PRESETS", "VARIANTS", "HybridState", "LayerState", "MACState", "MemoryHealth",
    "OutputGate", "TitansBlock", "TitansConfig", "TitansLM", "TitansOutput", "TitansState",
    "VariantSpec", "count_parameters", "is_residual_projection", "match_parameters",
    "no_weight_decay", "register_variant", "sample_next_token", "unregister_variant",
    "variant_spec",
]
