"""titans-lm: Titans (Behrouz, Zhong, Mirrokni, 2025), a memory that keeps learning at test time."""

from titans.layers import NeuralMemory, NeuralMemoryState
from titans.ops import MemoryState, memory_chunked, memory_naive

__all__ = ["MemoryState", "NeuralMemory", "NeuralMemoryState", "memory_chunked", "memory_naive"]
__version__ = "0.1.0"
