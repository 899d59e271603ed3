"""nn.Modules built on the ops: the neural memory, attention, the MLP and the norm."""

from titans.layers.attention import Attention, KVCache
from titans.layers.memory import NeuralMemory, NeuralMemoryState
from titans.layers.mlp import SwiGLU
from titans.layers.norm import RMSNorm

__all__ = ["Attention", "KVCache", "NeuralMemory", "NeuralMemoryState", "RMSNorm", "SwiGLU"]
