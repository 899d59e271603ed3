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
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from titans.ops.memory.common import (
    InnerGradients,
    MemoryState,
    activation_backward,
    activation_fn,
    check_checkpoint_chunks,
    check_inputs,
    compute_dtype,
    inner_gradients,
    inner_gradients_backward,
    layer_norm,
    layer_norm_backward,
    without_autocast,
)


class _Spec(NamedTuple):
    """The options of one call, fixed for all its chunks."""

    activation: str
    residual_norm: bool
    max_grad_norm: float | None
    compile_step: bool


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


@without_autocast
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

    chunks = _Chunk(qc, kc, vc, qk_theta, k_theta, row_coef, end_coef, mix)
    spec = _Spec(activation, residual_norm, max_grad_norm, compile_step)
    # The residual norm's affine part per (batch, head) row: [BH, 1, D_v] each (none without it).
    norm = ()
    if residual_norm:
        norm = tuple(
            (p if p is not None else v.new_full((h, d_v), fill)).to(dtype)[None]
            .expand(b, h, d_v).reshape(b * h, 1, d_v)
            for p, fill in ((norm_weight, 1.0), (norm_bias, 0.0))
        )
    wss = [torch.cat([w, s], dim=-2) for w, s in zip(ws, ss, strict=True)]
    tensors = (*norm, *wss, *chunks)
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        o, *wss = _ChunkedMemory.apply(spec, checkpoint_chunks, *tensors)
    else:
        o, wss, _ = _run_chunks(wss, norm, chunks, spec)
    ws, ss = zip(*(m.chunk(2, dim=-2) for m in wss), strict=True)

    o = o.reshape(n_chunks, b, h, c, d_v).permute(1, 0, 3, 2, 4).reshape(b, n_chunks * c, h, d_v)
    return o[:, :t_len].to(q.dtype), _unflatten(ws, ss, b, h)


class _Chunk(NamedTuple):
    """The state-independent tensors of one chunk, [BH, ...] each (stacked over all chunks in
    :func:`memory_chunked`, with a leading chunk dim)."""

    q: Tensor  # [BH, c, D]
    k: Tensor  # [BH, c, D]
    v: Tensor  # [BH, c, D_v]
    qk_theta: Tensor  # [BH, c, c]: first-layer read scores (q_t . k_r) theta_r K[t, r]
    k_theta: Tensor  # [BH, c, c]: theta_r K[t, r]
    row_coef: Tensor  # [BH, c, 2]: (A_t, g_t), the weight and momentum a row t reads
    end_coef: Tensor  # [BH, c, 2]: token r's coefficient in the end weights and end momentum
    mix: Tensor  # [BH, 2, 2]: [[A, g], [0, E]], the boundary state's carry to the chunk end


class _Read(NamedTuple):
    """What the read's backward needs from its forward, [..., c, ...] each."""

    reads: list[Tensor]  # x_1 = q, x_2, ...: each layer's input on the queries
    products: list[Tensor]  # x_i a_i^T for layers i >= 1 ([..., c, c], before the gate mask)
    scores: list[Tensor]  # the read scores of every layer (qk_theta, then products * K_theta)
    read_pre: list[Tensor]  # Z_1, ..., Z_L: pre-activations of the read
    out_norm: tuple[Tensor, ...] | None  # (LN(Z_L), mean, rstd)


def _run_chunks(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunks: _Chunk, spec: _Spec,
    keep: bool = False,
) -> tuple[Tensor, list[Tensor], list[tuple[list[Tensor], _Cache]]]:
    """Visit the chunks in order: outputs [N, BH, c, D_v], the state after them, and (with
    ``keep``) every chunk's start state and cache for its backward.

    wss: per layer, weights stacked over momentum, ``[W; S]``: [BH, 2 * d_{i-1}, d_i].
    norm: (gamma, beta) of the residual norm, each [BH, 1, D_v], or () without it.
    """
    forward = _steps(spec.compile_step)[0]
    outputs, kept = [], []
    for chunk in zip(*(x.unbind(0) for x in chunks), strict=True):
        o, new, cache = forward(wss, norm, _Chunk(*chunk), spec)
        if keep:
            kept.append((wss, cache))
        outputs.append(o)
        wss = new
    return torch.stack(outputs), wss, kept


class _Cache(NamedTuple):
    """What the backward of one chunk needs from its forward."""

    inner: InnerGradients
    read: _Read


