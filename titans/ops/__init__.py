"""Pure tensor functions: naive (token-by-token) references and their fast versions."""

from titans.ops.attention import attention, attention_naive
from titans.ops.memory_chunked import memory_chunked
from titans.ops.memory_common import MemoryState
from titans.ops.memory_naive import memory_naive
from titans.ops.memory_recurrent import memory_recurrent
from titans.ops.rope import rotary_embedding

__all__ = [
    "MemoryState", "attention", "attention_naive", "memory_chunked", "memory_naive",
    "memory_recurrent", "rotary_embedding",
]
