"""RMSNorm computed in at least float32, as in Llama."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` whose statistics are taken in >= float32; the output keeps x's dtype.

    Under bf16 autocast, activations reach the norm in bf16 while its weight is float32: the
    upcast keeps the mean square accurate and lets torch use its fused kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = None if self.weight is None else self.weight.to(dtype)
        return F.rms_norm(x.to(dtype), self.normalized_shape, weight, self.eps).to(x.dtype)