def _chunk_forward(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, spec: _Spec
) -> tuple[Tensor, list[Tensor], _Cache]:
    """One chunk: its outputs [BH, c, D_v], the stacked state ``[W; S]`` at its end, the cache.

    The chunk's state is read while it is in cache: batching the reads of many chunks (which
    only need their start states) into larger matmuls was measured slower on CPU, as the
    stacked states must then be copied and streamed from memory.
    """
    new, inner = _update(wss, norm, chunk, spec)
    out, read = _read(wss, norm, chunk, inner, spec)
    return out, new, _Cache(inner, read)


def _chunk_backward(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, cache: _Cache, g_out: Tensor,
    g_new: list[Tensor], spec: _Spec,
) -> tuple[list[Tensor], _Chunk, tuple[Tensor, ...]]:
    """The gradients of one chunk's inputs from those of its outputs, by explicit matmuls.

    wss: the chunk's start state; g_out: [BH, c, D_v]; g_new: the gradient of the end state.
    Returns the gradient of the start state, of every :class:`_Chunk` tensor and of
    (gamma, beta) (each [BH, 1, D_v], summed over the chunk's rows).
    """
    g_read, g_scaled, g_inputs, g_norm, g_part = _read_backward(
        wss, norm, chunk, cache.inner, cache.read, g_out, spec)
    g_wss, g_k, g_v, g_end, g_mix, g_update = _update_backward(
        wss, norm, chunk, cache.inner, g_new, g_scaled, g_inputs, spec)
    g_chunk = g_part._replace(k=g_k, v=g_v, end_coef=g_end, mix=g_mix)
    return ([a + b for a, b in zip(g_wss, g_read, strict=True)], g_chunk,
            tuple(a + b for a, b in zip(g_norm, g_update, strict=True)))


