"""Chunked (mini-batch gradient descent) neural memory: the fast path of paper eqs. 16-18.

Within a chunk of c tokens every inner gradient is taken at the chunk-start weights W0, so the
recurrences of momentum and decay are linear in the per-token gradients u_r. Unrolled, with
P_x[t, s] = prod_{j=s+1..t} x_j (lower triangular, P_x[t, t] = 1)::

    S_t = E_t S0 - sum_{r<=t} theta_r P_eta[t, r] u_r         E_t = prod_{j<=t} eta_j
    W_t = A_t W0 + g_t S0 - sum_{r<=t} theta_r K[t, r] u_r    A_t = prod_{j<=t} (1 - alpha_j)
    K = P_(1-alpha) @ P_eta,  g = P_(1-alpha) @ E

Each layer's u_r is an outer product ``a_r^T delta_r`` (layer input times back-propagated error),
so a layer's pre-activation at query x_t under the per-token weights W_t is (the "dual form")::

    z_t = A_t (x_t W0) + g_t (x_t S0) - sum_{r<=t} theta_r K[t, r] (x_t . a_r) delta_r

a masked c x c matmul: no per-token weights are materialised. Gate products come from cumprod over
masked c x c matrices, exact and differentiable for gates equal to 0 or 1 (no log of 0, no ratio).
Chunks are visited in order and only chunk-boundary state is kept between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.ops.memory_common import (
    LAYER_NORM_EPS,
    MemoryState,
    _layer_norm_and_backward,
    activation_backward,
    activation_fn,
    check_checkpoint_chunks,
    check_inputs,
    compute_dtype,
    grad_clip_scale,
)

# (activation, residual_norm, max_grad_norm, compile_step) of one call, fixed for all its chunks
_Spec = tuple[str, bool, float | None, bool]


def segment_products(x: Tensor) -> Tensor:
    """P[..., t, s] = prod_{j=s+1..t} x[..., j] for s <= t, and 0 above the diagonal.

    x: [..., c] -> [..., c, c]
    """
    c = x.shape[-1]
    idx = torch.arange(c, device=x.device)
    # factors[..., j, s] = x_j if j > s else 1; a cumprod down j gives prod_{s<j<=t} x_j in row t.
    factors = torch.where(idx[:, None] > idx[None, :], x[..., :, None], x.new_ones(()))
    prods = torch.cumprod(factors, dim=-2)
    return torch.where(idx[:, None] >= idx[None, :], prods, x.new_zeros(()))


def _to_chunks(x: Tensor, num_chunks: int, chunk_size: int) -> Tensor:
    """[B, T, H, ...] -> [num_chunks, B*H, chunk_size, ...], zero-padded at the end."""
    b, t, h = x.shape[:3]
    pad = num_chunks * chunk_size - t
    x = x.movedim(2, 1)  # [B, H, T, ...]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    x = x.reshape(b * h, num_chunks, chunk_size, *x.shape[3:])
    return x.transpose(0, 1).contiguous()


def _without_autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(q, ...)`` with autocast off on q's device: the inner loop stays in >= float32."""

    @functools.wraps(fn)
    def wrapper(q: Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


@_without_autocast
def memory_chunked(
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
    checkpoint_chunks: int | None = None,
    compile_step: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Same contract and result as :func:`titans.ops.memory_naive`, one chunk at a time.

    Args:
        q, k: [B, T, H, D]; v: [B, T, H, D_v].
        lr (theta >= 0), momentum (eta in [0, 1]), decay (alpha in [0, 1]): [B, T, H].
        state: weights and momentum before the first token, each [B, H, d_{i-1}, d_i].
        chunk_size: tokens per inner mini-batch; chunk boundaries are multiples of it from t = 0.
        residual_norm: use ``M(x) = x + LayerNorm(mlp(x))`` (no fast weights in the norm).
        norm_weight, norm_bias: [H, D_v], the LayerNorm's per-head affine part (outer
            parameters, not fast weights); None means weight 1 and bias 0.
        max_grad_norm: clip each token's inner gradient (all layers together) to this norm.
        checkpoint_chunks: when autograd records, recompute each group of this many chunks in
            the backward pass and keep only the state at group boundaries: activation memory
            for the weights falls from T / chunk_size to T / (chunk_size * checkpoint_chunks)
            copies of the memory, for one extra forward.
        compile_step: run the per-chunk step through ``torch.compile`` (one graph reused by
            every chunk; fuses the elementwise work). Costs a one-off compilation per shape.

    Returns:
        o: [B, T, H, D_v] in q's dtype, and the state after the last token (in >= float32).
    """
    check_inputs(q, k, v, lr, momentum, decay, state, chunk_size, activation, residual_norm,
                 norm_weight, norm_bias, max_grad_norm)
    check_checkpoint_chunks(checkpoint_chunks)
    dtype = compute_dtype(q.dtype)
    b, t_len, h, _ = q.shape
    d_v = v.shape[-1]
    ws = [w.to(dtype).reshape(b * h, *w.shape[2:]) for w in state.weights]
    ss = [s.to(dtype).reshape(b * h, *s.shape[2:]) for s in state.momentum]
    if t_len == 0:
        return q.new_zeros(b, 0, h, d_v), _unflatten(ws, ss, b, h)

    c = chunk_size
    n_chunks = -(-t_len // c)
    qc, kc, vc = (_to_chunks(x.to(dtype), n_chunks, c) for x in (q, k, v))  # [N, BH, c, D]
    theta, eta, alpha = (_to_chunks(g.to(dtype), n_chunks, c) for g in (lr, momentum, decay))

    # Gate coefficients of every chunk at once ([N, BH, c] and [N, BH, c, c]).
    p_eta = segment_products(eta)
    p_keep = segment_products(1 - alpha)
    e_cum = torch.cumprod(eta, dim=-1)
    a_cum = torch.cumprod(1 - alpha, dim=-1)
    g_cum = (p_keep @ e_cum[..., None])[..., 0]
    k_theta = (p_keep @ p_eta) * theta[..., None, :]
    # The state leaves each chunk at its last real token: row c-1, or the tail's last row.
    end = torch.full((n_chunks,), c - 1, device=q.device)
    end[-1] = (t_len - 1) % c
    rows = torch.arange(n_chunks, device=q.device)
    # per token r of the chunk: its coefficient in the end weights and in the end momentum
    end_coef = torch.stack([k_theta[rows, :, end], p_eta[rows, :, end] * theta], -1)
    a_end, g_end, e_end = (x[rows, :, end] for x in (a_cum, g_cum, e_cum))  # [N, BH]
    # [W'; S'] = [[A, g], [0, E]] @ [W; S] at each chunk end, and (A_t, g_t) per row.
    mix = torch.stack([a_end, g_end, torch.zeros_like(e_end), e_end], -1).unflatten(-1, (2, 2))
    row_coef = torch.stack([a_cum, g_cum], -1)  # [N, BH, c, 2]
    # First layer scores q_t . k_r need no state, so they are computed for all chunks in one go.
    qk_theta = (qc @ kc.transpose(-1, -2)) * k_theta

    per_chunk = (qc, kc, vc, qk_theta, k_theta, row_coef, end_coef, mix)
    spec = (activation, residual_norm, max_grad_norm, compile_step)
    # The residual norm's affine part per (batch, head) row: [BH, 1, D_v] each (none without it).
    norm = ()
    if residual_norm:
        norm = tuple(
            (p if p is not None else v.new_full((h, d_v), fill)).to(dtype)[None]
            .expand(b, h, d_v).reshape(b * h, 1, d_v)
            for p, fill in ((norm_weight, 1.0), (norm_bias, 0.0))
        )
    recompute = checkpoint_chunks is not None and torch.is_grad_enabled()
    wss = [torch.cat([w, s], dim=-2) for w, s in zip(ws, ss, strict=True)]
    outputs = []
    # split (not [n] indexing) so autograd gathers the chunks' input gradients in one piece
    for group in zip(*(x.split(checkpoint_chunks or n_chunks) for x in per_chunk), strict=True):
        if recompute:
            o_group, *wss = _RecomputedChunks.apply(spec, *norm, *wss, *group)
        else:
            o_group, wss = _run_chunks(wss, norm, group, spec)
        outputs.append(o_group)
    ws, ss = zip(*(m.chunk(2, dim=-2) for m in wss), strict=True)

    o = torch.cat(outputs)  # [N, BH, c, D_v]
    o = o.reshape(n_chunks, b, h, c, d_v).permute(1, 0, 3, 2, 4).reshape(b, n_chunks * c, h, d_v)
    return o[:, :t_len].to(q.dtype), _unflatten(ws, ss, b, h)


def _run_chunks(
    wss: list[Tensor],
    norm: tuple[Tensor, ...],
    group: tuple[Tensor, ...],
    spec: _Spec,
) -> tuple[Tensor, list[Tensor]]:
    """Visit consecutive chunks in order: outputs [G, BH, c, D_v] and the state after them.

    wss: per layer, weights stacked over momentum, ``[W; S]``: [BH, 2 * d_{i-1}, d_i].
    norm: (gamma, beta) of the residual norm, each [BH, 1, D_v], or () without it.
    group: the per-chunk tensors of :func:`memory_chunked`, each with G chunks in dim 0.
    spec: (activation, residual_norm, max_grad_norm, compile_step).
    """
    step = _compiled_step() if spec[3] else _chunk_step
    outputs = []
    for chunk in zip(*(x.unbind(0) for x in group), strict=True):
        o, wss = step(wss, norm, chunk, spec[:3])
        outputs.append(o)
    return torch.stack(outputs), wss


def _chunk_step(
    wss: list[Tensor],
    norm: tuple[Tensor, ...],
    chunk: tuple[Tensor, ...],
    spec: tuple[str, bool, float | None],
) -> tuple[Tensor, list[Tensor]]:
    """One chunk: its outputs [BH, c, D_v] and the stacked state ``[W; S]`` at its end.

    Stacked, ``W`` is a contiguous view, the read ``A_t x W + g_t x S`` is one matmul and the
    boundary update ``W' = A W + g S, S' = E S`` one 2x2 mixing matmul.
    """
    activation, residual_norm, max_grad_norm = spec
    act = activation_fn(activation)
    depth = len(wss)
    q_n, k_n, v_n, qk_n, kth_n, row_n, end_n, mix = chunk
    ws = [m[:, : m.shape[1] // 2] for m in wss]
    # Inner gradient at the chunk-start weights: forward the keys, back-propagate the error.
    inputs, pre = [], []
    x = k_n
    for i, w in enumerate(ws):
        inputs.append(x)
        z = x @ w
        pre.append(z)
        x = act(z) if i < depth - 1 else z
    deltas = [_layer_norm_and_backward(z, v_n, k_n, *norm) if residual_norm else z - v_n]
    for i in range(depth - 1, 0, -1):
        back = deltas[0] @ ws[i].transpose(-1, -2)
        deltas.insert(0, activation_backward(activation, back, pre[i - 1]))
    if max_grad_norm is not None:
        # Token r's gradient in layer i is the outer product a_r^T delta_r: its squared
        # Frobenius norm is ||a_r||^2 ||delta_r||^2, so clipping scales the rows of delta.
        sq_norm = sum(a.pow(2).sum(-1, keepdim=True) * d.pow(2).sum(-1, keepdim=True)
                      for a, d in zip(inputs, deltas, strict=True))
        scale = grad_clip_scale(sq_norm, max_grad_norm)
        deltas = [d * scale for d in deltas]

    # Read M(q_t; W_t) with the per-token weights, layer by layer (dual form).
    x = q_n
    for i in range(depth):
        scores = qk_n if i == 0 else (x @ inputs[i].transpose(-1, -2)) * kth_n
        z = torch.baddbmm(_scale_rows(row_n, x) @ wss[i], scores, deltas[i], alpha=-1)
        x = act(z) if i < depth - 1 else z
    if residual_norm:
        gamma, beta = norm
        out = q_n + F.layer_norm(z, z.shape[-1:], eps=LAYER_NORM_EPS) * gamma + beta
    else:
        out = z

    # Carry weights and momentum to the next chunk boundary.
    new = []
    for m, a, delta in zip(wss, inputs, deltas, strict=True):
        kept = (mix @ m.view(m.shape[0], 2, -1)).view_as(m)
        coef_a = _scale_rows(end_n, a).transpose(-1, -2)
        new.append(torch.baddbmm(kept, coef_a, delta, alpha=-1))
    return out, new


@functools.cache
def _compiled_step() -> Callable[..., tuple[Tensor, list[Tensor]]]:
    # Built once and shared: every chunk of every call reuses the same graphs (per shape/dtype).
    return torch.compile(_chunk_step, dynamic=False)


def _scale_rows(coef: Tensor, x: Tensor) -> Tensor:
    """[c1_t * x_t, c2_t * x_t] per row t: coef [..., c, 2], x [..., c, d] -> [..., c, 2d]."""
    return (coef[..., None] * x[..., None, :]).flatten(-2)


_GROUP_TENSORS = 8  # per-chunk tensors handed to _run_chunks


class _RecomputedChunks(torch.autograd.Function):
    """Activation checkpointing of :func:`_run_chunks`: keep the inputs, recompute in backward.

    Written out (not ``torch.utils.checkpoint``) because every tensor the group uses is an
    explicit input, so the backward can call ``torch.autograd.grad`` on exactly those: it then
    works under both ``.backward()`` and ``torch.autograd.grad`` while freeing all activations.
    """

    @staticmethod
    def forward(ctx, spec: _Spec, *tensors: Tensor):  # type: ignore[override]
        """tensors: the residual norm's (gamma, beta) if spec says it has one, the stacked
        state of every layer, then the group's per-chunk tensors."""
        ctx.spec = spec
        ctx.save_for_backward(*tensors)
        o, wss = _run_chunks(*_split_inputs(tensors, spec))
        return (o, *wss)

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor):  # type: ignore[override]
        inputs = [t.detach().requires_grad_(need) for t, need in
                  zip(ctx.saved_tensors, ctx.needs_input_grad[1:], strict=True)]
        # The recomputation must match the forward, which ran with autocast off: a backward
        # called inside an autocast region would otherwise recompute in low precision.
        device = inputs[0].device.type
        with torch.enable_grad(), torch.autocast(device_type=device, enabled=False):
            o, wss = _run_chunks(*_split_inputs(inputs, ctx.spec))
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad((o, *wss), wanted, grad_outputs, allow_unused=True))
        return (None, *(next(grads) if t.requires_grad else None for t in inputs))


def _split_inputs(
    tensors: tuple[Tensor, ...] | list[Tensor], spec: _Spec
) -> tuple[list[Tensor], tuple[Tensor, ...], tuple[Tensor, ...], _Spec]:
    """The flat inputs of :class:`_RecomputedChunks` back as ``_run_chunks``' arguments."""
    n_norm = 2 if spec[1] else 0
    depth = len(tensors) - _GROUP_TENSORS - n_norm
    return (list(tensors[n_norm:n_norm + depth]), tuple(tensors[:n_norm]),
            tuple(tensors[n_norm + depth:]), spec)


def _unflatten(ws: list[Tensor], ss: list[Tensor], b: int, h: int) -> MemoryState:
    return MemoryState(
        [w.reshape(b, h, *w.shape[1:]) for w in ws], [s.reshape(b, h, *s.shape[1:]) for s in ss]
    )
