"""Recurrent (token-by-token) neural memory inside the open chunk: the decode path.

Inside a chunk every inner gradient is taken at the chunk-start weights W0 (see
:func:`titans.ops.memory_naive`), so the gradients u_t of the new tokens depend on W0 and on the
tokens alone, not on the running state: they come from one batched forward and backward pass of
the keys through the MLP at W0. Only the momentum and weight recurrence and the reads
``M(q_t; W_t)`` go token by token, from the running state ``(W_{t-1}, S_{t-1})`` the caller
carries. A step costs the same however many tokens of the chunk were read before it: no replay,
no gate products, no masks. For whole chunks :func:`titans.ops.memory_chunked` is faster.
"""

from __future__ import annotations

import torch
from torch import Tensor

from titans.ops.memory.common import (
    MemoryState,
    Norm,
    check_inputs,
    compute_dtype,
    inner_gradients,
    mlp_forward,
    without_autocast,
)


@without_autocast
def memory_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    momentum: Tensor,
    decay: Tensor,
    boundary: MemoryState,
    current: MemoryState,
    activation: str = "gelu",
    residual_norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    max_grad_norm: float | None = None,
    check_values: bool = True,
) -> tuple[Tensor, MemoryState]:
    """Continue the open chunk by n tokens, one at a time, from its running state.

    For each token t, with ``W0`` the boundary weights::

        u_t = grad_W 0.5 * ||M(k_t; W0) - v_t||^2      (clipped to max_grad_norm, all layers
                                                         together, when given)
        S_t = eta_t * S_{t-1} - theta_t * u_t
        W_t = (1 - alpha_t) * W_{t-1} + S_t
        o_t = M(q_t; W_t)

    Started at a chunk boundary (``current`` = ``boundary``) this equals memory_naive on
    n <= chunk_size tokens; run on n1 then n2 tokens, carrying ``current`` with the same
    ``boundary``, it equals one run on the n1 + n2 tokens. Plain tensor ops, differentiable by
    autograd. The math runs in >= float32 with autocast off.

    Args:
        q, k: [B, n, H, D]; v: [B, n, H, D_v].
        lr (theta >= 0), momentum (eta in [0, 1]), decay (alpha in [0, 1]): [B, n, H].
        boundary: the weights W0 at the start of the open chunk (its momentum is not used),
            each [B, H, d_{i-1}, d_i].
        current: weights W_{t-1} and momentum S_{t-1} after the last token already read in the
            chunk (the boundary state itself when none was), shaped like ``boundary``.
        activation, residual_norm, norm_weight, norm_bias, max_grad_norm, check_values: as in
            memory_naive.

    Returns:
        o: [B, n, H, D_v] in q's dtype, and the running state after the last token (>= float32).
    """
    check_inputs(q, k, v, lr, momentum, decay, boundary, None, activation, residual_norm,
                 norm_weight, norm_bias, max_grad_norm, chunked=False, values=check_values)
    shapes = [tuple(w.shape) for w in boundary.weights]
    if [tuple(w.shape) for w in current.weights] != shapes:
        raise ValueError(
            f"current weights must match the boundary's {shapes}, got "
            f"{[tuple(w.shape) for w in current.weights]}"
        )
    dtype = compute_dtype(q.dtype)
    w0 = [w.to(dtype) for w in boundary.weights]
    ws = [w.to(dtype) for w in current.weights]
    ss = [s.to(dtype) for s in current.momentum]
    # Per (batch, head) rows, as the weights are: [B, H, n, D] and gates [B, H, n, 1, 1].
    qh, kh, vh = (x.to(dtype).transpose(1, 2) for x in (q, k, v))
    theta, eta, alpha = (g.to(dtype).transpose(1, 2)[..., None, None]
                         for g in (lr, momentum, decay))
    norm = None
    if residual_norm:
        # The LayerNorm's affine part per head, [H, 1, D_v] (absent: weight 1, bias 0).
        norm = Norm(*(vh.new_full((), fill) if p is None else p[:, None].to(dtype)
                      for p, fill in ((norm_weight, 1.0), (norm_bias, 0.0))))
    inner = inner_gradients(kh, vh, w0, activation, norm, max_grad_norm)
    # u_t of every token and layer at once: a_t^T delta_t, [B, H, n, d_{i-1}, d_i].
    grads = [a[..., :, None] * d[..., None, :]
             for a, d in zip(inner.inputs, inner.scaled, strict=True)]
    outputs = []
    for t in range(qh.shape[2]):
        ss = [eta[:, :, t] * s - theta[:, :, t] * u[:, :, t]
              for s, u in zip(ss, grads, strict=True)]
        ws = [(1 - alpha[:, :, t]) * w + s for w, s in zip(ws, ss, strict=True)]
        outputs.append(mlp_forward(qh[:, :, t:t + 1], ws, activation, residual_norm,
                                   norm_weight, norm_bias))
    o = torch.cat(outputs, dim=2) if outputs else vh.new_zeros(vh.shape)  # [B, H, n, D_v]
    return o.transpose(1, 2).to(q.dtype), MemoryState(ws, ss)
