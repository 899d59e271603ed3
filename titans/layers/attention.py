"""Multi-head attention with RoPE, a sliding window, a persistent prefix and a KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from titans.layers.tags import mark_residual_projection
from titans.ops.attention import attention
from titans.ops.rope import rotary_embedding


@dataclass
class KVCache:
    """Keys (already rotated) and values of earlier tokens that later queries may still see.

    key, value: [B, H, S, D]; index: [S] int64 sequence indices (also their RoPE positions).
    """

    SHARED_FIELDS: ClassVar[tuple[str, ...]] = ("index",)  # the same for every row

    key: Tensor
    value: Tensor
    index: Tensor

    @property
    def length(self) -> int:
        return self.key.shape[2]

    def detach(self) -> KVCache:
        return KVCache(self.key.detach(), self.value.detach(), self.index)


class Attention(nn.Module):
    """Causal multi-head attention: x [B, T, hidden] -> [B, T, hidden].

    Args:
        hidden_size, num_heads, head_dim: projections are hidden -> num_heads * head_dim.
        window: each query sees the ``window`` most recent positions, itself included
            (None = full causal attention). The cache keeps only what a later query can see.
        rope_theta: RoPE base.
        block_size: at most this many queries per attention block, and no more than the window
            (memory O(T * (block_size + window))).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        window: int | None = None,
        rope_theta: float = 10000.0,
        block_size: int = 512,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.window = num_heads, head_dim, window
        self.rope_theta, self.block_size = rope_theta, block_size
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        mark_residual_projection(self.o_proj)

    def empty_cache(self, batch_size: int, like: Tensor) -> KVCache:
        kv = like.new_zeros(batch_size, self.num_heads, 0, self.head_dim)
        return KVCache(kv, kv, torch.zeros(0, dtype=torch.long, device=like.device))

    def _heads(self, x: Tensor) -> Tensor:
        """[B, T, H * D] -> [B, H, T, D]"""
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        index: Tensor,
        cache: KVCache | None = None,
        context: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Attend from x to the cache, to x itself and optionally to extra context tokens.

        x: [B, T, hidden]; index: [T] int64 sequence indices of x (RoPE positions).
        context: [B, T, hidden] tokens that sit at the same indices as x and are seen under the
            same causal rule (MAC's retrieved memory h): token i sees context j <= i.
        prefix: [P, hidden] tokens seen by every query, without position (persistent memory).
        Returns the output [B, T, hidden] and the cache for the next call.
        """
        b = x.shape[0]
        cache = self.empty_cache(b, x) if cache is None else cache
        if cache.key.shape[:2] != (b, self.num_heads):
            raise ValueError(f"KV cache is for {tuple(cache.key.shape[:2])} (batch, heads)")
        q_raw = self._heads(self.q_proj(x))
        q = rotary_embedding(q_raw, index, self.rope_theta)
        source = x if context is None else torch.cat([context, x], 1)
        src_index = index if context is None else torch.cat([index, index])
        k = rotary_embedding(self._heads(self.k_proj(source)), src_index, self.rope_theta)
        v = self._heads(self.v_proj(source))
        keys, values, k_index = k, v, src_index
        if cache.length:
            # A cache made outside autocast joins keys made inside it (and vice versa).
            keys = torch.cat([cache.key.to(k.dtype), k], 2)
            values = torch.cat([cache.value.to(v.dtype), v], 2)
            k_index = torch.cat([cache.index, src_index])
        if context is not None and self.window is not None:
            # A window needs sorted indices to keep each block's visible keys contiguous (a
            # stable sort keeps the order of equal indices, so results do not depend on how the
            # sequence was split). Without a window the key order is free.
            k_index, order = torch.sort(k_index, stable=True)
            keys, values = keys[:, :, order], values[:, :, order]
        pre = None
        if prefix is not None and prefix.shape[0] > 0:
            prefix = prefix[None]  # [1, P, hidden]: the same tokens for every sequence
            pre = (q_raw, self._heads(self.k_proj(prefix)), self._heads(self.v_proj(prefix)))
        o = attention(q, keys, values, index, k_index, window=self.window, prefix=pre,
                      block_size=self.block_size)
        if self.window is not None and x.shape[1] > 0:
            # The next query (index > last) sees keys with index > last + 1 - window: a suffix
            # of the sorted keys, copied so the cache does not hold on to all of them.
            keep = int((k_index > index[-1] + 1 - self.window).sum())
            start = k_index.shape[0] - keep
            keys, values = keys[:, :, start:].clone(), values[:, :, start:].clone()
            k_index = k_index[start:]
        out = self.o_proj(o.transpose(1, 2).reshape(b, x.shape[1], -1))
        return out, KVCache(keys, values, k_index)
