"""nn.Modules built on the ops: the neural memory, attention, the MLP and the norm, and the tags
they put on their parameters for the training policy."""

from titans.layers.attention import Attention, KVCache
from titans.layers.memory import NeuralMemory, NeuralMemoryState, PendingTokens
from titans.layers.mlp import SwiGLU
from titans.layers.norm import RMSNorm
from titans.layers.tags import (
    is_residual_projection,
    mark_no_weight_decay,
    mark_residual_projection,
    no_weight_decay,
)

__all__ = [
    "Attention", "KVCache", "NeuralMemory", "NeuralMemoryState", "PendingTokens", "RMSNorm",
    "SwiGLU", "is_residual_projection", "mark_no_weight_decay", "mark_residual_projection",
    "no_weight_decay",
]
