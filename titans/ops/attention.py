"""Causal attention over indexed keys: full, sliding-window, segment-local, plus a visible prefix.

One rule covers every attention of the Titans architectures. Each query and key carries a sequence
index; query t sees key s iff ``k_index[s] <= q_index[t]`` and, with a window w,
``k_index[s] > q_index[t] - w``. A separate *prefix* of keys (persistent memory, paper eq. 19) is
seen by every query and scored without position: ``q_p[t] . k_p[m]``.

* full causal: the indices of a sequence and its cache;
* sliding window: the same with ``window=w``;
* MAC's segment attention: keys ``[h || x]`` of one segment with ``k_index = [i || i]``, so token i
  sees the retrieved ``h_j`` and the token ``x_j`` for j <= i only.

``attention`` calls ``scaled_dot_product_attention`` on blocks of queries with only the keys that
block can see, so windowed attention costs O(T * w) memory, never O(T^2). ``attention_naive`` is
the token-by-token reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.checks import check_int

Prefix = tuple[Tensor, Tensor, Tensor]


def _check(
    q: Tensor, k: Tensor, v: Tensor, q_index: Tensor, k_index: Tensor, window: int | None,
    prefix: Prefix | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be [B, H, T, D]; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"k must be [B, H, S, D] and v [B, H, S, D_v] matching q {tuple(q.shape)}; "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q_index.shape != q.shape[2:3] or k_index.shape != k.shape[2:3]:
        raise ValueError(
            f"q_index must be [T={q.shape[2]}] and k_index [S={k.shape[2]}]; "
            f"got {tuple(q_index.shape)}, {tuple(k_index.shape)}"
        )
    check_int("window", window, 1, optional=True)
    if prefix is not None:
        q_p, k_p, v_p = prefix
        if q_p.dim() != 4 or k_p.dim() != 4 or v_p.dim() != 4:
            raise ValueError("prefix query, keys and values must be 4-D [B, H, ., D]")
        for name, t in (("keys", k_p), ("values", v_p)):
            if any(n not in (1, full) for n, full in zip(t.shape[:2], q.shape[:2], strict=True)):
                raise ValueError(
                    f"prefix {name} must have batch and head dims 1 or {tuple(q.shape[:2])}, "
                    f"got {tuple(t.shape)}"
                )
        if q_p.shape[:3] != q.shape[:3] or k_p.shape[-1] != q_p.shape[-1]:
            raise ValueError(
                f"prefix query must be [B, H, T, D_p] like q and prefix keys [.., P, D_p]; got "
                f"{tuple(q_p.shape)}, {tuple(k_p.shape)}"
            )
        if v_p.shape[-1] != v.shape[-1] or v_p.shape[-2] != k_p.shape[-2]:
            raise ValueError(f"prefix values must be [.., P, D_v], got {tuple(v_p.shape)}")


def visible(q_index: Tensor, k_index: Tensor, window: int | None) -> Tensor:
    """Boolean [T, S]: which key each query may attend to (causal, within the window)."""
    qi, ki = q_index[:, None], k_index[None, :]
    mask = ki <= qi
    if window is not None:
        mask &= ki > qi - window
    return mask


def _causal_aligned(q_index: Tensor, k_index: Tensor, window: int | None) -> bool:
    """True when the rule is SDPA's ``is_causal``: query t sees key s iff s <= t.

    That holds when queries and keys carry the same strictly increasing indices and the window,
    if any, spans them all (e.g. one pass of full causal attention). The check reads the indices
    back, which torch.compile cannot trace (a graph break per call): compiled code keeps the mask.
    """
    n = q_index.shape[0]
    if n == 0 or k_index.shape[0] != n or torch.compiler.is_compiling():
        return False
    if window is not None and int(q_index[-1] - q_index[0]) >= window:
        return False
    return torch.equal(q_index, k_index) and bool((q_index[1:] > q_index[:-1]).all())


def _widen(
    q: Tensor, k: Tensor, v: Tensor, prefix: Prefix
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fold the prefix into one SDPA call through a widened head dim.

    With q' = [q, q_p], key' = [k, 0] for ordinary keys and [0, k_p] for prefix keys, the scores
    are q.k and q_p.k_p in one call, so prefix keys carry no position while ordinary keys do.
    With fewer prefix keys P than dims D_p, q_p is replaced by its scores ``q_p @ k_p^T`` and
    the prefix keys by one-hot rows: the same scores for a widening of P dims instead of D_p.
    Values are zero-padded to the widened dim: SDPA's fused CPU kernel needs equal q and v dims
    (otherwise it falls back to the O(T * S)-memory math path).

    Returns q' [B, H, T, D + W], ordinary keys' and values' [B, H, S, .] and prefix keys' and
    values' [B, H, P, .] (W = min(P, D_p)); SDPA's output keeps the first D_v dims.
    """
    q_p, k_p, v_p = prefix
    b, h, d, n_p = *q.shape[:2], k.shape[-1], k_p.shape[2]
    if n_p < k_p.shape[-1]:
        q_p = q_p @ k_p.transpose(-1, -2)
        k_p = torch.eye(n_p, dtype=k_p.dtype, device=k_p.device)[None, None]
    width = d + k_p.shape[-1]
    v_pad = max(0, width - v.shape[-1])
    return (
        torch.cat([q, q_p], -1),
        F.pad(k, (0, width - d)),
        F.pad(v, (0, v_pad)),
        F.pad(k_p, (d, 0)).expand(b, h, -1, -1),
        F.pad(v_p, (0, v_pad)).expand(b, h, -1, -1),
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    k_index: Tensor,
    *,
    window: int | None = None,
    prefix: Prefix | None = None,
    block_size: int = 512,
    scale: float | None = None,
) -> Tensor:
    """Block-wise causal attention: O(T * (block_size + window)) memory with a window.

    With a window, queries go in blocks of min(block_size, window).

    q: [B, H, T, D]; k: [B, H, S, D]; v: [B, H, S, D_v]
    q_index: [T], k_index: [S] integer sequence indices; with a window both must be sorted.
    prefix: (q_p [B, H, T, D_p], k_p [B or 1, H or 1, P, D_p], v_p [.., P, D_v]) or None.
    scale: score scale, default D ** -0.5 (also used for the prefix scores).
    Returns [B, H, T, D_v]. A query that sees no key at all gets zeros.
    """
    _check(q, k, v, q_index, k_index, window, prefix)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_len, d_v = q.shape[2], v.shape[-1]
    if prefix is None and _causal_aligned(q_index, k_index, window):
        # No mask to build, and the kernel skips the blocks above the diagonal.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if window is None or t_len == 0:
        spans = [(0, t_len, 0, k.shape[2])]
    else:
        # A block's keys span block + window - 1 indices and each query sees window of them:
        # blocks no longer than the window keep the masked-out share of the scores below half.
        block = min(block_size, window)
        # Keys a block of queries can see form one contiguous range of the sorted k_index.
        starts = list(range(0, t_len, block))
        ends = [min(a + block, t_len) for a in starts]
        edges = torch.cat([q_index[starts] - window, q_index[[e - 1 for e in ends]]])
        found = torch.searchsorted(k_index, edges, right=True).tolist()
        spans = list(zip(starts, ends, found[:len(starts)], found[len(starts):], strict=True))
    n_prefix = 0
    if prefix is not None:
        q, k, v, k_p, v_p = _widen(q, k, v, prefix)
        n_prefix = k_p.shape[2]
    outs = []
    for a, b, lo, hi in spans:
        mask = visible(q_index[a:b], k_index[lo:hi], window)
        keys, values = _span(k, lo, hi), _span(v, lo, hi)
        if n_prefix:
            keys, values = torch.cat([k_p, keys], 2), torch.cat([v_p, values], 2)
            mask = F.pad(mask, (n_prefix, 0), value=True)
        outs.append(F.scaled_dot_product_attention(_span(q, a, b), keys, values, attn_mask=mask,
                                                   scale=scale))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    return out if out.shape[-1] == d_v else out[..., :d_v]


