"""nn.Modules built on the ops: the neural memory layer (attention and blocks follow)."""

from titans.layers.memory import NeuralMemory, NeuralMemoryState

__all__ = ["NeuralMemory", "NeuralMemoryState"]
