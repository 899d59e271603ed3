"""Log-likelihood scoring as lm-evaluation-harness defines it, run the recurrent way.

lm-eval asks a model two things: the log-probability of a continuation given a context (with
whether greedy decoding would produce it), and the log-probability of a whole document. A
Titans model answers both exactly, at any length, without windows or padding:

- :func:`continuation_logprobs` reads each distinct context once and continues its state into
  every continuation (the choices of a question share their context): rows of a batch are copies
  of one state (:meth:`TitansState.select`) and continuations of equal length, so no padding
  token is ever written into a memory.
- :func:`document_logprob` streams a document of any length through the carried state
  (:func:`titans.models.streaming.stream`), instead of cutting it into windows that each start
  from an empty memory.

:func:`encode_pair` splits (context, continuation) text into ids the way lm-eval's Hugging Face
model does, so the same requests give the same numbers here and under lm-eval.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from titans.checks import check_int
from titans.models.lm import TitansLM
from titans.models.streaming import stream


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, prefix_id: int
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a request, as lm-eval's ``HFLM._encode_pair``.

    Trailing whitespace of the context moves to the continuation; the continuation's ids are
    those of ``context + continuation`` after the context's ids (so a merge across the boundary
    counts for the continuation). An empty context becomes ``[prefix_id]`` (end-of-text: what
    precedes a document in training).
    """
    if not context:
        return [prefix_id], encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def _device(model: TitansLM) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def continuation_logprobs(
    model: TitansLM,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    piece_len: int = 2048,
) -> list[tuple[float, bool]]:
    """Score continuations: for each (context ids, continuation ids) request, the summed
    log-probability (float64) of the continuation after the context, and whether greedy
    decoding from the context would produce it (every token the argmax).

    Contexts of any length are read in pieces of ``piece_len`` tokens with carried state; up to
    ``batch_size`` continuations of one context run side by side. Results come in request order.
    """
    check_int("batch_size", batch_size, 1)
    check_int("piece_len", piece_len, 1)
    by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (context, continuation) in enumerate(requests):
        if len(context) == 0 or len(continuation) == 0:
            raise ValueError(f"request {i} has an empty context or continuation (ids {context!r}, "
                             f"{continuation!r}): a continuation is scored after >= 1 token")
        by_context[tuple(context)].append(i)
    device = _device(model)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    for context, indices in by_context.items():
        # The state after all context tokens but the last: its logits predict the first
        # continuation token, so the last context token opens every continuation's input.
        state = None
        if len(context) > 1:
            prefix = torch.tensor(context[:-1], device=device)
            for piece in stream(model, prefix, piece_len, losses=False, logits=False):
                state = piece.state
        by_length: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            by_length[len(requests[i][1])].append(i)
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                rows = group[start:start + batch_size]
                targets = torch.tensor([list(requests[i][1]) for i in rows], device=device)
                inputs = torch.cat([torch.full_like(targets[:, :1], context[-1]),
                                    targets[:, :-1]], 1)
                row_state = None if state is None else state.select([0] * len(rows))
                logits = model(inputs, row_state).logits.double()
                logprobs = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
                greedy = (logits.argmax(-1) == targets).all(-1)
                for i, lp, g in zip(rows, logprobs.sum(-1).tolist(), greedy.tolist(),
                                    strict=True):
                    results[i] = (lp, g)
    return results


@torch.no_grad()
def document_logprob(
    model: TitansLM, ids: Sequence[int], prefix_id: int, piece_len: int = 2048
) -> float:
    """Summed log-probability (float64) of every token of a document of any length, the first
    predicted from ``prefix_id`` (end-of-text), streamed in pieces with the memory carried across
    them: lm-eval's ``loglikelihood_rolling`` without its windows."""
    check_int("piece_len", piece_len, 1)
    if len(ids) == 0:
        return 0.0
    tokens = torch.tensor([prefix_id, *ids], device=_device(model))
    return -sum(float(piece.losses.double().sum())
                for piece in stream(model, tokens, piece_len, losses=True))