def _span(x: Tensor, lo: int, hi: int) -> Tensor:
    """``x[:, :, lo:hi]``, or x itself when that is all of it: the backward of a view writes its
    gradient into a zero-filled tensor of x's size, a wasted copy for the whole range."""
    return x if lo == 0 and hi == x.shape[2] else x[:, :, lo:hi]


def attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    k_index: Tensor,
    *,
    window: int | None = None,
    prefix: Prefix | None = None,
    scale: float | None = None,
) -> Tensor:
    """Reference: each query's softmax over its visible keys, one query at a time (shapes as
    :func:`attention`)."""
    _check(q, k, v, q_index, k_index, window, prefix)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs = []
    for t in range(q.shape[2]):
        keys = [s for s in range(k.shape[2]) if k_index[s] <= q_index[t]
                and (window is None or k_index[s] > q_index[t] - window)]
        scores = [torch.einsum("bhd,bhsd->bhs", q[:, :, t], k[:, :, keys])]
        values = [v[:, :, keys]]
        if prefix is not None:
            q_p, k_p, v_p = prefix
            k_p = k_p.expand(*q.shape[:2], *k_p.shape[2:])
            scores.insert(0, torch.einsum("bhd,bhsd->bhs", q_p[:, :, t], k_p))
            values.insert(0, v_p.expand(*q.shape[:2], *v_p.shape[2:]))
        logits = torch.cat(scores, -1) * scale
        if logits.shape[-1] == 0:
            outs.append(v.new_zeros(*q.shape[:2], v.shape[-1]))
            continue
        outs.append(torch.einsum("bhs,bhsd->bhd", logits.softmax(-1), torch.cat(values, 2)))
    if not outs:
        return v.new_zeros(*q.shape[:3], v.shape[-1])
    return torch.stack(outs, 2)
