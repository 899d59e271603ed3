"""Accuracy of a model on long-context tasks, streaming each context with carried state.

A context of any length is streamed in pieces of ``piece_len`` tokens (:func:`titans.stream`;
only the last position's logits are computed), then the answer is decoded greedily one token at a
time from the carried state (:meth:`TitansLM.generate`) and scored by exact match
(:func:`titans.evals.tasks.score`). Items of one length are batched, so every row of a batch has
the same number of tokens. Memory is constant in the context length for
every variant but the full-attention baseline, whose KV cache grows with it: that one is skipped
above ``max_full_attention_length`` and reported as not evaluated.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from titans.checks import check_int
from titans.evals.tasks import TaskGenerator, TaskItem, needs_depth, score
from titans.machine import PeakMemory
from titans.models.blocks import variant_spec
from titans.models.lm import TitansLM
from titans.models.streaming import stream

# Defaults of the evaluation, shared by the experiments and the CLI.
BATCH_SIZE = 8  # items streamed side by side
PIECE_LEN = 2048  # tokens per streamed piece
MAX_FULL_ATTENTION = 65536  # longest context run for a variant whose state grows (KV cache)


@torch.no_grad()
def answer_items(
    model: TitansLM, items: Sequence[TaskItem], piece_len: int = PIECE_LEN
) -> list[list[int]]:
    """Greedy continuation of each item's context: ``len(item.answer_ids)`` new token ids each.

    The items must share one length; they run side by side as a [len(items), length] stream
    (``stream`` checks ``piece_len``).
    """
    if not items:
        return []
    lengths = {item.length for item in items}
    if len(lengths) != 1:
        raise ValueError(f"items of one batch must share a length, got {sorted(lengths)}")
    contexts = torch.from_numpy(np.stack([item.input_ids for item in items]))  # [B, L]
    # Only the last piece is kept (its state and the logits of the context's end): holding every
    # piece would hold every piece's state, and memory would grow with the context.
    (last,) = deque(stream(model, contexts, piece_len, losses=False, logits=True,
                           logits_to_keep=1), maxlen=1)
    steps = max(len(item.answer_ids) for item in items)
    generated = last.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]: the first answer token
    if steps > 1:
        generated = model.generate(generated, steps - 1, temperature=0, state=last.state)
    return [row[:len(item.answer_ids)] for row, item in zip(generated.tolist(), items, strict=True)]


def evaluate_task(
    model: TitansLM,
    generator: TaskGenerator,
    task: str,
    lengths: Sequence[int],
    depths: Sequence[float] | None = None,
    num_items: int = 4,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    piece_len: int = PIECE_LEN,
    max_full_attention_length: int | None = MAX_FULL_ATTENTION,
) -> list[dict[str, Any]]:
    """Accuracy of ``model`` on ``task`` at every (length, depth).

    depths: needle depths in [0, 1] (needle tasks; required); must be None for bAbI tasks.
    num_items: items per (length, depth) cell, rendered by ``generator`` with ``seed``.
    max_full_attention_length: the full-attention baseline's KV cache grows with the context, so
        longer contexts are not run for it (None: run every length).

    Returns one row per cell, in order: ``task``, ``length``, ``depth`` (None for bAbI), ``items``,
    ``correct``, ``accuracy`` (None if not evaluated), ``tokens_per_s`` (context tokens of the
    whole length, all its cells, per second), ``peak_memory_mib`` and ``memory_kind`` (see
    :class:`titans.machine.PeakMemory`; per length), ``skipped`` (why a length was not
    evaluated, else None) and ``predictions`` (``[answer, greedy continuation]`` per item).
    """
    if needs_depth(task):
        if not depths:
            raise ValueError(f"{task} is a needle task: give the needle depths")
    elif depths is not None:
        raise ValueError(f"{task} scatters its facts: depths must be None")
    cells = list(depths) if depths is not None else [None]
    for name, value in (("num_items", num_items), ("batch_size", batch_size)):
        check_int(name, value, 1)
    if not lengths:
        raise ValueError("give at least one context length")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for length in lengths:
            base = {"task": task, "length": length}
            if (variant_spec(model.config.variant).state_grows
                    and max_full_attention_length is not None
                    and length > max_full_attention_length):
                reason = (f"full attention: the KV cache grows with the context; not run beyond "
                          f"{max_full_attention_length} tokens")
                rows += [{**base, "depth": depth, "items": 0, "correct": 0, "accuracy": None,
                          "tokens_per_s": None, "peak_memory_mib": None, "memory_kind": None,
                          "skipped": reason, "predictions": []} for depth in cells]
                continue
            items = generator.items(task, length, cells, num_items, seed)
            predictions: list[str] = []
            start = time.perf_counter()
            with PeakMemory(device) as memory:
                for first in range(0, len(items), batch_size):
                    batch = items[first:first + batch_size]
                    new = answer_items(model, batch, piece_len)
                    predictions += [generator.tokenizer.decode(ids) for ids in new]
            seconds = time.perf_counter() - start
            for c, depth in enumerate(cells):
                cell = range(c * num_items, (c + 1) * num_items)
                correct = sum(score(predictions[i], items[i].answer) for i in cell)
                rows.append({
                    **base, "depth": depth, "items": num_items, "correct": correct,
                    "accuracy": correct / num_items,
                    "tokens_per_s": length * len(items) / seconds,
                    "peak_memory_mib": memory.peak_mib, "memory_kind": memory.kind,
                    "skipped": None,
                    "predictions": [[items[i].answer, predictions[i].strip()] for i in cell],
                })
    finally:
        model.train(was_training)
    return rows
