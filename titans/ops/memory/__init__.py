"""The neural long-term memory of Titans as pure tensor functions.

memory_naive is the token-by-token reference; memory_chunked its fast version over whole chunks
and memory_recurrent the token-by-token continuation of an open chunk (the decode path). read
reads a memory at queries without writing to it. The ops' settings check (check_settings) is
public for the layer, which checks its settings with it when it is built.
"""

from titans.ops.memory.chunked import memory_chunked
from titans.ops.memory.common import (
    ACTIVATIONS,
    MemoryState,
    check_settings,
    read,
)
from titans.ops.memory.naive import memory_naive
from titans.ops.memory.recurrent import memory_recurrent

__all__ = [
    "ACTIVATIONS", "MemoryState", "check_settings", "memory_chunked", "memory_naive",
    "memory_recurrent", "read",
]
