"""Pure tensor functions: naive (token-by-token) references and their fast chunked versions."""

from titans.ops.memory_chunked import memory_chunked
from titans.ops.memory_common import MemoryState
from titans.ops.memory_naive import memory_naive

__all__ = ["MemoryState", "memory_chunked", "memory_naive"]
