"""Configs, the Titans blocks and the causal language model of every Titans variant and
baseline."""

from titans.models.blocks import HybridState, MACState, OutputGate, TitansBlock
from titans.models.config import ABLATIONS, PRESETS, VARIANTS, TitansConfig
from titans.models.health import MemoryHealth
from titans.models.lm import TitansLM, TitansOutput, TitansState, sample_next_token
from titans.models.sizing import count_parameters, match_parameters

__all__ = [
    "ABLATIONS", "PRESETS", "VARIANTS", "HybridState", "MACState", "MemoryHealth", "OutputGate",
    "TitansBlock", "TitansConfig", "TitansLM", "TitansOutput", "TitansState", "count_parameters",
    "match_parameters", "sample_next_token",
]
