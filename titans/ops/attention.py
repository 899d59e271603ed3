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
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
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


def _block_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, prefix: Prefix | None, scale: float
) -> Tensor:
    """SDPA on one block; the prefix joins through a widened head dim.

    With q' = [q, q_p], key' = [k, 0] for ordinary keys and [0, k_p] for prefix keys, the scores
    are q.k and q_p.k_p in one call, so prefix keys carry no position while ordinary keys do.
    Values are zero-padded to the widened dim: SDPA's fused CPU kernel needs equal q and v dims
    (otherwise it falls back to the O(T * S)-memory math path).
    """
    if prefix is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    q_p, k_p, v_p = prefix
    b, h = q.shape[:2]
    k_p = k_p.expand(b, h, *k_p.shape[2:])
    v_p = v_p.expand(b, h, *v_p.shape[2:])
    q2 = torch.cat([q, q_p], -1)
    k2 = torch.cat([
        torch.cat([k_p.new_zeros(*k_p.shape[:3], k.shape[-1]), k_p], -1),
        torch.cat([k, k.new_zeros(*k.shape[:3], k_p.shape[-1])], -1),
    ], 2)
    v2 = torch.cat([v_p, v], 2)
    d_v = v2.shape[-1]
    v2 = F.pad(v2, (0, max(0, q2.shape[-1] - d_v)))
    mask2 = torch.cat([mask.new_ones(mask.shape[0], k_p.shape[2]), mask], -1)
    return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, scale=scale)[..., :d_v]


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

    q: [B, H, T, D]; k: [B, H, S, D]; v: [B, H, S, D_v]
    q_index: [T], k_index: [S] integer sequence indices; with a window both must be sorted.
    prefix: (q_p [B, H, T, D_p], k_p [B or 1, H or 1, P, D_p], v_p [.., P, D_v]) or None.
    scale: score scale, default D ** -0.5 (also used for the prefix scores).
    Returns [B, H, T, D_v]. A query that sees no key at all gets zeros.
    """
    _check(q, k, v, q_index, k_index, window, prefix)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_len = q.shape[2]
    if window is None or t_len == 0:
        return _block_attention(q, k, v, visible(q_index, k_index, window), prefix, scale)
    outs = []
    for a in range(0, t_len, block_size):
        b = min(a + block_size, t_len)
        # Keys this block can see form one contiguous range of the sorted k_index.
        bounds = torch.stack([q_index[a] - window, q_index[b - 1]])
        lo, hi = torch.searchsorted(k_index, bounds, right=True).tolist()
        qi = q_index[a:b]
        mask = visible(qi, k_index[lo:hi], window)
        block_prefix = None if prefix is None else (prefix[0][:, :, a:b], *prefix[1:])
        outs.append(
            _block_attention(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi], mask, block_prefix,
                             scale)
        )
    return torch.cat(outs, 2)


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
