"""Rotary position embedding (RoPE, Su et al. 2021), rotate-half layout as in Llama.

Angles are formed in float64 from integer positions, so positions in the millions (a long stream
read in pieces) rotate as precisely as position 0: float32 angles would be off by ~0.1 rad there.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_embedding(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of ``x`` by ``position * base^(-2i/D)``.

    x: [..., T, D] with D even; positions: [T] integers -> [..., T, D], dtype of x.
    Rotations make ``rope(q, i) . rope(k, j)`` depend on i - j only.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {d}")
    if positions.dim() != 1 or positions.shape[0] != x.shape[-2]:
        raise ValueError(f"positions must be [T={x.shape[-2]}], got {tuple(positions.shape)}")
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    angles = positions.to(device=x.device, dtype=torch.float64)[:, None] * inv_freq  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    # Each half on its own (the same products as x * [cos, cos] + [-x2, x1] * [sin, sin], with
    # no full-width negated and concatenated copy of x).
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
