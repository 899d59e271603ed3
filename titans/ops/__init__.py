"""Pure tensor functions: naive (token-by-token) references and their fast versions."""

from titans.ops.attention import attention, attention_naive
from titans.ops.memory import MemoryState, memory_chunked, memory_naive, memory_recurrent, read
from titans.ops.rope import rotary_embedding

__all__ = [
    "MemoryState", "attention", "attention_naive", "memory_chunked", "memory_naive",
    "memory_recurrent", "read", "rotary_embedding",
]
