"""Perplexity and bits-per-byte of a token stream at several context lengths.

Each context length L is measured on its own: the stream is cut into consecutive,
non-overlapping windows of L tokens, and every window is read from a fresh model state with
:func:`titans.stream`, so L may exceed the length the model was trained on and the memory held
does not grow with L (except for the full-attention baseline, whose KV cache does).

Which tokens are scored: in a window ``w = tokens[i*L:(i+1)*L]`` the first token has no context,
so the window scores the L - 1 predictions ``p(w[t] | w[:t])`` for t = 1 .. L - 1. Tokens after
the last whole window are not used.

Which bytes are counted: bits-per-byte divides by the UTF-8 bytes of the scored tokens' text. With
``decode``, a window contributes ``bytes(decode(w)) - bytes(decode(w[:1]))``: the text of the whole
window minus the text of its unscored first token. This is preferred over ``bytes(decode(w[1:]))``
because SentencePiece-style tokenizers drop the leading space of the first decoded token, which
would lose the space byte of ``w[1]``; for byte-level BPE both agree except when the window starts
inside a multi-byte character (a few bytes per window, unavoidable without byte offsets). Special
tokens such as EOS are scored but carry no bytes if ``decode`` skips them. Without ``decode``,
``num_bytes`` (the bytes of the whole stream) is scaled by the scored fraction of the stream's
tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from titans.checks import check_int, check_ints
from titans.models.lm import TitansLM
from titans.models.streaming import stream


def evaluate_perplexity(
    model: TitansLM,
    tokens: np.ndarray | Tensor,
    context_lengths: Sequence[int],
    decode: Callable[[list[int]], str] | None = None,
    num_bytes: int | None = None,
    max_tokens: int | None = None,
    piece_len: int = 1024,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """Mean next-token loss of ``model`` on ``tokens`` for each context length.

    tokens: [N] token ids (a numpy array, e.g. the memory-mapped ``TokenFile.tokens``, or a
        tensor); it is read one [batch_size, piece_len] block at a time.
    context_lengths: window lengths L >= 2, each evaluated separately; the results keep this order.
    decode: ids -> text, for the bytes of the scored text (see the module docstring). Takes
        precedence over ``num_bytes``.
    num_bytes: UTF-8 bytes of the text of all N tokens, used when ``decode`` is None.
    max_tokens: cap on the scored tokens per context length: ``max(1, max_tokens // (L - 1))``
        whole windows (at least one), or every window of the stream if that is fewer.
    piece_len: tokens fed to the model per call; trades speed for memory, not results.
    batch_size: windows evaluated side by side as one [batch_size, L] stream (same results as
        one at a time, up to floating-point rounding).

    Returns one dict per context length: ``context_length``; ``windows``; ``tokens`` (scored
    predictions, ``windows * (L - 1)``); ``nll`` (mean nats per scored token); ``ppl``
    (``exp(nll)``); ``bytes`` (UTF-8 bytes of the scored text, None if neither ``decode`` nor
    ``num_bytes`` is given; a float when estimated from ``num_bytes``); ``bits_per_byte``
    (summed losses in nats ``/ ln 2 / bytes``, None when ``bytes`` is None or not positive).
    """
    tokens = _check_tokens(tokens)
    lengths = _check_context_lengths(context_lengths, len(tokens))
    for name, value in (("piece_len", piece_len), ("batch_size", batch_size)):
        check_int(name, value, 1)
    check_int("max_tokens", max_tokens, 1, optional=True)
    check_int("num_bytes", num_bytes, 0, optional=True)

    results = []
    for length in lengths:
        windows = len(tokens) // length
        if max_tokens is not None:
            windows = min(windows, max(1, max_tokens // (length - 1)))
        loss_sum = 0.0
        byte_count: float | None = 0 if decode is not None else None
        for first in range(0, windows, batch_size):
            count = min(batch_size, windows - first)
            block = tokens[first * length:(first + count) * length].reshape(count, length)
            pieces = stream(model, _blocks(block, piece_len), piece_len)
            # Sum in float64 so long windows do not lose precision to accumulation.
            loss_sum += sum(float(p.losses.double().sum()) for p in pieces)
            if decode is not None:
                byte_count += sum(_scored_bytes(decode, row) for row in block)
        scored = windows * (length - 1)
        if decode is None and num_bytes is not None:
            byte_count = num_bytes * scored / len(tokens)
        nll = loss_sum / scored
        has_bytes = byte_count is not None and byte_count > 0
        results.append({
            "context_length": length, "windows": windows, "tokens": scored, "nll": nll,
            "ppl": _exp(nll), "bytes": byte_count,
            "bits_per_byte": loss_sum / math.log(2) / byte_count if has_bytes else None,
        })
    return results


def _blocks(windows: np.ndarray | Tensor, piece_len: int) -> Iterator[Tensor]:
    """[B, L] windows -> [B, piece_len] int64 tensors, converting one block at a time (a
    memory-mapped stream is never loaded whole)."""
    for start in range(0, windows.shape[1], piece_len):
        block = windows[:, start:start + piece_len]
        if isinstance(block, Tensor):
            yield block.to(torch.long)
        else:
            yield torch.from_numpy(np.asarray(block, dtype=np.int64))


def _scored_bytes(decode: Callable[[list[int]], str], window: np.ndarray | Tensor) -> int:
    """UTF-8 bytes of the text of ``window[1:]``, as the window's text minus its first token's
    (see the module docstring)."""
    ids = [int(t) for t in window.tolist()]
    return len(decode(ids).encode("utf-8")) - len(decode(ids[:1]).encode("utf-8"))


def _check_tokens(tokens: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """A 1-D, non-empty integer array or tensor."""
    if isinstance(tokens, Tensor):
        dtype = tokens.dtype
        integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    elif isinstance(tokens, np.ndarray):
        integer = np.issubdtype(tokens.dtype, np.integer)
    else:
        raise ValueError(f"tokens must be a numpy array or a tensor, got {type(tokens).__name__}")
    if tokens.ndim != 1 or not integer:
        raise ValueError(
            f"tokens must be a 1-D integer array [N], got {tokens.dtype} {tuple(tokens.shape)}"
        )
    if len(tokens) == 0:
        raise ValueError("tokens is empty: nothing to evaluate")
    return tokens


def _check_context_lengths(context_lengths: Sequence[int], num_tokens: int) -> list[int]:
    """Every length an int >= 2 (a window scores length - 1 tokens) that fits at least one window
    into the stream."""
    lengths = list(context_lengths)
    if not lengths:
        raise ValueError("context_lengths is empty: give at least one context length")
    check_ints("context_lengths", lengths, 2, numpy=True)
    for length in lengths:
        if length > num_tokens:
            raise ValueError(
                f"context length {length} needs a stream of at least {length} tokens for one "
                f"window, got {num_tokens}"
            )
    return [int(length) for length in lengths]


def _exp(x: float) -> float:
    """exp(x), inf instead of an OverflowError (perplexity of a diverged model)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
