"""Token-by-token reference of the neural long-term memory (the ground truth for tests).

Slow on purpose: per-token fast weights are materialised and the inner gradient comes from
autograd (``torch.func.grad``), so nothing here depends on hand-derived formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from titans.ops.memory.common import (
    MemoryState,
    check_inputs,
    compute_dtype,
    grad_clip_scale,
    mlp_forward,
)


def memory_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    momentum: Tensor,
    decay: Tensor,
    state: MemoryState,
    chunk_size: int = 16,
    activation: str = "gelu",
    residual_norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    max_grad_norm: float | None = None,
    check_values: bool = True,
) -> tuple[Tensor, MemoryState]:
    """Run the memory over a sequence one token at a time.

    For token t, with ``W0`` the weights at the start of t's chunk (chunks of ``chunk_size``
    tokens counted from the start of the sequence)::

        u_t = grad_W 0.5 * ||M(k_t; W0) - v_t||^2
        u_t = u_t * min(1, max_grad_norm / ||u_t||)      (with max_grad_norm; the norm is
                                                           taken over all layers' gradients)
        S_t = eta_t * S_{t-1} - theta_t * u_t
        W_t = (1 - alpha_t) * W_{t-1} + S_t
        o_t = M(q_t; W_t)

    Args:
        q, k: [B, T, H, D]; v: [B, T, H, D_v].
        lr (theta >= 0), momentum (eta in [0, 1]), decay (alpha in [0, 1]): [B, T, H].
        state: weights and momentum before the first token, each [B, H, d_{i-1}, d_i].
        residual_norm: use ``M(x) = x + LayerNorm(mlp(x))`` (no fast weights in the norm).
        norm_weight, norm_bias: [H, D_v], the LayerNorm's per-head affine part (outer
            parameters, not fast weights); None means weight 1 and bias 0.
        max_grad_norm: clip each token's inner gradient to this norm (None: no clipping).
        check_values: check the values of q, k, v and the gates on the CPU (see below); a
            layer whose gates come from bounded activations turns it off, since a non-finite
            value there means the model diverged, which its training loop reports.

    Returns:
        o: [B, T, H, D_v] in q's dtype, and the state after the last token.

    Every memory op checks the shapes; on the CPU, with ``check_values``, it also checks the
    values (finite q, k, v, gates in their ranges: :func:`titans.ops.memory.common.check_values`),
    which elsewhere would cost a device sync per call. Unchecked, a value out of range gives the
    result of the same equations, and a non-finite one at token t of a chunk makes the outputs
    of the whole chunk non-finite in the chunked op (only from t on in this one).
    """
    check_inputs(q, k, v, lr, momentum, decay, state, chunk_size, activation, residual_norm,
                 norm_weight, norm_bias, max_grad_norm, values=check_values)
    dtype = compute_dtype(q.dtype)
    weights = [w.to(dtype) for w in state.weights]
    moms = [s.to(dtype) for s in state.momentum]

    def memory(x: Tensor, ws: list[Tensor]) -> Tensor:
        return mlp_forward(x, ws, activation, residual_norm, norm_weight, norm_bias)

    def inner_loss(ws: list[Tensor], k_t: Tensor, v_t: Tensor) -> Tensor:
        # Summing over (batch, head) keeps each (b, h)'s gradient its own: weights are per (b, h).
        return 0.5 * (memory(k_t, ws) - v_t).pow(2).sum()

    inner_grad = torch.func.grad(inner_loss)
    outputs = []
    chunk_start = weights
    for t in range(q.shape[1]):
        if t % chunk_size == 0:
            chunk_start = weights
        k_t = k[:, t, :, None, :].to(dtype)  # [B, H, 1, D]
        v_t = v[:, t, :, None, :].to(dtype)
        grads = inner_grad(chunk_start, k_t, v_t)
        if max_grad_norm is not None:
            sq_norm = sum(u.pow(2).sum((-2, -1), keepdim=True) for u in grads)
            grads = [u * grad_clip_scale(sq_norm, max_grad_norm) for u in grads]
        theta = lr[:, t, :, None, None].to(dtype)  # [B, H, 1, 1]
        eta = momentum[:, t, :, None, None].to(dtype)
        alpha = decay[:, t, :, None, None].to(dtype)
        moms = [eta * s - theta * u for s, u in zip(moms, grads, strict=True)]
        weights = [(1 - alpha) * w + s for w, s in zip(weights, moms, strict=True)]
        q_t = q[:, t, :, None, :].to(dtype)
        outputs.append(memory(q_t, weights)[:, :, 0])
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(v.shape, dtype=dtype)
    return o.to(q.dtype), MemoryState(weights, moms)
