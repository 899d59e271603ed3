"""Parameter counts without allocating weights, and matching two models' sizes."""

from __future__ import annotations

import torch

from titans.models.config import TitansConfig
from titans.models.lm import TitansLM


def count_parameters(config: TitansConfig, exclude_embeddings: bool = False) -> int:
    """``TitansLM(config).num_parameters()``, built on the meta device (no memory, any size)."""
    with torch.device("meta"):
        return TitansLM(config).num_parameters(exclude_embeddings)


def match_parameters(config: TitansConfig, target: int, multiple_of: int = 8) -> TitansConfig:
    """``config`` with the SwiGLU width chosen so its parameter count is closest to ``target``.

    The count is linear in ``intermediate_size`` (3 * hidden * layers per unit), so two counts
    give the exact slope; the result is rounded to ``multiple_of``. Used to compare variants at
    equal size (e.g. Transformer++ against MAC, which also carries a memory per block).
    """
    base = config.replace(intermediate_size=multiple_of)
    per_unit = (count_parameters(config.replace(intermediate_size=2 * multiple_of))
                - count_parameters(base)) / multiple_of
    width = multiple_of + (target - count_parameters(base)) / per_unit
    if width < multiple_of:
        raise ValueError(
            f"cannot reach {target} parameters by the MLP width alone: even the narrowest MLP "
            f"gives {count_parameters(base)}"
        )
    return config.replace(intermediate_size=round(width / multiple_of) * multiple_of)
