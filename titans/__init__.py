"""titans-lm: Titans (Behrouz, Zhong, Mirrokni, 2025), a memory that keeps learning at test time."""

from titans.layers import NeuralMemory, NeuralMemoryState
from titans.models import TitansConfig, TitansLM, TitansOutput, TitansState
from titans.models.streaming import StreamPiece, stream, stream_losses
from titans.ops import MemoryState, memory_chunked, memory_naive, memory_recurrent
from titans.runtime import RuntimeConfig, apply_runtime

__all__ = [
    "MemoryState", "NeuralMemory", "NeuralMemoryState", "RuntimeConfig", "StreamPiece",
    "TitansConfig", "TitansLM", "TitansOutput", "TitansState", "apply_runtime", "memory_chunked",
    "memory_naive", "memory_recurrent", "stream", "stream_losses",
]
__version__ = "0.1.0"
