"""titans-lm: Titans (Behrouz, Zhong, Mirrokni, 2025) — neural long-term memory that learns at test time."""

from titans.ops import MemoryState, memory_chunked, memory_naive

__all__ = ["MemoryState", "memory_chunked", "memory_naive"]
__version__ = "0.1.0"
