"""nn.Modules built on the ops: the neural memory, attention, the MLP and the Titans blocks."""

from titans.layers.attention import Attention, KVCache
from titans.layers.blocks import HybridState, MACState, OutputGate, TitansBlock
from titans.layers.memory import NeuralMemory, NeuralMemoryState
from titans.layers.mlp import SwiGLU
from titans.layers.norm import RMSNorm

__all__ = [
    "Attention", "HybridState", "KVCache", "MACState", "NeuralMemory", "NeuralMemoryState",
    "OutputGate", "RMSNorm", "SwiGLU", "TitansBlock",
]
