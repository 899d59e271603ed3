"""Trace the neural memory's health while training MAC ``small`` (docs/stability.md).

One JSON line per step: the training loss, the gradient norm (before clipping at 1.0), and over
every memory call of the step the largest memory-weight norm, the smallest per-token spread of the
LayerNorm's input sigma(z) (the memory MLP's output before its residual LayerNorm, at 8 random unit
queries per (batch, head), under the weights the call returns), and the largest theta, eta and
alpha. The replica of the issue's measurement: 1 x 512 tokens per step, AdamW lr 3e-3 (warmup 16,
cosine), clipping 1.0, seed 0, the embedded corpus.

    python docs/stability/trace.py --steps 150 --out docs/stability/trace-new.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans.config_files import DataConfig
from titans.data.batches import get_batch
from titans.data.pipeline import prepare
from titans.layers.memory import NeuralMemory, NeuralMemoryState
from titans.models.config import TitansConfig
from titans.models.lm import TitansLM
from titans.ops.memory.common import mlp_forward
from titans.train import lr_multiplier, param_groups


def lm_input_spread(layer: NeuralMemory, weights: list[Tensor]) -> float:
    """Smallest std over features of the memory MLP's output (the residual LayerNorm's input)."""
    b, h, d = weights[0].shape[0], layer.num_heads, layer.head_dim
    q = F.normalize(torch.randn(b, h, 8, d), dim=-1)
    z = mlp_forward(q, [w.float() for w in weights], layer.activation, residual_norm=False)
    return z.std(-1).min().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--variant", default="mac")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tokenizer, files = prepare(DataConfig(source="default", tokenizer="bpe:8192"))
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.from_preset("small", args.variant,
                                              vocab_size=tokenizer.vocab_size))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
    stats: dict[str, float] = {}

    def record(layer: NeuralMemory, inputs: tuple[Tensor, ...],
               output: tuple[Tensor, NeuralMemoryState]) -> None:
        with torch.no_grad():
            theta, eta, alpha = layer.gates(inputs[0])
            weights = output[1].memory.weights
            norm = max(torch.linalg.matrix_norm(w).max().item() for w in weights)
            for key, value in (("theta", theta.max().item()), ("eta", eta.max().item()),
                               ("alpha", alpha.max().item()), ("weight_norm", norm)):
                stats[key] = max(stats.get(key, -math.inf), value)
            if layer.residual_norm:
                stats["sigma_z"] = min(stats.get("sigma_z", math.inf),
                                       lm_input_spread(layer, weights))

    for module in model.modules():
        if isinstance(module, NeuralMemory):
            module.register_forward_hook(record)
    with args.out.open("w") as f:
        for step in range(args.steps):
            for group in optimizer.param_groups:
                group["lr"] = 3e-3 * lr_multiplier(step, 16, args.steps, 0.1)
            batch = get_batch(files["train"].tokens, 512, 1, step, 0, 0, 1)
            stats.clear()
            loss = model(batch, labels=batch, return_logits=False).loss
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            f.write(json.dumps({"step": step + 1, "loss": loss.item(), "grad_norm": grad_norm,
                                **stats}) + "\n")
            f.flush()
            if not (math.isfinite(loss.item()) and math.isfinite(grad_norm)):
                break


if __name__ == "__main__":
    main()