def _update(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, spec: _Spec
) -> tuple[list[Tensor], InnerGradients]:
    """One chunk's inner gradients at its start weights and the stacked state ``[W; S]`` at
    its end: ``W' = A W + g S, S' = E S`` (one 2x2 mixing matmul) minus the tokens' steps."""
    ws = [m[:, : m.shape[1] // 2] for m in wss]
    inner = inner_gradients(chunk.k, chunk.v, ws, spec.activation, norm or None,
                            spec.max_grad_norm)
    new = []
    for m, a, delta in zip(wss, inner.inputs, inner.scaled, strict=True):
        kept = (chunk.mix @ m.view(m.shape[0], 2, -1)).view_as(m)
        coef_a = _scale_rows(chunk.end_coef, a).transpose(-1, -2)
        new.append(torch.baddbmm(kept, coef_a, delta, alpha=-1))
    return new, inner


def _read(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, inner: InnerGradients,
    spec: _Spec,
) -> tuple[Tensor, _Read]:
    """Read M(q_t; W_t) with the per-token weights, layer by layer (dual form): [..., c, D_v].

    wss: the chunk's start state. Stacked, the read ``A_t x W + g_t x S`` is one matmul.
    """
    act = activation_fn(spec.activation)
    depth = len(wss)
    reads, products, scores, read_pre = [], [], [], []
    x = chunk.q
    for i in range(depth):
        reads.append(x)
        if i == 0:
            s = chunk.qk_theta
        else:
            products.append(x @ inner.inputs[i].transpose(-1, -2))
            s = products[-1] * chunk.k_theta
        scores.append(s)
        z = torch.baddbmm(_scale_rows(chunk.row_coef, x) @ wss[i], s, inner.scaled[i], alpha=-1)
        read_pre.append(z)
        x = act(z) if i < depth - 1 else z
    out_norm = None
    if spec.residual_norm:
        gamma, beta = norm
        y, mean, rstd = layer_norm(z)
        out = chunk.q + y * gamma + beta
        out_norm = (y, mean, rstd)
    else:
        out = z
    return out, _Read(reads, products, scores, read_pre, out_norm)


def _read_backward(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, inner: InnerGradients,
    cache: _Read, g_out: Tensor, spec: _Spec,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], tuple[Tensor, ...], _Chunk]:
    """The backward of :func:`_read`, last layer first.

    Returns the gradients of the start states, of ``inner.scaled``, of ``inner.inputs`` of the
    layers after the first (the read does not use k itself), of (gamma, beta) (summed over
    rows) and of the chunk tensors it reads (None for k, v, end_coef and mix: it does not
    use them).
    """
    name = spec.activation
    depth = len(wss)
    g_norm: tuple[Tensor, ...] = ()
    g_q = 0
    if spec.residual_norm:
        gamma, _ = norm
        y, mean, rstd = cache.out_norm
        g_norm = ((g_out * y).sum(-2, keepdim=True), g_out.sum(-2, keepdim=True))
        g_z = layer_norm_backward(g_out * gamma, cache.read_pre[-1], mean, rstd)
        g_q = g_out
    else:
        g_z = g_out
    g_wss, g_scaled, g_inputs = [None] * depth, [None] * depth, [None] * (depth - 1)
    g_row, g_k_theta = 0, 0
    for i in range(depth - 1, -1, -1):
        x = cache.reads[i]
        g_wss[i] = _scale_rows(chunk.row_coef, x).transpose(-1, -2) @ g_z
        g_coef, g_x = _scale_rows_backward(chunk.row_coef, x, g_z @ wss[i].transpose(-1, -2))
        g_row = g_row + g_coef
        g_scores = -(g_z @ inner.scaled[i].transpose(-1, -2))
        g_scaled[i] = -(cache.scores[i].transpose(-1, -2) @ g_z)
        if i == 0:
            g_qk_theta = g_scores
            g_q = g_q + g_x
        else:
            g_k_theta = g_k_theta + g_scores * cache.products[i - 1]
            g_products = g_scores * chunk.k_theta
            g_x = g_x + g_products @ inner.inputs[i]
            g_inputs[i - 1] = g_products.transpose(-1, -2) @ x
            g_z = activation_backward(name, g_x, cache.read_pre[i - 1])
    g_chunk = _Chunk(g_q, None, None, g_qk_theta, g_k_theta, g_row, None, None)
    return g_wss, g_scaled, g_inputs, g_norm, g_chunk


def _update_backward(
    wss: list[Tensor], norm: tuple[Tensor, ...], chunk: _Chunk, inner: InnerGradients,
    g_new: list[Tensor], g_scaled: list[Tensor], g_inputs: list[Tensor], spec: _Spec,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The backward of :func:`_update` for one chunk, given the gradient of its end state and
    the read's gradients of its inner gradients (g_scaled; g_inputs of the layers after the
    first).

    Returns the gradients of the start state (without the read's share), of k, v, end_coef,
    mix and (gamma, beta).
    """
    bh = g_new[0].shape[0]
    g_wss = [(chunk.mix.transpose(-1, -2) @ g.view(bh, 2, -1)).view_as(g) for g in g_new]
    g_mix = sum(g.view(bh, 2, -1) @ m.view(bh, 2, -1).transpose(-1, -2)
                for g, m in zip(g_new, wss, strict=True))
    g_scaled, g_end = list(g_scaled), 0
    g_inputs = [0, *g_inputs]
    for i, (a, d, g) in enumerate(zip(inner.inputs, inner.scaled, g_new, strict=True)):
        g_scaled[i] = torch.baddbmm(g_scaled[i], _scale_rows(chunk.end_coef, a), g, alpha=-1)
        g_coef, g_a = _scale_rows_backward(chunk.end_coef, a, -(d @ g.transpose(-1, -2)))
        g_end = g_end + g_coef
        g_inputs[i] = g_a + g_inputs[i]
    ws = [m[:, : m.shape[1] // 2] for m in wss]
    g_ws, g_k, g_v, g_norm = inner_gradients_backward(
        ws, inner, g_scaled, g_inputs, spec.activation, norm or None, spec.max_grad_norm)
    for g_m, g_w in zip(g_wss, g_ws, strict=True):
        g_m[:, : g_w.shape[1]] += g_w
    return g_wss, g_k, g_v, g_end, g_mix, g_norm or ()


def _scale_rows(coef: Tensor, x: Tensor) -> Tensor:
    """[c1_t * x_t, c2_t * x_t] per row t: coef [..., c, 2], x [..., c, d] -> [..., c, 2d]."""
    return (coef[..., None] * x[..., None, :]).flatten(-2)


def _scale_rows_backward(coef: Tensor, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of coef [..., c, 2] and x [..., c, d] from g [..., c, 2d] of _scale_rows."""
    g = g.unflatten(-1, (2, -1))
    return (g * x[..., None, :]).sum(-1), (g * coef[..., None]).sum(-2)


@functools.cache
def _steps(compile_step: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The chunk's forward and backward functions, eager or ``torch.compile``'d.

    Built once and shared: every chunk of every call reuses the same graphs (per shape/dtype).
    """
    if not compile_step:
        return _chunk_forward, _chunk_backward
    return (torch.compile(_chunk_forward, dynamic=False),
            torch.compile(_chunk_backward, dynamic=False))


class _ChunkedMemory(torch.autograd.Function):
    """The chunk loop with its hand-derived backward, which walks the chunks in reverse.

    With ``checkpoint_chunks`` the forward keeps only the state at the start of every group of
    that many chunks and the backward recomputes each group's forward before walking it back;
    without, every chunk's start state and inner gradients are kept. A backward that must
    itself be differentiable (``create_graph=True``) is taken by autograd through a
    recomputation.
    """

    @staticmethod
    def forward(ctx, spec: _Spec, checkpoint_chunks: int | None, *tensors: Tensor):  # type: ignore[override]
        """tensors: the residual norm's (gamma, beta) if spec says it has one, the stacked
        state of every layer, then the eight :class:`_Chunk` tensors of all chunks."""
        wss, norm, chunks = _split_inputs(tensors, spec)
        ctx.spec, ctx.group = spec, checkpoint_chunks
        ctx.save_for_backward(*tensors)
        if checkpoint_chunks is None:
            o, new, ctx.kept = _run_chunks(wss, norm, chunks, spec, keep=True)
            return (o, *new)
        outputs, ctx.starts = [], []
        for group in zip(*(x.split(checkpoint_chunks) for x in chunks), strict=True):
            ctx.starts.append(wss)
            o, wss, _ = _run_chunks(wss, norm, _Chunk(*group), spec)
            outputs.append(o)
        return (torch.cat(outputs), *wss)

    @staticmethod
    def backward(ctx, g_out: Tensor, *g_state: Tensor):  # type: ignore[override]
        tensors, spec = ctx.saved_tensors, ctx.spec
        if torch.is_grad_enabled():
            return (None, None, *_autograd_backward(tensors, spec, g_out, g_state))
        _, norm, chunks = _split_inputs(tensors, spec)
        n_chunks = chunks.q.shape[0]
        group = ctx.group or n_chunks
        backward = _steps(spec.compile_step)[1]
        g_chunks = _Chunk(*(torch.empty_like(x) for x in chunks))
        g_norm = [torch.zeros_like(p) for p in norm]
        g_wss = list(g_state)
        # The backward must run in the forward's precision, whatever autocast region calls it.
        with torch.autocast(device_type=g_out.device.type, enabled=False):
            for start in reversed(range(0, n_chunks, group)):
                stop = min(start + group, n_chunks)
                if ctx.group is None:
                    kept = ctx.kept
                else:
                    part = _Chunk(*(x[start:stop] for x in chunks))
                    kept = _run_chunks(ctx.starts[start // group], norm, part, spec, keep=True)[2]
                for n in range(stop - 1, start - 1, -1):
                    start_state, cache = kept[n - start]
                    chunk = _Chunk(*(x[n] for x in chunks))
                    g_wss, g_chunk, g_n = backward(start_state, norm, chunk, cache, g_out[n],
                                                   g_wss, spec)
                    for buf, g in zip(g_chunks, g_chunk, strict=True):
                        buf[n] = g
                    for buf, g in zip(g_norm, g_n, strict=True):
                        buf += g
        return (None, None, *g_norm, *g_wss, *g_chunks)


def _autograd_backward(
    tensors: tuple[Tensor, ...], spec: _Spec, g_out: Tensor, g_state: tuple[Tensor, ...]
) -> tuple[Tensor | None, ...]:
    """Gradients by autograd through a recomputed forward, with ``create_graph`` (for double
    backward: the hand-derived backward is not itself differentiable)."""
    wanted = [t for t in tensors if t.requires_grad]
    with torch.autocast(device_type=g_out.device.type, enabled=False):
        o, new, _ = _run_chunks(*_split_inputs(tensors, spec), spec)
    grads = iter(torch.autograd.grad((o, *new), wanted, (g_out, *g_state), create_graph=True,
                                     allow_unused=True))
    return tuple(next(grads) if t.requires_grad else None for t in tensors)


def _split_inputs(
    tensors: tuple[Tensor, ...], spec: _Spec
) -> tuple[list[Tensor], tuple[Tensor, ...], _Chunk]:
    """The flat inputs of :class:`_ChunkedMemory` back as (state, norm, chunks)."""
    n_norm = 2 if spec.residual_norm else 0
    depth = len(tensors) - len(_Chunk._fields) - n_norm
    return (list(tensors[n_norm:n_norm + depth]), tuple(tensors[:n_norm]),
            _Chunk(*tensors[n_norm + depth:]))


def _unflatten(ws: list[Tensor], ss: list[Tensor], b: int, h: int) -> MemoryState:
    return MemoryState(
        [w.reshape(b, h, *w.shape[1:]) for w in ws], [s.reshape(b, h, *s.shape[1:]) for s in ss]
    )
