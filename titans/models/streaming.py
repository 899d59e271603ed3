"""Run a model over an arbitrarily long token stream in pieces, with carried state.

Memory stays constant in the stream's length (except for the full-attention baseline, whose KV
cache grows): only one piece, the model's bounded state and one look-ahead token are held.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.checks import check_int
from titans.models.lm import TitansLM, TitansState


@dataclass
class StreamPiece:
    """One piece of a stream.

    start: stream position of ``input_ids[:, 0]``.
    input_ids: [B, n] the tokens fed in this piece.
    losses: [B, m] ``-log p(next token)`` (float32 or wider) after each input token whose
        successor is known (m = n, except m = n - 1 at the end of the stream); None if not asked.
    logits: [B, n, V] (or [B, min(n, k), V], the last k positions, with ``logits_to_keep=k``),
        or None if not asked for.
    state: the model state after this piece.
    """

    start: int
    input_ids: Tensor
    losses: Tensor | None
    logits: Tensor | None
    state: TitansState


def _chunks(tokens: Tensor | Iterable[int] | Iterable[Tensor], size: int) -> Iterator[Tensor]:
    """Yield [B, m] integer tensors from a tensor ([N] or [B, N]), tensors or ints."""
    if isinstance(tokens, Tensor):
        tokens = _as_batch(tokens)
        for a in range(0, tokens.shape[1], size):
            yield tokens[:, a:a + size]
        return
    it = iter(tokens)
    first = next(it, None)
    if isinstance(first, Tensor) and first.dim() > 0:
        for t in itertools.chain([first], it):
            yield _as_batch(t)
        return
    # Ints, or 0-d tensors (iterating over a 1-d tensor gives those).
    it = itertools.chain([] if first is None else [first], it)
    while block := [int(t) for t in itertools.islice(it, size)]:
        yield torch.tensor(block, dtype=torch.long)[None]


def _as_batch(tokens: Tensor) -> Tensor:
    """[N] -> [1, N]; [B, N] unchanged; anything else is an error."""
    if tokens.dim() not in (1, 2):
        raise ValueError(f"a token tensor must be [N] or [B, N], got {tuple(tokens.shape)}")
    return tokens if tokens.dim() == 2 else tokens[None]


def stream(
    model: TitansLM,
    tokens: Tensor | Iterable[int] | Iterable[Tensor],
    piece_len: int = 2048,
    *,
    state: TitansState | None = None,
    losses: bool = True,
    logits: bool = False,
    logits_to_keep: int = 0,
) -> Iterator[StreamPiece]:
    """Feed ``tokens`` through ``model`` in pieces of ``piece_len`` tokens, carrying the state.

    tokens: a tensor [N] or [B, N] (B streams side by side), an iterable of ints (one stream), or
    an iterable of [B, m] / [m] tensors (e.g. a memory-mapped file read in blocks). Pieces run
    under ``torch.no_grad()``; the memory keeps learning. Splitting a stream into pieces
    gives the logits of one pass, so ``piece_len`` trades speed for memory only.
    logits_to_keep: run the LM head only on the last this many positions of each piece (0 = all),
    as :meth:`TitansLM.forward` does; e.g. 1 to read a long context and decode from its end.
    The losses need every position's logits, so it requires ``losses=False``.
    """
    check_int("piece_len", piece_len, 1)
    check_int("logits_to_keep", logits_to_keep, 0)
    if losses and logits_to_keep:
        raise ValueError("the losses need the logits of every position: pass losses=False with "
                         "logits_to_keep")
    if isinstance(tokens, Tensor):
        _as_batch(tokens)  # shape errors now, not at the first piece
    return _pieces(model, _chunks(tokens, piece_len), piece_len, state, losses, logits,
                   logits_to_keep)


def _pieces(
    model: TitansLM,
    source: Iterator[Tensor],
    piece_len: int,
    state: TitansState | None,
    losses: bool,
    logits: bool,
    logits_to_keep: int,
) -> Iterator[StreamPiece]:
    device = next(model.parameters()).device
    buffer: Tensor | None = None
    position = 0 if state is None else state.position
    exhausted = False
    with torch.no_grad():
        while True:
            # Hold one token more than a piece: the last input's successor is its target.
            while not exhausted and (buffer is None or buffer.shape[1] <= piece_len):
                nxt = next(source, None)
                if nxt is None:
                    exhausted = True
                    break
                nxt = nxt.to(device)
                buffer = nxt if buffer is None else torch.cat([buffer, nxt], 1)
            if buffer is None or buffer.shape[1] == 0:
                return
            ids = buffer[:, :piece_len]
            targets = buffer[:, 1:piece_len + 1]
            out = model(ids, state, logits_to_keep=logits_to_keep)
            piece_losses = None
            if losses:
                n = targets.shape[1]
                scores = out.logits[:, :n]
                scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
                piece_losses = F.cross_entropy(scores.transpose(1, 2), targets, reduction="none")
            yield StreamPiece(position, ids, piece_losses, out.logits if logits else None,
                              out.state)
            state, position = out.state, position + ids.shape[1]
            buffer = buffer[:, ids.shape[1]:]


def stream_losses(
    model: TitansLM, tokens: Tensor | Iterable[int] | Iterable[Tensor], piece_len: int = 2048
) -> Tensor:
    """Per-token next-token losses over a whole stream: [B, N - 1] on the CPU."""
    pieces = [p.losses.cpu() for p in stream(model, tokens, piece_len) if p.losses is not None]
    if not pieces:
        batch = _as_batch(tokens).shape[0] if isinstance(tokens, Tensor) else 1
        return torch.zeros(batch, 0)
    return torch.cat(pieces, 1)
