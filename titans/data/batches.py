"""Training batches: what :func:`titans.train.train` reads at every step.

A :class:`BatchSource` gives the ``(input_ids, labels)`` of any step as a pure function of the
step, the seed and the process's rank, so a resumed run sees exactly the data of an uninterrupted
one. A token stream (a 1-D array, e.g. a ``TokenFile``'s memmap) becomes one by
:func:`as_batch_source`: :func:`get_batch` cuts it into shuffled sequences, scored everywhere.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from titans.checks import check_int


class BatchSource(Protocol):
    """Where training batches come from when they are not windows of one token stream (e.g.
    :class:`titans.evals.tasks.TaskBatches`). Must be a pure function of its arguments, like
    :func:`get_batch`, so that a resumed run sees the data of an uninterrupted one.

    Returns ``(input_ids, labels)``, both [batch_size, seq_len] int64; ``labels[:, t]`` is the
    target of position t - 1 (as in :meth:`TitansLM.forward`), -100 where nothing is scored.
    """

    def __call__(
        self, seq_len: int, batch_size: int, step: int, seed: int, rank: int, world_size: int
    ) -> tuple[Tensor, Tensor]: ...


def get_batch(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    step: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """Rows of global batch ``step`` for process ``rank``: [batch_size, seq_len] int64 (CPU).

    The stream is cut into ``n = (len(tokens) - 1) // seq_len`` consecutive sequences (documents
    are separated by the EOS tokens packed into the stream). Epoch ``e`` visits them in a
    permutation seeded by ``(seed, e)``; global batch ``step`` is rows
    ``[step * B * W, (step + 1) * B * W)`` of the concatenated epochs and rank ``r`` takes the
    ``r``-th block of ``B`` of them, so the ranks' rows together are the world-size-1 batch of
    ``B * W`` rows. A pure function of its arguments: a resumed run sees exactly the data of an
    uninterrupted one.
    """
    _check_token_array("tokens", tokens)
    for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                             ("step", step, 0), ("seed", seed, 0), ("world_size", world_size, 1)):
        check_int(name, value, low, numpy=True)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    num_seqs = (len(tokens) - 1) // seq_len
    if num_seqs < 1:
        raise ValueError(
            f"need at least seq_len + 1 = {seq_len + 1} tokens for one sequence, got {len(tokens)}"
        )
    rows = (step * world_size + rank) * batch_size + np.arange(batch_size)
    epochs = rows // num_seqs
    seqs = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):  # a batch may straddle an epoch boundary (or several)
        here = epochs == epoch
        seqs[here] = _epoch_order(num_seqs, seed, int(epoch))[rows[here] % num_seqs]
    index = seqs[:, None] * seq_len + np.arange(seq_len)  # [batch_size, seq_len] positions
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


@functools.lru_cache(maxsize=4)
def _epoch_order(num_seqs: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the sequences in one epoch; cached because every step of an epoch needs it
    (read-only, so the cache cannot be corrupted by a caller)."""
    order = np.random.default_rng((seed, epoch)).permutation(num_seqs)
    order.setflags(write=False)
    return order


def as_batch_source(name: str, tokens: np.ndarray | BatchSource, seq_len: int) -> BatchSource:
    """A callable source as it is; a token stream checked (before any setup, so a stream
    ``get_batch`` could not cut fails early) and wrapped by :func:`_token_batches`. ``name``
    names the argument in errors."""
    if callable(tokens):
        return tokens
    _check_token_array(name, tokens)
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"{name} has {len(tokens)} tokens; seq_len {seq_len} needs at least {seq_len + 1}"
        )
    return _token_batches(tokens)


def _token_batches(tokens: np.ndarray) -> BatchSource:
    """The language-modelling source of a token stream: ``get_batch`` rows, scored everywhere."""

    def source(seq_len: int, batch_size: int, step: int, seed: int, rank: int,
               world_size: int) -> tuple[Tensor, Tensor]:
        batch = get_batch(tokens, seq_len, batch_size, step, seed, rank, world_size)
        return batch, batch

    return source


def _check_token_array(name: str, tokens: Any) -> None:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be a 1-D integer numpy array, got {type(tokens).__name__} "
            f"{getattr(tokens, 'dtype', '')} {getattr(tokens, 'shape', '')}"
        )
